package kbs

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sort"

	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// This file is the broker's one manifest-chain check: the stored records
// (bodies and owner signatures, which the host can write) against the
// chain the log holds. It is kept apart so that it can become a call to
// the manifest package's chain verification when that exists.

// chainVersion is one manifest version: the log's link and entry, and the
// record the broker keeps with its signatures.
type chainVersion struct {
	link  chainLink
	entry []byte // the exact log entry at link.Index, verified against the tree
	rec   manifestRecord
}

// verifyChain checks the manifest chain, version i+1 at vs[i] (see
// verifyLink), and returns the parsed manifests.
func verifyChain(vs []chainVersion) ([]*manifest.Manifest, error) {
	out := make([]*manifest.Manifest, 0, len(vs))
	var prev *manifest.Manifest
	for i, v := range vs {
		if v.link.Version != uint64(i+1) {
			return nil, fmt.Errorf("the log's chain has version %d in place %d", v.link.Version, i+1)
		}
		m, err := verifyLink(prev, v)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
		prev = m
	}
	return out, nil
}

// verifyLink checks one version of the chain after prev (nil for version
// 1): the record's body is the manifest the log's entry holds (same bytes,
// same hash, same version, same index), version 1's signatures are by its
// own owners (or there are none: the operator's decision), a later
// version is signed by a threshold of prev's owners. It returns the parsed
// manifest.
func verifyLink(prev *manifest.Manifest, v chainVersion) (*manifest.Manifest, error) {
	rec := v.rec
	switch {
	case prev == nil && v.link.Version != 1:
		return nil, fmt.Errorf("the chain starts at version %d, not 1", v.link.Version)
	case prev != nil && v.link.Version != prev.Version()+1:
		return nil, fmt.Errorf("version %d does not follow version %d", v.link.Version, prev.Version())
	}
	if rec.Version != v.link.Version || rec.Hash != v.link.Hash || rec.LogIndex != v.link.Index {
		return nil, fmt.Errorf("record of version %d (%s at %d) is not the log's version %d (%s at %d)", rec.Version, rec.Hash, rec.LogIndex, v.link.Version, v.link.Hash, v.link.Index)
	}
	m, err := manifest.Parse(rec.Body)
	if err != nil {
		return nil, fmt.Errorf("version %d: %w", rec.Version, err)
	}
	if m.Version() != rec.Version || m.Hash() != rec.Hash {
		return nil, fmt.Errorf("record %d holds version %d (%s)", rec.Version, m.Version(), m.Hash())
	}
	e, err := tlog.DecodeEntry(v.entry)
	if err != nil || e.Type != tlog.TypeManifest || !bytes.Equal(e.Manifest.Body, rec.Body) {
		return nil, fmt.Errorf("version %d: log entry %d is not this manifest", rec.Version, rec.LogIndex)
	}
	if prev == nil {
		_, err = verifySelfSigned(m, rec.Signatures)
	} else {
		_, err = manifest.Verify(prev, m, rec.Signatures)
	}
	if err != nil {
		return nil, fmt.Errorf("version %d: %w", rec.Version, err)
	}
	return m, nil
}

// verifySelfSigned checks the signatures of version 1, if any: each must be
// by a distinct owner of its own, and together they must reach its
// threshold, so the log can record who admitted it. Without signatures it
// returns no signers: version 1 is then trusted by the operator's decision
// alone.
func verifySelfSigned(m *manifest.Manifest, sigs []string) ([]string, error) {
	if len(sigs) == 0 {
		return nil, nil
	}
	var keys []any
	for _, p := range m.Document().Owners.Keys {
		block, _ := pem.Decode([]byte(p))
		if block == nil {
			return nil, errors.New("owner key is not PEM")
		}
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	seen := map[string]bool{}
	for i, s := range sigs {
		ok := false
		for _, k := range keys {
			if manifest.VerifyBlob(k, m.Bytes(), s) == nil {
				fp, err := manifest.Fingerprint(k)
				if err != nil {
					return nil, err
				}
				if seen[fp] {
					return nil, fmt.Errorf("signature %d: owner %s signed twice", i, fp)
				}
				seen[fp] = true
				ok = true
				break
			}
		}
		if !ok {
			return nil, fmt.Errorf("signature %d is not a valid signature of an owner of version 1", i)
		}
	}
	if len(seen) < m.Threshold() {
		return nil, fmt.Errorf("%w: signed version 1 needs signatures of %d of its own owners over its exact bytes, has %d valid (give all of them, or none to trust version 1 by the operator's decision alone)", ErrInitialSignatures, m.Threshold(), len(seen))
	}
	var fps []string
	for fp := range seen {
		fps = append(fps, fp)
	}
	sort.Strings(fps)
	return fps, nil
}
