package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestSortedSpool sorts records by key, stable, through runs on disk that
// are merged more than once (tiny runs, few of them per merge), and
// checks the order against an in-memory stable sort.
func TestSortedSpool(t *testing.T) {
	defer func(b, r int) { sortRunBytes, maxRuns = b, r }(sortRunBytes, maxRuns)
	sortRunBytes, maxRuns = 4<<10, 4
	var s sortedSpool
	defer s.close()
	type rec struct{ key, val string }
	var want []rec
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		r := rec{fmt.Sprintf("key/%03d", rng.IntN(300)), fmt.Sprintf("row %d\n", i)}
		want = append(want, r)
		s.add([]byte(r.key), []byte(r.val))
	}
	if len(s.runs) == 0 || s.merges < 2 {
		t.Fatalf("%d runs on disk after %d merges, want runs merged more than once", len(s.runs), s.merges)
	}
	slices.SortStableFunc(want, func(a, b rec) int { return bytes.Compare([]byte(a.key), []byte(b.key)) })
	var got []string
	if err := s.each(func(b []byte) error {
		got = append(got, string(b))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d records back, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i].val {
			t.Fatalf("record %d = %q, want %q (key %s)", i, got[i], want[i].val, want[i].key)
		}
	}
}

// TestSpool reads records back in order, empty and large ones included.
func TestSpool(t *testing.T) {
	sp, err := newSpool()
	if err != nil {
		t.Fatal(err)
	}
	defer sp.close()
	recs := [][]byte{{}, []byte("a"), bytes.Repeat([]byte("b"), 1<<20), []byte("c")}
	for _, r := range recs {
		sp.add(r)
	}
	for pass := range 2 { // a spool can be read again
		i := 0
		if err := sp.each(func(b []byte) error {
			if !bytes.Equal(b, recs[i]) {
				t.Fatalf("pass %d: record %d is %d bytes, want %d", pass, i, len(b), len(recs[i]))
			}
			i++
			return nil
		}); err != nil || i != len(recs) {
			t.Fatalf("pass %d: %d records, %v", pass, i, err)
		}
	}
}
