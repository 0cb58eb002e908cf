// Package tlogtest is the conformance suite every tlog.Backend passes.
//
// A backend's test runs it in one line:
//
//	func TestConformance(t *testing.T) {
//		tlogtest.Run(t, tlogtest.Harness{Origin: origin, Verifier: v, New: newLog, Reopen: reopen})
//	}
//
// The suite checks what the backend returns against an independent model: a
// Merkle tree built with github.com/transparency-dev/merkle (compact ranges
// and its proof verifier), never with the backend's own code. Checkpoints
// are verified with golang.org/x/mod/sumdb/note.
//
// A new log's checkpoint must be the signed empty tree (size 0, the SHA-256
// of the empty string). An Append's outcome must be definite (tlog.Backend):
// an append whose context ends while it runs either succeeds or leaves no
// entry behind. Errors the suite requires: arguments beyond the latest signed checkpoint
// wrap tlog.ErrOutOfRange; arguments wrong at any size (start > end, a tile
// width outside 1..256, a level outside 0..63, an entry over
// tlog.MaxEntrySize)
// wrap tlog.ErrInvalidArgument.
package tlogtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/kbs-dev/kbs/tlog"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// Harness describes the backend under test.
type Harness struct {
	// Origin is the checkpoint origin the backend signs with.
	Origin string
	// Verifier verifies the backend's checkpoint signatures.
	Verifier note.Verifier
	// New returns a new, empty log. The suite closes it.
	New func(t *testing.T) tlog.Backend
	// Reopen closes b and opens the same log again. Optional: without it
	// the persistence tests are skipped.
	Reopen func(t *testing.T, b tlog.Backend) tlog.Backend
	// Entries is how many entries the sequential tests append (default
	// 600, which spans full and partial tiles at two levels' worth of
	// level-0 tiles). Slow backends may lower it, not below 257.
	Entries int
}

// Run runs the conformance suite.
func Run(t *testing.T, h Harness) {
	if h.Entries == 0 {
		h.Entries = 600
	}
	t.Run("Empty", func(t *testing.T) { testEmpty(t, h) })
	t.Run("Sequential", func(t *testing.T) { testSequential(t, h) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, h) })
	t.Run("BadArguments", func(t *testing.T) { testBadArguments(t, h) })
	t.Run("Persistence", func(t *testing.T) { testPersistence(t, h) })
	t.Run("Close", func(t *testing.T) { testClose(t, h) })
	t.Run("ReadVerified", func(t *testing.T) { testReadVerified(t, h) })
	t.Run("CanceledAppend", func(t *testing.T) { testCanceledAppend(t, h) })
}

// model is an independent RFC 6962 tree over the entries appended so far.
type model struct {
	entries [][]byte
	leaves  [][]byte // leaf hashes
	roots   [][]byte // roots[n] is the root of the first n entries
	rng     *compact.Range
}

var hasher = rfc6962.DefaultHasher

func newModel() *model {
	f := &compact.RangeFactory{Hash: hasher.HashChildren}
	return &model{roots: [][]byte{hasher.EmptyRoot()}, rng: f.NewEmptyRange(0)}
}

func (m *model) add(e []byte) {
	lh := hasher.HashLeaf(e)
	m.entries = append(m.entries, bytes.Clone(e))
	m.leaves = append(m.leaves, lh)
	if err := m.rng.Append(lh, nil); err != nil {
		panic(err)
	}
	r, err := m.rng.GetRootHash(nil)
	if err != nil {
		panic(err)
	}
	m.roots = append(m.roots, r)
}

// mth is the RFC 6962 Merkle Tree Hash of leaves [lo, hi).
func (m *model) mth(lo, hi uint64) []byte {
	if hi-lo == 1 {
		return m.leaves[lo]
	}
	k := uint64(1)
	for k*2 < hi-lo {
		k *= 2
	}
	return hasher.HashChildren(m.mth(lo, lo+k), m.mth(lo+k, hi))
}

// tile returns the C2SP tile (level, n) of width w, straight from the
// spec's definition.
func (m *model) tile(level int, n uint64, w int) []byte {
	span := uint64(1) << (8 * level)
	var out []byte
	for i := uint64(0); i < uint64(w); i++ {
		lo := (n*256 + i) * span
		out = append(out, m.mth(lo, lo+span)...)
	}
	return out
}

