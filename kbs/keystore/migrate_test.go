package keystore

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// oldLayoutDB returns the bytes of the committed store of the old layout
// (testdata/oldlayout, see gen.go there).
func oldLayoutDB() ([]byte, error) {
	f, err := os.Open("testdata/oldlayout/kbs.db.gz")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(zr)
}

// openOldCopy writes raw (an old-layout database) and the committed
// sealing key into a new directory and opens the database.
func openOldCopy(t testing.TB, raw []byte) (*bbolt.DB, Sealer) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "kbs.db"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile("testdata/oldlayout/sealing.key")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sealing.key"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := bbolt.Open(filepath.Join(dir, "kbs.db"), 0o600, &bbolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	return db, &SimSealer{Path: filepath.Join(dir, "sealing.key")}
}

// oldStore opens a copy of the committed store of the old layout.
func oldStore(t *testing.T) (*bbolt.DB, Sealer) {
	t.Helper()
	raw, err := oldLayoutDB()
	if err != nil {
		t.Fatal(err)
	}
	db, sealer := openOldCopy(t, raw)
	t.Cleanup(func() { db.Close() })
	if err := db.View(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketRoot).Bucket(bucketOldKeys) == nil {
			return errors.New("no old key records")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return db, sealer
}

// TestMigrateOldLayout opens a store written by the key store before
// per-version records (live, deleted and staged keys) and checks that it
// reads and works as it did: every version, the staged changes and their
// data keys survive, and the old records are gone.
func TestMigrateOldLayout(t *testing.T) {
	db, sealer := oldStore(t)
	s, err := Open(context.Background(), db, sealer)
	if err != nil {
		t.Fatal(err)
	}
	checkMigrated(t, db, s)
	// Opening again changes nothing.
	if s, err = Open(context.Background(), db, sealer); err != nil {
		t.Fatal(err)
	}
	checkMigrated(t, db, s)
}

// TestMigrateInterrupted stops the migration after its first batch, as a
// crash would, and checks that the next Open finishes it.
func TestMigrateInterrupted(t *testing.T) {
	defer func(n int) { migrateBatch = n }(migrateBatch)
	migrateBatch = 2
	db, sealer := oldStore(t)
	ctx := &stopAfter{Context: context.Background(), n: 1}
	if _, err := Open(ctx, db, sealer); !errors.Is(err, context.Canceled) {
		t.Fatalf("Open with the migration stopped = %v, want context.Canceled", err)
	}
	var left int
	db.View(func(tx *bbolt.Tx) error {
		left = tx.Bucket(bucketRoot).Bucket(bucketOldKeys).Stats().KeyN
		return nil
	})
	if left != 4 {
		t.Fatalf("%d old records left after one batch of 2, want 4", left)
	}
	s, err := Open(context.Background(), db, sealer)
	if err != nil {
		t.Fatal(err)
	}
	checkMigrated(t, db, s)
}

// stopAfter is a context whose Err is context.Canceled after n calls.
type stopAfter struct {
	context.Context
	n int
}

func (c *stopAfter) Err() error {
	if c.n == 0 {
		return context.Canceled
	}
	c.n--
	return nil
}

func checkMigrated(t *testing.T, db *bbolt.DB, s *Store) {
	t.Helper()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	k, err := s.Get("demo/a")
	if err != nil || k.Version != 2 || string(k.Material) != "demo/a version 2" {
		t.Fatalf("Get(demo/a) = %+v, %v", k, err)
	}
	m, err := s.Meta("demo/a")
	want := Meta{ID: "demo/a", Version: 2, Client: "c2", Created: t0, VersionCreated: t0.Add(time.Hour), SealedDigest: k.SealedDigest}
	if err != nil || m != want {
		t.Fatalf("Meta(demo/a) = %+v, %v; want %+v", m, err, want)
	}
	var versions int
	db.View(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketRoot).Bucket(bucketOldKeys) != nil {
			t.Error("the old records are still there")
		}
		v := tx.Bucket(bucketRoot).Bucket(bucketVersions)
		for _, n := range []uint64{1, 2} {
			if v.Get(versionKey("demo/a", n)) != nil {
				versions++
			}
		}
		return nil
	})
	if versions != 2 {
		t.Errorf("demo/a has %d version records, want 2", versions)
	}
	if m, err := s.Meta("demo/b"); err != nil || !m.Deleted || m.Version != 1 || m.SealedDigest != "" {
		t.Errorf("Meta(demo/b) = %+v, %v; want version 1 deleted", m, err)
	}
	if n, _ := s.NextVersion("demo/b"); n != 2 {
		t.Errorf("NextVersion(demo/b) = %d, want 2", n)
	}
	if sec, err := s.Secret("identity"); err != nil || string(sec) != "a broker secret" {
		t.Errorf("Secret = %q, %v", sec, err)
	}
	p, err := s.PendingChanges()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range p {
		got = append(got, c.ID+" "+c.Op)
	}
	if want := []string{"demo/c put", "demo/d put", "demo/e delete", "demo/f put"}; !slices.Equal(got, want) {
		t.Fatalf("PendingChanges = %v, want %v", got, want)
	}
	if p[0].Version != 2 || p[0].LogSize != 10 || p[0].Client != "c1" || p[0].SealedDigest == "" {
		t.Errorf("staged put of demo/c = %+v", p[0])
	}
	// The staged changes still commit, on a copy (the store is checked
	// again after a reopen).
	if _, err := s.Get("demo/e"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(demo/e) with its deletion staged = %v, want ErrNotFound", err)
	}
	if k, err := s.Get("demo/c"); err != nil || k.Version != 1 {
		t.Errorf("Get(demo/c) with version 2 staged = %+v, %v", k, err)
	}
	cp := copyStore(t, db, s)
	for _, id := range []string{"demo/c", "demo/d", "demo/e", "demo/f"} {
		if err := cp.Commit(id); err != nil {
			t.Fatalf("Commit(%s): %v", id, err)
		}
	}
	for id, want := range map[string]string{"demo/c": "demo/c version 2, staged", "demo/d": "demo/d version 1, staged", "demo/f": "demo/f version 2, staged"} {
		if k, err := cp.Get(id); err != nil || !bytes.Equal(k.Material, []byte(want)) {
			t.Errorf("Get(%s) after commit = %+v, %v; want %q", id, k, err, want)
		}
	}
	if m, err := cp.Meta("demo/e"); err != nil || !m.Deleted {
		t.Errorf("Meta(demo/e) after commit = %+v, %v", m, err)
	}
}

