package trillianlog

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/trillian"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/tlogtest"
	"github.com/transparency-dev/merkle/proof"
)

// These tests run the Log against fakeTrillian, on both kinds of tree.

var treeTypes = []trillian.TreeType{trillian.TreeType_PREORDERED_LOG, trillian.TreeType_LOG}

// forEachType runs test once for each kind of tree.
func forEachType(t *testing.T, test func(t *testing.T, typ trillian.TreeType)) {
	for _, typ := range treeTypes {
		t.Run(typ.String(), func(t *testing.T) { test(t, typ) })
	}
}

// fastPoll: the fake integrates on every root request, so waiting for
// Trillian's signer is pointless.
const fastPoll = 50 * time.Microsecond

func fakeConfig(t testing.TB, f *fakeTrillian, path string) Config {
	signer, _ := testSigner(t)
	return Config{Client: f, Admin: f, TreeID: f.tree, Signer: signer, StatePath: path, PollInterval: fastPoll}
}

func newFakeLog(t *testing.T, f *fakeTrillian, path string) *Log {
	t.Helper()
	l, err := New(context.Background(), fakeConfig(t, f, path))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// conformance runs the conformance suite on Logs opened with the Configs
// newConfig returns.
func conformance(t *testing.T, newConfig func(t *testing.T) Config) {
	_, v := testSigner(t)
	cfgs := map[tlog.Backend]Config{}
	open := func(t *testing.T, cfg Config) tlog.Backend {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		l, err := New(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		cfgs[l] = cfg
		return l
	}
	tlogtest.Run(t, tlogtest.Harness{
		Origin:   testOrigin,
		Verifier: v,
		New:      func(t *testing.T) tlog.Backend { return open(t, newConfig(t)) },
		Reopen: func(t *testing.T, b tlog.Backend) tlog.Backend {
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			return open(t, cfgs[b])
		},
	})
}

// TestConformanceFake runs the conformance suite against the in-memory
// Trillian, so the Log's logic is tested without servers.
func TestConformanceFake(t *testing.T) {
	forEachType(t, func(t *testing.T, typ trillian.TreeType) {
		conformance(t, func(t *testing.T) Config {
			return fakeConfig(t, newFake(42, typ), filepath.Join(t.TempDir(), "state"))
		})
	})
}

// TestProofsFromNodes checks the proofs the Log computes from the nodes it
// hashed while extending its tree from size m to n: the consistency proof
// m → n and the inclusion proofs of the new leaves, for every m < n ≤ 80.
func TestProofsFromNodes(t *testing.T) {
	leaf := func(i uint64) tlog.Hash { return tlog.Hash(hasher.HashLeaf(fmt.Appendf(nil, "leaf %d", i))) }
	for m := uint64(0); m < 40; m++ {
		base := rangeFactory.NewEmptyRange(0)
		for i := range m {
			h := leaf(i)
			if err := base.Append(h[:], nil); err != nil {
				t.Fatal(err)
			}
		}
		oldHash, _ := rangeRoot(base)
		old := tlog.Root{Size: m, Hash: oldHash}
		for n := m + 1; n <= 80; n++ {
			g := grow(base, true)
			for i := m; i < n; i++ {
				if err := g.add(leaf(i)); err != nil {
					t.Fatal(err)
				}
			}
			h, _ := rangeRoot(g.rng)
			root := tlog.Root{Size: n, Hash: h}
			if m > 0 {
				p, ok := consistencyFromNodes(g.nodes, old, root)
				if !ok {
					t.Fatalf("consistencyFromNodes(%d → %d) found no proof", m, n)
				}
				if err := proof.VerifyConsistency(hasher, m, n, hashesOf(p), old.Hash[:], root.Hash[:]); err != nil {
					t.Fatalf("consistencyFromNodes(%d → %d): %v", m, n, err)
				}
			}
			for i := m; i < n; i++ {
				p, ok := proveFromNodes(g.nodes, i, root)
				if !ok {
					t.Fatalf("proveFromNodes(%d in %d, grown from %d) found no proof", i, n, m)
				}
				l := leaf(i)
				if err := proof.VerifyInclusion(hasher, i, n, l[:], hashesOf(p), root.Hash[:]); err != nil {
					t.Fatalf("proveFromNodes(%d in %d): %v", i, n, err)
				}
			}
		}
	}
}

// TestWriteRetry checks that a write (QueueLeaf on a LOG tree, a batch on a
// pre-ordered tree) is sent again while Trillian is unavailable or after
// its answer was lost, and that the entries are logged once.
func TestWriteRetry(t *testing.T) {
	forEachType(t, func(t *testing.T, typ trillian.TreeType) {
		ctx := context.Background()
		f := newFake(7, typ)
		l := newFakeLog(t, f, filepath.Join(t.TempDir(), "state"))
		f.set(func(f *fakeTrillian) { f.loseNext, f.downNext = 2, 1 })
		i, cp, err := l.Append(ctx, []byte("once"))
		if err != nil {
			t.Fatal(err)
		}
		if i != 0 || cp.Size != 1 {
			t.Fatalf("Append after lost answers = index %d, size %d; want 0, 1 (logged once)", i, cp.Size)
		}
		if i, _, err := l.Append(ctx, []byte("twice")); err != nil || i != 1 {
			t.Fatalf("second Append = %d, %v; want 1", i, err)
		}
		got, err := l.Entries(ctx, 0, 2)
		if err != nil || string(got[0]) != "once" || string(got[1]) != "twice" {
			t.Fatalf("Entries = %q, %v", got, err)
		}
	})
}

// mustHaveEntries checks that l's first entries are want.
func mustHaveEntries(t testing.TB, l *Log, want [][]byte) {
	t.Helper()
	got, err := l.Entries(context.Background(), 0, uint64(len(want)))
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("entry %d = %q, want %q", i, got[i], want[i])
		}
	}
}

