package keystore

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// FuzzStoredRecord writes arbitrary bytes where the host could (the
// metadata record of a key id, the record of its latest version, its
// staged change) and checks the store: it never panics, and whatever it
// returns as key material is the material that was uploaded; nobody
// without the master key can make it return anything else.
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
	if _, err := s.PreparePut("demo/a", 3, "c", material, 0, time.Unix(1e9, 0)); err != nil {
		f.Fatal(err)
	}
	type place struct {
		bucket []byte
		key    []byte
	}
	places := []place{
		{bucketKeyMeta, []byte("demo/a")},
		{bucketVersions, versionKey("demo/a", 2)},
		{bucketPending, []byte("demo/a")},
	}
	orig := make([][]byte, len(places))
	db.View(func(tx *bbolt.Tx) error {
		for i, p := range places {
			orig[i] = bytes.Clone(tx.Bucket(bucketRoot).Bucket(p.bucket).Get(p.key))
		}
		return nil
	})
	for i, o := range orig {
		f.Add(uint8(i), o)
	}
	f.Add(uint8(0), []byte(`{"id":"demo/a","version":3,"deleted":true}`))
	f.Add(uint8(1), []byte(`{}`))
	f.Add(uint8(2), []byte(`{"id":"demo/a","op":"delete","version":{"version":2}}`))
	f.Fuzz(func(t *testing.T, where uint8, rec []byte) {
		p := places[int(where)%len(places)]
		if err := db.Update(func(tx *bbolt.Tx) error {
			for i, q := range places {
				if err := tx.Bucket(bucketRoot).Bucket(q.bucket).Put(q.key, orig[i]); err != nil {
					return err
				}
			}
			return tx.Bucket(bucketRoot).Bucket(p.bucket).Put(p.key, rec)
		}); err != nil {
			t.Skip(err)
		}
		if k, err := s.Get("demo/a"); err == nil && !bytes.Equal(k.Material, material) {
			t.Fatalf("forged record yields material %q", k.Material)
		}
		s.Meta("demo/a")
		s.List()
		s.NextVersion("demo/a")
		s.PendingChanges()
		s.IDs("demo/", "", func(string) bool { return true })
	})
}

// FuzzMigrateRecord gives the migration of the old layout arbitrary bytes
// as a key id's old record (the host can write them before the first
// start of a newer kbsd), beside a genuine record of another id: the
// migration never panics, either fails or moves both, and the genuine key
// still yields its own material and nothing else yields any other.
func FuzzMigrateRecord(f *testing.F) {
	raw, err := oldLayoutDB()
	if err != nil {
		f.Fatal(err)
	}
	var seeds [][]byte
	db, _ := openOldCopy(f, raw)
	db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketRoot).Bucket(bucketOldKeys).ForEach(func(_, v []byte) error {
			seeds = append(seeds, bytes.Clone(v))
			return nil
		})
	})
	db.Close()
	for _, sd := range seeds {
		f.Add(sd)
	}
	f.Add([]byte(`{"id":"demo/x","version":1,"versions":[{"version":1,"ciphertext":""}],"pending":{"op":"put"}}`))
	f.Fuzz(func(t *testing.T, rec []byte) {
		db, sealer := openOldCopy(t, raw)
		defer db.Close()
		if err := db.Update(func(tx *bbolt.Tx) error {
			return tx.Bucket(bucketRoot).Bucket(bucketOldKeys).Put([]byte("demo/x"), rec)
		}); err != nil {
			t.Skip(err)
		}
		s, err := Open(context.Background(), db, sealer)
		if err != nil {
			return // refused: the old records stay as they were
		}
		if k, err := s.Get("demo/a"); err != nil || string(k.Material) != "demo/a version 2" {
			t.Fatalf("Get(demo/a) after migrating beside a forged record = %+v, %v", k, err)
		}
		if k, err := s.Get("demo/x"); err == nil {
			t.Fatalf("a forged old record yields material %q", k.Material)
		}
		s.List()
		s.PendingChanges()
		s.Commit("demo/x")
	})
}
