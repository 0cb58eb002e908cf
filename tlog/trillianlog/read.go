package trillianlog

import (
	"bytes"
	"context"
	"fmt"
	"slices"

	"github.com/google/trillian"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/transparency-dev/merkle/proof"
)

// Checkpoint implements tlog.Backend: the last checkpoint this Log signed.
func (l *Log) Checkpoint(ctx context.Context) (tlog.SignedCheckpoint, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.st.cp, nil
}

func (l *Log) size() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.st.cp.Size
}

// Entries implements tlog.Backend: Trillian's leaves, checked against a
// verified root of its tree (waiting for Trillian's signer to integrate
// end leaves if needed).
func (l *Log) Entries(ctx context.Context, start, end uint64) ([][]byte, error) {
	if start > end {
		return nil, fmt.Errorf("%w: entries [%d, %d)", tlog.ErrInvalidArgument, start, end)
	}
	if size := l.size(); end > size {
		return nil, fmt.Errorf("%w: entries [%d, %d) of a log of size %d", tlog.ErrOutOfRange, start, end, size)
	}
	if start == end {
		return [][]byte{}, nil
	}
	root, err := l.waitVerified(ctx, end)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, 0, end-start)
	for next := start; next < end; {
		vs, err := l.verifiedEntries(ctx, root, next, min(end, next+leavesPerCall))
		if err != nil {
			return nil, err
		}
		out = append(out, vs...)
		next += uint64(len(vs))
	}
	return out, nil
}

// verifiedEntries returns the entries [start, end) (end > start, at most
// leavesPerCall of them) of root's tree, a verified root of Trillian's
// tree, checked against it: Trillian's inclusion proofs of the first and the last entry must
// verify, and the left siblings of the last must be the compact range of
// the left siblings of the first extended by the entries in between. So a
// Trillian that serves other bytes than those it integrated is caught
// before kbs uses them.
func (l *Log) verifiedEntries(ctx context.Context, root tlog.Root, start, end uint64) ([][]byte, error) {
	var vals [][]byte
	for next := start; next < end; {
		leaves, err := l.leaves(ctx, next, end-next)
		if err != nil {
			return nil, err
		}
		for _, lf := range leaves {
			vals = append(vals, lf.LeafValue)
		}
		next += uint64(len(leaves))
	}
	first, err := l.leftSiblings(ctx, start, root, vals[0])
	if err != nil {
		return nil, err
	}
	if end-start == 1 {
		return vals, nil
	}
	last, err := l.leftSiblings(ctx, end-1, root, vals[len(vals)-1])
	if err != nil {
		return nil, err
	}
	rng, err := rangeFactory.NewRange(0, start, first)
	if err != nil {
		return nil, err
	}
	for _, v := range vals[:len(vals)-1] {
		if err := rng.Append(hasher.HashLeaf(v), nil); err != nil {
			return nil, err
		}
	}
	got := rng.Hashes()
	if len(got) != len(last) {
		return nil, fmt.Errorf("%w: Trillian's entries [%d, %d) are not those of the signed tree of size %d", tlog.ErrConflict, start, end, root.Size)
	}
	for i := range got {
		if !bytes.Equal(got[i], last[i]) {
			return nil, fmt.Errorf("%w: Trillian's entries [%d, %d) are not those of the signed tree of size %d", tlog.ErrConflict, start, end, root.Size)
		}
	}
	return vals, nil
}

