package trillianlog

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/trillian"
	"github.com/kbs-dev/kbs/tlog"
	"google.golang.org/grpc/codes"
)

// This file is the write path on a PREORDERED_LOG tree, where the Log
// orders the entries: the writer goroutine takes the pending appends as a
// batch, writes it at the next indices with one AddSequencedLeaves call,
// and, once Trillian has committed it, signs the tree it computed from the
// entries (commit). The verifier (verify.go) checks Trillian's roots
// against that tree as its signer integrates the leaves.
//
// One batch is written at a time: Trillian's PostgreSQL storage locks its
// leaf tables for each AddSequencedLeaves transaction until it commits, so
// concurrent batches would queue there, each paying the fixed cost of a
// transaction for fewer entries (measured: a second batch in flight lost
// 10-30% of the throughput).
//
// The writer never sends an entry to a second index unless Trillian said
// that it did not store it at the first: so an identity hash is stored at
// most once, and the leaves the Log stored never sit above a gap. When some
// of a batch's indices are taken (leaves from a previous process that
// crashed before acknowledging them, or from another writer), the writer
// waits until Trillian has integrated the batch's indices, reads the
// leaves back and signs over them (sync, which settles the entries it
// finds), and sends the rest again.

const (
	// maxBatchLeaves and maxBatchBytes bound a batch: Trillian's gRPC
	// server takes messages up to 4 MiB by default.
	maxBatchLeaves = 1024
	maxBatchBytes  = 3 << 20

	// maxAhead is how many leaves the Log signs beyond the last root of
	// Trillian it verified before it waits for Trillian's signer.
	maxAhead = 1 << 16
)

// batch is a write of consecutive entries at indices start, start+1, ….
type batch struct {
	start   uint64
	ws      []*waiter
	results []*trillian.QueuedLogLeaf
	err     error // Trillian refused the batch (nothing stored), or ErrClosed
}

func (b *batch) end() uint64 { return b.start + uint64(len(b.ws)) }

// write is the writer goroutine.
func (l *Log) write() {
	defer l.wg.Done()
	last, rpc := 0, time.Duration(0) // the last batch's size and write time
	for {
		l.gather(last, rpc)
		b, behind := l.takeBatch()
		switch {
		case b != nil:
			t0 := time.Now()
			l.send(b)
			last, rpc = len(b.ws), time.Since(t0)
			l.finish(b)
		case behind:
			l.log.Warn("Trillian's signer is behind; appends wait for it", "tree", l.tree, "leaves", maxAhead)
			l.waitVerified(context.Background(), l.size()-maxAhead+1)
		default:
			select {
			case <-l.kick:
			case <-l.stop:
				return
			}
		}
	}
}

// gather gives the callers whose appends the last batch (of last entries,
// written in rpc) just settled a moment to append again before the next
// batch is taken: a batch costs a database transaction of several
// milliseconds of CPU however few entries it holds, and callers that
// append in a loop come back together. It waits until as many appends are
// pending as the last batch held, at most an eighth of the last write's
// time (and 5 ms), and not at all after a batch of fewer than 4.
func (l *Log) gather(last int, rpc time.Duration) {
	if last < 4 {
		return
	}
	deadline := time.Now().Add(min(rpc/8, 5*time.Millisecond))
	for {
		l.mu.RLock()
		n := len(l.pending)
		l.mu.RUnlock()
		left := time.Until(deadline)
		if n >= last || left <= 0 {
			return
		}
		t := time.NewTimer(left)
		select {
		case <-l.kick:
		case <-t.C:
		case <-l.stop:
			t.Stop()
			return
		}
		t.Stop()
	}
}

