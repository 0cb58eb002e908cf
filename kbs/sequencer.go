package kbs

import (
	"context"
	"errors"
	"fmt"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/tlog"
)

// Decide and append as one step.
//
// Every decision the broker logs is made against the state as of its own
// position in the log. The sequencer (Broker.seq) is what makes that so:
//
//   - A release holds it shared (Broker.shared) from reading the state
//     (active manifest, the keys' live versions) until its entry is
//     durable. Releases run side by side and their appends share group
//     commits.
//   - A change (upload, deletion, manifest activation, the identity entry)
//     holds it exclusively (Broker.exclusive): no release is between its
//     decision and its append, and its entry is applied to the state
//     (changeTx.log) before any later decision is made.
//
// So a release is logged either before a deletion or manifest version
// that contradicts it, or not at all; and a change never races another.
// Appends go to the log from here only.
//
// The state is advanced by the entries this broker appends. Entries it did
// not append (another writer of a shared Trillian tree, or a leaf queued
// by a crashed broker and integrated late) are found by counting: with no
// append in flight, the log's size must be the state's size plus the
// releases appended since. Each exclusive step first catches up on any
// difference, reading the entries verified against the signed tree and
// applying them like its own.

// appendLog appends entry and tracks the log's health.
func (b *Broker) appendLog(ctx context.Context, entry []byte) (uint64, tlog.SignedCheckpoint, error) {
	idx, cp, err := b.cfg.Log.Append(ctx, entry)
	if err != nil {
		if ctx.Err() == nil {
			b.appendFailing.Store(true)
		}
		return 0, cp, err
	}
	b.appendFailing.Store(false)
	b.wit.notify()
	return idx, cp, nil
}

// shared runs f, which decides from the state and appends through
// appendShared, while no change runs.
func (b *Broker) shared(f func() error) error {
	b.seq.RLock()
	defer b.seq.RUnlock()
	if err := b.haltedError(); err != nil {
		return err
	}
	if err := b.fencedError(); err != nil {
		return err
	}
	if err := b.wit.gate(); err != nil {
		return err
	}
	return f()
}

// appendShared appends an entry that changes no state (a release), inside
// shared.
func (b *Broker) appendShared(ctx context.Context, entry []byte) (uint64, tlog.SignedCheckpoint, error) {
	idx, cp, err := b.appendLog(ctx, entry)
	if err != nil {
		// Not counted. If the entry is in the log after all (its outcome
		// was unknown), the next catch-up finds it and, as a release,
		// it changes nothing.
		return 0, cp, logUnavailable(err)
	}
	if n := b.appended.Add(1); n%flushEvery == 0 {
		b.requestFlush()
	}
	return idx, cp, nil
}

// flushEvery is how many releases may be appended before the state index
// is written again, which bounds what a start after a crash replays.
const flushEvery = 4096

// changeTx is one change, inside exclusive.
type changeTx struct {
	b   *Broker
	ctx context.Context
}

// logged is an entry a change appended: its index, exact bytes, and the
// checkpoint Append returned (for its receipt).
type logged struct {
	index uint64
	entry []byte
	cp    tlog.SignedCheckpoint
}

// exclusive runs f alone: no release and no other change runs meanwhile,
// and the state reflects every entry of the log when f starts.
func (b *Broker) exclusive(ctx context.Context, f func(tx *changeTx) error) error {
	b.seq.Lock()
	defer b.seq.Unlock()
	if err := b.haltedError(); err != nil {
		return err
	}
	if err := b.wit.gate(); err != nil {
		return err
	}
	if _, err := b.catchUp(ctx); err != nil {
		return err
	}
	if err := b.fencedError(); err != nil {
		return err
	}
	return f(&changeTx{b: b, ctx: ctx})
}

// log appends e, durably, and applies it to the state, so that the next
// decision sees it. If the append fails, the entry is not in the log and
// undo (when not nil) takes back what the change staged. If its outcome
// is unknown, the broker stops deciding (nothing is undone: the next start
// settles the change against the log). If entries another writer appended
// took effect first and e no longer applies, e is logged without effect,
// undo runs, and the answer is a conflict.
func (tx *changeTx) log(e *tlog.Entry, undo func()) (logged, error) {
	b := tx.b
	raw, err := tlog.EncodeEntry(e)
	if err != nil {
		return logged{}, api.Errorf(api.CodeBadRequest, "%s cannot be logged: %v", e.Type, err)
	}
	idx, cp, err := b.appendLog(tx.ctx, raw)
	if err != nil {
		if errors.Is(err, tlog.ErrUnknownOutcome) {
			b.halt(err)
		} else if undo != nil {
			undo()
		}
		return logged{}, logUnavailable(err)
	}
	// Entries before ours that this broker did not append.
	if idx != b.st.size {
		if err := b.replay(tx.ctx, cp, idx); err != nil {
			b.halt(err)
			return logged{}, logUnavailable(err)
		}
	}
	b.st.mu.Lock()
	ok, why := b.st.apply(idx, e)
	b.st.mu.Unlock()
	if ok {
		if err := b.applied(idx, e, raw); err != nil {
			b.halt(err)
			return logged{}, err
		}
	}
	if err := b.replay(tx.ctx, cp, cp.Size); err != nil {
		b.halt(err)
		return logged{}, logUnavailable(err)
	}
	b.requestFlush()
	if !ok {
		if undo != nil {
			undo()
		}
		return logged{}, api.Errorf(api.CodeConflict, "the log changed while this request was logged (another writer's entries came first); logged at %d without effect: %s", idx, why)
	}
	return logged{index: idx, entry: raw, cp: cp}, nil
}

