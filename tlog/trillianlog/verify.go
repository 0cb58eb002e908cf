package trillianlog

import (
	"context"
	"fmt"
	"time"

	"github.com/kbs-dev/kbs/tlog"
	"github.com/transparency-dev/merkle/proof"
)

// This file checks, on a pre-ordered tree, Trillian's roots against the
// tree the Log signed: the verifier goroutine polls Trillian while its
// signer has not integrated everything the Log signed, and reads that
// reach past the last verified root wait for it (waitVerified).

// verify is the verifier goroutine. While Trillian's tree is behind the
// signed one it polls Trillian (see poll): every PollInterval while a read
// waits for it, else every MaxPollInterval (appends do not wait for it, and
// each poll is a database transaction). After a second without progress it
// also checks that Trillian's signer is not stuck for want of a leaf.
func (l *Log) verify() {
	l.poll(func() (bool, bool) {
		l.mu.RLock()
		defer l.mu.RUnlock()
		return l.ver.root.Size < l.st.cp.Size && l.failed == nil, l.readers > 0
	}, l.verKick, l.readKick, func(ctx context.Context, stuck time.Duration) (bool, error) {
		progressed, err := l.checkRoot(ctx)
		if err == nil && !progressed && stuck > time.Second {
			l.mu.RLock()
			v, signed := l.ver.root, l.st.cp.Size
			l.mu.RUnlock()
			err = l.checkNextStored(ctx, v, signed)
		}
		return progressed, err
	})
}

// checkRoot gets Trillian's latest root and checks it against the Log's
// tree: a root within the signed tree must be the root the Log computes
// for that size from the leaves it wrote; a root beyond it (leaves the Log
// did not write, which the writer reads back when it meets them) must
// come with a consistency proof from the signed root. It reports whether
// the verified root advanced.
func (l *Log) checkRoot(ctx context.Context) (bool, error) {
	root, err := l.latestRoot(ctx)
	if err != nil {
		return false, err
	}
	l.mu.RLock()
	v, signed, signedRng := l.ver, l.st.cp, l.rng
	l.mu.RUnlock()
	var next verified
	switch {
	case root.Size < v.root.Size:
		return false, fmt.Errorf("%w: Trillian tree %d has %d leaves, fewer than the %d it had (rolled back?)", tlog.ErrConflict, l.tree, root.Size, v.root.Size)
	case root.Size == v.root.Size:
		if root.Hash != v.root.Hash {
			return false, fmt.Errorf("%w: Trillian tree %d has another root at size %d", tlog.ErrConflict, l.tree, root.Size)
		}
		return false, nil
	case root.Size <= signed.Size:
		rng := copyRange(v.rng)
		for _, h := range v.ahead[:root.Size-v.root.Size] {
			if err := rng.Append(h[:], nil); err != nil {
				return false, err
			}
		}
		got, err := rangeRoot(rng)
		if err != nil {
			return false, err
		}
		if got != root.Hash {
			return false, fmt.Errorf("%w: Trillian tree %d's root at size %d is not the root of the entries written to it", tlog.ErrConflict, l.tree, root.Size)
		}
		next = verified{root: root, rng: rng}
	default:
		if signed.Size > 0 {
			p, err := l.consistency(ctx, signed.Size, root.Size)
			if err != nil {
				return false, err
			}
			if err := proof.VerifyConsistency(hasher, signed.Size, root.Size, hashesOf(p), signed.Hash[:], root.Hash[:]); err != nil {
				return false, fmt.Errorf("%w: Trillian tree %d at size %d does not extend the signed size %d: %v", tlog.ErrConflict, l.tree, root.Size, signed.Size, err)
			}
		}
		next = verified{root: signed.Root, rng: signedRng}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ver.gen != v.gen || l.ver.root != v.root {
		return false, nil // a catch-up replaced the state meanwhile
	}
	next.ahead = l.ver.ahead[next.root.Size-v.root.Size:]
	next.gen = v.gen
	l.ver = next
	l.advanced()
	return true, nil
}

// waitVerified returns the latest verified root of Trillian's tree once
// it covers size (at most the signed size), waiting for Trillian's signer
// if needed.
func (l *Log) waitVerified(ctx context.Context, size uint64) (tlog.Root, error) {
	l.mu.Lock()
	l.readers++
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.readers--
		l.mu.Unlock()
	}()
	for {
		l.mu.RLock()
		root, changed, failed, closed := l.ver.root, l.verChanged, l.failed, l.closed
		l.mu.RUnlock()
		switch {
		case root.Size >= size:
			return root, nil
		case failed != nil:
			return tlog.Root{}, fmt.Errorf("trillianlog: Trillian's tree cannot be read: %w", failed)
		case closed:
			return tlog.Root{}, ErrClosed
		}
		select {
		case l.readKick <- struct{}{}:
		default:
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return tlog.Root{}, fmt.Errorf("trillianlog: waiting for Trillian's signer to integrate %d leaves (it has %d): %w", size, root.Size, ctx.Err())
		case <-l.stop:
			return tlog.Root{}, ErrClosed
		}
	}
}

func hashesOf(p []tlog.Hash) [][]byte {
	out := make([][]byte, len(p))
	for i := range p {
		out[i] = p[i][:]
	}
	return out
}