func entry(tag string, i int) []byte {
	// Vary the sizes, including large ones, so storage handles both.
	n := 1 + (i*37)%300
	if i%97 == 0 {
		n = tlog.MaxEntrySize
	}
	b := bytes.Repeat([]byte{byte(i)}, n)
	copy(b, fmt.Sprintf("%s-%d", tag, i))
	return b
}

func hashes(p []tlog.Hash) [][]byte {
	out := make([][]byte, len(p))
	for i := range p {
		out[i] = p[i][:]
	}
	return out
}

func open(t *testing.T, h Harness, cp tlog.SignedCheckpoint) tlog.SignedCheckpoint {
	t.Helper()
	got, err := tlog.OpenCheckpoint(cp.Note, h.Origin, h.Verifier)
	if err != nil {
		t.Fatalf("checkpoint note does not verify: %v\n%s", err, cp.Note)
	}
	if got.Origin != cp.Origin || got.Root != cp.Root {
		t.Fatalf("checkpoint fields (%s, %d, %x) differ from its note (%s, %d, %x)", cp.Origin, cp.Size, cp.Hash, got.Origin, got.Size, got.Hash)
	}
	return got
}

func newLog(t *testing.T, h Harness) tlog.Backend {
	t.Helper()
	b := h.New(t)
	t.Cleanup(func() { b.Close() })
	return b
}

func testEmpty(t *testing.T, h Harness) {
	ctx := context.Background()
	b := newLog(t, h)
	cp, err := b.Checkpoint(ctx)
	if err != nil {
		t.Fatalf("Checkpoint of a new log: %v", err)
	}
	open(t, h, cp)
	if cp.Size != 0 || cp.Hash != tlog.EmptyRoot {
		t.Fatalf("new log checkpoint = (%d, %x), want (0, %x)", cp.Size, cp.Hash, tlog.EmptyRoot)
	}
	if got, err := b.Entries(ctx, 0, 0); err != nil || len(got) != 0 {
		t.Errorf("Entries(0, 0) = %d entries, %v; want none, nil", len(got), err)
	}
	if _, err := b.Entries(ctx, 0, 1); !errors.Is(err, tlog.ErrOutOfRange) {
		t.Errorf("Entries(0, 1) on empty log: err = %v, want ErrOutOfRange", err)
	}
	if _, err := b.InclusionProof(ctx, 0, 1); !errors.Is(err, tlog.ErrOutOfRange) {
		t.Errorf("InclusionProof(0, 1) on empty log: err = %v, want ErrOutOfRange", err)
	}
	if _, err := b.HashTile(ctx, 0, 0, 1); !errors.Is(err, tlog.ErrOutOfRange) {
		t.Errorf("HashTile(0, 0, 1) on empty log: err = %v, want ErrOutOfRange", err)
	}
}

// appendAll appends entries one by one and checks every answer.
func appendAll(t *testing.T, h Harness, b tlog.Backend, m *model, n int, tag string) {
	t.Helper()
	ctx := context.Background()
	var last uint64
	for i := 0; i < n; i++ {
		e := entry(tag, len(m.entries))
		idx, cp, err := b.Append(ctx, e)
		if err != nil {
			t.Fatalf("Append #%d: %v", len(m.entries), err)
		}
		if idx != uint64(len(m.entries)) {
			t.Fatalf("Append #%d returned index %d", len(m.entries), idx)
		}
		m.add(e)
		open(t, h, cp)
		if cp.Size <= idx || cp.Size > uint64(len(m.entries)) {
			t.Fatalf("Append #%d returned checkpoint size %d", idx, cp.Size)
		}
		if cp.Size < last {
			t.Fatalf("checkpoint size went from %d to %d", last, cp.Size)
		}
		last = cp.Size
		if !bytes.Equal(cp.Hash[:], m.roots[cp.Size]) {
			t.Fatalf("checkpoint root at size %d = %x, want %x", cp.Size, cp.Hash, m.roots[cp.Size])
		}
		p, err := b.InclusionProof(ctx, idx, cp.Size)
		if err != nil {
			t.Fatalf("InclusionProof(%d, %d): %v", idx, cp.Size, err)
		}
		if err := proof.VerifyInclusion(hasher, idx, cp.Size, hasher.HashLeaf(e), hashes(p), cp.Hash[:]); err != nil {
			t.Fatalf("inclusion proof of the appended entry %d in %d: %v", idx, cp.Size, err)
		}
	}
}

