package kbs

import (
	"bytes"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/bbolt"

	"github.com/kbs-dev/kbs/internal/dbedit"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// TestApply checks the state transitions, entry by entry: what takes
// effect, and what is logged without effect.
func TestApply(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	d1, d2 := "sha256:"+strings.Repeat("1", 64), "sha256:"+strings.Repeat("2", 64)
	up := func(id string, v uint64, digest string) *tlog.Entry {
		return &tlog.Entry{Type: tlog.TypeKeyUpload, Time: now, KeyUpload: &tlog.KeyEntry{ID: id, Version: v, Client: "c", SealedDigest: digest}}
	}
	del := func(id string, v uint64) *tlog.Entry {
		return &tlog.Entry{Type: tlog.TypeKeyDelete, Time: now, KeyDelete: &tlog.KeyEntry{ID: id, Version: v, Client: "c"}}
	}
	man := func(v uint64, body, prev string) *tlog.Entry {
		return &tlog.Entry{Type: tlog.TypeManifest, Time: now, Manifest: &tlog.ManifestEntry{Version: v, Hash: manifest.HashOf([]byte(body)), Previous: prev, Body: []byte(body)}}
	}
	h1 := manifest.HashOf([]byte("one"))
	st := newAuthState()
	for i, tt := range []struct {
		e    *tlog.Entry
		ok   bool
		why  string
		want keyState // of key "a" afterwards
	}{
		{up("a", 2, d1), false, "does not follow version 0", keyState{}},
		{up("a", 1, d1), true, "", keyState{ID: "a", Version: 1, SealedDigest: d1}},
		{up("a", 1, d1), false, "logged again", keyState{ID: "a", Version: 1, SealedDigest: d1}},
		{up("a", 1, d2), false, "does not follow version 1", keyState{ID: "a", Version: 1, SealedDigest: d1}},
		{del("a", 2), false, "not its live version", keyState{ID: "a", Version: 1, SealedDigest: d1}},
		{del("a", 1), true, "", keyState{ID: "a", Version: 1, Deleted: true}},
		{del("a", 1), false, "not its live version", keyState{ID: "a", Version: 1, Deleted: true}},
		{up("a", 1, d1), false, "does not follow version 1", keyState{ID: "a", Version: 1, Deleted: true}},
		{up("a", 2, d2), true, "", keyState{ID: "a", Version: 2, SealedDigest: d2}},
		{man(2, "two", h1), false, "does not follow the active version 0", keyState{ID: "a", Version: 2, SealedDigest: d2}},
		{man(1, "one", ""), true, "", keyState{ID: "a", Version: 2, SealedDigest: d2}},
		{man(1, "one", ""), false, "logged again", keyState{ID: "a", Version: 2, SealedDigest: d2}},
		{man(2, "two", manifest.HashOf([]byte("other"))), false, "names previous", keyState{ID: "a", Version: 2, SealedDigest: d2}},
		{&tlog.Entry{Type: tlog.TypeManifest, Time: now, Manifest: &tlog.ManifestEntry{Version: 2, Hash: h1, Previous: h1, Body: []byte("two")}}, false, "does not hash", keyState{ID: "a", Version: 2, SealedDigest: d2}},
		{man(2, "two", h1), true, "", keyState{ID: "a", Version: 2, SealedDigest: d2}},
	} {
		ok, why := st.apply(uint64(i), tt.e)
		if ok != tt.ok || !strings.Contains(string(why), tt.why) {
			t.Errorf("entry %d (%s): apply = %v %q, want %v %q", i, tt.e.Type, ok, why, tt.ok, tt.why)
		}
		got := st.keys["a"]
		got.Client, got.Created, got.VersionCreated, got.Index = "", time.Time{}, time.Time{}, 0
		if got != tt.want {
			t.Errorf("entry %d: key a = %+v, want %+v", i, got, tt.want)
		}
	}
	if len(st.chain) != 2 || st.chain[1].Index != 14 || st.size != 15 {
		t.Errorf("chain %+v, size %d", st.chain, st.size)
	}
	if k := st.keys["a"]; k.Index != 8 || !k.Created.Equal(now) {
		t.Errorf("key a set at %d, created %v", k.Index, k.Created)
	}
}

// logBuffer is a broker log the test reads.
func logBuffer() (hclog.Logger, *syncWriter) {
	w := &syncWriter{w: new(bytes.Buffer)}
	return hclog.New(&hclog.LoggerOptions{Output: w, Level: hclog.Info}), w
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.(*bytes.Buffer).String()
}

func (s *syncWriter) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.w.(*bytes.Buffer).Reset()
}

