package trillianlog

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/trillian"
	"github.com/google/trillian/types"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/tlogtest"
	"github.com/transparency-dev/merkle/proof"
	sumdb "golang.org/x/mod/sumdb/tlog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeTrillian is an in-memory Trillian log tree with the five RPCs the Log
// uses, so the Log's logic runs in plain `go test` too. Its sequencer runs
// when a root is asked for. Its Merkle tree is golang.org/x/mod's
// sumdb/tlog, independent of the Log's code. It can lose QueueLeaf answers
// after queueing, and be rolled back or forked.
type fakeTrillian struct {
	trillian.TrillianLogClient // methods the Log must not call panic

	mu        sync.Mutex
	tree      int64
	queued    []*trillian.LogLeaf
	ids       map[string]bool
	leaves    []*trillian.LogLeaf
	stored    []sumdb.Hash
	loseNext  int // QueueLeaf calls that queue but answer Unavailable
	downNext  int // calls that fail with Unavailable without effect
	integrate bool

	inclusionCalls int // GetInclusionProof calls answered

	// tamper, if set, replaces each queued leaf by the leaves the fake
	// integrates for it.
	tamper func(*trillian.LogLeaf) []*trillian.LogLeaf
	// serve, if set, changes the bytes GetLeavesByRange answers.
	serve func(index int64, v []byte) []byte
}

func newFake(tree int64) *fakeTrillian {
	return &fakeTrillian{tree: tree, ids: map[string]bool{}, integrate: true}
}

func (f *fakeTrillian) check(id int64) error {
	if id != f.tree {
		return status.Errorf(codes.NotFound, "tree %d not found", id)
	}
	if f.downNext > 0 {
		f.downNext--
		return status.Error(codes.Unavailable, "fake: down")
	}
	return nil
}

func (f *fakeTrillian) QueueLeaf(ctx context.Context, req *trillian.QueueLeafRequest, _ ...grpc.CallOption) (*trillian.QueueLeafResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(req.LogId); err != nil {
		return nil, err
	}
	leaf := &trillian.LogLeaf{LeafValue: bytes.Clone(req.Leaf.LeafValue), LeafIdentityHash: bytes.Clone(req.Leaf.LeafIdentityHash)}
	if len(leaf.LeafIdentityHash) == 0 {
		h := sha256.Sum256(append([]byte{0}, leaf.LeafValue...))
		leaf.LeafIdentityHash = h[:]
	}
	resp := &trillian.QueueLeafResponse{QueuedLeaf: &trillian.QueuedLogLeaf{Leaf: leaf}}
	if f.ids[string(leaf.LeafIdentityHash)] {
		resp.QueuedLeaf.Status = status.New(codes.AlreadyExists, "leaf already exists").Proto()
	} else {
		f.ids[string(leaf.LeafIdentityHash)] = true
		f.queued = append(f.queued, leaf)
	}
	if f.loseNext > 0 {
		f.loseNext--
		return nil, status.Error(codes.Unavailable, "fake: answer lost")
	}
	return resp, nil
}

func (f *fakeTrillian) sequence() {
	if !f.integrate {
		return
	}
	var queued []*trillian.LogLeaf
	for _, lf := range f.queued {
		if f.tamper != nil {
			queued = append(queued, f.tamper(lf)...)
		} else {
			queued = append(queued, lf)
		}
	}
	for _, lf := range queued {
		n := int64(len(f.leaves))
		hs, err := sumdb.StoredHashes(n, lf.LeafValue, f.reader())
		if err != nil {
			panic(err)
		}
		lf.LeafIndex = n
		lf.MerkleLeafHash = func() []byte { h := sumdb.RecordHash(lf.LeafValue); return h[:] }()
		f.leaves = append(f.leaves, lf)
		f.stored = append(f.stored, hs...)
	}
	f.queued = nil
}

func (f *fakeTrillian) reader() sumdb.HashReader {
	return sumdb.HashReaderFunc(func(idx []int64) ([]sumdb.Hash, error) {
		out := make([]sumdb.Hash, len(idx))
		for i, x := range idx {
			if x >= int64(len(f.stored)) {
				return nil, errors.New("fake: no such hash")
			}
			out[i] = f.stored[x]
		}
		return out, nil
	})
}

func (f *fakeTrillian) root() (*trillian.SignedLogRoot, error) {
	n := int64(len(f.leaves))
	h := sumdb.Hash(sha256.Sum256(nil))
	if n > 0 {
		var err error
		if h, err = sumdb.TreeHash(n, f.reader()); err != nil {
			return nil, err
		}
	}
	b, err := (&types.LogRootV1{TreeSize: uint64(n), RootHash: h[:]}).MarshalBinary()
	if err != nil {
		return nil, err
	}
	return &trillian.SignedLogRoot{LogRoot: b}, nil
}

