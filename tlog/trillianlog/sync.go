package trillianlog

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/trillian"
	"github.com/google/trillian/types"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/transparency-dev/merkle/compact"
	"google.golang.org/grpc"
)

// latestRoot returns Trillian's latest root.
func (l *Log) latestRoot(ctx context.Context) (tlog.Root, error) {
	resp, err := l.client.GetLatestSignedLogRoot(ctx, &trillian.GetLatestSignedLogRootRequest{LogId: l.tree})
	if err != nil {
		return tlog.Root{}, fmt.Errorf("trillianlog: couldn't get the root of tree %d: %w", l.tree, err)
	}
	return parseRoot(resp.GetSignedLogRoot())
}

func parseRoot(slr *trillian.SignedLogRoot) (tlog.Root, error) {
	var r types.LogRootV1
	if slr == nil {
		return tlog.Root{}, errors.New("trillianlog: Trillian sent no root")
	}
	if err := r.UnmarshalBinary(slr.LogRoot); err != nil {
		return tlog.Root{}, fmt.Errorf("trillianlog: couldn't parse Trillian's root: %w", err)
	}
	if len(r.RootHash) != len(tlog.Hash{}) || r.TreeSize > 1<<62 {
		return tlog.Root{}, fmt.Errorf("trillianlog: Trillian's root has a bad hash or size %d", r.TreeSize)
	}
	return tlog.Root{Size: r.TreeSize, Hash: tlog.Hash(r.RootHash)}, nil
}

// sync signs Trillian's latest root if it is ahead of the last signed
// checkpoint, and resolves the waiters whose leaves it holds. Only the
// integrator goroutine (or open, before it starts) calls it.
func (l *Log) sync(ctx context.Context) (bool, error) {
	root, err := l.latestRoot(ctx)
	if err != nil {
		return false, err
	}
	old := l.st.cp
	switch {
	case root.Size < old.Size:
		return false, fmt.Errorf("%w: Trillian tree %d has %d leaves, fewer than the %d of the last signed checkpoint (rolled back?)", tlog.ErrConflict, l.tree, root.Size, old.Size)
	case root.Size == old.Size:
		if root.Hash != old.Hash {
			return false, fmt.Errorf("%w: Trillian tree %d has another root at the signed size %d", tlog.ErrConflict, l.tree, old.Size)
		}
		return false, nil
	}

	// Replay the new leaves into a copy of the compact range, keeping every
	// node it computes: with the nodes of the old range, they are all the
	// nodes of inclusion proofs of the new leaves in the new tree.
	rng, err := rangeFactory.NewRange(0, old.Size, append([][]byte(nil), l.rng.Hashes()...))
	if err != nil {
		return false, err
	}
	// A long catch-up (a start after many foreign appends) has no waiters
	// and keeps no nodes.
	var nodes map[compact.NodeID][]byte
	var visit compact.VisitFn
	if root.Size-old.Size <= maxProofBatch {
		nodes = map[compact.NodeID][]byte{}
		for i, id := range compact.RangeNodes(0, old.Size, nil) {
			nodes[id] = l.rng.Hashes()[i]
		}
		visit = func(id compact.NodeID, h []byte) { nodes[id] = h }
	}
	type found struct {
		w     *waiter
		index uint64
	}
	var hits []found // in index order: a leaf integrated twice counts at its first index
	hit := map[*waiter]bool{}
	newLeaves := make([]tlog.Hash, 0, root.Size-old.Size)
	for next := old.Size; next < root.Size; {
		leaves, err := l.leaves(ctx, next, min(root.Size-next, leavesPerCall))
		if err != nil {
			return false, err
		}
		l.mu.RLock()
		for _, lf := range leaves {
			lh := hasher.HashLeaf(lf.LeafValue)
			if len(lf.LeafIdentityHash) == len(leafID{}) {
				// The identity hash names the waiter; only the entry's
				// own bytes complete it (Trillian could pair the
				// identity with other bytes).
				if w := l.waiters[leafID(lf.LeafIdentityHash)]; w != nil && !w.found && !hit[w] && tlog.Hash(lh) == w.leaf {
					hit[w] = true
					hits = append(hits, found{w, next})
				} else if w != nil && tlog.Hash(lh) != w.leaf {
					l.log.Warn("Trillian leaf carries an append's identity but other bytes; ignored", "tree", l.tree, "index", next)
				}
			}
			if err := rng.Append(lh, visit); err != nil {
				l.mu.RUnlock()
				return false, err
			}
			newLeaves = append(newLeaves, tlog.Hash(lh))
			next++
		}
		l.mu.RUnlock()
	}
	got, err := rangeRoot(rng)
	if err != nil {
		return false, err
	}
	if got != root.Hash {
		return false, fmt.Errorf("%w: Trillian tree %d's root at size %d is not the root of its leaves extending the signed size %d", tlog.ErrConflict, l.tree, root.Size, old.Size)
	}

	var cproof []tlog.Hash
	if old.Size > 0 {
		cproof, err = l.consistency(ctx, old.Size, root.Size)
		if err != nil {
			return false, err
		}
	}
	cp, err := l.signer.Sign(&old, root, cproof)
	if err != nil {
		return false, err
	}
	st := state{TreeID: l.tree, Checkpoint: cp.Note, Range: rng.Hashes(), cp: cp}
	if err := writeState(l.path, st); err != nil {
		return false, err
	}
	l.tiles.addLeaves(old.Size, newLeaves)
	proofs := recentProofs{size: root.Size, byIndex: make(map[uint64][]tlog.Hash, len(hits))}
	for _, h := range hits {
		if nodes == nil {
			break
		}
		if p, ok := proveFromNodes(nodes, h.index, root); ok {
			proofs.byIndex[h.index] = p
		}
	}

	l.mu.Lock()
	l.st, l.rng = st, rng
	l.proofs = append(l.proofs[max(0, len(l.proofs)+1-keptProofSets):], proofs)
	for _, h := range hits {
		h.w.index, h.w.found, h.w.cp = h.index, true, cp
	}
	l.mu.Unlock()
	for _, h := range hits {
		close(h.w.done)
	}
	return true, nil
}

