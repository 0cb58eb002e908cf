package trillianlog

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/trillian"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/transparency-dev/merkle/proof"
	"golang.org/x/mod/sumdb/note"
	sumdb "golang.org/x/mod/sumdb/tlog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// These tests run against a real trillian_log_server and
// trillian_log_signer: `make test-trillian` starts them (with PostgreSQL)
// and sets KBS_TRILLIAN_ADDR. Without it they are skipped.

const testOrigin = tlog.OriginPrefix + "trillian-test"

func testSigner(t testing.TB) (*tlog.CheckpointSigner, note.Verifier) {
	t.Helper()
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	s, v, _, err := tlog.NewEd25519NoteKeys(testOrigin, priv)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := tlog.NewCheckpointSigner(testOrigin, s, v)
	if err != nil {
		t.Fatal(err)
	}
	return cs, v
}

// trillianConn returns a connection to the Trillian named by
// KBS_TRILLIAN_ADDR, or skips the test.
func trillianConn(t testing.TB) (string, *grpc.ClientConn) {
	t.Helper()
	addr := os.Getenv("KBS_TRILLIAN_ADDR")
	if addr == "" {
		t.Skip("no Trillian: set KBS_TRILLIAN_ADDR, or run `make test-trillian` (starts PostgreSQL and Trillian)")
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return addr, conn
}

func newTree(t testing.TB, conn *grpc.ClientConn, typ trillian.TreeType) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id, err := CreateTreeOfType(ctx, conn, "kbs-test", typ)
	if err != nil {
		t.Fatal(err)
	}
	// Deleted trees leave the signer's rounds; tests create many.
	t.Cleanup(func() {
		trillian.NewTrillianAdminClient(conn).DeleteTree(context.Background(), &trillian.DeleteTreeRequest{TreeId: id})
	})
	return id
}

func TestConformance(t *testing.T) { forEachType(t, testConformance) }

func testConformance(t *testing.T, typ trillian.TreeType) {
	addr, conn := trillianConn(t)
	signer, _ := testSigner(t)
	conformance(t, func(t *testing.T) Config {
		return Config{
			Addr:      addr,
			TreeID:    newTree(t, conn, typ),
			Signer:    signer,
			StatePath: filepath.Join(t.TempDir(), "trillian-state.json"),
		}
	})
}

// TestIdenticalEntries checks that identical entries are logged as distinct
// leaves, although Trillian deduplicates identical leaves by default.
func TestIdenticalEntries(t *testing.T) { forEachType(t, testIdenticalEntries) }