var (
	keystoreKeys   = dbedit.Path{"keystore", "keymeta"}
	brokerManifest = dbedit.Path{"broker", "manifests"}
	stateIndexKeys = dbedit.Path{"broker", "state", "keys"}
	stateIndexPath = dbedit.Path{"broker", "state"}
	logEntries     = dbedit.Path{"tlog", "entries"}
)

// hostileEnv is a broker after a history the host would like to undo:
// demo/a at version 2 (version 1 was released), demo/b deleted, demo/c
// live, manifest version 2 active. before holds copies of records from
// before the second half of that history.
type hostileEnv struct {
	*env
	before map[string][]byte // key store records: "a1" (demo/a at version 1), "b" (demo/b live)
	snap   string            // a copy of kbs.db from the same moment
	mats   map[string][]byte
}

func newHostileEnv(t *testing.T, logger hclog.Logger) *hostileEnv {
	t.Helper()
	h := &hostileEnv{env: newEnvWith(t, nil, logger), before: map[string][]byte{}, mats: map[string][]byte{
		"demo/a":  []byte("material of demo/a, version one."),
		"demo/a2": []byte("material of demo/a, version two."),
		"demo/b":  []byte("material of demo/b, to be shred."),
		"demo/c":  []byte("material of demo/c, a live key.."),
	}}
	e := h.env
	for _, id := range []string{"demo/a", "demo/b", "demo/c"} {
		e.mustOK2(e.upload(id, 1, h.mats[id]))
	}
	w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	e.mustOK2r(e.release(e.releaseReq(w, e.challenge(), "demo/a", "demo/b")))
	for name, id := range map[string]string{"a1": "demo/a", "b": "demo/b"} {
		v, err := dbedit.Get(e.db, keystoreKeys, []byte(id))
		if err != nil || v == nil {
			t.Fatalf("record of %s: %v", id, err)
		}
		h.before[name] = v
	}
	e.close()
	h.snap = filepath.Join(t.TempDir(), "kbs.db.before")
	copyFile(t, filepath.Join(e.dir, "kbs.db"), h.snap)
	e.open(t)
	e.mustOK2(e.upload("demo/a", 2, h.mats["demo/a2"]))
	e.mustOK(e.do("DELETE", api.PathKeys+"/demo/b", e.deleteReq("demo/b", 1), nil))
	body := e.nextManifest(t)
	e.mustOK(e.do("PUT", api.PathManifest, api.ManifestUpdate{Body: body, Signatures: signAll(t, body, e.owners...)}, nil))
	return h
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// checkReleases asserts what a hostile edit must never achieve: demo/b
// (deleted) is not released, demo/a is released only at version 2, demo/c
// only with its own material. It returns how many releases succeeded.
func (h *hostileEnv) checkReleases(t *testing.T) int {
	t.Helper()
	n := h.tryReleases(t)
	checkDecisions(t, h.env)
	return n
}

// tryReleases is checkReleases without replaying the log afterwards.
func (h *hostileEnv) tryReleases(t *testing.T) int {
	t.Helper()
	ok := 0
	for _, id := range []string{"demo/a", "demo/b", "demo/c"} {
		w := h.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
		st, ae, rel := h.release(h.releaseReq(w, h.challenge(), id))
		if st != http.StatusOK {
			t.Logf("release of %s refused: %d %s", id, st, ae.Message)
			continue
		}
		ok++
		k := rel.Keys[0]
		got, err := api.Open(w.sk, api.ReleaseInfo(k.ID, k.Version, rel.LogIndex), k.Sealed)
		want := h.mats[id]
		if id == "demo/a" {
			want = h.mats["demo/a2"]
		}
		switch {
		case id == "demo/b":
			t.Errorf("the deleted key was released (version %d)", k.Version)
		case err != nil || !bytes.Equal(got, want):
			t.Errorf("release of %s gave version %d %q (%v), want %q", id, k.Version, got, err, want)
		}
	}
	return ok
}

// TestStateIndex checks that a start uses the sealed state index (nothing
// replayed after a clean shutdown), replays only the entries after an
// index rolled back to an older copy, and rebuilds the state from the
// whole log when the index was edited; in every case the state is the
// one the log gives.
func TestStateIndex(t *testing.T) {
	logger, out := logBuffer()
	h := newHostileEnv(t, logger)
	want := h.b.st.keyList()
	_, wantVersion := h.b.ActiveManifest()
	restart := func(what string) {
		t.Helper()
		h.close()
		out.Reset()
		h.open(t)
		if got := h.b.st.keyList(); !equalKeys(got, want) {
			t.Errorf("%s: state %+v, want %+v", what, got, want)
		}
		if _, v := h.b.ActiveManifest(); v != wantVersion {
			t.Errorf("%s: active version %d, want %d", what, v, wantVersion)
		}
		h.checkReleases(t)
	}
	edit := func(f func(db *bbolt.DB) error) {
		t.Helper()
		h.close()
		db, err := dbedit.Open(filepath.Join(h.dir, "kbs.db"))
		if err != nil {
			t.Fatal(err)
		}
		err = f(db)
		db.Close()
		if err != nil {
			t.Fatal(err)
		}
		h.open(t)
	}

	restart("clean restart")
	if s := out.String(); strings.Contains(s, "replayed the log") || strings.Contains(s, "does not check out") {
		t.Errorf("a start after a clean shutdown replayed the log:\n%s", s)
	}

	// The index rolled back to an older, authentic copy: only the entries
	// after it are replayed.
	out.Reset()
	edit(func(db *bbolt.DB) error {
		old, err := dbedit.Open(h.snap)
		if err != nil {
			return err
		}
		defer old.Close()
		return dbedit.ReplaceBucket(db, old, stateIndexPath)
	})
	if s := out.String(); !strings.Contains(s, "replayed the log") || strings.Contains(s, "from=0 ") {
		t.Errorf("a start with an older index did not replay from it:\n%s", s)
	}
	restart("index rolled back")

	// The index edited (demo/b live again, or its head changed): rebuilt
	// from the whole log.
	for _, tamper := range []func(db *bbolt.DB) error{
		func(db *bbolt.DB) error {
			rec, err := dbedit.Get(db, stateIndexKeys, []byte("demo/b"))
			if err != nil {
				return err
			}
			return dbedit.Put(db, stateIndexKeys, []byte("demo/b"), bytes.Replace(rec, []byte(`"deleted":true,`), nil, 1))
		},
		func(db *bbolt.DB) error { return dbedit.Delete(db, stateIndexKeys, []byte("demo/b")) },
		func(db *bbolt.DB) error {
			head, err := dbedit.Get(db, stateIndexPath, []byte("head"))
			if err != nil {
				return err
			}
			return dbedit.Put(db, stateIndexPath, []byte("head"), bytes.Replace(head, []byte(`"version":2`), []byte(`"version":1`), 1))
		},
	} {
		out.Reset()
		edit(tamper)
		if s := out.String(); !strings.Contains(s, "does not check out") || !strings.Contains(s, "from=0 ") {
			t.Errorf("a start with an edited index did not rebuild the state from the log:\n%s", s)
		}
		restart("after a rebuild")
	}
}

func equalKeys(a, b []keyState) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if !x.Created.Equal(y.Created) || !x.VersionCreated.Equal(y.VersionCreated) {
			return false
		}
		x.Created, y.Created, x.VersionCreated, y.VersionCreated = time.Time{}, time.Time{}, time.Time{}, time.Time{}
		if x != y {
			return false
		}
	}
	return true
}

