package boltlog

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/tlogtest"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/mod/sumdb/note"
	sumdb "golang.org/x/mod/sumdb/tlog"
)

const testOrigin = tlog.OriginPrefix + "test"

// testSigner returns a deterministic checkpoint signer for tests.
// testSigner returns a deterministic checkpoint signer for tests; t may be
// nil (in a crash-test child).
func testSigner(t testing.TB) (*tlog.CheckpointSigner, note.Verifier) {
	priv := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	s, v, _, err := tlog.NewEd25519NoteKeys(testOrigin, priv)
	if err != nil {
		panic(err)
	}
	cs, err := tlog.NewCheckpointSigner(testOrigin, s, v)
	if err != nil {
		panic(err)
	}
	return cs, v
}

func TestConformance(t *testing.T) {
	signer, v := testSigner(t)
	paths := map[tlog.Backend]string{}
	tlogtest.Run(t, tlogtest.Harness{
		Origin:   testOrigin,
		Verifier: v,
		New: func(t *testing.T) tlog.Backend {
			path := filepath.Join(t.TempDir(), "kbs.db")
			l, err := Open(path, Config{Signer: signer})
			if err != nil {
				t.Fatal(err)
			}
			paths[l] = path
			return l
		},
		Reopen: func(t *testing.T, b tlog.Backend) tlog.Backend {
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			l, err := Open(paths[b], Config{Signer: signer})
			if err != nil {
				t.Fatalf("reopening: %v", err)
			}
			paths[l] = paths[b]
			return l
		},
	})
}