// copyStore returns a store on a copy of s's database.
func copyStore(t *testing.T, db *bbolt.DB, s *Store) *Store {
	t.Helper()
	path := filepath.Join(t.TempDir(), "copy.db")
	if err := db.View(func(tx *bbolt.Tx) error { return tx.CopyFile(path, 0o600) }); err != nil {
		t.Fatal(err)
	}
	cdb := openDB(t, path)
	t.Cleanup(func() { cdb.Close() })
	return &Store{db: cdb, master: s.master}
}

// BenchmarkMigrate times the migration of a store of 100,000 keys of the
// old layout (one version each, written here as the old key store wrote
// them) on every iteration.
func BenchmarkMigrate(b *testing.B) {
	const keys = 100000
	dir := b.TempDir()
	path := filepath.Join(dir, "kbs.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	sealer := &SimSealer{Path: filepath.Join(dir, "k")}
	s, err := Open(context.Background(), db, sealer)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Unix(1700000000, 0).UTC()
	err = db.Update(func(tx *bbolt.Tx) error {
		old, err := tx.Bucket(bucketRoot).CreateBucket(bucketOldKeys)
		if err != nil {
			return err
		}
		for i := range keys {
			id := fmt.Sprintf("demo/m/%07d", i)
			wrapped, err := seal(s.master, make([]byte, 32), dekAD(id))
			if err != nil {
				return err
			}
			dek, err := s.dek(id, wrapped)
			if err != nil {
				return err
			}
			ct, err := seal(dek, []byte("old layout material"), materialAD(id, 1))
			if err != nil {
				return err
			}
			raw, err := json.Marshal(&oldKeyRecord{ID: id, Version: 1, Client: "c", Created: now, WrappedDEK: wrapped,
				Versions: []versionRecord{{Version: 1, Client: "c", Created: now, Ciphertext: ct}}})
			if err != nil {
				return err
			}
			if err := old.Put([]byte(id), raw); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	db.Close()
	orig, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		if err := os.WriteFile(path, orig, 0o600); err != nil {
			b.Fatal(err)
		}
		db, err := bbolt.Open(path, 0o600, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := Open(context.Background(), db, sealer); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		db.Close()
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/100k-keys")
}