// TestHostileStoreRefused edits kbs.db while the broker is stopped, as the
// host can, and checks that the broker refuses to start, saying what
// differs; where the edit cannot matter (an entry's bytes before the
// index) the broker starts and still releases nothing it should not.
func TestHostileStoreRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(h *hostileEnv, db, before *bbolt.DB) error
		want string // in New's error; "" when the broker starts
	}{
		{"deleted key's record restored", func(h *hostileEnv, db, _ *bbolt.DB) error {
			return dbedit.Put(db, keystoreKeys, []byte("demo/b"), h.before["b"])
		}, `"demo/b": log: version 1 deleted`},
		{"key record rolled back", func(h *hostileEnv, db, _ *bbolt.DB) error {
			return dbedit.Put(db, keystoreKeys, []byte("demo/a"), h.before["a1"])
		}, `"demo/a": log: version 2 live`},
		{"two keys' records swapped", func(h *hostileEnv, db, _ *bbolt.DB) error {
			return dbedit.Swap(db, keystoreKeys, []byte("demo/a"), []byte("demo/c"))
		}, "stored under"},
		{"two keys' records swapped, ids rewritten", func(h *hostileEnv, db, _ *bbolt.DB) error {
			a, _ := dbedit.Get(db, keystoreKeys, []byte("demo/a"))
			c, _ := dbedit.Get(db, keystoreKeys, []byte("demo/c"))
			a = bytes.Replace(a, []byte(`"id":"demo/a"`), []byte(`"id":"demo/c"`), 1)
			c = bytes.Replace(c, []byte(`"id":"demo/c"`), []byte(`"id":"demo/a"`), 1)
			if err := dbedit.Put(db, keystoreKeys, []byte("demo/c"), a); err != nil {
				return err
			}
			return dbedit.Put(db, keystoreKeys, []byte("demo/a"), c)
		}, `"demo/a": log: version 2 live`},
		{"live key's record deleted", func(h *hostileEnv, db, _ *bbolt.DB) error {
			return dbedit.Delete(db, keystoreKeys, []byte("demo/c"))
		}, `"demo/c": log: version 1 live`},
		{"key store rolled back", func(h *hostileEnv, db, before *bbolt.DB) error {
			return dbedit.ReplaceBucket(db, before, keystoreKeys)
		}, "the key store disagrees with the log about 2 key(s)"},
		{"newest manifest record deleted", func(h *hostileEnv, db, _ *bbolt.DB) error {
			return dbedit.Delete(db, brokerManifest, []byte{0, 0, 0, 0, 0, 0, 0, 2})
		}, "the log holds manifest version 2"},
		{"manifest records rolled back", func(h *hostileEnv, db, before *bbolt.DB) error {
			return dbedit.ReplaceBucket(db, before, brokerManifest)
		}, "the log holds manifest version 2"},
		{"log rolled back", func(h *hostileEnv, db, before *bbolt.DB) error {
			return dbedit.ReplaceBucket(db, before, dbedit.Path{"tlog"})
		}, "the log was rolled back or truncated"},
		{"log rolled back, index dropped", func(h *hostileEnv, db, before *bbolt.DB) error {
			if err := dbedit.ReplaceBucket(db, before, dbedit.Path{"tlog"}); err != nil {
				return err
			}
			return dbedit.Delete(db, stateIndexPath, []byte("head"))
		}, "the log does not hold"},
		{"entry bytes edited, index dropped", func(h *hostileEnv, db, _ *bbolt.DB) error {
			if err := dbedit.CorruptLast(db, logEntries, []byte(`{"type":"`+tlog.TypeKeyDelete+`"`)); err != nil {
				return err
			}
			return dbedit.Delete(db, stateIndexPath, []byte("head"))
		}, "does not match the log's tree"},
		{"manifest entry bytes edited", func(h *hostileEnv, db, _ *bbolt.DB) error {
			return dbedit.CorruptLast(db, logEntries, []byte(`{"type":"`+tlog.TypeManifest+`"`))
		}, "version 2"},
		{"deletion entry bytes edited", func(h *hostileEnv, db, _ *bbolt.DB) error {
			return dbedit.CorruptLast(db, logEntries, []byte(`{"type":"`+tlog.TypeKeyDelete+`"`))
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHostileEnv(t, nil)
			h.close()
			db, err := dbedit.Open(filepath.Join(h.dir, "kbs.db"))
			if err != nil {
				t.Fatal(err)
			}
			before, err := dbedit.Open(h.snap)
			if err != nil {
				t.Fatal(err)
			}
			err = tc.edit(h, db, before)
			db.Close()
			before.Close()
			if err != nil {
				t.Fatal(err)
			}
			err = h.tryOpen(t)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("start: %v", err)
				}
				// (The log itself no longer verifies: auditors see the edit.)
				if n := h.tryReleases(t); n != 2 {
					t.Errorf("%d keys released, want demo/a and demo/c", n)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("start after the edit: %v; want a refusal mentioning %q", err, tc.want)
			}
			var sm *StoreMismatchError
			if strings.Contains(tc.want, "log:") && !errors.As(err, &sm) {
				t.Errorf("refusal %T is not a *StoreMismatchError", err)
			}
			t.Logf("refused: %v", err)
		})
	}
}

