package trillianlog

import (
	"context"
	"fmt"
	"time"

	"github.com/google/trillian"
	"github.com/kbs-dev/kbs/tlog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// This file is the write path on a LOG tree, where Trillian orders the
// entries: each Append queues its entry (queue), and the integrator polls
// Trillian until its signer has integrated the entries, then signs the new
// root (sync).

// integrate is the integrator: while appends wait, it polls Trillian for a
// new root and signs it (see poll).
func (l *Log) integrate() {
	l.poll(func() (bool, bool) {
		l.mu.RLock()
		defer l.mu.RUnlock()
		return len(l.waiters) > 0 && l.failed == nil, true
	}, l.kick, nil, func(ctx context.Context, _ time.Duration) (bool, error) {
		return l.sync(ctx)
	})
}

// queue sends w's entry to Trillian with QueueLeaf, retrying until Trillian
// has it (or had it already: the identity hash makes retries idempotent) or
// refuses it, or the Log closes. A refusal settles w; otherwise the
// integrator does.
func (l *Log) queue(w *waiter) {
	req := &trillian.QueueLeafRequest{LogId: l.tree, Leaf: &trillian.LogLeaf{LeafValue: w.entry, LeafIdentityHash: w.id[:]}}
	delay := 10 * time.Millisecond
	for {
		ctx, cancel := l.runCtx(attemptTimeout)
		resp, err := l.client.QueueLeaf(ctx, req)
		cancel()
		if err == nil {
			s := resp.GetQueuedLeaf().GetStatus()
			if c := codes.Code(s.GetCode()); c != codes.OK && c != codes.AlreadyExists {
				l.refuse(w, fmt.Errorf("trillianlog: Trillian refused the entry: %s: %s", c, s.GetMessage()))
			}
			return
		}
		if refused(err) {
			l.refuse(w, fmt.Errorf("trillianlog: Trillian refused the entry: %w", err))
			return
		}
		l.log.Warn("couldn't queue an entry; retrying", "tree", l.tree, "error", err)
		select {
		case <-time.After(delay):
			delay = min(2*delay, time.Second)
		case <-l.stop:
			return // Close settles w
		}
	}
}

// refuse settles w, which Trillian did not store.
func (l *Log) refuse(w *waiter, err error) {
	l.mu.Lock()
	l.settle(w, 0, tlog.SignedCheckpoint{}, err)
	l.mu.Unlock()
}

// refused reports whether a write RPC's error means that Trillian rejected
// the request before storing anything. Other errors (unavailable, timed
// out, internal, a lost answer) leave it open whether the write happened,
// and the write is retried as it was.
func refused(err error) bool {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.NotFound, codes.PermissionDenied,
		codes.Unauthenticated, codes.Unimplemented, codes.OutOfRange:
		return true
	}
	return false
}