func testSequential(t *testing.T, h Harness) {
	ctx := context.Background()
	b := newLog(t, h)
	m := newModel()
	appendAll(t, h, b, m, h.Entries, "seq")
	size := uint64(len(m.entries))

	cp, err := b.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	open(t, h, cp)
	if cp.Size != size || !bytes.Equal(cp.Hash[:], m.roots[size]) {
		t.Fatalf("Checkpoint = (%d, %x), want (%d, %x)", cp.Size, cp.Hash, size, m.roots[size])
	}

	t.Run("Entries", func(t *testing.T) {
		for _, r := range [][2]uint64{{0, size}, {0, 1}, {5, 5}, {255, 257}, {256, 512}, {size - 1, size}} {
			got, err := b.Entries(ctx, r[0], r[1])
			if err != nil {
				t.Fatalf("Entries(%d, %d): %v", r[0], r[1], err)
			}
			if len(got) != int(r[1]-r[0]) {
				t.Fatalf("Entries(%d, %d) returned %d entries", r[0], r[1], len(got))
			}
			for i, e := range got {
				if !bytes.Equal(e, m.entries[r[0]+uint64(i)]) {
					t.Fatalf("Entries(%d, %d)[%d] differs from the appended entry", r[0], r[1], i)
				}
			}
		}
	})

	sizes := []uint64{1, 2, 3, 7, 8, 255, 256, 257, 511, 512, 513, size - 1, size}
	t.Run("InclusionProofs", func(t *testing.T) {
		for _, n := range sizes {
			for _, i := range []uint64{0, 1, n / 2, n - 2, n - 1, 255, 256} {
				if i >= n {
					continue
				}
				p, err := b.InclusionProof(ctx, i, n)
				if err != nil {
					t.Fatalf("InclusionProof(%d, %d): %v", i, n, err)
				}
				if err := proof.VerifyInclusion(hasher, i, n, m.leaves[i], hashes(p), m.roots[n]); err != nil {
					t.Fatalf("InclusionProof(%d, %d) does not verify: %v", i, n, err)
				}
			}
		}
	})
	t.Run("ConsistencyProofs", func(t *testing.T) {
		for _, n1 := range append([]uint64{0}, sizes...) {
			for _, n2 := range sizes {
				if n1 > n2 {
					continue
				}
				p, err := b.ConsistencyProof(ctx, n1, n2)
				if err != nil {
					t.Fatalf("ConsistencyProof(%d, %d): %v", n1, n2, err)
				}
				if err := proof.VerifyConsistency(hasher, n1, n2, hashes(p), m.roots[n1], m.roots[n2]); err != nil {
					t.Fatalf("ConsistencyProof(%d, %d) does not verify: %v", n1, n2, err)
				}
			}
		}
	})
	t.Run("Tiles", func(t *testing.T) {
		for level := 0; level < 3; level++ {
			span := uint64(1) << (8 * level)
			full := size / span // hashes at this level
			for n := uint64(0); n*256 < full; n++ {
				w := min(full-n*256, 256)
				for _, width := range []uint64{w, 1, w / 2} {
					if width == 0 {
						continue
					}
					got, err := b.HashTile(ctx, level, n, int(width))
					if err != nil {
						t.Fatalf("HashTile(%d, %d, %d): %v", level, n, width, err)
					}
					if want := m.tile(level, n, int(width)); !bytes.Equal(got, want) {
						t.Fatalf("HashTile(%d, %d, %d) differs from the tile computed from the entries", level, n, width)
					}
				}
				if _, err := b.HashTile(ctx, level, n, int(w)+1); w < 256 && !errors.Is(err, tlog.ErrOutOfRange) {
					t.Fatalf("HashTile(%d, %d, %d) beyond the tree: err = %v, want ErrOutOfRange", level, n, w+1, err)
				}
			}
			if _, err := b.HashTile(ctx, level, (full+255)/256, 1); !errors.Is(err, tlog.ErrOutOfRange) {
				t.Fatalf("HashTile(%d, %d, 1) beyond the tree: err = %v, want ErrOutOfRange", level, (full+255)/256, err)
			}
		}
	})
}

