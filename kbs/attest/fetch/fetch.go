// Package fetch bounds the verifiers' fetches from the CPU vendors (AMD's
// KDS for VCEK certificates and CRLs, Intel PCS for TDX collateral), which
// happen in online mode when evidence names a chip, a TCB or a platform
// whose certificates or collateral are not cached yet.
//
// A vendor fetch is slow when the vendor is (go-sev-guest's getter retries
// for up to two minutes), and its URL is chosen by the evidence, which is
// not verified yet when it is fetched. So every fetch goes through a Gate,
// which:
//
//   - runs at most Limits.InFlight fetches at once (the others wait);
//   - gives each one Limits.Timeout;
//   - remembers a failed fetch for Limits.NegativeTTL, during which the
//     same URL fails at once with the remembered error (a flood of
//     evidence naming chips that AMD does not know costs one fetch per
//     chip per NegativeTTL);
//   - gives back, while it waits and fetches, what its caller holds: a
//     caller that holds a scarce place (kbsd's release slots) puts a Yield
//     in the context (WithYield), and the gate calls it before it waits
//     and resumes after, so that a slow vendor stalls only the releases
//     that need it.
//
// The gate trusts nothing it fetches: the verifiers check every byte
// against the vendors' roots, as they do for cached ones.
package fetch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Limits bound a Gate.
type Limits struct {
	// InFlight is the most fetches at once. Optional; default 4.
	InFlight int
	// Timeout bounds one fetch, retries included. Optional; default 30s.
	Timeout time.Duration
	// NegativeTTL is how long a failure is remembered. Optional; default
	// 30s.
	NegativeTTL time.Duration
	// Now is the clock of the negative cache. Optional; default time.Now.
	Now func() time.Time
}

// maxRemembered bounds the negative cache; beyond it, expired failures are
// dropped, and if none has expired the cache is cleared.
const maxRemembered = 4096

// Gate bounds fetches (see the package documentation). It is safe for
// concurrent use; the zero value is not: use NewGate.
type Gate struct {
	lim   Limits
	slots chan struct{}

	mu     sync.Mutex
	failed map[string]failure
}

type failure struct {
	err   error
	until time.Time
}

// NewGate returns a gate with limits lim (zero fields take their
// defaults).
func NewGate(lim Limits) *Gate {
	if lim.InFlight <= 0 {
		lim.InFlight = 4
	}
	if lim.Timeout <= 0 {
		lim.Timeout = 30 * time.Second
	}
	if lim.NegativeTTL <= 0 {
		lim.NegativeTTL = 30 * time.Second
	}
	if lim.Now == nil {
		lim.Now = time.Now
	}
	return &Gate{lim: lim, slots: make(chan struct{}, lim.InFlight), failed: map[string]failure{}}
}

// RememberedError is the error of a fetch that failed recently: Do
// returns it without fetching again until Until.
type RememberedError struct {
	URL   string
	Err   error
	Until time.Time
}

func (e *RememberedError) Error() string {
	return fmt.Sprintf("%s failed recently (%v); not fetched again before %s", e.URL, e.Err, e.Until.UTC().Format(time.RFC3339))
}

func (e *RememberedError) Unwrap() error { return e.Err }

// Do runs f, the fetch of url, within the gate's limits: it fails at once
// if url failed within NegativeTTL; otherwise it yields the caller's place
// (WithYield), waits for a place of its own, runs f with a context bounded
// by Timeout, and resumes the caller's place. An error of f is remembered,
// unless the caller's ctx ended. A nil *Gate runs f as it is.
func (g *Gate) Do(ctx context.Context, url string, f func(ctx context.Context) error) (err error) {
	if g == nil {
		return f(ctx)
	}
	if err := g.remembered(url); err != nil {
		return err
	}
	if y, ok := ctx.Value(yieldKey{}).(Yield); ok {
		resume := y()
		defer func() {
			if rerr := resume(ctx); rerr != nil && err == nil {
				err = rerr
			}
		}()
	}
	select {
	case g.slots <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("waiting to fetch %s: %w", url, ctx.Err())
	}
	defer func() { <-g.slots }()
	// Another caller may have failed on url while this one waited.
	if err := g.remembered(url); err != nil {
		return err
	}
	fctx, cancel := context.WithTimeout(ctx, g.lim.Timeout)
	defer cancel()
	err = f(fctx)
	if err != nil && ctx.Err() == nil {
		if errors.Is(err, context.DeadlineExceeded) || fctx.Err() != nil {
			err = fmt.Errorf("fetching %s took more than %v: %w", url, g.lim.Timeout, err)
		}
		g.remember(url, err)
	}
	return err
}

func (g *Gate) remembered(url string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	f, ok := g.failed[url]
	if !ok {
		return nil
	}
	if !g.lim.Now().Before(f.until) {
		delete(g.failed, url)
		return nil
	}
	return &RememberedError{URL: url, Err: f.err, Until: f.until}
}

func (g *Gate) remember(url string, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.lim.Now()
	if len(g.failed) >= maxRemembered {
		for u, f := range g.failed {
			if !now.Before(f.until) {
				delete(g.failed, u)
			}
		}
		if len(g.failed) >= maxRemembered {
			clear(g.failed)
		}
	}
	g.failed[url] = failure{err: err, until: now.Add(g.lim.NegativeTTL)}
}

// Yield gives back a place its caller holds, and returns the function
// that takes it again (it may wait, within ctx).
type Yield func() (resume func(ctx context.Context) error)

type yieldKey struct{}

// WithYield returns ctx carrying y: a Gate that waits or fetches under
// this context yields first and resumes after.
func WithYield(ctx context.Context, y Yield) context.Context {
	return context.WithValue(ctx, yieldKey{}, y)
}
