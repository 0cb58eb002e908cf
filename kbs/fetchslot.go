package kbs

import (
	"context"
	"sync"

	"github.com/kbs-dev/kbs/kbs/attest/fetch"
)

// acquireYielding is acquire for a release, whose evidence verification
// may fetch from a CPU vendor (online mode: an uncached VCEK, TDX
// collateral, a CRL). The context it returns lets kbs/attest/fetch give
// the slot back while the fetch waits and runs, and take one again, at the
// back of the queue, after: a slow vendor stalls only the releases that
// need it. release gives back the slot the release holds when it is
// called, if any; calling it again does nothing.
func (s fifoSlots) acquireYielding(ctx context.Context) (_ context.Context, release func(), err error) {
	first, err := s.acquire(ctx)
	if err != nil {
		return ctx, nil, err
	}
	var (
		mu   sync.Mutex
		held = first
	)
	release = func() {
		mu.Lock()
		r := held
		held = nil
		mu.Unlock()
		if r != nil {
			r()
		}
	}
	yield := func() func(context.Context) error {
		release()
		return func(ctx context.Context) error {
			r, err := s.acquire(ctx)
			if err != nil {
				return err
			}
			mu.Lock()
			held = r
			mu.Unlock()
			return nil
		}
	}
	return fetch.WithYield(ctx, yield), release, nil
}