// takeBatch takes the oldest pending appends as a batch at the signed
// size, marked as sent. It returns nil if nothing waits or the Log
// stopped, and reports whether the Log is too far ahead of Trillian's
// signer to take more.
func (l *Log) takeBatch() (*batch, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		if l.closed || l.failed != nil || len(l.pending) == 0 {
			return nil, false
		}
		if l.st.cp.Size-l.ver.root.Size >= maxAhead {
			return nil, true
		}
		b := &batch{start: l.st.cp.Size}
		n, size := 0, 0
		for _, w := range l.pending {
			if len(b.ws) == maxBatchLeaves || (len(b.ws) > 0 && size+len(w.entry) > maxBatchBytes) {
				break
			}
			n++
			if w.settled { // found by a catch-up while waiting to be sent again
				continue
			}
			w.sent = true
			l.rename(w, b.end())
			b.ws = append(b.ws, w)
			size += len(w.entry) + 64
		}
		l.pending = l.pending[n:]
		if len(l.pending) == 0 {
			l.pending = nil // let the backing array go
		}
		if len(b.ws) > 0 {
			return b, false
		}
	}
}

// rename gives w, about to be sent to index, a fresh identity hash that
// starts with the index. Identity hashes are keys of indexes in Trillian's
// database (in PostgreSQL, LeafData's primary key and an index of
// SequencedLeafData): increasing keys are inserted at the right edge of
// those B-trees, where random ones would touch (and write in full to the
// WAL, after each checkpoint) a different page per entry. w has not been
// sent before, or was not stored where it was sent. l.mu is held.
func (l *Log) rename(w *waiter, index uint64) {
	delete(l.waiters, w.id)
	w.id = newLeafID(index)
	l.waiters[w.id] = w
}

// send writes b.
func (l *Log) send(b *batch) {
	req := &trillian.AddSequencedLeavesRequest{LogId: l.tree, Leaves: make([]*trillian.LogLeaf, len(b.ws))}
	for i, w := range b.ws {
		req.Leaves[i] = &trillian.LogLeaf{LeafValue: w.entry, LeafIdentityHash: w.id[:], LeafIndex: int64(b.start) + int64(i)}
	}
	b.results, b.err = l.addSequenced(req)
}

// finish settles what it can of the written batch b.
func (l *Log) finish(b *batch) {
	switch {
	case errors.Is(b.err, ErrClosed):
		return // Close settles the batch
	case b.err != nil:
		l.mu.Lock()
		for _, w := range b.ws {
			l.settle(w, 0, tlog.SignedCheckpoint{}, b.err)
		}
		l.mu.Unlock()
		return
	}
	var again []*waiter
	for i, r := range b.results {
		if !stored(r) {
			again = append(again, b.ws[i])
		}
	}
	if len(again) == 0 {
		if err := l.commit(b.start, b.ws); err != nil {
			l.log.Error("couldn't sign the entries Trillian committed; appends stopped", "tree", l.tree, "error", err)
			l.fail(err)
		}
		return
	}

	// Some indices were taken. The entries that were not stored go back to
	// the front of the queue; those that were are settled when the
	// catch-up reads them back.
	l.log.Warn("Trillian tree holds leaves this Log did not write; reading them back", "tree", l.tree, "index", b.start, "taken", len(again))
	l.mu.Lock()
	for _, w := range again {
		w.sent = false
	}
	l.pending = append(again, l.pending...)
	l.mu.Unlock()
	ctx, cancel := l.runCtx(time.Hour)
	defer cancel()
	// Every index of the batch now holds a leaf, so Trillian's signer can
	// integrate them all.
	if err := l.awaitSize(ctx, b.end(), false); err != nil {
		if !errors.Is(err, ErrClosed) {
			l.log.Warn("couldn't catch up with Trillian", "tree", l.tree, "error", err)
		}
		return
	}
	if _, err := l.sync(ctx); errors.Is(err, tlog.ErrConflict) {
		l.log.Error("Trillian contradicts the last signed checkpoint; appends stopped", "tree", l.tree, "error", err)
		l.fail(err)
	} else if err != nil {
		l.log.Warn("couldn't catch up with Trillian", "tree", l.tree, "error", err)
	}
}

