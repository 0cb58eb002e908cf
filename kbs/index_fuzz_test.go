package kbs

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/kbs-dev/kbs/kbs/keystore"
	"github.com/kbs-dev/kbs/tlog"
)

// FuzzStoredState writes arbitrary bytes where the host could in the
// broker's own records (the state index's head, one of its key records, a
// manifest record, the pending manifest record) and checks what the broker
// reads from them: loading the index never panics and yields a state only
// from the exact bytes the broker wrote (the host cannot forge the MAC or
// the records' digest), and then the state the broker wrote; the manifest
// records read back without panicking (they are then checked against the
// log's chain by verifyChain, whose inputs manifest.Parse and
// manifest.Verify are fuzzed in their package).
func FuzzStoredState(f *testing.F) {
	dir := f.TempDir()
	db, err := bbolt.Open(filepath.Join(dir, "kbs.db"), 0o600, &bbolt.Options{NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { db.Close() })
	keys, err := keystore.Open(context.Background(), db, &keystore.SimSealer{Path: filepath.Join(dir, "sealing.key")})
	if err != nil {
		f.Fatal(err)
	}
	ms, err := openManifestStore(db)
	if err != nil {
		f.Fatal(err)
	}
	x, err := openIndex(db, keys)
	if err != nil {
		f.Fatal(err)
	}
	// A state of a log of 5 entries.
	st := newAuthState()
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	d := "sha256:" + string(bytes.Repeat([]byte("ab"), 32))
	for i, e := range []*tlog.Entry{
		{Type: tlog.TypeKeyUpload, Time: now, KeyUpload: &tlog.KeyEntry{ID: "demo/a", Version: 1, Client: "c", SealedDigest: d}},
		{Type: tlog.TypeKeyUpload, Time: now, KeyUpload: &tlog.KeyEntry{ID: "demo/b", Version: 1, Client: "c", SealedDigest: d}},
		{Type: tlog.TypeKeyDelete, Time: now, KeyDelete: &tlog.KeyEntry{ID: "demo/a", Version: 1, Client: "c"}},
	} {
		st.apply(uint64(i), e)
	}
	st.root = tlog.Hash{1, 2, 3}
	want := st.keyList()
	if err := x.write(st.snapshot(true)); err != nil {
		f.Fatal(err)
	}
	cp := tlog.SignedCheckpoint{Root: tlog.Root{Size: st.size, Hash: st.root}}

	type place struct {
		bucket []string // below "broker"
		key    []byte
	}
	places := []place{
		{[]string{"state"}, keyStateHead},
		{[]string{"state", "keys"}, []byte("demo/a")},
		{[]string{"manifests"}, []byte{0, 0, 0, 0, 0, 0, 0, 1}},
		{nil, keyPending},
	}
	get := func(p place) []byte {
		var v []byte
		db.View(func(tx *bbolt.Tx) error {
			b := tx.Bucket(bucketBroker)
			for _, n := range p.bucket {
				b = b.Bucket([]byte(n))
			}
			v = bytes.Clone(b.Get(p.key))
			return nil
		})
		return v
	}
	put := func(p place, v []byte) {
		if err := db.Update(func(tx *bbolt.Tx) error {
			b := tx.Bucket(bucketBroker)
			for _, n := range p.bucket {
				b = b.Bucket([]byte(n))
			}
			if v == nil {
				return b.Delete(p.key)
			}
			return b.Put(p.key, v)
		}); err != nil {
			f.Fatal(err)
		}
	}
	orig := make([][]byte, len(places))
	for i, p := range places {
		orig[i] = get(p)
		if orig[i] != nil {
			f.Add(byte(i), orig[i])
		}
	}
	f.Add(byte(2), mustJSON(&manifestRecord{Version: 1, Hash: d, Body: []byte("{}"), Signatures: []string{}, LogIndex: 0}))
	f.Add(byte(3), mustJSON(&pendingRecord{Manifest: manifestRecord{Version: 2, Body: []byte("{}")}}))
	f.Fuzz(func(t *testing.T, which byte, v []byte) {
		i := int(which) % len(places)
		put(places[i], v)
		defer put(places[i], orig[i])
		got, _, err := x.load(context.Background(), nil, cp)
		if err != nil {
			t.Fatalf("edited index bytes made load refuse the log: %v", err)
		}
		if got != nil {
			if i < 2 && !bytes.Equal(v, orig[i]) {
				t.Fatalf("load accepted an index with edited bytes %q", v)
			}
			if !equalKeys(got.keyList(), want) || got.size != st.size || got.root != st.root {
				t.Fatalf("load gave state %+v at %d, want %+v at %d", got.keyList(), got.size, want, st.size)
			}
		}
		ms.read()
	})
}