// TestLiveStoreEdits edits the key store while the broker runs (bbolt
// locks the file against other processes, but the host can write the
// file's bytes under it; here the edits go through the broker's own
// handle): each affected release is refused with an error naming the
// mismatch, and nothing is released that the log does not back.
func TestLiveStoreEdits(t *testing.T) {
	h := newHostileEnv(t, nil)
	// A deleted key's record restored: the log says deleted.
	if err := dbedit.Put(h.db, keystoreKeys, []byte("demo/b"), h.before["b"]); err != nil {
		t.Fatal(err)
	}
	w := h.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	if st, ae, _ := h.release(h.releaseReq(w, h.challenge(), "demo/b")); st != http.StatusNotFound || !strings.Contains(ae.Message, "deleted") {
		t.Errorf("release of a deleted key whose record is back: %d %+v", st, ae)
	}
	// A record rolled back to version 1: the log says version 2.
	if err := dbedit.Put(h.db, keystoreKeys, []byte("demo/a"), h.before["a1"]); err != nil {
		t.Fatal(err)
	}
	if st, ae, _ := h.release(h.releaseReq(w, h.challenge(), "demo/a")); st != http.StatusInternalServerError || !strings.Contains(ae.Message, "does not hold the version the log says is live") {
		t.Errorf("release of a rolled-back key: %d %+v", st, ae)
	}
	// Records swapped.
	if err := dbedit.Swap(h.db, keystoreKeys, []byte("demo/a"), []byte("demo/c")); err != nil {
		t.Fatal(err)
	}
	if st, ae, _ := h.release(h.releaseReq(w, h.challenge(), "demo/c")); st != http.StatusInternalServerError || !strings.Contains(ae.Message, "demo/c") {
		t.Errorf("release of a swapped key: %d %+v", st, ae)
	}
	// The newest manifest record deleted: the active manifest is the log's.
	if err := dbedit.Delete(h.db, brokerManifest, []byte{0, 0, 0, 0, 0, 0, 0, 2}); err != nil {
		t.Fatal(err)
	}
	var m api.Manifest
	h.mustOK(h.do("GET", api.PathManifest, nil, &m))
	if m.Version != 2 {
		t.Errorf("active manifest after its record was deleted: version %d", m.Version)
	}
	if n := h.checkReleases(t); n != 0 {
		t.Errorf("%d keys released from an edited store", n)
	}
	// And the next start refuses the store.
	h.close()
	if err := h.tryOpen(t); err == nil {
		t.Error("start on the edited store succeeded")
	}
}