func testConcurrent(t *testing.T, h Harness) {
	ctx := context.Background()
	b := newLog(t, h)
	const workers, per = 16, 20
	type result struct {
		entry []byte
		index uint64
		cp    tlog.SignedCheckpoint
	}
	results := make(chan result, workers*per)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				e := entry(fmt.Sprintf("w%d", w), i)
				idx, cp, err := b.Append(ctx, e)
				if err != nil {
					errs <- err
					return
				}
				results <- result{e, idx, cp}
			}
		}(w)
	}
	wg.Wait()
	close(results)
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent Append: %v", err)
	}
	byIndex := map[uint64][]byte{}
	for r := range results {
		if _, dup := byIndex[r.index]; dup {
			t.Fatalf("index %d returned twice", r.index)
		}
		byIndex[r.index] = r.entry
		open(t, h, r.cp)
		if r.cp.Size <= r.index {
			t.Fatalf("Append returned index %d with checkpoint size %d", r.index, r.cp.Size)
		}
		p, err := b.InclusionProof(ctx, r.index, r.cp.Size)
		if err != nil {
			t.Fatalf("InclusionProof(%d, %d): %v", r.index, r.cp.Size, err)
		}
		if err := proof.VerifyInclusion(hasher, r.index, r.cp.Size, hasher.HashLeaf(r.entry), hashes(p), r.cp.Hash[:]); err != nil {
			t.Fatalf("entry %d is not in the checkpoint Append returned: %v", r.index, err)
		}
	}
	if len(byIndex) != workers*per {
		t.Fatalf("got %d distinct indices, want %d", len(byIndex), workers*per)
	}
	all, err := b.Entries(ctx, 0, workers*per)
	if err != nil {
		t.Fatalf("Entries: %v", err)
	}
	m := newModel()
	for i, e := range all {
		if !bytes.Equal(e, byIndex[uint64(i)]) {
			t.Fatalf("entry %d is not the one Append returned index %d for", i, i)
		}
		m.add(e)
	}
	cp, err := b.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Size != workers*per || !bytes.Equal(cp.Hash[:], m.roots[cp.Size]) {
		t.Fatalf("final checkpoint = (%d, %x), want (%d, %x)", cp.Size, cp.Hash, workers*per, m.roots[workers*per])
	}
}

func testBadArguments(t *testing.T, h Harness) {
	ctx := context.Background()
	b := newLog(t, h)
	m := newModel()
	appendAll(t, h, b, m, 10, "bad")
	before, err := b.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	invalid := func(name string, err error) {
		t.Helper()
		if !errors.Is(err, tlog.ErrInvalidArgument) {
			t.Errorf("%s: err = %v, want ErrInvalidArgument", name, err)
		}
	}
	outOfRange := func(name string, err error) {
		t.Helper()
		if !errors.Is(err, tlog.ErrOutOfRange) {
			t.Errorf("%s: err = %v, want ErrOutOfRange", name, err)
		}
	}
	_, _, err = b.Append(ctx, make([]byte, tlog.MaxEntrySize+1))
	invalid("Append(oversized)", err)
	_, err = b.Entries(ctx, 5, 4)
	invalid("Entries(5, 4)", err)
	_, err = b.Entries(ctx, 0, 11)
	outOfRange("Entries(0, 11)", err)
	_, err = b.Entries(ctx, 11, 12)
	outOfRange("Entries(11, 12)", err)
	_, err = b.InclusionProof(ctx, 10, 10)
	invalid("InclusionProof(10, 10)", err)
	_, err = b.InclusionProof(ctx, 3, 11)
	outOfRange("InclusionProof(3, 11)", err)
	_, err = b.InclusionProof(ctx, 3, 0)
	invalid("InclusionProof(3, 0)", err)
	_, err = b.ConsistencyProof(ctx, 5, 4)
	invalid("ConsistencyProof(5, 4)", err)
	_, err = b.ConsistencyProof(ctx, 5, 11)
	outOfRange("ConsistencyProof(5, 11)", err)
	for _, w := range []int{0, -1, 257} {
		_, err = b.HashTile(ctx, 0, 0, w)
		invalid(fmt.Sprintf("HashTile(0, 0, %d)", w), err)
	}
	for _, l := range []int{-1, 64} {
		_, err = b.HashTile(ctx, l, 0, 1)
		invalid(fmt.Sprintf("HashTile(%d, 0, 1)", l), err)
	}
	_, err = b.HashTile(ctx, 0, 0, 11)
	outOfRange("HashTile(0, 0, 11)", err)
	_, err = b.HashTile(ctx, 1, 0, 1)
	outOfRange("HashTile(1, 0, 1)", err)
	_, err = b.HashTile(ctx, 0, 1<<60, 1)
	outOfRange("HashTile(0, 1<<60, 1)", err)

	after, err := b.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.Root != before.Root {
		t.Fatalf("rejected requests changed the log from %d to %d entries", before.Size, after.Size)
	}
	// The log still works.
	appendAll(t, h, b, m, 1, "bad")
}

