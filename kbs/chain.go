package kbs

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// This file is the broker's one manifest-chain check: the stored records
// (bodies and owner signatures, which the host can write) against the
// chain the log holds. The signatures are checked by the manifest
// package's chain verification (manifest.Chain), as clients and auditors
// check them.

// chainVersion is one manifest version: the log's link and entry, and the
// record the broker keeps with its signatures.
type chainVersion struct {
	link  chainLink
	entry []byte // the exact log entry at link.Index, verified against the tree
	rec   manifestRecord
}

// verifyChain checks the manifest chain, version i+1 at vs[i]: each
// record is the log's version (checkRecord), and the records' bodies and
// signatures form one manifest.Chain from version 1. It returns the parsed
// manifests.
func verifyChain(vs []chainVersion) ([]*manifest.Manifest, error) {
	var c manifest.Chain
	for i, v := range vs {
		if v.link.Version != uint64(i+1) {
			return nil, fmt.Errorf("the log's chain has version %d in place %d", v.link.Version, i+1)
		}
		if err := checkRecord(v); err != nil {
			return nil, err
		}
		if _, err := c.Append(manifest.SignedVersion{Body: v.rec.Body, Signatures: v.rec.Signatures}); err != nil {
			return nil, initialSignaturesError(err)
		}
		if got := c.Latest().Version(); got != v.link.Version {
			return nil, fmt.Errorf("record %d holds version %d", v.link.Version, got)
		}
	}
	out := make([]*manifest.Manifest, 0, c.Len())
	for _, l := range c.Links() {
		out = append(out, l.Manifest)
	}
	return out, nil
}

// verifyLink checks one version of the chain after prev (nil for version
// 1): the record is the log's version (checkRecord), version 1's
// signatures are by its own owners (or there are none: the operator's
// decision), a later version is signed by a threshold of prev's owners. It
// returns the parsed manifest.
func verifyLink(prev *manifest.Manifest, v chainVersion) (*manifest.Manifest, error) {
	switch {
	case prev == nil && v.link.Version != 1:
		return nil, fmt.Errorf("the chain starts at version %d, not 1", v.link.Version)
	case prev != nil && v.link.Version != prev.Version()+1:
		return nil, fmt.Errorf("version %d does not follow version %d", v.link.Version, prev.Version())
	}
	if err := checkRecord(v); err != nil {
		return nil, err
	}
	if prev == nil {
		c, err := manifest.VerifyChain(nil, []manifest.SignedVersion{{Body: v.rec.Body, Signatures: v.rec.Signatures}})
		if err != nil {
			return nil, initialSignaturesError(err)
		}
		return c.Latest(), nil
	}
	m, err := manifest.Parse(v.rec.Body)
	if err != nil {
		return nil, fmt.Errorf("version %d: %w", v.rec.Version, err)
	}
	if _, err := manifest.Verify(prev, m, v.rec.Signatures); err != nil {
		return nil, fmt.Errorf("version %d: %w", v.rec.Version, err)
	}
	return m, nil
}

// checkRecord checks that the stored record of a version is the manifest
// the log holds at that position: same version, hash and index, and the
// log entry's exact bytes.
func checkRecord(v chainVersion) error {
	rec := v.rec
	if rec.Version != v.link.Version || rec.Hash != v.link.Hash || rec.LogIndex != v.link.Index {
		return fmt.Errorf("record of version %d (%s at %d) is not the log's version %d (%s at %d)", rec.Version, rec.Hash, rec.LogIndex, v.link.Version, v.link.Hash, v.link.Index)
	}
	if manifest.HashOf(rec.Body) != rec.Hash {
		return fmt.Errorf("record %d holds a manifest with hash %s", rec.Version, manifest.HashOf(rec.Body))
	}
	e, err := tlog.DecodeEntry(v.entry)
	if err != nil || e.Type != tlog.TypeManifest || !bytes.Equal(e.Manifest.Body, rec.Body) {
		return fmt.Errorf("version %d: log entry %d is not this manifest", rec.Version, rec.LogIndex)
	}
	return nil
}

// verifyInitial checks a version 1 that the operator configured: it is
// version 1, and its signatures, if any, are by at least its threshold of
// its own distinct owners. It returns their fingerprints, none for an
// unsigned version 1 (trusted by the operator's decision alone).
func verifyInitial(m *manifest.Manifest, sigs []string) ([]string, error) {
	if m.Version() != 1 {
		return nil, fmt.Errorf("the first manifest must be version 1, not version %d", m.Version())
	}
	c, err := manifest.VerifyChain(m, []manifest.SignedVersion{{Body: m.Bytes(), Signatures: sigs}})
	if err != nil {
		return nil, initialSignaturesError(err)
	}
	return c.Links()[0].Signers, nil
}

// initialSignaturesError marks a version 1 whose own signatures do not
// reach its threshold with ErrInitialSignatures, and says what to do.
func initialSignaturesError(err error) error {
	if errors.Is(err, manifest.ErrTooFewSignatures) {
		return fmt.Errorf("%w: %w (give signatures of enough of its own owners over its exact bytes, or none to trust version 1 by the operator's decision alone)", ErrInitialSignatures, err)
	}
	return err
}
