package kbs

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestFIFOSlots checks the release admission: at most n holders, a canceled
// wait returns the context's error and takes no slot, a waiter gets in when
// a slot is given back, and a second release call gives nothing back twice.
func TestFIFOSlots(t *testing.T) {
	s := newFIFOSlots(2)
	ctx := context.Background()
	r1, err := s.acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}

	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if _, err := s.acquire(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("acquire with both slots taken = %v, want %v", err, context.DeadlineExceeded)
	}
	if len(s) != 2 {
		t.Fatalf("%d slots taken after a canceled wait, want 2", len(s))
	}

	got := make(chan func())
	go func() {
		r, err := s.acquire(ctx)
		if err != nil {
			t.Error(err)
		}
		got <- r
	}()
	select {
	case <-got:
		t.Fatal("a third holder got in")
	case <-time.After(20 * time.Millisecond):
	}
	r1()
	r1() // no effect: the slot was given back already
	r3 := <-got
	if len(s) != 2 {
		t.Fatalf("%d slots taken, want 2 (r2 and the waiter)", len(s))
	}
	r2()
	r3()
	if len(s) != 0 {
		t.Fatalf("%d slots taken after all releases, want 0", len(s))
	}
}