// inFlight waits until n appends are in Trillian's hands and m wait to be
// sent.
func inFlight(t *testing.T, l *Log, n, m int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.RLock()
		sent := 0
		for _, w := range l.waiters {
			if w.sent {
				sent++
			}
		}
		pending := len(l.pending)
		l.mu.RUnlock()
		if sent == n && pending == m {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d appends sent and %d pending, want %d and %d", sent, pending, n, m)
		}
		time.Sleep(time.Millisecond)
	}
}

type appendResult struct {
	index uint64
	cp    tlog.SignedCheckpoint
	err   error
}

func appendAsync(l *Log, ctx context.Context, e string) chan appendResult {
	c := make(chan appendResult, 1)
	go func() {
		i, cp, err := l.Append(ctx, []byte(e))
		c <- appendResult{i, cp, err}
	}()
	return c
}

// TestAppendSettles checks that an Append whose context ends while its
// entry is in Trillian's hands waits for the outcome and reports the entry
// logged, and (pre-ordered) that an Append whose context ends before its
// entry was sent reports an error and the entry never appears.
func TestAppendSettles(t *testing.T) {
	t.Run("LOG", func(t *testing.T) {
		f := newFake(7, trillian.TreeType_LOG)
		l := newFakeLog(t, f, filepath.Join(t.TempDir(), "state"))
		f.set(func(f *fakeTrillian) { f.integrate = false })
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		res := appendAsync(l, ctx, "slow")
		<-ctx.Done()
		time.Sleep(100 * time.Millisecond)
		select {
		case r := <-res:
			t.Fatalf("Append returned (%d, %v) while its queued entry was not integrated", r.index, r.err)
		default:
		}
		f.set(func(f *fakeTrillian) { f.integrate = true })
		if r := <-res; r.err != nil || r.index != 0 || r.cp.Size != 1 {
			t.Fatalf("Append = %d, size %d, %v; want 0, 1, nil", r.index, r.cp.Size, r.err)
		}
	})
	t.Run("PREORDERED_LOG", func(t *testing.T) {
		f := newFake(7, trillian.TreeType_PREORDERED_LOG)
		l := newFakeLog(t, f, filepath.Join(t.TempDir(), "state"))
		hold := make(chan struct{})
		f.set(func(f *fakeTrillian) { f.hold = hold })
		ctx1, cancel1 := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel1()
		held := appendAsync(l, ctx1, "held")
		inFlight(t, l, 1, 0)
		ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel2()
		if _, _, err := l.Append(ctx2, []byte("abandoned")); !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrUnsettled) {
			t.Fatalf("Append whose context ended before it was sent: err = %v, want DeadlineExceeded", err)
		}
		<-ctx1.Done()
		time.Sleep(50 * time.Millisecond)
		select {
		case r := <-held:
			t.Fatalf("Append returned (%d, %v) while its batch was being written", r.index, r.err)
		default:
		}
		f.set(func(f *fakeTrillian) { f.hold = nil })
		close(hold)
		if r := <-held; r.err != nil || r.index != 0 || r.cp.Size != 1 {
			t.Fatalf("Append = %d, size %d, %v; want 0, 1, nil", r.index, r.cp.Size, r.err)
		}
		ctx := context.Background()
		if i, _, err := l.Append(ctx, []byte("after")); err != nil || i != 1 {
			t.Fatalf("Append after = %d, %v; want 1", i, err)
		}
		got, err := l.Entries(ctx, 0, 2)
		if err != nil || string(got[0]) != "held" || string(got[1]) != "after" {
			t.Fatalf("Entries = %q, %v; want held, after (never abandoned)", got, err)
		}
	})
}