func testIdenticalEntries(t *testing.T, typ trillian.TreeType) {
	addr, conn := trillianConn(t)
	signer, _ := testSigner(t)
	ctx := context.Background()
	l, err := New(ctx, Config{Addr: addr, TreeID: newTree(t, conn, typ), Signer: signer, StatePath: filepath.Join(t.TempDir(), "state")})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e := []byte(`{"type":"key-delete"}`)
	seen := map[uint64]bool{}
	for range 3 {
		i, cp, err := l.Append(ctx, e)
		if err != nil {
			t.Fatal(err)
		}
		if seen[i] {
			t.Fatalf("Append of an identical entry returned index %d again", i)
		}
		seen[i] = true
		p, err := l.InclusionProof(ctx, i, cp.Size)
		if err != nil {
			t.Fatal(err)
		}
		if err := proof.VerifyInclusion(hasher, i, cp.Size, hasher.HashLeaf(e), hashesOf(p), cp.Hash[:]); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
	}
	got, err := l.Entries(ctx, 0, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i, g := range got {
		if !bytes.Equal(g, e) {
			t.Errorf("entry %d = %q, want %q", i, g, e)
		}
	}
}

// TestRefusesForeignTree checks that a state file pointed at a Trillian
// tree that does not extend its checkpoint (another tree, as after a
// database restored from the wrong backup) is refused with ErrConflict,
// and that a non-empty tree without state is refused unless adopted.
func TestRefusesForeignTree(t *testing.T) { forEachType(t, testRefusesForeignTree) }

func testRefusesForeignTree(t *testing.T, typ trillian.TreeType) {
	addr, conn := trillianConn(t)
	signer, _ := testSigner(t)
	ctx := context.Background()
	dir := t.TempDir()
	appendN := func(tree int64, state string, n int, tag string) tlog.SignedCheckpoint {
		t.Helper()
		l, err := New(ctx, Config{Addr: addr, TreeID: tree, Signer: signer, StatePath: state})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		var cp tlog.SignedCheckpoint
		for i := range n {
			if _, cp, err = l.Append(ctx, []byte(tag+string(rune('a'+i)))); err != nil {
				t.Fatal(err)
			}
		}
		return cp
	}
	treeA, treeB, treeC := newTree(t, conn, typ), newTree(t, conn, typ), newTree(t, conn, typ)
	stateA, stateB := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	appendN(treeA, stateA, 3, "A")
	appendN(treeB, stateB, 5, "B") // longer, different leaves
	appendN(treeC, filepath.Join(dir, "c"), 1, "A")

	for _, tc := range []struct {
		name string
		tree int64
	}{
		{"longer tree with other leaves", treeB},
		{"shorter tree", treeC},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Rewrite A's state as if it belonged to the other tree.
			st, err := readState(stateA)
			if err != nil {
				t.Fatal(err)
			}
			st.TreeID = tc.tree
			forged := filepath.Join(t.TempDir(), "state")
			if err := writeState(forged, st); err != nil {
				t.Fatal(err)
			}
			l, err := New(ctx, Config{Addr: addr, TreeID: tc.tree, Signer: signer, StatePath: forged})
			if err == nil {
				l.Close()
				t.Fatal("New accepted a tree that does not extend the signed checkpoint")
			}
			if !errors.Is(err, tlog.ErrConflict) {
				t.Fatalf("New: err = %v, want ErrConflict", err)
			}
		})
	}

	t.Run("state of another tree", func(t *testing.T) {
		_, err := New(ctx, Config{Addr: addr, TreeID: treeB, Signer: signer, StatePath: stateA})
		if err == nil || !strings.Contains(err.Error(), "belongs to tree") {
			t.Fatalf("New with tree A's state on tree B: err = %v", err)
		}
	})

	t.Run("adopt", func(t *testing.T) {
		fresh := filepath.Join(t.TempDir(), "state")
		if _, err := New(ctx, Config{Addr: addr, TreeID: treeB, Signer: signer, StatePath: fresh}); err == nil {
			t.Fatal("New adopted a non-empty tree without Adopt")
		}
		l, err := New(ctx, Config{Addr: addr, TreeID: treeB, Signer: signer, StatePath: fresh, Adopt: true})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		cp, _ := l.Checkpoint(ctx)
		want, err := readState(stateB)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(cp.Note, want.Checkpoint) {
			t.Fatalf("adopted checkpoint\n%s\ndiffers from the one signed while appending\n%s", cp.Note, want.Checkpoint)
		}
	})
}

// TestTilesFromTrillian checks tiles computed from leaves fetched from
// Trillian (a fresh Log with a tiny cache, adopting a tree another Log
// wrote) against tiles computed from the entries by golang.org/x/mod's
// sumdb/tlog, and against the writer's cached tiles.
func TestTilesFromTrillian(t *testing.T) { forEachType(t, testTilesFromTrillian) }

