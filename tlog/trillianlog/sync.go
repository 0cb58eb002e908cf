package trillianlog

import (
	"context"
	"errors"
	"fmt"
	"time"

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
	if len(r.RootHash) != len(tlog.Hash{}) || r.TreeSize > tlog.MaxTreeSize {
		return tlog.Root{}, fmt.Errorf("trillianlog: Trillian's root has a bad hash or size %d", r.TreeSize)
	}
	return tlog.Root{Size: r.TreeSize, Hash: tlog.Hash(r.RootHash)}, nil
}

// sync signs Trillian's latest root if it is ahead of the last signed
// checkpoint, after fetching the new leaves and checking that they extend
// the signed tree to that root, and settles the appends whose leaves it
// finds. It returns whether it signed a new checkpoint. Only the goroutine
// that appends (or open, before it starts) calls it.
func (l *Log) sync(ctx context.Context) (bool, error) {
	root, err := l.latestRoot(ctx)
	if err != nil {
		return false, err
	}
	l.mu.RLock()
	old, oldRng := l.st.cp, l.rng
	l.mu.RUnlock()
	switch {
	case root.Size < old.Size:
		return false, fmt.Errorf("%w: Trillian tree %d has %d leaves, fewer than the %d of the last signed checkpoint (rolled back?)", tlog.ErrConflict, l.tree, root.Size, old.Size)
	case root.Size == old.Size:
		if root.Hash != old.Hash {
			return false, fmt.Errorf("%w: Trillian tree %d has another root at the signed size %d", tlog.ErrConflict, l.tree, old.Size)
		}
		return false, nil
	}

	// A long catch-up (a start after many foreign appends) has no waiters
	// and keeps no nodes.
	g := grow(oldRng, root.Size-old.Size <= maxProofBatch)
	type found struct {
		w     *waiter
		index uint64
		match bool // the leaf's bytes are the entry's
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
			lh := tlog.Hash(hasher.HashLeaf(lf.LeafValue))
			if len(lf.LeafIdentityHash) == len(leafID{}) {
				// The identity hash names the waiter; only the entry's
				// own bytes complete it (Trillian could pair the
				// identity with other bytes).
				if w := l.waiters[leafID(lf.LeafIdentityHash)]; w != nil && !hit[w] {
					hit[w] = true
					hits = append(hits, found{w, next, lh == w.leaf})
				}
			}
			if err := g.add(lh); err != nil {
				l.mu.RUnlock()
				return false, err
			}
			newLeaves = append(newLeaves, lh)
			next++
		}
		l.mu.RUnlock()
	}
	got, err := rangeRoot(g.rng)
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
	st := state{TreeID: l.tree, Checkpoint: cp.Note, Range: g.rng.Hashes(), cp: cp}
	if err := writeState(l.path, st); err != nil {
		return false, err
	}
	l.tiles.addLeaves(old.Size, newLeaves)

	l.mu.Lock()
	l.st, l.rng = st, g.rng
	l.ver = verified{root: root, rng: g.rng, gen: l.ver.gen + 1}
	l.advanced()
	l.keepProofs(root, g.nodes)
	for _, h := range hits {
		if h.match {
			l.settle(h.w, h.index, cp, nil)
		} else {
			l.log.Warn("Trillian leaf carries an append's identity but other bytes", "tree", l.tree, "index", h.index)
			l.settle(h.w, 0, tlog.SignedCheckpoint{}, fmt.Errorf("%w: Trillian logged other bytes at index %d under this entry's identity hash", tlog.ErrConflict, h.index))
		}
	}
	l.mu.Unlock()
	return true, nil
}

// growth is a compact range being extended leaf by leaf, and, if kept, the
// nodes of the range it started from and every node hashed since: all the
// nodes of the inclusion proofs of the new leaves, and of the consistency
// proof from the old tree, in the new tree.
type growth struct {
	rng   *compact.Range
	nodes map[compact.NodeID][]byte // nil if not kept
	visit compact.VisitFn
}

func grow(from *compact.Range, keep bool) *growth {
	g := &growth{rng: copyRange(from)}
	if keep {
		g.nodes = map[compact.NodeID][]byte{}
		for i, id := range compact.RangeNodes(from.Begin(), from.End(), nil) {
			g.nodes[id] = from.Hashes()[i]
		}
		g.visit = func(id compact.NodeID, h []byte) { g.nodes[id] = h }
	}
	return g
}

func (g *growth) add(leaf tlog.Hash) error {
	return g.rng.Append(leaf[:], g.visit)
}

