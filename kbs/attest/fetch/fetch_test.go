package fetch

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// TestGateBudget: at most InFlight fetches at once; the next waits, and a
// wait ends with the caller's context.
func TestGateBudget(t *testing.T) {
	g := NewGate(Limits{InFlight: 2})
	release := make(chan struct{})
	var running atomic.Int32
	started := make(chan struct{}, 3)
	errs := make(chan error, 3)
	for _, u := range []string{"a", "b", "c"} {
		go func() {
			errs <- g.Do(context.Background(), u, func(context.Context) error {
				running.Add(1)
				started <- struct{}{}
				<-release
				running.Add(-1)
				return nil
			})
		}()
	}
	<-started
	<-started
	select {
	case <-started:
		t.Fatal("a third fetch ran with InFlight 2")
	case <-time.After(50 * time.Millisecond):
	}
	short, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := g.Do(short, "d", func(context.Context) error { return nil }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Do with the budget spent and a short context: %v", err)
	}
	close(release)
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// TestGateTimeoutAndNegativeCache: a fetch gets Timeout; a failure is
// remembered for NegativeTTL (the URL fails at once, others are fetched),
// then fetched again; a failure caused by the caller's context is not
// remembered.
func TestGateTimeoutAndNegativeCache(t *testing.T) {
	now := time.Unix(1e9, 0)
	g := NewGate(Limits{Timeout: 20 * time.Millisecond, NegativeTTL: time.Minute, Now: func() time.Time { return now }})
	calls := 0
	slow := func(ctx context.Context) error {
		calls++
		<-ctx.Done()
		return ctx.Err()
	}
	err := g.Do(context.Background(), "u", slow)
	if !errors.Is(err, context.DeadlineExceeded) || calls != 1 {
		t.Fatalf("slow fetch: %v after %d calls", err, calls)
	}
	var re *RememberedError
	if err := g.Do(context.Background(), "u", slow); !errors.As(err, &re) || calls != 1 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the same URL again: %v after %d calls, want the remembered failure without a fetch", err, calls)
	}
	if err := g.Do(context.Background(), "v", func(context.Context) error { calls++; return nil }); err != nil || calls != 2 {
		t.Fatalf("another URL: %v after %d calls", err, calls)
	}
	now = now.Add(time.Minute)
	if err := g.Do(context.Background(), "u", func(context.Context) error { calls++; return nil }); err != nil || calls != 3 {
		t.Fatalf("after NegativeTTL: %v after %d calls, want a fetch", err, calls)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	g.Do(ctx, "w", func(ctx context.Context) error { return ctx.Err() })
	if err := g.Do(context.Background(), "w", func(context.Context) error { return nil }); err != nil {
		t.Fatalf("a failure of the caller's own context was remembered: %v", err)
	}
}

// TestGateYield: the caller's place is given back before the fetch waits
// and taken again after it, even when the fetch fails; without a Yield
// nothing is called.
func TestGateYield(t *testing.T) {
	g := NewGate(Limits{})
	var events []string
	ctx := WithYield(context.Background(), func() func(context.Context) error {
		events = append(events, "yield")
		return func(context.Context) error {
			events = append(events, "resume")
			return nil
		}
	})
	g.Do(ctx, "a", func(context.Context) error { events = append(events, "fetch"); return nil })
	g.Do(ctx, "b", func(context.Context) error { events = append(events, "fetch"); return errors.New("404") })
	g.Do(ctx, "b", func(context.Context) error { events = append(events, "fetch"); return nil }) // remembered: no yield
	want := []string{"yield", "fetch", "resume", "yield", "fetch", "resume"}
	if len(events) != len(want) {
		t.Fatalf("events %v, want %v", events, want)
	}
	for i := range want {
		if events[i] != want[i] {
			t.Fatalf("events %v, want %v", events, want)
		}
	}
	// A resume that fails (the caller's context ended while it waited for
	// its place) is Do's error.
	stop := errors.New("context ended")
	ctx = WithYield(context.Background(), func() func(context.Context) error {
		return func(context.Context) error { return stop }
	})
	if err := g.Do(ctx, "c", func(context.Context) error { return nil }); !errors.Is(err, stop) {
		t.Fatalf("Do with a failing resume: %v", err)
	}
	var nilGate *Gate
	if err := nilGate.Do(context.Background(), "d", func(context.Context) error { return nil }); err != nil {
		t.Fatal(err)
	}
}

// TestGateRememberedBounded: the negative cache stays bounded.
func TestGateRememberedBounded(t *testing.T) {
	g := NewGate(Limits{})
	for i := range maxRemembered + 10 {
		g.Do(context.Background(), string(rune(i+0x100)), func(context.Context) error { return errors.New("no") })
	}
	if n := len(g.failed); n > maxRemembered {
		t.Fatalf("%d failures remembered, want at most %d", n, maxRemembered)
	}
}