func testTilesFromTrillian(t *testing.T, typ trillian.TreeType) {
	addr, conn := trillianConn(t)
	signer, _ := testSigner(t)
	ctx := context.Background()
	tree := newTree(t, conn, typ)
	w, err := New(ctx, Config{Addr: addr, TreeID: tree, Signer: signer, StatePath: filepath.Join(t.TempDir(), "w")})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	const n, workers = 700, 35
	errs := make(chan error, workers)
	for g := range workers {
		go func() {
			for i := range n / workers {
				_, _, err := w.Append(ctx, fmt.Appendf(nil, "entry %d/%d", g, i))
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	cp, _ := w.Checkpoint(ctx)
	if cp.Size != n {
		t.Fatalf("checkpoint size %d, want %d", cp.Size, n)
	}
	entries, err := w.Entries(ctx, 0, n)
	if err != nil {
		t.Fatal(err)
	}
	var stored []sumdb.Hash
	for i, e := range entries {
		hs, err := sumdb.StoredHashes(int64(i), e, sumdb.HashReaderFunc(func(idx []int64) ([]sumdb.Hash, error) {
			out := make([]sumdb.Hash, len(idx))
			for j, x := range idx {
				out[j] = stored[x]
			}
			return out, nil
		}))
		if err != nil {
			t.Fatal(err)
		}
		stored = append(stored, hs...)
	}
	reader := sumdb.HashReaderFunc(func(idx []int64) ([]sumdb.Hash, error) {
		out := make([]sumdb.Hash, len(idx))
		for j, x := range idx {
			out[j] = stored[x]
		}
		return out, nil
	})

	r, err := New(ctx, Config{Addr: addr, TreeID: tree, Signer: signer, StatePath: filepath.Join(t.TempDir(), "r"), Adopt: true, TileCacheSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, tc := range []struct {
		level int
		index uint64
		width int
	}{
		{0, 0, 256}, {0, 1, 256}, {0, 2, 188}, {0, 2, 1}, {0, 1, 100}, {1, 0, 2}, {1, 0, 1}, {0, 0, 256},
	} {
		want, err := sumdb.ReadTileData(sumdb.Tile{H: 8, L: tc.level, N: int64(tc.index), W: tc.width}, reader)
		if err != nil {
			t.Fatal(err)
		}
		for name, l := range map[string]*Log{"writer": w, "reader": r} {
			got, err := l.HashTile(ctx, tc.level, tc.index, tc.width)
			if err != nil {
				t.Fatalf("%s: HashTile(%d, %d, %d): %v", name, tc.level, tc.index, tc.width, err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s: HashTile(%d, %d, %d) differs from sumdb/tlog's tile", name, tc.level, tc.index, tc.width)
			}
		}
	}
}

// TestTLS appends through a log server that speaks TLS (scripts/trillian.sh
// starts one with a throwaway certificate), and checks that the connection
// fails without the right CA.
func TestTLS(t *testing.T) {
	_, conn := trillianConn(t)
	addr, ca := os.Getenv("KBS_TRILLIAN_TLS_ADDR"), os.Getenv("KBS_TRILLIAN_TLS_CA")
	if addr == "" || ca == "" {
		t.Skip("no TLS Trillian: KBS_TRILLIAN_TLS_ADDR and KBS_TRILLIAN_TLS_CA are set by scripts/trillian.sh when openssl is installed")
	}
	creds, err := credentials.NewClientTLSFromFile(ca, "")
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := testSigner(t)
	tree := newTree(t, conn, trillian.TreeType_PREORDERED_LOG)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for name, opts := range map[string][]grpc.DialOption{
		"plaintext":  nil,
		"system CAs": {grpc.WithTransportCredentials(credentials.NewClientTLSFromCert(nil, ""))},
	} {
		if l, err := New(ctx, Config{Addr: addr, DialOptions: opts, TreeID: tree, Signer: signer, StatePath: filepath.Join(t.TempDir(), "state")}); err == nil {
			l.Close()
			t.Errorf("%s: New succeeded against a TLS server it cannot authenticate", name)
		}
	}
	l, err := New(ctx, Config{Addr: addr, DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(creds)}, TreeID: tree, Signer: signer, StatePath: filepath.Join(t.TempDir(), "state")})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	i, cp, err := l.Append(ctx, []byte("over TLS"))
	if err != nil {
		t.Fatal(err)
	}
	if i != 0 || cp.Size != 1 {
		t.Fatalf("Append over TLS = index %d, size %d; want 0, 1", i, cp.Size)
	}
}

// TestMigrateTrillian moves a log from a LOG tree to a pre-ordered tree on
// a real Trillian and goes on appending there with the same checkpoints.
func TestMigrateTrillian(t *testing.T) {
	addr, conn := trillianConn(t)
	signer, _ := testSigner(t)
	ctx := context.Background()
	from, to := newTree(t, conn, trillian.TreeType_LOG), newTree(t, conn, trillian.TreeType_PREORDERED_LOG)
	path := filepath.Join(t.TempDir(), "state")
	l, err := New(ctx, Config{Addr: addr, TreeID: from, Signer: signer, StatePath: path})
	if err != nil {
		t.Fatal(err)
	}
	var entries [][]byte
	for i := range 40 {
		e := fmt.Appendf(nil, "entry %d", i)
		if _, _, err := l.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
		entries = append(entries, e)
	}
	want, _ := l.Checkpoint(ctx)
	l.Close()
	if err := Migrate(ctx, MigrateConfig{Addr: addr, From: from, To: to, StatePath: path}); err != nil {
		t.Fatal(err)
	}
	l, err = New(ctx, Config{Addr: addr, TreeID: to, Signer: signer, StatePath: path})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if cp, _ := l.Checkpoint(ctx); !bytes.Equal(cp.Note, want.Note) {
		t.Fatalf("checkpoint after Migrate\n%s\nwant\n%s", cp.Note, want.Note)
	}
	i, cp, err := l.Append(ctx, []byte("on the new tree"))
	if err != nil || i != want.Size {
		t.Fatalf("Append after Migrate = %d, %v; want %d", i, err, want.Size)
	}
	p, err := l.ConsistencyProof(ctx, want.Size, cp.Size)
	if err != nil {
		t.Fatal(err)
	}
	if err := proof.VerifyConsistency(hasher, want.Size, cp.Size, hashesOf(p), want.Hash[:], cp.Hash[:]); err != nil {
		t.Fatalf("the new tree does not extend the old checkpoint: %v", err)
	}
	mustHaveEntries(t, l, entries)
}

// BenchmarkAddSequencedLeaves measures Trillian's write path for
// pre-ordered trees alone, without kbs: one AddSequencedLeaves call of
// batch entries (~330 bytes) per op, with identity hashes that start with
// the index, as the Log sends them, or random ones. Against a real
// Trillian (KBS_TRILLIAN_ADDR; scripts/trillian.sh up).
func BenchmarkAddSequencedLeaves(b *testing.B) {
	_, conn := trillianConn(b)
	client := trillian.NewTrillianLogClient(conn)
	ctx := context.Background()
	value := bytes.Repeat([]byte("x"), 330)
	for _, batch := range []int{1, 64, 512} {
		for _, ids := range []string{"ordered", "random"} {
			b.Run(fmt.Sprintf("batch=%d/ids=%s", batch, ids), func(b *testing.B) {
				tree := newTree(b, conn, trillian.TreeType_PREORDERED_LOG)
				next := uint64(0)
				for b.Loop() {
					req := &trillian.AddSequencedLeavesRequest{LogId: tree}
					for range batch {
						id := newLeafID(next)
						if ids == "random" {
							rand.Read(id[:])
						}
						req.Leaves = append(req.Leaves, &trillian.LogLeaf{LeafValue: value, LeafIdentityHash: id[:], LeafIndex: int64(next)})
						next++
					}
					resp, err := client.AddSequencedLeaves(ctx, req)
					if err != nil {
						b.Fatal(err)
					}
					for _, r := range resp.Results {
						if !stored(r) {
							b.Fatalf("leaf not stored: %v", r.GetStatus())
						}
					}
				}
				b.ReportMetric(float64(next)/b.Elapsed().Seconds(), "leaves/s")
			})
		}
	}
}
