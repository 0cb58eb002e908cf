package kbs

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/fetch"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
)

// stallingVerifier is the broker's verifier with a vendor fetch in front,
// as in online mode for a chip whose VCEK is not cached: while stall is
// open, a verification waits in a fetch through gate.
type stallingVerifier struct {
	attest.Verifier
	gate    *fetch.Gate
	on      atomic.Bool
	n       atomic.Int64
	entered chan struct{}
	stall   chan struct{}
}

func (v *stallingVerifier) Verify(ctx context.Context, ev attest.Evidence, rd [attest.ReportDataSize]byte) (*attest.Claims, error) {
	if v.on.Load() {
		url := fmt.Sprintf("https://kds.example/vcek/%d", v.n.Add(1))
		err := v.gate.Do(ctx, url, func(ctx context.Context) error {
			v.entered <- struct{}{}
			select {
			case <-v.stall:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		if err != nil {
			return nil, err
		}
	}
	return v.Verifier.Verify(ctx, ev, rd)
}

// TestVendorFetchGivesSlotBack: releases whose verification waits on a
// slow vendor fetch, more of them than there are release slots, do not
// hold the slots: another worker's release goes through meanwhile, and
// the stalled ones complete once the vendor answers.
func TestVendorFetchGivesSlotBack(t *testing.T) {
	e := newEnv(t)
	material := bytes.Repeat([]byte{9}, 32)
	e.mustOK2(e.upload("demo/fetch", 1, material))
	sv := &stallingVerifier{Verifier: e.b.cfg.Verifier, gate: fetch.NewGate(fetch.Limits{InFlight: 64}),
		entered: make(chan struct{}, 64), stall: make(chan struct{})}
	e.b.cfg.Verifier = sv
	w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)

	stalled := cap(releaseSlots) + 2
	reqs := make([]*api.ReleaseRequest, stalled)
	for i := range reqs {
		reqs[i] = e.releaseReq(w, e.challenge(), "demo/fetch")
	}
	sv.on.Store(true)
	results := make(chan int, stalled)
	for _, r := range reqs {
		go func() {
			st, _, _ := e.release(r)
			results <- st
		}()
	}
	for i := range stalled {
		select {
		case <-sv.entered:
		case <-time.After(30 * time.Second):
			t.Fatalf("%d of %d releases reached the vendor fetch: the others wait for a release slot", i, stalled)
		}
	}
	sv.on.Store(false)
	done := make(chan int, 1)
	go func() {
		st, _, _ := e.release(e.releaseReq(w, e.challenge(), "demo/fetch"))
		done <- st
	}()
	select {
	case st := <-done:
		if st != 200 {
			t.Fatalf("release during the stalled fetches: %d", st)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a release waited behind releases stalled in a vendor fetch")
	}
	close(sv.stall)
	for range stalled {
		if st := <-results; st != 200 {
			t.Errorf("a release that waited for the vendor: %d, want 200", st)
		}
	}
	if len(releaseSlots) != 0 {
		t.Errorf("%d release slots still held", len(releaseSlots))
	}
}