func testPersistence(t *testing.T, h Harness) {
	if h.Reopen == nil {
		t.Skip("the harness has no Reopen")
	}
	ctx := context.Background()
	b := h.New(t)
	m := newModel()
	appendAll(t, h, b, m, 300, "p1")
	before, err := b.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b = h.Reopen(t, b)
	t.Cleanup(func() { b.Close() })
	after, err := b.Checkpoint(ctx)
	if err != nil {
		t.Fatalf("Checkpoint after reopening: %v", err)
	}
	open(t, h, after)
	if after.Root != before.Root {
		t.Fatalf("checkpoint after reopening = (%d, %x), want (%d, %x)", after.Size, after.Hash, before.Size, before.Hash)
	}
	all, err := b.Entries(ctx, 0, after.Size)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range all {
		if !bytes.Equal(e, m.entries[i]) {
			t.Fatalf("entry %d changed across reopening", i)
		}
	}
	appendAll(t, h, b, m, 20, "p2")
	last, err := b.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p, err := b.ConsistencyProof(ctx, before.Size, last.Size)
	if err != nil {
		t.Fatal(err)
	}
	if err := proof.VerifyConsistency(hasher, before.Size, last.Size, hashes(p), before.Hash[:], last.Hash[:]); err != nil {
		t.Fatalf("log after reopening is not consistent with the log before: %v", err)
	}
}

func testClose(t *testing.T, h Harness) {
	ctx := context.Background()
	b := h.New(t)
	if _, _, err := b.Append(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, _, err := b.Append(ctx, []byte("y")); err == nil {
		t.Fatal("Append after Close succeeded")
	}
}

// testReadVerified reads the log back through tlog.ReadVerified, from the
// start and from the middle of a tile, and compares with the model.
func testReadVerified(t *testing.T, h Harness) {
	ctx := context.Background()
	b := newLog(t, h)
	m := newModel()
	appendAll(t, h, b, m, 300, "rv")
	cp, err := b.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cp = open(t, h, cp)
	for _, start := range []uint64{0, 100, cp.Size - 1, cp.Size} {
		next := start
		err := tlog.ReadVerified(ctx, b, cp, start, func(i uint64, e []byte) error {
			if i != next || !bytes.Equal(e, m.entries[i]) {
				return fmt.Errorf("entry %d (want index %d) differs from the one appended", i, next)
			}
			next++
			return nil
		})
		if err != nil || next != cp.Size {
			t.Errorf("ReadVerified from %d: %v (stopped at %d of %d)", start, err, next, cp.Size)
		}
	}
	// A checkpoint the backend does not hold (another root) is refused.
	other := cp
	other.Hash[0] ^= 1
	if err := tlog.ReadVerified(ctx, b, other, 0, func(uint64, []byte) error { return nil }); err == nil {
		t.Error("ReadVerified against another root succeeded")
	}
}

// testCanceledAppend checks that an append whose context ends while it runs
// has a definite outcome: it succeeds, or fails and its entry never
// appears (up to a later append that succeeds), unless its error wraps
// tlog.ErrUnknownOutcome.
func testCanceledAppend(t *testing.T, h Harness) {
	b := newLog(t, h)
	var wg sync.WaitGroup
	type outcome struct {
		entry []byte
		index uint64
		err   error
	}
	res := make([]outcome, 16)
	for i := range res {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithCancel(context.Background())
			if i%2 == 0 {
				cancel() // canceled before the call
			}
			res[i].entry = entry("canceled", i)
			done := make(chan struct{})
			go func() {
				defer close(done)
				res[i].index, _, res[i].err = b.Append(ctx, res[i].entry)
			}()
			cancel() // and while it runs
			<-done
		}()
	}
	wg.Wait()
	// A later append that succeeds: an entry that was to appear is in.
	last, _, err := b.Append(context.Background(), []byte("after"))
	if err != nil {
		t.Fatal(err)
	}
	all, err := b.Entries(context.Background(), 0, last)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		found := -1
		for j, e := range all {
			if bytes.Equal(e, r.entry) {
				found = j
			}
		}
		switch {
		case r.err == nil && (found < 0 || uint64(found) != r.index):
			t.Errorf("append of %q succeeded at %d, but the log holds it at %d", r.entry[:12], r.index, found)
		case r.err != nil && errors.Is(r.err, tlog.ErrUnknownOutcome):
			t.Logf("append of %q: outcome unknown: %v", r.entry[:12], r.err)
		case r.err != nil && found >= 0:
			t.Errorf("append of %q failed (%v), but its entry is in the log at %d", r.entry[:12], r.err, found)
		}
	}
}

