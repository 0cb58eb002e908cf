package trillianlog

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/google/trillian"
	"github.com/kbs-dev/kbs/tlog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// run is the integrator: while appends wait, it polls Trillian for a new
// root, with backoff, and signs it.
func (l *Log) run() {
	defer close(l.done)
	delay, lastProgress := l.minPoll, time.Now()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		l.mu.RLock()
		waiting := len(l.waiters) > 0 && l.failed == nil
		l.mu.RUnlock()
		if !waiting {
			select {
			case <-l.kick:
				delay, lastProgress = l.minPoll, time.Now()
			case <-l.stop:
				return
			}
		}
		timer.Reset(delay)
		select {
		case <-timer.C:
		case <-l.stop:
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		go func() {
			select {
			case <-l.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		progressed, err := l.sync(ctx)
		cancel()
		switch {
		case errors.Is(err, tlog.ErrConflict):
			l.log.Error("Trillian contradicts the last signed checkpoint; appends stopped", "tree", l.tree, "error", err)
			l.fail(err)
		case err != nil:
			l.log.Warn("couldn't sync with Trillian", "tree", l.tree, "error", err)
			delay = min(2*delay, l.maxPoll)
		case progressed:
			delay, lastProgress = l.minPoll, time.Now()
		case time.Since(lastProgress) > time.Second:
			// The signer is slow or stopped: back off.
			delay = min(2*delay, l.maxPoll)
		}
	}
}

// fail stops appends for good and fails those waiting.
func (l *Log) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failed == nil {
		l.failed = err
	}
	for id, w := range l.waiters {
		if !w.found {
			w.err = err
			close(w.done)
		}
		delete(l.waiters, id)
	}
}

// Append implements tlog.Backend. It returns when the entry is in a
// checkpoint the Log signed and persisted, or when ctx is done; in the
// latter case the entry may still be logged later.
func (l *Log) Append(ctx context.Context, entry []byte) (uint64, tlog.SignedCheckpoint, error) {
	if err := tlog.CheckEntry(entry); err != nil {
		return 0, tlog.SignedCheckpoint{}, err
	}
	var id leafID
	rand.Read(id[:])
	w := &waiter{leaf: tlog.Hash(hasher.HashLeaf(entry)), done: make(chan struct{})}
	l.mu.Lock()
	switch {
	case l.closed:
		l.mu.Unlock()
		return 0, tlog.SignedCheckpoint{}, ErrClosed
	case l.failed != nil:
		l.mu.Unlock()
		return 0, tlog.SignedCheckpoint{}, fmt.Errorf("trillianlog: appends stopped: %w", l.failed)
	}
	l.waiters[id] = w
	l.mu.Unlock()

	if err := l.queue(ctx, entry, id); err != nil {
		l.forget(id)
		return 0, tlog.SignedCheckpoint{}, err
	}
	select {
	case l.kick <- struct{}{}:
	default:
	}
	select {
	case <-w.done:
		l.forget(id)
		return w.index, w.cp, w.err
	case <-ctx.Done():
		l.forget(id)
		return 0, tlog.SignedCheckpoint{}, fmt.Errorf("trillianlog: entry queued but not yet integrated: %w", ctx.Err())
	}
}

func (l *Log) forget(id leafID) {
	l.mu.Lock()
	delete(l.waiters, id)
	l.mu.Unlock()
}

// queue sends the entry to Trillian, retrying while it is unavailable. The
// identity hash makes retries idempotent.
func (l *Log) queue(ctx context.Context, entry []byte, id leafID) error {
	req := &trillian.QueueLeafRequest{LogId: l.tree, Leaf: &trillian.LogLeaf{LeafValue: entry, LeafIdentityHash: id[:]}}
	delay := 10 * time.Millisecond
	for {
		resp, err := l.client.QueueLeaf(ctx, req)
		if err == nil {
			s := resp.GetQueuedLeaf().GetStatus()
			if c := codes.Code(s.GetCode()); c != codes.OK && c != codes.AlreadyExists {
				return fmt.Errorf("trillianlog: Trillian refused the entry: %s: %s", c, s.GetMessage())
			}
			return nil
		}
		switch status.Code(err) {
		case codes.Unavailable, codes.ResourceExhausted, codes.Aborted:
		default:
			return fmt.Errorf("trillianlog: couldn't queue the entry: %w", err)
		}
		select {
		case <-time.After(delay):
			delay = min(2*delay, time.Second)
		case <-ctx.Done():
			return fmt.Errorf("trillianlog: couldn't queue the entry: %w (last error: %v)", ctx.Err(), err)
		case <-l.stop:
			return ErrClosed
		}
	}
}