func newTestLog(t *testing.T, db *bolt.DB) *Log {
	t.Helper()
	signer, _ := testSigner(t)
	var l *Log
	var err error
	if db == nil {
		l, err = Open(filepath.Join(t.TempDir(), "kbs.db"), Config{Signer: signer})
	} else {
		l, err = New(db, Config{Signer: signer})
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// appendN appends n entries from 32 goroutines (group commit keeps this
// fast) and returns them in log order.
func appendN(t *testing.T, l *Log, n int) [][]byte {
	t.Helper()
	cp, _ := l.Checkpoint(context.Background())
	out := make([][]byte, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := g; i < n; i += 32 {
				e := []byte(fmt.Sprintf("entry %d", i))
				idx, _, err := l.Append(context.Background(), e)
				mu.Lock()
				if err == nil && (idx < cp.Size || idx >= cp.Size+uint64(n)) {
					err = fmt.Errorf("index %d out of range", idx)
				}
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if err == nil {
					out[idx-cp.Size] = e
				}
				mu.Unlock()
			}
		}(g)
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	return out
}

// TestRFC6962Vectors appends the reference leaves and checks roots and
// proofs against the known answers in testdata.
func TestRFC6962Vectors(t *testing.T) {
	b, err := os.ReadFile("../testdata/rfc6962.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Leaves, Roots []string
		Inclusion     []struct {
			Index, Size uint64
			Proof       []string
		}
		Consistency []struct {
			Size1, Size2 uint64
			Proof        []string
		}
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	l := newTestLog(t, nil)
	cp, _ := l.Checkpoint(ctx)
	if hex.EncodeToString(cp.Hash[:]) != v.Roots[0] {
		t.Fatalf("empty root = %x, want %s", cp.Hash, v.Roots[0])
	}
	for i, leaf := range v.Leaves {
		e, _ := hex.DecodeString(leaf)
		_, cp, err := l.Append(ctx, e)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(cp.Hash[:]); got != v.Roots[i+1] {
			t.Fatalf("root after %d leaves = %s, want %s", i+1, got, v.Roots[i+1])
		}
	}
	str := func(p []tlog.Hash) string {
		var s []string
		for _, h := range p {
			s = append(s, hex.EncodeToString(h[:]))
		}
		return strings.Join(s, ",")
	}
	for _, c := range v.Inclusion {
		p, err := l.InclusionProof(ctx, c.Index, c.Size)
		if err != nil || str(p) != strings.Join(c.Proof, ",") {
			t.Errorf("InclusionProof(%d, %d) = %s, %v; want %s", c.Index, c.Size, str(p), err, strings.Join(c.Proof, ","))
		}
	}
	for _, c := range v.Consistency {
		p, err := l.ConsistencyProof(ctx, c.Size1, c.Size2)
		if err != nil || str(p) != strings.Join(c.Proof, ",") {
			t.Errorf("ConsistencyProof(%d, %d) = %s, %v; want %s", c.Size1, c.Size2, str(p), err, strings.Join(c.Proof, ","))
		}
	}
}

// TestSumdbInterop checks the backend's proofs and tiles with
// x/mod/sumdb/tlog: CheckRecord, CheckTree, and TileHashReader over the
// backend's tiles.
func TestSumdbInterop(t *testing.T) {
	ctx := context.Background()
	l := newTestLog(t, nil)
	entries := appendN(t, l, 1000)
	cp, _ := l.Checkpoint(ctx)
	tree := sumdb.Tree{N: int64(cp.Size), Hash: cp.Hash}
	tr := sumdb.TileHashReader(tree, &backendTiles{l: l})
	for _, i := range []int64{0, 1, 255, 256, 500, 999} {
		p, err := l.InclusionProof(ctx, uint64(i), cp.Size)
		if err != nil {
			t.Fatal(err)
		}
		if err := sumdb.CheckRecord(p, tree.N, tree.Hash, i, sumdb.RecordHash(entries[i])); err != nil {
			t.Errorf("CheckRecord(%d): %v", i, err)
		}
		tp, err := sumdb.ProveRecord(tree.N, i, tr)
		if err != nil {
			t.Fatalf("ProveRecord from tiles: %v", err)
		}
		if err := sumdb.CheckRecord(tp, tree.N, tree.Hash, i, sumdb.RecordHash(entries[i])); err != nil {
			t.Errorf("CheckRecord(%d) with a proof from tiles: %v", i, err)
		}
	}
	for _, n := range []int64{1, 2, 255, 256, 257, 999} {
		p, err := l.ConsistencyProof(ctx, uint64(n), cp.Size)
		if err != nil {
			t.Fatal(err)
		}
		old, err := sumdb.TreeHash(n, tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := sumdb.CheckTree(p, tree.N, tree.Hash, n, old); err != nil {
			t.Errorf("CheckTree(%d): %v", n, err)
		}
	}
}

type backendTiles struct{ l *Log }

func (b *backendTiles) Height() int { return 8 }
func (b *backendTiles) ReadTiles(tiles []sumdb.Tile) ([][]byte, error) {
	var out [][]byte
	for _, t := range tiles {
		d, err := b.l.HashTile(context.Background(), t.L, uint64(t.N), t.W)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}
func (b *backendTiles) SaveTiles([]sumdb.Tile, [][]byte) {}

// TestSharedDB runs the log in a database that holds other buckets, as
// kbsd does.
func TestSharedDB(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "kbs.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("keys"))
		if err != nil {
			return err
		}
		return b.Put([]byte("k"), []byte("v"))
	}); err != nil {
		t.Fatal(err)
	}
	l := newTestLog(t, db)
	appendN(t, l, 10)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// The database stays open and usable; the log reopens in it.
	if err := db.View(func(tx *bolt.Tx) error {
		if string(tx.Bucket([]byte("keys")).Get([]byte("k"))) != "v" {
			return errors.New("other bucket changed")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	l2 := newTestLog(t, db)
	if cp, _ := l2.Checkpoint(context.Background()); cp.Size != 10 {
		t.Fatalf("reopened size %d", cp.Size)
	}
	nosync, err := bolt.Open(filepath.Join(t.TempDir(), "nosync.db"), 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer nosync.Close()
	signer, _ := testSigner(t)
	if _, err := New(nosync, Config{Signer: signer}); err == nil {
		t.Error("NoSync database accepted")
	}
}

// TestOpenDetectsCorruption edits the store behind the log's back and
// checks that Open or Verify refuses it.
func TestOpenDetectsCorruption(t *testing.T) {
	signer, _ := testSigner(t)
	otherPriv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))
	osg, ov, _, _ := tlog.NewEd25519NoteKeys(testOrigin, otherPriv)
	otherSigner, _ := tlog.NewCheckpointSigner(testOrigin, osg, ov)
	cases := []struct {
		name    string
		edit    func(b *bolt.Bucket) error
		atOpen  bool
		wantErr string
		// readErr is what tlog.ReadVerified says ("" when the entries
		// are intact).
		readErr string
	}{
		{"entry changed", func(b *bolt.Bucket) error {
			return b.Bucket(entriesBucket).Put(key(100), []byte("forged"))
		}, false, "does not match entry 100", "entries [0, 256) do not match"},
		{"entry in the last, partial tile changed", func(b *bolt.Bucket) error {
			return b.Bucket(entriesBucket).Put(key(290), []byte("forged"))
		}, false, "does not match entry 290", "entry 290 does not match"},
		{"last entry deleted", func(b *bolt.Bucket) error {
			return b.Bucket(entriesBucket).Delete(key(299))
		}, true, "exactly the 300 entries", ""},
		{"extra entry", func(b *bolt.Bucket) error {
			return b.Bucket(entriesBucket).Put(key(300), []byte("extra"))
		}, true, "exactly the 300 entries", ""},
		{"root-path hash changed", func(b *bolt.Bucket) error {
			k := key(uint64(sumdb.StoredHashIndex(8, 0)))
			return b.Bucket(hashesBucket).Put(k, make([]byte, 32))
		}, true, "has root", ""},
		{"leaf hash changed", func(b *bolt.Bucket) error {
			return b.Bucket(hashesBucket).Put(key(uint64(sumdb.StoredHashIndex(0, 3))), make([]byte, 32))
		}, false, "does not match entry 3", ""},
		{"leaf hash in the last, partial tile changed", func(b *bolt.Bucket) error {
			return b.Bucket(hashesBucket).Put(key(uint64(sumdb.StoredHashIndex(0, 290))), make([]byte, 32))
		}, false, "does not match entry 290", "do not verify against its checkpoint"},
		{"checkpoint by another key", func(b *bolt.Bucket) error {
			cp, err := otherSigner.Sign(nil, tlog.Root{Size: 0, Hash: tlog.EmptyRoot}, nil)
			if err != nil {
				return err
			}
			return b.Bucket(metaBucket).Put(checkpointKey, cp.Note)
		}, true, "stored checkpoint", ""},
		{"checkpoint removed", func(b *bolt.Bucket) error {
			return b.Bucket(metaBucket).Delete(checkpointKey)
		}, true, "no checkpoint", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kbs.db")
			l, err := Open(path, Config{Signer: signer})
			if err != nil {
				t.Fatal(err)
			}
			appendN(t, l, 300)
			if err := l.Verify(context.Background()); err != nil {
				t.Fatalf("Verify of a good log: %v", err)
			}
			if err := l.db.Update(func(tx *bolt.Tx) error { return c.edit(tx.Bucket([]byte("tlog"))) }); err != nil {
				t.Fatal(err)
			}
			l.Close()
			l, err = Open(path, Config{Signer: signer})
			if c.atOpen {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("Open = %v, want error containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer l.Close()
			if err := l.Verify(context.Background()); err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("Verify = %v, want error containing %q", err, c.wantErr)
			}
			// What the broker reads at start: entries checked against
			// the signed tree.
			cp, _ := l.Checkpoint(context.Background())
			err = tlog.ReadVerified(context.Background(), l, cp, 0, func(uint64, []byte) error { return nil })
			if c.readErr == "" && err != nil || c.readErr != "" && (err == nil || !strings.Contains(err.Error(), c.readErr)) {
				t.Fatalf("ReadVerified = %v, want %q", err, c.readErr)
			}
		})
	}
}

// TestCommitFailureStopsLog changes the stored checkpoint behind the log's
// back; the next commit must fail, and so must every later append.
func TestCommitFailureStopsLog(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "kbs.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	l := newTestLog(t, db)
	appendN(t, l, 3)
	before, _ := l.Checkpoint(context.Background())
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("tlog")).Bucket(metaBucket).Put(checkpointKey, []byte("x"))
	}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.Append(context.Background(), []byte("a")); !errors.Is(err, tlog.ErrUnknownOutcome) {
		t.Fatalf("append after the store changed: %v, want an error of unknown outcome", err)
	}
	if _, _, err := l.Append(context.Background(), []byte("b")); err == nil || !strings.Contains(err.Error(), "stopped") {
		t.Fatalf("second append: %v", err)
	}
	if after, _ := l.Checkpoint(context.Background()); after.Root != before.Root {
		t.Fatal("failed appends changed the checkpoint")
	}
	var n int
	db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket([]byte("tlog")).Bucket(entriesBucket).Stats().KeyN
		return nil
	})
	if n != 3 {
		t.Fatalf("%d entries stored after failed appends, want 3", n)
	}
}

// TestReadersDuringAppends runs proofs and tile reads against returned
// checkpoints while appends continue (for the race detector).
func TestReadersDuringAppends(t *testing.T) {
	ctx := context.Background()
	l := newTestLog(t, nil)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				cp, _ := l.Checkpoint(ctx)
				if cp.Size == 0 {
					continue
				}
				p, err := l.InclusionProof(ctx, cp.Size-1, cp.Size)
				if err != nil {
					t.Error(err)
					return
				}
				es, err := l.Entries(ctx, cp.Size-1, cp.Size)
				if err != nil {
					t.Error(err)
					return
				}
				if err := tlog.VerifyInclusion(cp, cp.Size-1, es[0], p); err != nil {
					t.Error(err)
					return
				}
				if _, err := l.HashTile(ctx, 0, (cp.Size-1)/256, int((cp.Size-1)%256+1)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	var aw sync.WaitGroup
	for w := 0; w < 8; w++ {
		aw.Add(1)
		go func(w int) {
			defer aw.Done()
			for i := 0; i < 50; i++ {
				if _, _, err := l.Append(ctx, []byte(fmt.Sprintf("%d-%d", w, i))); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	aw.Wait()
	close(stop)
	wg.Wait()
	if err := l.Verify(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestLargeBatches appends more concurrent maximum-size entries than one
// transaction takes (maxBatchBytes), so batches split on bytes.
func TestLargeBatches(t *testing.T) {
	ctx := context.Background()
	l := newTestLog(t, nil)
	const n = maxBatchBytes/tlog.MaxEntrySize + 60
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			e := bytes.Repeat([]byte{byte(i)}, tlog.MaxEntrySize)
			idx, cp, err := l.Append(ctx, e)
			if err == nil && cp.Size <= idx {
				err = fmt.Errorf("index %d not in checkpoint %d", idx, cp.Size)
			}
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if cp, _ := l.Checkpoint(ctx); cp.Size != n {
		t.Fatalf("size %d, want %d", cp.Size, n)
	}
	if err := l.Verify(ctx); err != nil {
		t.Fatal(err)
	}
}