// Gate wraps a tlog.Backend and can hold or fail appends, to open the
// race windows and failures a hostile host can cause (an fsync that stalls
// or fails) in tests of what is built on a log. It works with any backend.
// Each Pause or Fail applies to the next append whose entry it matches.
type Gate struct {
	tlog.Backend

	mu     sync.Mutex
	faults []*fault
}

type fault struct {
	match func(entry []byte) bool
	// pause: held before the entry reaches the backend.
	p *Pause
	// fail: err returned before (after == false) or after the entry
	// reached the backend.
	after bool
	err   error
}

// Pause is an append held by a Gate.
type Pause struct {
	held    chan struct{}
	resume  chan struct{}
	once    sync.Once
	entry   []byte
	entryMu sync.Mutex
}

// Held is closed when the append is held (before it reaches the backend).
func (p *Pause) Held() <-chan struct{} { return p.held }

// Entry returns the held entry (nil before Held is closed).
func (p *Pause) Entry() []byte {
	p.entryMu.Lock()
	defer p.entryMu.Unlock()
	return p.entry
}

// Resume lets the held append go on to the backend. It may be called
// before the append arrives, and more than once.
func (p *Pause) Resume() { p.once.Do(func() { close(p.resume) }) }

// NewGate wraps b.
func NewGate(b tlog.Backend) *Gate { return &Gate{Backend: b} }

// Pause holds the next append whose entry match accepts until Resume.
func (g *Gate) Pause(match func(entry []byte) bool) *Pause {
	p := &Pause{held: make(chan struct{}), resume: make(chan struct{})}
	g.add(&fault{match: match, p: p})
	return p
}

// Fail makes the next append whose entry match accepts return err: before
// the entry reaches the backend, or, with afterAppend, once the backend
// has appended it durably (an answer lost on the way back).
func (g *Gate) Fail(match func(entry []byte) bool, afterAppend bool, err error) {
	g.add(&fault{match: match, after: afterAppend, err: err})
}

func (g *Gate) add(f *fault) {
	g.mu.Lock()
	g.faults = append(g.faults, f)
	g.mu.Unlock()
}

// Append implements tlog.Backend.
func (g *Gate) Append(ctx context.Context, entry []byte) (uint64, tlog.SignedCheckpoint, error) {
	var f *fault
	g.mu.Lock()
	for i, x := range g.faults {
		if x.match(entry) {
			f = x
			g.faults = append(g.faults[:i:i], g.faults[i+1:]...)
			break
		}
	}
	g.mu.Unlock()
	switch {
	case f == nil:
	case f.p != nil:
		f.p.entryMu.Lock()
		f.p.entry = bytes.Clone(entry)
		f.p.entryMu.Unlock()
		close(f.p.held)
		<-f.p.resume
	case !f.after:
		return 0, tlog.SignedCheckpoint{}, f.err
	default:
		if _, _, err := g.Backend.Append(ctx, entry); err != nil {
			return 0, tlog.SignedCheckpoint{}, err
		}
		return 0, tlog.SignedCheckpoint{}, f.err
	}
	return g.Backend.Append(ctx, entry)
}

// EntryType returns a match function for entries of type typ (tlog.TypeRelease, ...).
func EntryType(typ string) func([]byte) bool {
	return func(entry []byte) bool {
		e, err := tlog.DecodeEntry(entry)
		return err == nil && e.Type == typ
	}
}
