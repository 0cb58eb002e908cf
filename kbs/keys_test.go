package kbs

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/kbs-dev/kbs/internal/dbedit"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
)

// TestKeyReads checks GET /v1/keys/{id} and the pages of GET /v1/keys:
// what the log says about each key, in id order, within a prefix, page
// after page with Next, leaving out a staged key the log does not hold.
func TestKeyReads(t *testing.T) {
	e := newEnv(t)
	ids := []string{"demo/a", "demo/a/x", "demo/ab", "demo/b/1", "demo/b/2", "demo/b/3", "demo/c"}
	for _, id := range ids {
		e.mustOK2(e.upload(id, 1, []byte("material of "+id)))
	}
	e.mustOK2(e.upload("demo/a", 2, []byte("second version")))
	e.mustOK(e.do("DELETE", api.PathKeys+"/demo/b/2", e.deleteReq("demo/b/2", 1), nil))
	if _, err := e.keys.PreparePut("demo/b/staged", 1, "demo-client", []byte("staged"), e.treeSize(), time.Now()); err != nil {
		t.Fatal(err)
	}

	var k api.KeyInfo
	e.mustOK(e.do("GET", api.PathKeys+"/demo/a", nil, &k))
	if k.ID != "demo/a" || k.Version != 2 || k.Deleted || k.Client != "demo-client" || k.VersionCreated.IsZero() {
		t.Errorf("GET demo/a = %+v", k)
	}
	k = api.KeyInfo{}
	e.mustOK(e.do("GET", api.PathKeys+"/demo/b/2", nil, &k))
	if k.ID != "demo/b/2" || k.Version != 1 || !k.Deleted || !k.VersionCreated.IsZero() {
		t.Errorf("GET demo/b/2 = %+v", k)
	}
	for path, want := range map[string]int{
		"/demo/nope":     http.StatusNotFound,
		"/demo/b/staged": http.StatusNotFound,
		"/demo/a%20b":    http.StatusBadRequest,
		"/demo/a%3Fb":    http.StatusBadRequest,
		"/demo/" + strings.Repeat("x", api.MaxKeyIDLen): http.StatusBadRequest,
	} {
		if st, ae := e.do("GET", api.PathKeys+path, nil, nil); st != want {
			t.Errorf("GET %s: %d %+v, want %d", path, st, ae, want)
		}
	}

	list := func(query string) ([]string, string) {
		t.Helper()
		var l api.KeyList
		e.mustOK(e.do("GET", api.PathKeys+query, nil, &l))
		var got []string
		for _, k := range l.Keys {
			got = append(got, k.ID)
			if k.ID == "demo/a" && k.Version != 2 {
				t.Errorf("listed demo/a at version %d", k.Version)
			}
			if k.Deleted != (k.ID == "demo/b/2") {
				t.Errorf("listed %s deleted=%v", k.ID, k.Deleted)
			}
		}
		return got, l.Next
	}
	for _, tt := range []struct {
		query string
		want  []string
		next  string
	}{
		{"", ids, ""},
		{"?limit=3", ids[:3], "demo/ab"},
		{"?limit=3&after=demo/ab", ids[3:6], "demo/b/3"},
		{"?limit=3&after=demo/b/3", ids[6:], ""},
		{"?prefix=demo/b/", []string{"demo/b/1", "demo/b/2", "demo/b/3"}, ""},
		{"?prefix=demo/b/&limit=2", []string{"demo/b/1", "demo/b/2"}, "demo/b/2"},
		{"?prefix=demo/b/&after=demo/b/2", []string{"demo/b/3"}, ""},
		{"?prefix=demo/a", []string{"demo/a", "demo/a/x", "demo/ab"}, ""},
		{"?prefix=zzz", nil, ""},
		{"?after=zzz", nil, ""},
		{"?limit=7", ids, ""},
	} {
		got, next := list(tt.query)
		if !slices.Equal(got, tt.want) || next != tt.next {
			t.Errorf("GET %s%s = %q next %q, want %q next %q", api.PathKeys, tt.query, got, next, tt.want, tt.next)
		}
	}
	// Walking the pages gives every key once.
	var all []string
	for after := ""; ; {
		got, next := list("?limit=2&after=" + after)
		all = append(all, got...)
		if next == "" {
			break
		}
		after = next
	}
	if !slices.Equal(all, ids) {
		t.Errorf("pages of 2 = %q, want %q", all, ids)
	}

	size := e.treeSize()
	for _, query := range []string{
		"?limit=0", "?limit=-1", "?limit=x", "?limit=10001", "?limit=1&limit=2",
		"?prefix=a%20b", "?after=%00", "?prefix=" + strings.Repeat("a", api.MaxKeyIDLen+1),
		"?cursor=demo", "?prefix=demo&prefix=demo/a",
	} {
		if st, ae := e.do("GET", api.PathKeys+query, nil, nil); st != http.StatusBadRequest || ae.Code != api.CodeBadRequest {
			t.Errorf("GET %s%s: %d %+v, want 400", api.PathKeys, query, st, ae)
		}
	}
	if e.treeSize() != size {
		t.Error("a rejected read changed the log")
	}
}