// leftSiblings gets Trillian's inclusion proof of the leaf at index with
// value v in root's tree, verifies it, and returns the hashes of the nodes
// left of the leaf (the compact range of [0, index)), left to right.
func (l *Log) leftSiblings(ctx context.Context, index uint64, root tlog.Root, v []byte) ([][]byte, error) {
	resp, err := l.client.GetInclusionProof(ctx, &trillian.GetInclusionProofRequest{
		LogId: l.tree, LeafIndex: int64(index), TreeSize: int64(root.Size),
	})
	if err != nil {
		return nil, fmt.Errorf("trillianlog: couldn't get the inclusion proof of %d in %d: %w", index, root.Size, err)
	}
	if resp.Proof == nil {
		return nil, fmt.Errorf("trillianlog: Trillian has no inclusion proof of %d in %d", index, root.Size)
	}
	p := resp.Proof.Hashes
	if err := proof.VerifyInclusion(hasher, index, root.Size, hasher.HashLeaf(v), p, root.Hash[:]); err != nil {
		return nil, fmt.Errorf("%w: Trillian's entry %d is not in the signed tree of size %d: %v", tlog.ErrConflict, index, root.Size, err)
	}
	// The proof lists a node per level, lowest first, with the nodes right
	// of the leaf's path folded into one ephemeral node; the left ones are
	// never folded. Walk the levels: at each, the sibling is left of the
	// path iff the path node is a right child.
	pn, err := proof.Inclusion(index, root.Size)
	if err != nil {
		return nil, err
	}
	_, b, e := pn.Ephem()
	var left [][]byte
	pos := 0
	for i, id := range pn.IDs {
		if i > b && i < e {
			continue // folded into the ephemeral node at position b
		}
		if _, end := id.Coverage(); end <= index {
			left = append(left, p[pos])
		}
		pos++
	}
	if pos != len(p) {
		return nil, fmt.Errorf("trillianlog: inclusion proof of %d in %d has %d hashes, want %d", index, root.Size, len(p), pos)
	}
	slices.Reverse(left) // highest (leftmost) first, as in a compact range
	return left, nil
}

// InclusionProof implements tlog.Backend. The proofs of entries in the
// checkpoint their Append returned are computed locally; others are
// Trillian's, once its signer has integrated the tree of size treeSize.
func (l *Log) InclusionProof(ctx context.Context, index, treeSize uint64) ([]tlog.Hash, error) {
	if index >= treeSize {
		return nil, fmt.Errorf("%w: index %d is not below tree size %d", tlog.ErrInvalidArgument, index, treeSize)
	}
	if size := l.size(); treeSize > size {
		return nil, fmt.Errorf("%w: tree size %d, log size %d", tlog.ErrOutOfRange, treeSize, size)
	}
	if p, ok := l.recentProof(index, treeSize); ok {
		return p, nil
	}
	if _, err := l.waitVerified(ctx, treeSize); err != nil {
		return nil, err
	}
	resp, err := l.client.GetInclusionProof(ctx, &trillian.GetInclusionProofRequest{
		LogId: l.tree, LeafIndex: int64(index), TreeSize: int64(treeSize),
	})
	if err != nil {
		return nil, fmt.Errorf("trillianlog: couldn't get the inclusion proof of %d in %d: %w", index, treeSize, err)
	}
	if resp.Proof == nil {
		return nil, fmt.Errorf("trillianlog: Trillian has no inclusion proof of %d in %d", index, treeSize)
	}
	return toHashes(resp.Proof.Hashes)
}

// ConsistencyProof implements tlog.Backend: Trillian's proof, once its
// signer has integrated the tree of size newSize. The proof from size 0,
// or between equal sizes, is empty.
func (l *Log) ConsistencyProof(ctx context.Context, oldSize, newSize uint64) ([]tlog.Hash, error) {
	if oldSize > newSize {
		return nil, fmt.Errorf("%w: old size %d is above new size %d", tlog.ErrInvalidArgument, oldSize, newSize)
	}
	if size := l.size(); newSize > size {
		return nil, fmt.Errorf("%w: tree size %d, log size %d", tlog.ErrOutOfRange, newSize, size)
	}
	if oldSize == 0 || oldSize == newSize {
		return []tlog.Hash{}, nil
	}
	if _, err := l.waitVerified(ctx, newSize); err != nil {
		return nil, err
	}
	return l.consistency(ctx, oldSize, newSize)
}