func (f *fakeTrillian) GetLatestSignedLogRoot(ctx context.Context, req *trillian.GetLatestSignedLogRootRequest, _ ...grpc.CallOption) (*trillian.GetLatestSignedLogRootResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(req.LogId); err != nil {
		return nil, err
	}
	f.sequence()
	r, err := f.root()
	return &trillian.GetLatestSignedLogRootResponse{SignedLogRoot: r}, err
}

func (f *fakeTrillian) GetLeavesByRange(ctx context.Context, req *trillian.GetLeavesByRangeRequest, _ ...grpc.CallOption) (*trillian.GetLeavesByRangeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(req.LogId); err != nil {
		return nil, err
	}
	if req.StartIndex < 0 || req.Count <= 0 {
		return nil, status.Error(codes.InvalidArgument, "bad range")
	}
	resp := &trillian.GetLeavesByRangeResponse{}
	// Like Trillian, answer at most a few leaves per call: the Log must
	// loop.
	end := min(req.StartIndex+min(req.Count, 100), int64(len(f.leaves)))
	for i := req.StartIndex; i < end; i++ {
		lf := f.leaves[i]
		v := bytes.Clone(lf.LeafValue)
		if f.serve != nil {
			v = f.serve(i, v)
		}
		resp.Leaves = append(resp.Leaves, &trillian.LogLeaf{
			LeafValue: v, LeafIdentityHash: lf.LeafIdentityHash, MerkleLeafHash: lf.MerkleLeafHash, LeafIndex: i,
		})
	}
	return resp, nil
}

func (f *fakeTrillian) GetInclusionProof(ctx context.Context, req *trillian.GetInclusionProofRequest, _ ...grpc.CallOption) (*trillian.GetInclusionProofResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(req.LogId); err != nil {
		return nil, err
	}
	f.inclusionCalls++
	if req.TreeSize > int64(len(f.leaves)) {
		return &trillian.GetInclusionProofResponse{}, nil // as Trillian does
	}
	p, err := sumdb.ProveRecord(req.TreeSize, req.LeafIndex, f.reader())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &trillian.GetInclusionProofResponse{Proof: &trillian.Proof{LeafIndex: req.LeafIndex, Hashes: flat(p)}}, nil
}

func (f *fakeTrillian) GetConsistencyProof(ctx context.Context, req *trillian.GetConsistencyProofRequest, _ ...grpc.CallOption) (*trillian.GetConsistencyProofResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(req.LogId); err != nil {
		return nil, err
	}
	if req.SecondTreeSize > int64(len(f.leaves)) {
		return &trillian.GetConsistencyProofResponse{}, nil
	}
	p, err := sumdb.ProveTree(req.SecondTreeSize, req.FirstTreeSize, f.reader())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &trillian.GetConsistencyProofResponse{Proof: &trillian.Proof{Hashes: flat(p)}}, nil
}

func flat(p []sumdb.Hash) [][]byte {
	out := make([][]byte, len(p))
	for i := range p {
		out[i] = bytes.Clone(p[i][:])
	}
	return out
}

// truncate rolls the tree back to n leaves, as a database restored from an
// old backup would.
func (f *fakeTrillian) truncate(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sequence()
	f.leaves = f.leaves[:n]
	f.stored = f.stored[:sumdb.StoredHashCount(int64(n))]
}

// rewrite replaces the whole tree by the given entries (a fork).
func (f *fakeTrillian) rewrite(entries [][]byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.leaves, f.stored, f.queued = nil, nil, nil
	for _, e := range entries {
		id := sha256.Sum256(e)
		f.queued = append(f.queued, &trillian.LogLeaf{LeafValue: e, LeafIdentityHash: id[:]})
	}
	f.sequence()
}

// TestConformanceFake runs the conformance suite against the in-memory
// Trillian, so the Log's logic is tested without servers.
func TestConformanceFake(t *testing.T) {
	signer, v := testSigner(t)
	type opened struct {
		f    *fakeTrillian
		path string
	}
	logs := map[tlog.Backend]opened{}
	open := func(t *testing.T, o opened) tlog.Backend {
		l, err := New(context.Background(), Config{Client: o.f, TreeID: o.f.tree, Signer: signer, StatePath: o.path, PollInterval: fastPoll})
		if err != nil {
			t.Fatal(err)
		}
		logs[l] = o
		return l
	}
	tlogtest.Run(t, tlogtest.Harness{
		Origin:   testOrigin,
		Verifier: v,
		New: func(t *testing.T) tlog.Backend {
			return open(t, opened{newFake(42), filepath.Join(t.TempDir(), "state")})
		},
		Reopen: func(t *testing.T, b tlog.Backend) tlog.Backend {
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			return open(t, logs[b])
		},
	})
}

