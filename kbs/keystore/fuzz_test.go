package keystore

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// FuzzStoredRecord writes arbitrary bytes where the host could (the record
// of a key id in the database) and checks the store: it never panics, and
// whatever it returns as key material is the material that was uploaded;
// nobody without the master key can make it return anything else.
func FuzzStoredRecord(f *testing.F) {
	dir := f.TempDir()
	db, err := bbolt.Open(filepath.Join(dir, "kbs.db"), 0o600, &bbolt.Options{NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { db.Close() })
	s, err := Open(context.Background(), db, &SimSealer{Path: filepath.Join(dir, "k")})
	if err != nil {
		f.Fatal(err)
	}
	material := []byte("the one true key")
	if err := s.Put("demo/a", 1, "c", material, time.Unix(1e9, 0)); err != nil {
		f.Fatal(err)
	}
	if err := s.Put("demo/a", 2, "c", material, time.Unix(1e9, 0)); err != nil {
		f.Fatal(err)
	}
	var orig []byte
	db.View(func(tx *bbolt.Tx) error {
		orig = bytes.Clone(tx.Bucket(bucketRoot).Bucket(bucketKeys).Get([]byte("demo/a")))
		return nil
	})
	f.Add(orig)
	f.Add([]byte(`{"id":"demo/a","version":3,"deleted":true}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, rec []byte) {
		if err := db.Update(func(tx *bbolt.Tx) error {
			return tx.Bucket(bucketRoot).Bucket(bucketKeys).Put([]byte("demo/a"), rec)
		}); err != nil {
			t.Skip(err)
		}
		if k, err := s.Get("demo/a"); err == nil && !bytes.Equal(k.Material, material) {
			t.Fatalf("forged record yields material %q", k.Material)
		}
		s.Meta("demo/a")
		s.List()
		s.NextVersion("demo/a")
	})
}