// TestCloseSettles checks that Close fails the appends in flight: with
// ErrUnsettled and ErrClosed those whose entries Trillian may have, with
// ErrClosed alone those not sent; and that later appends fail.
func TestCloseSettles(t *testing.T) {
	forEachType(t, func(t *testing.T, typ trillian.TreeType) {
		f := newFake(15, typ)
		l, err := New(context.Background(), fakeConfig(t, f, filepath.Join(t.TempDir(), "state")))
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		var sent, unsent []chan appendResult
		if typ == trillian.TreeType_LOG {
			f.set(func(f *fakeTrillian) { f.integrate = false })
			for i := range 4 {
				sent = append(sent, appendAsync(l, ctx, fmt.Sprint("stuck ", i)))
			}
			inFlight(t, l, 4, 0)
		} else {
			f.set(func(f *fakeTrillian) { f.downNext = 1 << 30 })
			sent = append(sent, appendAsync(l, ctx, "stuck"))
			inFlight(t, l, 1, 0)
			for i := range 3 {
				unsent = append(unsent, appendAsync(l, ctx, fmt.Sprint("queued ", i)))
			}
			inFlight(t, l, 1, 3)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		for _, c := range sent {
			if r := <-c; !errors.Is(r.err, ErrUnsettled) || !errors.Is(r.err, ErrClosed) {
				t.Errorf("Append in Trillian's hands at Close: err = %v, want ErrUnsettled and ErrClosed", r.err)
			}
		}
		for _, c := range unsent {
			if r := <-c; !errors.Is(r.err, ErrClosed) || errors.Is(r.err, ErrUnsettled) {
				t.Errorf("Append not sent at Close: err = %v, want ErrClosed alone", r.err)
			}
		}
		if _, _, err := l.Append(ctx, []byte("late")); !errors.Is(err, ErrClosed) || errors.Is(err, ErrUnsettled) {
			t.Errorf("Append after Close: err = %v, want ErrClosed", err)
		}
	})
}

// TestRollbackAndForkDetected checks that a Trillian that lost signed leaves
// or rewrote them is refused while running and on restart, that the Log
// then refuses all appends, and that it never signed anything but the
// entries appended to it.
func TestRollbackAndForkDetected(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(f *fakeTrillian)
	}{
		{"rollback", func(f *fakeTrillian) { f.truncate(3) }},
		{"rollback then regrow", func(f *fakeTrillian) {
			f.truncate(3)
			f.rewrite(append(append([][]byte(nil), f.values()[:3]...), []byte("x3"), []byte("x4"), []byte("x5"), []byte("x6")))
		}},
		{"fork", func(f *fakeTrillian) {
			vs := f.values()
			vs[1] = []byte("forged")
			f.rewrite(append(vs, []byte("more")))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			forEachType(t, func(t *testing.T, typ trillian.TreeType) {
				ctx := context.Background()
				f := newFake(9, typ)
				path := filepath.Join(t.TempDir(), "state")
				l := newFakeLog(t, f, path)
				model := rangeFactory.NewEmptyRange(0)
				roots := map[uint64]tlog.Hash{0: tlog.EmptyRoot}
				add := func(e string) {
					if err := model.Append(hasher.HashLeaf([]byte(e)), nil); err != nil {
						t.Fatal(err)
					}
					roots[model.End()], _ = rangeRoot(model)
				}
				for _, e := range []string{"a", "b", "c", "d", "e"} {
					if _, _, err := l.Append(ctx, []byte(e)); err != nil {
						t.Fatal(err)
					}
					add(e)
				}
				// Let Trillian integrate everything first.
				if _, err := l.Entries(ctx, 0, 5); err != nil {
					t.Fatal(err)
				}
				tc.damage(f)
				// On a pre-ordered tree the Log may append a few more
				// entries of its own before its verifier notices.
				deadline := time.Now().Add(20 * time.Second)
				for i := 0; ; i++ {
					e := fmt.Sprint("f", i)
					_, _, err := l.Append(ctx, []byte(e))
					if err == nil {
						add(e)
					}
					if errors.Is(err, tlog.ErrConflict) {
						break
					}
					if err != nil || time.Now().After(deadline) {
						t.Fatalf("Append on a damaged tree: err = %v, want ErrConflict", err)
					}
					time.Sleep(10 * time.Millisecond)
				}
				if _, _, err := l.Append(ctx, []byte("g")); !errors.Is(err, tlog.ErrConflict) {
					t.Fatalf("Append after the conflict: err = %v, want ErrConflict", err)
				}
				after, _ := l.Checkpoint(ctx)
				if after.Size < 5 || after.Hash != roots[after.Size] {
					t.Fatalf("checkpoint moved to size %d, not a tree of the entries appended", after.Size)
				}
				l.Close()
				if _, err := New(ctx, fakeConfig(t, f, path)); !errors.Is(err, tlog.ErrConflict) {
					t.Fatalf("New on a damaged tree: err = %v, want ErrConflict", err)
				}
			})
		})
	}
}