func newFakeLog(t *testing.T, f *fakeTrillian, path string) *Log {
	t.Helper()
	signer, _ := testSigner(t)
	l, err := New(context.Background(), Config{Client: f, TreeID: f.tree, Signer: signer, StatePath: path, PollInterval: fastPoll})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// TestQueueRetry checks that QueueLeaf is retried while Trillian is
// unavailable, and that a retry after a lost answer logs the entry once.
func TestQueueRetry(t *testing.T) {
	ctx := context.Background()
	f := newFake(7)
	l := newFakeLog(t, f, filepath.Join(t.TempDir(), "state"))
	f.mu.Lock()
	f.loseNext, f.downNext = 2, 1
	f.mu.Unlock()
	i, cp, err := l.Append(ctx, []byte("once"))
	if err != nil {
		t.Fatal(err)
	}
	if i != 0 || cp.Size != 1 {
		t.Fatalf("Append after lost answers = index %d, size %d; want 0, 1 (logged once)", i, cp.Size)
	}
	if _, _, err := l.Append(ctx, []byte("twice")); err != nil {
		t.Fatal(err)
	}
	if cp, _ := l.Checkpoint(ctx); cp.Size != 2 {
		t.Fatalf("log size %d after two appends, want 2", cp.Size)
	}
}

// TestAppendTimeout checks that an Append whose entry is queued but not yet
// integrated does not give up when its context ends (the entry would be
// logged although the caller was told it failed): it returns once the entry
// is integrated, with its index, and the entry is in the log. A context
// done before the call sends nothing.
func TestAppendTimeout(t *testing.T) {
	f := newFake(7)
	l := newFakeLog(t, f, filepath.Join(t.TempDir(), "state"))
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := l.Append(done, []byte("never")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Append with a done context: err = %v, want Canceled", err)
	}
	f.mu.Lock()
	f.integrate = false
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	type result struct {
		index uint64
		err   error
	}
	res := make(chan result, 1)
	go func() {
		i, _, err := l.Append(ctx, []byte("slow"))
		res <- result{i, err}
	}()
	select {
	case r := <-res:
		t.Fatalf("Append with a stuck signer returned %d, %v before its entry was integrated", r.index, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	f.mu.Lock()
	f.integrate = true
	f.mu.Unlock()
	if r := <-res; r.err != nil || r.index != 0 {
		t.Fatalf("Append of the queued entry = %d, %v; want index 0", r.index, r.err)
	}
	i, _, err := l.Append(context.Background(), []byte("next"))
	if err != nil || i != 1 {
		t.Fatalf("Append = %d, %v; want index 1 after the queued entry", i, err)
	}
	got, err := l.Entries(context.Background(), 0, 2)
	if err != nil || string(got[0]) != "slow" {
		t.Fatalf("Entries = %q, %v; want the timed-out entry first", got, err)
	}
}

// TestRollbackAndForkDetected checks that a Trillian that lost signed leaves
// or rewrote them is refused, on append and on restart, and that the Log
// then refuses all appends.
func TestRollbackAndForkDetected(t *testing.T) {
	ctx := context.Background()
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
			f := newFake(9)
			path := filepath.Join(t.TempDir(), "state")
			l := newFakeLog(t, f, path)
			for _, e := range []string{"a", "b", "c", "d", "e"} {
				if _, _, err := l.Append(ctx, []byte(e)); err != nil {
					t.Fatal(err)
				}
			}
			before, _ := l.Checkpoint(ctx)
			tc.damage(f)
			if _, _, err := l.Append(ctx, []byte("f")); !errors.Is(err, tlog.ErrConflict) {
				t.Fatalf("Append on a damaged tree: err = %v, want ErrConflict", err)
			}
			if _, _, err := l.Append(ctx, []byte("g")); !errors.Is(err, tlog.ErrConflict) {
				t.Fatalf("second Append on a damaged tree: err = %v, want ErrConflict", err)
			}
			if after, _ := l.Checkpoint(ctx); after.Root != before.Root {
				t.Fatalf("checkpoint moved from %d to %d on a damaged tree", before.Size, after.Size)
			}
			l.Close()
			signer, _ := testSigner(t)
			if _, err := New(ctx, Config{Client: f, TreeID: f.tree, Signer: signer, StatePath: path, PollInterval: fastPoll}); !errors.Is(err, tlog.ErrConflict) {
				t.Fatalf("New on a damaged tree: err = %v, want ErrConflict", err)
			}
		})
	}
}