// addSequenced sends req until Trillian answers for every leaf. An attempt
// that fails without an answer is repeated as it was: leaves it stored come
// back as already stored. It returns an error if Trillian refused the
// request (nothing stored), or ErrClosed if the Log closed first (the
// batch may have been stored).
func (l *Log) addSequenced(req *trillian.AddSequencedLeavesRequest) ([]*trillian.QueuedLogLeaf, error) {
	delay := 10 * time.Millisecond
	for {
		// The attempt is not cut short by Close, which waits for it.
		ctx, cancel := context.WithTimeout(context.Background(), attemptTimeout)
		resp, err := l.client.AddSequencedLeaves(ctx, req)
		cancel()
		switch {
		case err == nil && len(resp.GetResults()) != len(req.Leaves):
			err = fmt.Errorf("trillianlog: Trillian answered %d results for %d leaves", len(resp.GetResults()), len(req.Leaves))
		case err == nil:
			unknown := -1
			for i, r := range resp.Results {
				if !stored(r) && !taken(r) {
					unknown = i
				}
			}
			if unknown < 0 {
				return resp.Results, nil
			}
			s := resp.Results[unknown].GetStatus()
			err = fmt.Errorf("trillianlog: Trillian answered %s: %s for leaf %d", codes.Code(s.GetCode()), s.GetMessage(), req.Leaves[unknown].LeafIndex)
		case refused(err):
			return nil, fmt.Errorf("trillianlog: Trillian refused the entries: %w", err)
		}
		l.log.Warn("couldn't write entries to Trillian; retrying", "tree", l.tree, "index", req.Leaves[0].LeafIndex, "error", err)
		select {
		case <-time.After(delay):
			delay = min(2*delay, time.Second)
		case <-l.stop:
			return nil, ErrClosed
		}
	}
}

// stored reports whether AddSequencedLeaves stored the leaf at its index:
// now (OK), or by an earlier attempt of the same request (its identity hash
// is taken, which Trillian's SQL storage reports as FailedPrecondition
// "conflicting LeafIdentityHash"; the API documents AlreadyExists).
func stored(r *trillian.QueuedLogLeaf) bool {
	s := r.GetStatus()
	switch codes.Code(s.GetCode()) {
	case codes.OK, codes.AlreadyExists:
		return true
	case codes.FailedPrecondition:
		return strings.Contains(s.GetMessage(), "LeafIdentityHash")
	}
	return false
}

// taken reports whether another leaf holds the leaf's index, so that it was
// not stored ("conflicting LeafIndex").
func taken(r *trillian.QueuedLogLeaf) bool {
	s := r.GetStatus()
	return codes.Code(s.GetCode()) == codes.FailedPrecondition && !stored(r)
}

// commit extends the signed tree by batch, which Trillian has stored at
// indices start, start+1, …: it signs and persists the new checkpoint and
// settles the batch. An error leaves the batch unsettled.
func (l *Log) commit(start uint64, batch []*waiter) error {
	l.mu.RLock()
	old, oldRng := l.st.cp, l.rng
	l.mu.RUnlock()
	if old.Size != start {
		return fmt.Errorf("trillianlog: internal error: batch written at %d, signed size %d", start, old.Size)
	}
	g := grow(oldRng, true)
	leaves := make([]tlog.Hash, len(batch))
	for i, w := range batch {
		leaves[i] = w.leaf
		if err := g.add(w.leaf); err != nil {
			return err
		}
	}
	h, err := rangeRoot(g.rng)
	if err != nil {
		return err
	}
	root := tlog.Root{Size: old.Size + uint64(len(batch)), Hash: h}
	var cproof []tlog.Hash
	if old.Size > 0 {
		var ok bool
		if cproof, ok = consistencyFromNodes(g.nodes, old.Root, root); !ok {
			return fmt.Errorf("trillianlog: internal error: no consistency proof %d → %d from the replayed nodes", old.Size, root.Size)
		}
	}
	cp, err := l.signer.Sign(&old, root, cproof)
	if err != nil {
		return err
	}
	st := state{TreeID: l.tree, Checkpoint: cp.Note, Range: g.rng.Hashes(), cp: cp}
	if err := writeState(l.path, st); err != nil {
		return err
	}
	l.tiles.addLeaves(start, leaves)

	l.mu.Lock()
	l.st, l.rng = st, g.rng
	l.ver.ahead = append(l.ver.ahead, leaves...)
	l.keepProofs(root, g.nodes)
	for i, w := range batch {
		l.settle(w, start+uint64(i), cp, nil)
	}
	l.mu.Unlock()
	select {
	case l.verKick <- struct{}{}:
	default:
	}
	return nil
}