// applied follows an entry the state applied with what hangs off it: the
// active manifest. (While restore replays the log, the chain is checked
// as a whole afterwards, by loadManifests.)
func (b *Broker) applied(idx uint64, e *tlog.Entry, raw []byte) error {
	if e.Type != tlog.TypeManifest || !b.restored {
		return nil
	}
	if err := b.manifestApplied(chainLink{Version: e.Manifest.Version, Hash: e.Manifest.Hash, Index: idx}, raw); err != nil {
		return fmt.Errorf("kbs: manifest version %d at log index %d: %w", e.Manifest.Version, idx, err)
	}
	return nil
}

// catchUp brings the state to the log's latest checkpoint: with no append
// in flight (exclusive), the log holds the state's entries, the releases
// appended since, and anything another writer appended, which is read,
// verified against the signed tree, and applied.
func (b *Broker) catchUp(ctx context.Context) (tlog.SignedCheckpoint, error) {
	cp, err := b.cfg.Log.Checkpoint(ctx)
	if err != nil {
		return cp, logUnavailable(err)
	}
	want := b.st.size + b.appended.Swap(0)
	switch {
	case cp.Size < want:
		err := fmt.Errorf("kbs: the log has %d entries, fewer than the %d this broker appended", cp.Size, want)
		b.halt(err)
		return cp, logUnavailable(err)
	case cp.Size > want:
		b.log.Warn("the log holds entries this broker did not append; applying them", "from", b.st.size, "to", cp.Size, "foreign", cp.Size-want)
		if err := b.replay(ctx, cp, cp.Size); err != nil {
			b.halt(err)
			return cp, logUnavailable(err)
		}
	}
	b.st.mu.Lock()
	b.st.size, b.st.root = cp.Size, cp.Hash
	b.st.mu.Unlock()
	return cp, nil
}

// replay applies the log's entries from the state's size up to end, read
// and verified against cp.
func (b *Broker) replay(ctx context.Context, cp tlog.SignedCheckpoint, end uint64) error {
	if b.st.size >= end {
		if end == cp.Size {
			b.st.mu.Lock()
			b.st.root = cp.Hash
			b.st.mu.Unlock()
		}
		return nil
	}
	from := b.st.size
	err := tlog.ReadVerified(ctx, b.cfg.Log, cp, from, func(i uint64, raw []byte) error {
		if i >= end {
			return errStopRead
		}
		b.st.mu.Lock()
		e, ok, why := b.st.replayEntry(i, raw)
		b.st.mu.Unlock()
		if why != "" {
			b.log.Warn("log entry without effect", "index", i, "reason", string(why))
		}
		if ok {
			return b.applied(i, e, raw)
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStopRead) {
		return fmt.Errorf("kbs: couldn't replay the log from entry %d: %w", from, err)
	}
	if end == cp.Size {
		b.st.mu.Lock()
		b.st.root = cp.Hash
		b.st.mu.Unlock()
	}
	return nil
}

// halt stops every decision after err, which leaves the broker's state
// unknown (an append of unknown outcome, a store that could not be written
// after its change was logged): the next start settles it against the log.
func (b *Broker) halt(err error) {
	if b.halted.CompareAndSwap(nil, &err) {
		b.log.Error("the broker stops deciding until it is restarted: its state must be settled against the log", "error", err)
		close(b.haltCh)
	}
}

// Halted is closed when the broker stops deciding because its state may
// no longer be its log's (an append of unknown outcome, a store that
// could not be written after its change was logged). Every request that
// would use or change the state then gets 503 until the broker is
// restarted, and the next start settles the state against the log: kbsd
// exits when it is closed, so that its supervisor restarts it.
func (b *Broker) Halted() <-chan struct{} { return b.haltCh }

// HaltCause returns why the broker halted (nil if it has not).
func (b *Broker) HaltCause() error {
	if p := b.halted.Load(); p != nil {
		return *p
	}
	return nil
}

func (b *Broker) haltedError() error {
	if p := b.halted.Load(); p != nil {
		return &statusError{err: api.Errorf(api.CodeLogUnavailable, "the broker stopped after a log or store failure and must be restarted; nothing was done"), cause: *p}
	}
	return nil
}

// requestFlush asks the flusher to write the state index.
func (b *Broker) requestFlush() {
	select {
	case b.flushReq <- struct{}{}:
	default:
	}
}

// flushLoop writes the state index when asked, until quit is closed.
func (b *Broker) flushLoop() {
	defer close(b.flushDone)
	for {
		select {
		case <-b.quit:
			return
		case <-b.flushReq:
			if err := b.flush(context.Background()); err != nil {
				b.log.Error("couldn't write the state index; the next start replays more of the log", "error", err)
			}
		}
	}
}

// flush writes the state index as of the log's latest checkpoint.
func (b *Broker) flush(ctx context.Context) error {
	b.flushMu.Lock()
	defer b.flushMu.Unlock()
	b.seq.Lock()
	if b.halted.Load() != nil {
		b.seq.Unlock()
		return nil // the state is not known to be the log's
	}
	if _, err := b.catchUp(ctx); err != nil {
		b.seq.Unlock()
		return err
	}
	snap := b.st.snapshot(b.index.needsAll())
	b.seq.Unlock()
	return b.index.write(snap)
}