// TestStateTampering checks that New refuses a state file whose checkpoint
// is not signed by the log's key or whose range does not match it.
func TestStateTampering(t *testing.T) {
	forEachType(t, func(t *testing.T, typ trillian.TreeType) {
		ctx := context.Background()
		f := newFake(11, typ)
		path := filepath.Join(t.TempDir(), "state")
		l := newFakeLog(t, f, path)
		for _, e := range []string{"a", "b", "c"} {
			if _, _, err := l.Append(ctx, []byte(e)); err != nil {
				t.Fatal(err)
			}
		}
		l.Close()
		st, err := readState(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name   string
			change func(st *state)
		}{
			{"range hash", func(st *state) { st.Range[0] = bytes.Repeat([]byte{1}, 32) }},
			{"range length", func(st *state) { st.Range = st.Range[:1] }},
			{"checkpoint signature", func(st *state) { st.Checkpoint = bytes.Replace(st.Checkpoint, []byte("\n3\n"), []byte("\n4\n"), 1) }},
		} {
			t.Run(tc.name, func(t *testing.T) {
				bad := st
				bad.Range = append([][]byte(nil), st.Range...)
				tc.change(&bad)
				p := filepath.Join(t.TempDir(), "state")
				if err := writeState(p, bad); err != nil {
					t.Fatal(err)
				}
				if l, err := New(ctx, fakeConfig(t, f, p)); err == nil {
					l.Close()
					t.Fatal("New accepted a tampered state file")
				}
			})
		}
	})
}