// TestStartReadsOnlyPending checks that a start settles staged changes
// without reading the stored versions: a version record the host broke
// does not stop the broker (the log, not the store, says what is live),
// and the key is refused when it is asked for.
func TestStartReadsOnlyPending(t *testing.T) {
	e := newEnv(t)
	e.mustOK2(e.upload("demo/a", 1, []byte("material of demo/a")))
	e.mustOK2(e.upload("demo/b", 1, []byte("material of demo/b")))
	vkey := binary.BigEndian.AppendUint64([]byte("demo/a\x00"), 1)
	if err := dbedit.Put(e.db, dbedit.Path{"keystore", "versions"}, vkey, []byte("not a version record")); err != nil {
		t.Fatal(err)
	}
	e.close()
	e.open(t)
	w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	if st, ae, _ := e.release(e.releaseReq(w, e.challenge(), "demo/a")); st != http.StatusInternalServerError || !strings.Contains(ae.Message, "demo/a") {
		t.Errorf("release of a key whose version record is broken: %d %+v", st, ae)
	}
	e.mustOK2r(e.release(e.releaseReq(w, e.challenge(), "demo/b")))
}

// TestListOfManyKeys loads more keys than a default page through the
// key store and the log (as the benchmarks do) and pages through them.
func TestListOfManyKeys(t *testing.T) {
	e := newEnv(t)
	ids := make([]string, api.DefaultKeyListLimit+5)
	for i := range ids {
		ids[i] = fmt.Sprintf("demo/n/%05d", i)
	}
	bulkKeys(t, e, ids)
	var l api.KeyList
	e.mustOK(e.do("GET", api.PathKeys, nil, &l))
	if len(l.Keys) != api.DefaultKeyListLimit || l.Next != ids[api.DefaultKeyListLimit-1] {
		t.Fatalf("first page: %d keys, next %q", len(l.Keys), l.Next)
	}
	after := l.Next
	l = api.KeyList{}
	e.mustOK(e.do("GET", api.PathKeys+"?after="+after, nil, &l))
	if len(l.Keys) != 5 || l.Next != "" || l.Keys[4].ID != ids[len(ids)-1] {
		t.Fatalf("second page: %d keys, next %q", len(l.Keys), l.Next)
	}
}

// TestOldKeyStoreLayout rewrites a broker's key store into the layout
// before per-version records (one record per key id with every version and
// its staged change, in "keys"), as a kbs.db from before this layout holds
// it, and starts the broker on it: the store is migrated, the start checks
// it against the log, and the keys list, release and take new versions as
// before.
func TestOldKeyStoreLayout(t *testing.T) {
	e := newEnv(t)
	e.mustOK2(e.upload("demo/a", 1, []byte("demo/a, version one")))
	e.mustOK2(e.upload("demo/a", 2, []byte("demo/a, version two")))
	e.mustOK2(e.upload("demo/b", 1, []byte("demo/b, to be deleted")))
	e.mustOK(e.do("DELETE", api.PathKeys+"/demo/b", e.deleteReq("demo/b", 1), nil))
	e.mustOK2(e.upload("demo/c", 1, []byte("demo/c, live")))
	type version struct {
		Version    uint64    `json:"version"`
		Client     string    `json:"client"`
		Created    time.Time `json:"created"`
		Ciphertext []byte    `json:"ciphertext"`
	}
	type oldRecord struct {
		ID         string    `json:"id"`
		Version    uint64    `json:"version"`
		Client     string    `json:"client"`
		Created    time.Time `json:"created"`
		Deleted    bool      `json:"deleted,omitempty"`
		WrappedDEK []byte    `json:"wrapped_dek,omitempty"`
		Versions   []version `json:"versions,omitempty"`
	}
	err := e.db.Update(func(tx *bbolt.Tx) error {
		root := tx.Bucket([]byte("keystore"))
		old, err := root.CreateBucket([]byte("keys"))
		if err != nil {
			return err
		}
		vs := root.Bucket([]byte("versions"))
		err = root.Bucket([]byte("keymeta")).ForEach(func(k, v []byte) error {
			var rec oldRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			c := vs.Cursor()
			prefix := append([]byte(rec.ID), 0)
			for vk, vv := c.Seek(prefix); vk != nil && bytes.HasPrefix(vk, prefix); vk, vv = c.Next() {
				var ver version
				if err := json.Unmarshal(vv, &ver); err != nil {
					return err
				}
				rec.Versions = append(rec.Versions, ver)
			}
			raw, err := json.Marshal(&rec)
			if err != nil {
				return err
			}
			return old.Put(k, raw)
		})
		if err != nil {
			return err
		}
		for _, name := range []string{"keymeta", "versions", "pending"} {
			if err := root.DeleteBucket([]byte(name)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	e.close()
	e.open(t)
	var l api.KeyList
	e.mustOK(e.do("GET", api.PathKeys, nil, &l))
	if len(l.Keys) != 3 || l.Keys[0].Version != 2 || !l.Keys[1].Deleted {
		t.Fatalf("keys after the migration: %+v", l.Keys)
	}
	w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	var rel *api.Release
	st, ae, rel := e.release(e.releaseReq(w, e.challenge(), "demo/a", "demo/c"))
	if st != http.StatusOK || rel.Keys[0].Version != 2 {
		t.Fatalf("release after the migration: %d %+v", st, ae)
	}
	if st, ae, _ := e.release(e.releaseReq(w, e.challenge(), "demo/b")); st != http.StatusNotFound {
		t.Errorf("release of the deleted key after the migration: %d %+v", st, ae)
	}
	e.mustOK2(e.upload("demo/a", 3, []byte("demo/a, version three")))
	e.mustOK2(e.upload("demo/b", 2, []byte("demo/b, back")))
	e.mustOK2r(e.release(e.releaseReq(w, e.challenge(), "demo/a", "demo/b")))
}