// leaves fetches count leaves from start, all of which are in Trillian's
// tree, checking their indices.
func (l *Log) leaves(ctx context.Context, start, count uint64) ([]*trillian.LogLeaf, error) {
	resp, err := l.client.GetLeavesByRange(ctx, &trillian.GetLeavesByRangeRequest{
		LogId: l.tree, StartIndex: int64(start), Count: int64(count),
	}, grpc.MaxCallRecvMsgSize(maxRecvSize))
	if err != nil {
		return nil, fmt.Errorf("trillianlog: couldn't get leaves [%d, %d): %w", start, start+count, err)
	}
	if len(resp.Leaves) == 0 || uint64(len(resp.Leaves)) > count {
		return nil, fmt.Errorf("trillianlog: Trillian returned %d leaves for [%d, %d)", len(resp.Leaves), start, start+count)
	}
	for i, lf := range resp.Leaves {
		if lf.LeafIndex != int64(start)+int64(i) {
			return nil, fmt.Errorf("trillianlog: Trillian returned leaf %d at position %d of [%d, %d)", lf.LeafIndex, i, start, start+count)
		}
	}
	return resp.Leaves, nil
}

func (l *Log) consistency(ctx context.Context, oldSize, newSize uint64) ([]tlog.Hash, error) {
	resp, err := l.client.GetConsistencyProof(ctx, &trillian.GetConsistencyProofRequest{
		LogId: l.tree, FirstTreeSize: int64(oldSize), SecondTreeSize: int64(newSize),
	})
	if err != nil {
		return nil, fmt.Errorf("trillianlog: couldn't get the consistency proof %d → %d: %w", oldSize, newSize, err)
	}
	if resp.Proof == nil {
		return nil, fmt.Errorf("trillianlog: Trillian has no consistency proof %d → %d", oldSize, newSize)
	}
	return toHashes(resp.Proof.Hashes)
}

func toHashes(in [][]byte) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(in))
	for i, h := range in {
		if len(h) != len(tlog.Hash{}) {
			return nil, fmt.Errorf("trillianlog: Trillian sent a %d-byte hash", len(h))
		}
		out[i] = tlog.Hash(h)
	}
	return out, nil
}

var rangeFactory = &compact.RangeFactory{Hash: hasher.HashChildren}

func rangeRoot(r *compact.Range) (tlog.Hash, error) {
	if r.End() == 0 {
		return tlog.EmptyRoot, nil
	}
	h, err := r.GetRootHash(nil)
	if err != nil {
		return tlog.Hash{}, err
	}
	return tlog.Hash(h), nil
}