// TestReceiptProofsLocal checks that the inclusion proof of an appended
// entry in the checkpoint Append returned is computed without asking
// Trillian, and verifies; other proofs are Trillian's.
func TestReceiptProofsLocal(t *testing.T) {
	forEachType(t, func(t *testing.T, typ trillian.TreeType) {
		ctx := context.Background()
		f := newFake(13, typ)
		l := newFakeLog(t, f, filepath.Join(t.TempDir(), "state"))
		// Like kbsd, each appender asks for its receipt's proof right
		// after Append returns; the Log keeps the nodes of the last
		// keptProofSets signed trees, so a few concurrent appenders
		// always find theirs.
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 25 {
					e := []byte(fmt.Sprintf("g%d-%d", g, i))
					idx, cp, err := l.Append(ctx, e)
					if err != nil {
						t.Error(err)
						return
					}
					p, err := l.InclusionProof(ctx, idx, cp.Size)
					if err != nil {
						t.Error(err)
						return
					}
					if err := proof.VerifyInclusion(hasher, idx, cp.Size, hasher.HashLeaf(e), hashesOf(p), cp.Hash[:]); err != nil {
						t.Errorf("proof of %d in %d: %v", idx, cp.Size, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if calls := f.count(&f.inclusionCalls); calls != 0 {
			t.Errorf("receipt proofs asked Trillian %d times, want 0", calls)
		}
		// A proof in a tree the Log signed long ago comes from Trillian.
		if _, err := l.InclusionProof(ctx, 0, 50); err != nil {
			t.Fatal(err)
		}
		if calls := f.count(&f.inclusionCalls); calls != 1 {
			t.Errorf("an older entry's proof asked Trillian %d times, want 1", calls)
		}
	})
}

// TestForeignBytesUnderOurIdentity checks that on a LOG tree a leaf carrying
// an append's identity hash but other bytes fails that append with
// ErrConflict, and that a leaf integrated twice completes its append once,
// at its first index.
func TestForeignBytesUnderOurIdentity(t *testing.T) {
	ctx := context.Background()
	f := newFake(17, trillian.TreeType_LOG)
	l := newFakeLog(t, f, filepath.Join(t.TempDir(), "state"))
	f.set(func(f *fakeTrillian) {
		f.tamper = func(lf *trillian.LogLeaf) []*trillian.LogLeaf {
			if string(lf.LeafValue) == "swap me" {
				return []*trillian.LogLeaf{{LeafValue: []byte("other bytes"), LeafIdentityHash: lf.LeafIdentityHash}}
			}
			if string(lf.LeafValue) == "twice" {
				return []*trillian.LogLeaf{lf, {LeafValue: lf.LeafValue, LeafIdentityHash: lf.LeafIdentityHash}}
			}
			return []*trillian.LogLeaf{lf}
		}
	})
	if i, _, err := l.Append(ctx, []byte("swap me")); !errors.Is(err, tlog.ErrConflict) {
		t.Fatalf("Append = %d, %v although Trillian logged other bytes; want ErrConflict", i, err)
	}
	i, cp, err := l.Append(ctx, []byte("twice"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := l.Entries(ctx, i, i+1)
	if err != nil || string(got[0]) != "twice" || cp.Size != i+2 {
		t.Fatalf("Append = index %d, size %d; entry %q, %v", i, cp.Size, got, err)
	}
}

// TestEntriesVerified checks that entries Trillian serves are checked
// against the signed tree: bytes other than those integrated are refused.
func TestEntriesVerified(t *testing.T) {
	forEachType(t, func(t *testing.T, typ trillian.TreeType) {
		ctx := context.Background()
		f := newFake(19, typ)
		l := newFakeLog(t, f, filepath.Join(t.TempDir(), "state"))
		for i := range 10 {
			if _, _, err := l.Append(ctx, []byte(fmt.Sprintf("entry %d", i))); err != nil {
				t.Fatal(err)
			}
		}
		f.set(func(f *fakeTrillian) {
			f.serve = func(i int64, v []byte) []byte {
				if i == 4 {
					return []byte("forged")
				}
				return v
			}
		})
		for _, r := range [][2]uint64{{0, 10}, {4, 5}, {3, 5}, {4, 10}, {2, 9}} {
			if _, err := l.Entries(ctx, r[0], r[1]); !errors.Is(err, tlog.ErrConflict) {
				t.Errorf("Entries(%d, %d) with entry 4 forged: err = %v, want ErrConflict", r[0], r[1], err)
			}
		}
		for _, r := range [][2]uint64{{0, 4}, {5, 10}, {9, 10}, {0, 1}} {
			got, err := l.Entries(ctx, r[0], r[1])
			if err != nil {
				t.Errorf("Entries(%d, %d) away from the forged entry: %v", r[0], r[1], err)
				continue
			}
			for i, g := range got {
				if want := fmt.Sprintf("entry %d", r[0]+uint64(i)); string(g) != want {
					t.Errorf("Entries(%d, %d)[%d] = %q, want %q", r[0], r[1], i, g, want)
				}
			}
		}
	})
}

// TestSequencedWithoutSigner checks that on a pre-ordered tree appends
// complete without Trillian's signer and without reading leaves back,
// that reads past Trillian's integrated tree wait for its signer, and that
// the Log verifies the roots it then publishes.
func TestSequencedWithoutSigner(t *testing.T) {
	ctx := context.Background()
	f := newFake(21, trillian.TreeType_PREORDERED_LOG)
	l := newFakeLog(t, f, filepath.Join(t.TempDir(), "state"))
	f.set(func(f *fakeTrillian) { f.integrate = false })
	var entries []string
	for i := range 10 {
		e := fmt.Sprint("entry ", i)
		if idx, cp, err := l.Append(ctx, []byte(e)); err != nil || idx != uint64(i) || cp.Size != idx+1 {
			t.Fatalf("Append #%d = %d, size %d, %v", i, idx, cp.Size, err)
		}
		entries = append(entries, e)
	}
	if n := f.count(&f.leavesCalls); n != 0 {
		t.Errorf("appends read leaves back %d times, want 0", n)
	}
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := l.Entries(tctx, 0, 10); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Entries past Trillian's tree without its signer: err = %v, want DeadlineExceeded", err)
	}
	if _, err := l.ConsistencyProof(tctx, 1, 10); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ConsistencyProof past Trillian's tree without its signer: err = %v, want DeadlineExceeded", err)
	}
	f.set(func(f *fakeTrillian) { f.integrate = true })
	got, err := l.Entries(ctx, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	for i, g := range got {
		if string(g) != entries[i] {
			t.Errorf("entry %d = %q, want %q", i, g, entries[i])
		}
	}
	l.mu.RLock()
	ver := l.ver.root
	l.mu.RUnlock()
	if cp, _ := l.Checkpoint(ctx); ver != cp.Root {
		t.Errorf("verified root %d, signed %d", ver.Size, cp.Size)
	}
}

// TestSequencedTakenIndices checks that leaves this Log did not write (a
// crashed kbsd's unacknowledged batch, or another writer) at the indices it
// meant to use are read back and logged, and the entries sent there are
// written again at the next free index.
func TestSequencedTakenIndices(t *testing.T) {
	ctx := context.Background()
	f := newFake(23, trillian.TreeType_PREORDERED_LOG)
	l := newFakeLog(t, f, filepath.Join(t.TempDir(), "state"))
	foreign := func(index int64, v string) {
		var id [32]byte
		rand.Read(id[:])
		f.set(func(f *fakeTrillian) { f.store(index, []byte(v), id[:]) })
	}
	mustAppend := func(e string, want uint64) {
		t.Helper()
		if i, cp, err := l.Append(ctx, []byte(e)); err != nil || i != want || cp.Size != want+1 {
			t.Fatalf("Append(%q) = %d, size %d, %v; want %d", e, i, cp.Size, err, want)
		}
	}
	mustAppend("a", 0)
	for i := int64(1); i <= 3; i++ {
		foreign(i, fmt.Sprint("left over ", i))
	}
	mustAppend("b", 4)
	foreign(6, "foreign")
	mustAppend("c", 5)
	mustAppend("d", 7)
	got, err := l.Entries(ctx, 0, 8)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"a", "left over 1", "left over 2", "left over 3", "b", "c", "foreign", "d"}
	for i := range want {
		if string(got[i]) != want[i] {
			t.Errorf("entry %d = %q, want %q", i, got[i], want[i])
		}
	}
}

// TestSequencedRestart checks that after a restart New waits for
// Trillian's signer to integrate what the Log signed before.
func TestSequencedRestart(t *testing.T) {
	ctx := context.Background()
	f := newFake(25, trillian.TreeType_PREORDERED_LOG)
	path := filepath.Join(t.TempDir(), "state")
	l := newFakeLog(t, f, path)
	f.set(func(f *fakeTrillian) { f.integrate = false })
	for i := range 10 {
		if _, _, err := l.Append(ctx, []byte(fmt.Sprint("entry ", i))); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	time.AfterFunc(100*time.Millisecond, func() { f.set(func(f *fakeTrillian) { f.integrate = true }) })
	l2 := newFakeLog(t, f, path)
	cp, _ := l2.Checkpoint(ctx)
	if cp.Size != 10 {
		t.Fatalf("checkpoint size %d after restart, want 10", cp.Size)
	}
	if _, err := l2.Entries(ctx, 0, 10); err != nil {
		t.Fatal(err)
	}
}

// TestSequencedSignerForks checks that a signer that integrates other bytes
// than the Log wrote is caught by the verifier and stops appends.
func TestSequencedSignerForks(t *testing.T) {
	ctx := context.Background()
	f := newFake(27, trillian.TreeType_PREORDERED_LOG)
	l := newFakeLog(t, f, filepath.Join(t.TempDir(), "state"))
	f.set(func(f *fakeTrillian) {
		f.integrate = false
		f.tamper = func(lf *trillian.LogLeaf) []*trillian.LogLeaf {
			if string(lf.LeafValue) == "evil" {
				return []*trillian.LogLeaf{{LeafValue: []byte("other bytes"), LeafIdentityHash: lf.LeafIdentityHash}}
			}
			return []*trillian.LogLeaf{lf}
		}
	})
	for _, e := range []string{"a", "evil", "b"} {
		if _, _, err := l.Append(ctx, []byte(e)); err != nil {
			t.Fatal(err)
		}
	}
	f.set(func(f *fakeTrillian) { f.integrate = true })
	if _, err := l.Entries(ctx, 0, 3); !errors.Is(err, tlog.ErrConflict) {
		t.Fatalf("Entries over a forked tree: err = %v, want ErrConflict", err)
	}
	if _, _, err := l.Append(ctx, []byte("c")); !errors.Is(err, tlog.ErrConflict) {
		t.Fatalf("Append after the fork: err = %v, want ErrConflict", err)
	}
}

// TestSequencedLostLeaves checks that a pre-ordered tree that lost leaves
// its signer had not integrated yet (a database restored from a backup) is
// caught although Trillian's root never moves again.
func TestSequencedLostLeaves(t *testing.T) {
	ctx := context.Background()
	f := newFake(29, trillian.TreeType_PREORDERED_LOG)
	l := newFakeLog(t, f, filepath.Join(t.TempDir(), "state"))
	for _, e := range []string{"a", "b"} {
		if _, _, err := l.Append(ctx, []byte(e)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Entries(ctx, 0, 2); err != nil {
		t.Fatal(err)
	}
	f.set(func(f *fakeTrillian) { f.integrate = false })
	for _, e := range []string{"c", "d", "e"} {
		if _, _, err := l.Append(ctx, []byte(e)); err != nil {
			t.Fatal(err)
		}
	}
	f.truncate(2)
	f.set(func(f *fakeTrillian) { f.integrate = true })
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, _, err := l.Append(ctx, []byte("more"))
		if errors.Is(err, tlog.ErrConflict) {
			break
		}
		if err != nil || time.Now().After(deadline) {
			t.Fatalf("Append on a tree that lost leaves: err = %v, want ErrConflict", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSequencedBatchOutcomes checks a batch of which Trillian stored some
// entries and found the others' indices taken: the stored ones are read
// back and settled, the others written again after them; and a batch that
// Trillian refused: its appends fail, and the next batch uses its indices.
func TestSequencedBatchOutcomes(t *testing.T) {
	t.Run("taken", func(t *testing.T) {
		f := newFake(31, trillian.TreeType_PREORDERED_LOG)
		l := newFakeLog(t, f, filepath.Join(t.TempDir(), "state"))
		hold := make(chan struct{})
		f.set(func(f *fakeTrillian) { f.hold = hold })
		a := appendAsync(l, context.Background(), "a")
		inFlight(t, l, 1, 0)
		b := appendAsync(l, context.Background(), "b")
		c := appendAsync(l, context.Background(), "c")
		inFlight(t, l, 1, 2)
		// The next batch, [b, c], goes to indices 1 and 2.
		var id [32]byte
		rand.Read(id[:])
		f.set(func(f *fakeTrillian) {
			f.store(2, []byte("foreign"), id[:])
			f.hold = nil
		})
		close(hold)
		// b and c were queued concurrently, in either order: one is
		// stored at 1, the other finds 2 taken and goes to 3.
		indices := map[uint64]string{}
		for _, tc := range []struct {
			c chan appendResult
			e string
		}{{a, "a"}, {b, "b"}, {c, "c"}} {
			r := <-tc.c
			if r.err != nil {
				t.Fatalf("Append(%q): %v", tc.e, r.err)
			}
			indices[r.index] = tc.e
		}
		indices[2] = "foreign"
		got, err := l.Entries(context.Background(), 0, 4)
		if err != nil {
			t.Fatal(err)
		}
		if indices[0] != "a" || len(indices) != 4 {
			t.Fatalf("appends got indices %v, want a at 0 and b, c at 1 and 3", indices)
		}
		for i, g := range got {
			if string(g) != indices[uint64(i)] {
				t.Errorf("entry %d = %q, want %q", i, g, indices[uint64(i)])
			}
		}
	})
	t.Run("refused", func(t *testing.T) {
		f := newFake(33, trillian.TreeType_PREORDERED_LOG)
		l := newFakeLog(t, f, filepath.Join(t.TempDir(), "state"))
		refusals := 1
		f.set(func(f *fakeTrillian) {
			f.refuse = func(int64) bool {
				refusals--
				return refusals >= 0
			}
		})
		ctx := context.Background()
		if _, _, err := l.Append(ctx, []byte("refused")); err == nil || errors.Is(err, ErrUnsettled) {
			t.Fatalf("refused Append: err = %v, want a refusal", err)
		}
		if i, _, err := l.Append(ctx, []byte("next")); err != nil || i != 0 {
			t.Fatalf("Append after a refusal = %d, %v; want 0", i, err)
		}
	})
}

// TestMigrate checks that Migrate moves a log from a LOG tree to a
// pre-ordered tree with the same checkpoint, entries and proofs, resumes
// a copy it began, and refuses a target tree that holds other leaves or a
// state file of another tree, leaving the state file as it was.
func TestMigrate(t *testing.T) {
	ctx := context.Background()
	setup := func(t *testing.T) (path string, from *fakeTrillian, want tlog.SignedCheckpoint, entries [][]byte) {
		from = newFake(41, trillian.TreeType_LOG)
		path = filepath.Join(t.TempDir(), "state")
		l := newFakeLog(t, from, path)
		for i := range 300 {
			e := fmt.Appendf(nil, "entry %d", i)
			if _, _, err := l.Append(ctx, e); err != nil {
				t.Fatal(err)
			}
			entries = append(entries, e)
		}
		want, _ = l.Checkpoint(ctx)
		l.Close()
		return path, from, want, entries
	}
	migrate := func(path string, from, to *fakeTrillian) error {
		trees := fakeTrees{m: map[int64]*fakeTrillian{from.tree: from, to.tree: to}}
		return Migrate(ctx, MigrateConfig{Client: trees, Admin: trees, From: from.tree, To: to.tree, StatePath: path})
	}
	t.Run("copy", func(t *testing.T) {
		path, from, want, entries := setup(t)
		to := newFake(43, trillian.TreeType_PREORDERED_LOG)
		// A copy interrupted after 100 leaves.
		for i, lf := range from.leaves[:100] {
			to.store(int64(i), lf.LeafValue, lf.LeafIdentityHash)
		}
		if err := migrate(path, from, to); err != nil {
			t.Fatal(err)
		}
		if err := migrate(path, from, to); err != nil {
			t.Fatalf("Migrate again: %v", err)
		}
		l := newFakeLog(t, to, path)
		if cp, _ := l.Checkpoint(ctx); !bytes.Equal(cp.Note, want.Note) {
			t.Fatalf("checkpoint after Migrate\n%s\nwant\n%s", cp.Note, want.Note)
		}
		mustHaveEntries(t, l, entries)
		if i, cp, err := l.Append(ctx, []byte("on the new tree")); err != nil || i != want.Size || cp.Size != want.Size+1 {
			t.Fatalf("Append after Migrate = %d, size %d, %v", i, cp.Size, err)
		}
		if n := to.count(&to.leavesCalls); n == 0 {
			t.Error("the Log read nothing from the new tree")
		}
	})
	t.Run("refused", func(t *testing.T) {
		path, from, _, _ := setup(t)
		before, err := readState(path)
		if err != nil {
			t.Fatal(err)
		}
		other := newFake(43, trillian.TreeType_PREORDERED_LOG)
		var id [32]byte
		rand.Read(id[:])
		other.store(5, []byte("other"), id[:])
		for name, tc := range map[string]struct {
			to   *fakeTrillian
			want error
		}{
			"target holds other leaves": {other, tlog.ErrConflict},
			"target is a LOG tree":      {newFake(45, trillian.TreeType_LOG), nil},
		} {
			err := migrate(path, from, tc.to)
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Errorf("%s: Migrate = %v, want %v", name, err, tc.want)
			}
		}
		if err := Migrate(ctx, MigrateConfig{Client: fakeTrees{}, Admin: fakeTrees{}, From: 47, To: 43, StatePath: path}); err == nil || !strings.Contains(err.Error(), "belongs to tree") {
			t.Errorf("Migrate from a tree the state file does not name = %v", err)
		}
		after, err := readState(path)
		if err != nil || after.TreeID != before.TreeID || !bytes.Equal(after.Checkpoint, before.Checkpoint) {
			t.Fatalf("a refused Migrate changed the state file (tree %d, %v)", after.TreeID, err)
		}
	})
}
