package tlog_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/witnesstest"
)

// threeWitnesses returns a 2-of-3 witnessing of e's log over fake witnesses.
func threeWitnesses(t *testing.T, e *witnessEnv, onRound func(*tlog.CosignResult, error)) (*tlog.Witnessing, *tlog.Quorum, []*witnesstest.Fake) {
	t.Helper()
	g, q, fakes := fakeGroup(t, e)
	w, err := tlog.NewWitnessing(tlog.WitnessingConfig{Group: g, Log: e.log, Refresh: time.Hour, Retry: 20 * time.Millisecond, OnRound: onRound})
	if err != nil {
		t.Fatal(err)
	}
	return w, q, fakes
}

func TestWitnessingCheck(t *testing.T) {
	e := newWitnessEnv(t, "x")
	ctx := t.Context()
	w, q, fakes := threeWitnesses(t, e, nil)
	e.append(t, 3)
	if err := w.Check(ctx); err != nil {
		t.Fatalf("Check = %v", err)
	}
	c, ok := w.Cosigned()
	if !ok || c.Checkpoint.Size != 3 || len(c.Cosignatures) != 3 {
		t.Fatalf("Cosigned = %+v, %v", c, ok)
	}
	if _, err := q.Verify(c.Note, e.origin, e.logV); err != nil {
		t.Errorf("the cosigned note does not verify: %v", err)
	}
	// Two witnesses down: not proven, not halted.
	fakes[0].SetFault(witnesstest.Down)
	fakes[1].SetFault(witnesstest.Down)
	e.append(t, 1)
	err := w.Check(ctx)
	var qe *tlog.QuorumError
	if !errors.As(err, &qe) || w.Halted() != nil {
		t.Fatalf("Check with 2 of 3 down = %v, halted %v", err, w.Halted())
	}
	if c, _ := w.Cosigned(); c.Checkpoint.Size != 3 {
		t.Errorf("Cosigned advanced to %d without a quorum", c.Checkpoint.Size)
	}
	st := w.Status()
	if len(st) != 3 || !errors.Is(st[0].Err, tlog.ErrWitnessUnavailable) || st[2].Err != nil || st[2].CosignedSize != 4 || !st[2].CosignedAt.Equal(fixedTime) {
		t.Errorf("Status = %+v", st)
	}
	// One witness has seen a larger tree: halted, even though the other
	// two make a quorum.
	fakes[0].SetFault(nil)
	fakes[1].SetFault(nil)
	fakes[1].SetSize(e.origin, 1000)
	err = w.Check(ctx)
	var be *tlog.BehindError
	if !errors.As(err, &be) || be.Size != 4 || len(be.Witnesses) != 1 || !errors.Is(be.Witnesses[0], tlog.ErrWitnessAhead) {
		t.Fatalf("Check with b ahead = %v", err)
	}
	if !strings.Contains(err.Error(), `witness "b"`) || !strings.Contains(err.Error(), "restore") {
		t.Errorf("BehindError text %q", err)
	}
	if h := w.Halted(); h == nil || h.Error() != err.Error() {
		t.Errorf("Halted = %v", h)
	}
	// Halted stays halted.
	fakes[1].SetSize(e.origin, 4)
	w.Check(ctx)
	if w.Halted() == nil {
		t.Error("the halt was lifted by a later round")
	}
	if _, err := w.WaitCosigned(ctx, 5); !errors.As(err, &be) {
		t.Errorf("WaitCosigned on a halted witnessing = %v", err)
	}
}

func TestWitnessingRun(t *testing.T) {
	e := newWitnessEnv(t, "x")
	var rounds atomic.Int64
	w, _, fakes := threeWitnesses(t, e, func(*tlog.CosignResult, error) { rounds.Add(1) })
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	// Each new checkpoint gets cosigned after Notify.
	for i := range 5 {
		cp := e.append(t, 2)
		w.Notify()
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := w.WaitCosigned(wctx, cp.Size)
		wcancel()
		if err != nil || c.Checkpoint.Size < cp.Size {
			t.Fatalf("round %d: WaitCosigned(%d) = %+v, %v", i, cp.Size, c.Checkpoint, err)
		}
	}
	// A round without quorum is retried until the witnesses are back.
	fakes[0].SetFault(witnesstest.Down)
	fakes[1].SetFault(witnesstest.Down)
	cp := e.append(t, 1)
	w.Notify()
	before := rounds.Load()
	for deadline := time.Now().Add(10 * time.Second); rounds.Load() < before+3; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Run made %d rounds in 10s without a quorum, want retries", rounds.Load()-before)
		}
	}
	fakes[0].SetFault(nil)
	fakes[1].SetFault(nil)
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	if _, err := w.WaitCosigned(wctx, cp.Size); err != nil {
		t.Fatalf("WaitCosigned after the witnesses came back = %v", err)
	}
	wcancel()
	// WaitCosigned gives up with its context.
	short, scancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer scancel()
	if _, err := w.WaitCosigned(short, 1<<40); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitCosigned(never) = %v", err)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v, want context.Canceled", err)
	}
}

func TestWitnessingNoWitnesses(t *testing.T) {
	e := newWitnessEnv(t, "x")
	q, _ := tlog.NewQuorum(0)
	g, _ := tlog.NewWitnessGroup(q, nil, 0)
	w, err := tlog.NewWitnessing(tlog.WitnessingConfig{Group: g, Log: e.log})
	if err != nil {
		t.Fatal(err)
	}
	cp := e.append(t, 2)
	if err := w.Check(t.Context()); err != nil {
		t.Fatal(err)
	}
	if c, ok := w.Cosigned(); !ok || string(c.Note) != string(cp.Note) {
		t.Errorf("Cosigned with no witnesses = %+v, %v; want the log's own note", c, ok)
	}
}