// awaitSize polls Trillian until its root reaches size. With check, a tree
// that cannot reach it because the leaf after its root is missing (a
// database that lost leaves it had committed) is an error wrapping
// tlog.ErrConflict.
func (l *Log) awaitSize(ctx context.Context, size uint64, check bool) error {
	delay := l.minPoll
	var root tlog.Root
	var err error
	for {
		root, err = l.latestRoot(ctx)
		if err == nil && root.Size >= size {
			return nil
		}
		if err == nil && check {
			if err := l.checkNextStored(ctx, root, size); errors.Is(err, tlog.ErrConflict) {
				return err
			}
		}
		select {
		case <-time.After(delay):
			delay = min(2*delay, l.maxPoll)
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("it has integrated %d leaves (is trillian_log_signer running?)", root.Size)
			}
			return fmt.Errorf("trillianlog: waiting for Trillian tree %d to integrate the %d leaves of the last signed checkpoint: %w (%v)", l.tree, size, ctx.Err(), err)
		case <-l.stop:
			return ErrClosed
		}
	}
}

// checkNextStored returns an error wrapping tlog.ErrConflict if Trillian's
// tree, integrated up to root, holds no leaf at index root.Size although
// the Log signed a tree of size signed > root.Size: Trillian's signer could
// then never integrate what the Log signed (a database that lost leaves it
// had committed). Only pre-ordered trees serve the leaves past their
// integrated tree that this reads.
func (l *Log) checkNextStored(ctx context.Context, root tlog.Root, signed uint64) error {
	if root.Size == 0 || root.Size >= signed {
		return nil // Trillian serves no leaves of an empty tree
	}
	resp, err := l.client.GetLeavesByRange(ctx, &trillian.GetLeavesByRangeRequest{
		LogId: l.tree, StartIndex: int64(root.Size) - 1, Count: 2,
	}, grpc.MaxCallRecvMsgSize(maxRecvSize))
	if err != nil {
		return fmt.Errorf("trillianlog: couldn't get leaves [%d, %d): %w", root.Size-1, root.Size+1, err)
	}
	if len(resp.Leaves) < 2 {
		return fmt.Errorf("%w: Trillian tree %d holds %d leaves and none at index %d, below the %d the Log signed (rolled back?)", tlog.ErrConflict, l.tree, root.Size, root.Size, signed)
	}
	return nil
}

// poll is the loop of the Log's goroutines that wait for Trillian's
// signer. While busy reports work, it calls step (given how long it has
// gone without progress) every PollInterval if the work is urgent, else
// every MaxPollInterval; after a second without progress, or after an
// error, the interval doubles up to MaxPollInterval. Without work it
// sleeps until idle or hurry wakes it; hurry also cuts a wait short. A
// step that finds Trillian contradicting the signed checkpoints stops the
// Log for good.
func (l *Log) poll(busy func() (work, urgent bool), idle, hurry <-chan struct{}, step func(ctx context.Context, stuck time.Duration) (bool, error)) {
	defer l.wg.Done()
	delay, lastProgress := l.minPoll, time.Now()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		work, urgent := busy()
		if !work {
			select {
			case <-idle:
			case <-hurry:
			case <-l.stop:
				return
			}
			delay, lastProgress = l.minPoll, time.Now()
			continue
		}
		d := delay
		if !urgent {
			d = l.maxPoll
		}
		timer.Reset(d)
		select {
		case <-timer.C:
		case <-hurry:
			if !timer.Stop() {
				<-timer.C
			}
		case <-l.stop:
			return
		}
		ctx, cancel := l.runCtx(time.Minute)
		progressed, err := step(ctx, time.Since(lastProgress))
		cancel()
		switch {
		case errors.Is(err, tlog.ErrConflict):
			l.log.Error("Trillian contradicts the signed checkpoints; appends stopped", "tree", l.tree, "error", err)
			l.fail(err)
		case err != nil:
			l.log.Warn("couldn't check Trillian's tree; retrying", "tree", l.tree, "error", err)
			delay = min(2*delay, l.maxPoll)
		case progressed:
			delay, lastProgress = l.minPoll, time.Now()
		case time.Since(lastProgress) > time.Second:
			// The signer is slow or stopped: back off.
			delay = min(2*delay, l.maxPoll)
		}
	}
}

// runCtx returns a context for work in the Log's goroutines: it ends after
// timeout or when the Log closes.
func (l *Log) runCtx(timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	go func() {
		select {
		case <-l.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
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