func (f *fakeTrillian) values() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out [][]byte
	for _, lf := range f.leaves {
		out = append(out, bytes.Clone(lf.LeafValue))
	}
	return out
}

// TestStateTampering checks that New refuses a state file whose checkpoint
// is not signed by the log's key or whose range does not match it.
func TestStateTampering(t *testing.T) {
	ctx := context.Background()
	f := newFake(11)
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
	signer, _ := testSigner(t)
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
			if l, err := New(ctx, Config{Client: f, TreeID: f.tree, Signer: signer, StatePath: p}); err == nil {
				l.Close()
				t.Fatal("New accepted a tampered state file")
			}
		})
	}
}

// fastPoll: the fake integrates on every root request, so waiting for
// Trillian's signer is pointless.
const fastPoll = 50 * time.Microsecond

// TestReceiptProofsLocal checks that the inclusion proof of an appended
// entry in the checkpoint Append returned is computed without asking
// Trillian, and verifies; other proofs are Trillian's.
func TestReceiptProofsLocal(t *testing.T) {
	ctx := context.Background()
	f := newFake(13)
	l := newFakeLog(t, f, filepath.Join(t.TempDir(), "state"))
	// Like kbsd, each appender asks for its receipt's proof right after
	// Append returns; the Log keeps the proofs of the last keptProofSets
	// signed trees, so a few concurrent appenders always find theirs.
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
	f.mu.Lock()
	calls := f.inclusionCalls
	f.mu.Unlock()
	if calls != 0 {
		t.Errorf("receipt proofs asked Trillian %d times, want 0", calls)
	}
	// A proof in a tree the Log signed long ago comes from Trillian.
	if _, err := l.InclusionProof(ctx, 0, 100); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	calls = f.inclusionCalls
	f.mu.Unlock()
	if calls != 1 {
		t.Errorf("an older entry's proof asked Trillian %d times, want 1", calls)
	}
}

// TestCloseFailsWaitingAppends checks that Close makes appends that wait for
// integration fail with ErrClosed, and later appends too.
func TestCloseFailsWaitingAppends(t *testing.T) {
	f := newFake(15)
	signer, _ := testSigner(t)
	l, err := New(context.Background(), Config{Client: f, TreeID: f.tree, Signer: signer, StatePath: filepath.Join(t.TempDir(), "state"), PollInterval: fastPoll})
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.integrate = false
	f.mu.Unlock()
	errc := make(chan error, 4)
	for range 4 {
		go func() {
			_, _, err := l.Append(context.Background(), []byte("stuck"))
			errc <- err
		}()
	}
	for {
		f.mu.Lock()
		n := len(f.queued)
		f.mu.Unlock()
		if n == 4 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if err := <-errc; !errors.Is(err, ErrClosed) {
			t.Errorf("Append waiting at Close: err = %v, want ErrClosed", err)
		}
	}
	if _, _, err := l.Append(context.Background(), []byte("late")); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close: err = %v, want ErrClosed", err)
	}
}

// TestForeignBytesUnderOurIdentity checks that a leaf carrying an append's
// identity hash but other bytes does not complete that append, and that a
// leaf integrated twice completes it once, at its first index.
func TestForeignBytesUnderOurIdentity(t *testing.T) {
	ctx := context.Background()
	f := newFake(17)
	l := newFakeLog(t, f, filepath.Join(t.TempDir(), "state"))
	f.mu.Lock()
	f.tamper = func(lf *trillian.LogLeaf) []*trillian.LogLeaf {
		if string(lf.LeafValue) == "swap me" {
			return []*trillian.LogLeaf{{LeafValue: []byte("other bytes"), LeafIdentityHash: lf.LeafIdentityHash}}
		}
		if string(lf.LeafValue) == "twice" {
			return []*trillian.LogLeaf{lf, {LeafValue: lf.LeafValue, LeafIdentityHash: lf.LeafIdentityHash}}
		}
		return []*trillian.LogLeaf{lf}
	}
	f.mu.Unlock()
	tctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if i, _, err := l.Append(tctx, []byte("swap me")); err == nil {
		t.Fatalf("Append completed at index %d although Trillian logged other bytes", i)
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
	ctx := context.Background()
	f := newFake(19)
	l := newFakeLog(t, f, filepath.Join(t.TempDir(), "state"))
	for i := range 10 {
		if _, _, err := l.Append(ctx, []byte(fmt.Sprintf("entry %d", i))); err != nil {
			t.Fatal(err)
		}
	}
	f.mu.Lock()
	f.serve = func(i int64, v []byte) []byte {
		if i == 4 {
			return []byte("forged")
		}
		return v
	}
	f.mu.Unlock()
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
}
