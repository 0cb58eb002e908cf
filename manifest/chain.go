package manifest

import (
	"bytes"
	"errors"
	"fmt"
)

// A SignedVersion is one manifest version as a chain carries it: its exact
// bytes and the detached owner signatures (base64) that admitted it, as
// the broker's history and database keep them.
type SignedVersion struct {
	Body       []byte
	Signatures []string
}

// A Link is one verified version of a Chain.
type Link struct {
	Manifest *Manifest
	// Signers are the fingerprints (sorted) of the owners whose valid
	// signatures admitted this version: owners of the version before; for
	// a version 1 anchor its own owners, or none when it carries no
	// signatures; none for an anchor above version 1.
	Signers []string
	// Changes are the differences from the version before (Diff); none
	// for the anchor.
	Changes []Change
}

// A Chain is an unbroken run of manifest versions in which each version
// after the first is admitted by the one before it: its version is one
// more, its "previous" is the hash of the one before, and it carries valid
// signatures of at least the threshold of distinct owners of the one
// before (Verify).
//
// The first version is the chain's anchor, and trust in it is the
// caller's decision: a client's own copy of the manifest, or the version 1
// an operator configured. A chain proves that every later version was
// admitted by owners descending from the anchor's, nothing about the
// anchor itself. A version 1 anchor that carries signatures must carry
// valid signatures of at least its own threshold of its own distinct
// owners, so that the log can name who admitted it; without signatures it
// is trusted by the caller's decision alone. The signatures of an anchor
// above version 1 cannot be checked (its predecessor is not in the chain)
// and are ignored.
//
// The zero Chain is empty. VerifyChain verifies a whole history at once;
// Append adds versions one at a time, as a log replay or a monitor meets
// them. A Chain is not safe for concurrent use.
type Chain struct {
	links []Link
}

// VerifyChain verifies versions, oldest first, as one Chain (see Chain for
// what is checked). anchor is the version the caller trusts, which must be
// versions[0] byte for byte (ErrUntrusted otherwise); a nil anchor accepts
// versions[0] as it is: pass nil only when trust in the first version is
// settled elsewhere (a broker that compared its configured version 1
// itself) or when the chain is only reported (an audit, a history
// listing).
//
// Errors name the version that failed and wrap the errors of Verify (and
// ErrUntrusted); a version that does not parse is a *FieldError.
func VerifyChain(anchor *Manifest, versions []SignedVersion) (*Chain, error) {
	if len(versions) == 0 {
		return nil, errors.New("manifest: an empty chain")
	}
	if anchor != nil && !bytes.Equal(anchor.raw, versions[0].Body) {
		return nil, fmt.Errorf("%w: the chain starts at %s, the trusted version %d is %s",
			ErrUntrusted, HashOf(versions[0].Body), anchor.doc.Version, anchor.hash)
	}
	c := &Chain{links: make([]Link, 0, len(versions))}
	for _, v := range versions {
		if _, err := c.Append(v); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Append verifies v as the next version of the chain and adds it: on an
// empty chain v becomes the anchor (with its own signatures checked if it
// is version 1 and carries any), otherwise Verify must accept v after the
// latest version. On error the chain is unchanged.
func (c *Chain) Append(v SignedVersion) (*Link, error) {
	m, err := Parse(v.Body)
	if err != nil {
		if len(c.links) > 0 {
			return nil, fmt.Errorf("manifest: version %d: %w", c.Latest().doc.Version+1, err)
		}
		return nil, fmt.Errorf("manifest: the chain's first version: %w", err)
	}
	l := Link{Manifest: m}
	switch {
	case len(c.links) > 0:
		prev := c.Latest()
		if l.Signers, err = Verify(prev, m, v.Signatures); err != nil {
			return nil, fmt.Errorf("manifest: version %d: %w", m.doc.Version, err)
		}
		l.Changes = Diff(prev, m)
	case m.doc.Version == 1 && len(v.Signatures) > 0:
		if l.Signers, err = signers(m, m, v.Signatures); err != nil {
			return nil, fmt.Errorf("manifest: version 1, signed by its own owners: %w", err)
		}
	}
	c.links = append(c.links, l)
	return &c.links[len(c.links)-1], nil
}

// Len returns the number of versions in the chain.
func (c *Chain) Len() int { return len(c.links) }

// Links returns the chain's versions, oldest first. The slice is the
// chain's own: do not modify it.
func (c *Chain) Links() []Link { return c.links }

// Anchor returns the first version, or nil for an empty chain.
func (c *Chain) Anchor() *Manifest {
	if len(c.links) == 0 {
		return nil
	}
	return c.links[0].Manifest
}

// Latest returns the last version, or nil for an empty chain.
func (c *Chain) Latest() *Manifest {
	if len(c.links) == 0 {
		return nil
	}
	return c.links[len(c.links)-1].Manifest
}

// Version returns the link of version v, if the chain holds it.
func (c *Chain) Version(v uint64) (*Link, bool) {
	if len(c.links) == 0 {
		return nil, false
	}
	first := c.links[0].Manifest.doc.Version
	if v < first || v-first >= uint64(len(c.links)) {
		return nil, false
	}
	return &c.links[v-first], true
}
