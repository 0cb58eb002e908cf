package trillianlog

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"

	"github.com/kbs-dev/kbs/tlog"
)

// This file is what every Append goes through, on either kind of tree: the
// waiter that the write path settles, and how the Log stops.

// leafID is an identity hash: 8 bytes of a number that grows with each
// entry (see Log.rename) and 24 random bytes.
type leafID [32]byte

func newLeafID(n uint64) leafID {
	var id leafID
	binary.BigEndian.PutUint64(id[:8], n)
	rand.Read(id[8:])
	return id
}

// Append implements tlog.Backend. It returns when the entry is in a
// checkpoint the Log signed and persisted, or when it is certain that the
// entry will not be logged, or (ErrUnsettled) when the Log stopped while
// the entry was in Trillian's hands. ctx abandons the entry only while it
// has not been sent to Trillian; see the package documentation.
func (l *Log) Append(ctx context.Context, entry []byte) (uint64, tlog.SignedCheckpoint, error) {
	if err := tlog.CheckEntry(entry); err != nil {
		return 0, tlog.SignedCheckpoint{}, err
	}
	if len(entry) == 0 {
		return 0, tlog.SignedCheckpoint{}, fmt.Errorf("%w: Trillian does not store empty entries", tlog.ErrInvalidArgument)
	}
	if err := ctx.Err(); err != nil {
		return 0, tlog.SignedCheckpoint{}, fmt.Errorf("trillianlog: entry not logged: %w", err)
	}
	w := &waiter{id: newLeafID(l.ids.Add(1)), entry: entry, leaf: tlog.Hash(hasher.HashLeaf(entry)), done: make(chan struct{})}
	l.mu.Lock()
	switch {
	case l.closed:
		l.mu.Unlock()
		return 0, tlog.SignedCheckpoint{}, ErrClosed
	case l.failed != nil:
		l.mu.Unlock()
		return 0, tlog.SignedCheckpoint{}, fmt.Errorf("trillianlog: appends stopped: %w", l.failed)
	}
	l.waiters[w.id] = w
	if l.preordered {
		l.pending = append(l.pending, w)
	} else {
		w.sent = true
	}
	l.mu.Unlock()
	if !l.preordered {
		l.queue(w)
	}
	select {
	case l.kick <- struct{}{}:
	default:
	}
	select {
	case <-w.done:
	case <-ctx.Done():
		l.mu.Lock()
		if !w.sent && !w.settled {
			l.unqueue(w)
			l.mu.Unlock()
			return 0, tlog.SignedCheckpoint{}, fmt.Errorf("trillianlog: entry not logged: %w", ctx.Err())
		}
		l.mu.Unlock()
		<-w.done
	}
	return w.index, w.cp, w.err
}

// settle completes w. l.mu is held.
func (l *Log) settle(w *waiter, index uint64, cp tlog.SignedCheckpoint, err error) {
	if w.settled {
		return
	}
	w.settled = true
	w.index, w.cp, w.err = index, cp, err
	delete(l.waiters, w.id)
	close(w.done)
}

// unqueue drops w, not yet sent, from the pending appends. l.mu is held.
func (l *Log) unqueue(w *waiter) {
	for i, p := range l.pending {
		if p == w {
			l.pending = append(l.pending[:i], l.pending[i+1:]...)
			break
		}
	}
	w.settled = true
	delete(l.waiters, w.id)
}

// stopWaiters fails every append in flight because of cause: with cause
// alone if its entry was not sent, else wrapped with ErrUnsettled. l.mu is
// held.
func (l *Log) stopWaiters(cause error) {
	for _, w := range l.waiters {
		if w.sent {
			l.settle(w, 0, tlog.SignedCheckpoint{}, fmt.Errorf("%w: %w", ErrUnsettled, cause))
		} else {
			l.settle(w, 0, tlog.SignedCheckpoint{}, cause)
		}
	}
	l.pending = nil
	l.advanced()
}

// advanced wakes the reads waiting for l.ver to change. l.mu is held.
func (l *Log) advanced() {
	close(l.verChanged)
	l.verChanged = make(chan struct{})
}

// fail stops appends for good and fails those in flight.
func (l *Log) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failed == nil {
		l.failed = err
	}
	l.stopWaiters(fmt.Errorf("trillianlog: appends stopped: %w", err))
}
