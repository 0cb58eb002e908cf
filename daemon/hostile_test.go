package main

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/kbs-dev/kbs/internal/dbedit"
	"github.com/kbs-dev/kbs/internal/testbin"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/manifest"
)

// The keys of the hostile-host scenario, and what each must (not) give.
const (
	keyLive    = "demo/live/a" // version 2 is live; version 1 was released before
	keyOther   = "demo/live/c" // live, same material length as keyLive
	keyGone    = "demo/gone"   // deleted
	keyRevoked = "demo/revoked/r"
)

var hostileMaterial = map[string][]byte{
	keyLive + "@1": []byte("demo/live/a version 1 material.."),
	keyLive:        []byte("demo/live/a version 2 material.."),
	keyOther:       []byte("demo/live/c the other live key.."),
	keyGone:        []byte("demo/gone: shredded, never back."),
	keyRevoked:     []byte("demo/revoked/r: v2 revokes this."),
}

var (
	keystoreKeys     = dbedit.Path{"keystore", "keymeta"}
	keystoreVersions = dbedit.Path{"keystore", "versions"}
	logEntries       = dbedit.Path{"tlog", "entries"}
)

// TestHostileHost plays the host against a real kbsd. The history: four
// keys uploaded and released; then demo/live/a re-uploaded at version 2,
// demo/gone deleted, and manifest version 2 published, which revokes the
// worker class's access to demo/revoked/*. A copy of kbs.db is taken
// between the two halves. Then, with kbsd stopped, each edit a host can
// make to kbs.db is made on a copy of the data directory: every bucket
// rolled back alone to the earlier copy, the newest manifest record
// deleted, the deleted key's record restored, two keys' records swapped,
// an entry's bytes edited (with and without the state index), the last
// entries dropped. kbsd must either refuse to start, saying why, or start
// and refuse what the log does not back: the revoked, deleted and
// swapped keys never leave, and demo/live/a leaves only at version 2.
// Last, edits while kbsd runs: bbolt's lock keeps other openers out, and
// bytes written under it are caught when the key is used.
func TestHostileHost(t *testing.T) {
	root := t.TempDir()
	base := filepath.Join(root, "kbs-dev")
	d := startDaemon(t, base)
	c := newClient(t, d)
	c.verifyBroker()
	for _, id := range []string{keyLive, keyOther, keyGone, keyRevoked} {
		m := hostileMaterial[id]
		if id == keyLive {
			m = hostileMaterial[keyLive+"@1"]
		}
		c.upload(id, 1, m)
		if _, _, err := fetch(d, attest.SNP, api.KEMX25519, id); err != nil {
			t.Fatalf("release of %s: %v", id, err)
		}
	}
	d.stop()
	before := filepath.Join(root, "kbs.db.before")
	copyTree(t, filepath.Join(base, "kbs.db"), before)

	d = startDaemon(t, base)
	c.d = d
	c.verifyBroker()
	c.upload(keyLive, 2, hostileMaterial[keyLive])
	c.deleteKey(keyGone, 1)
	c.publishRevocation(keyRevoked)
	if n := checkHostileReleases(t, d); n != 2 {
		t.Fatalf("%d keys released before any edit, want 2", n)
	}
	d.stop()

	// Every bucket, rolled back alone.
	db, err := dbedit.Open(filepath.Join(base, "kbs.db"))
	if err != nil {
		t.Fatal(err)
	}
	buckets, err := dbedit.Buckets(db)
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	type edit struct {
		name string
		f    func(db, before *bbolt.DB) error
		// refuse is what kbsd's refusal says; "" when kbsd may start
		// (the checks on what it releases apply then).
		refuse string
	}
	var edits []edit
	for _, p := range buckets {
		edits = append(edits, edit{"roll back bucket " + p.String(), func(db, before *bbolt.DB) error {
			return dbedit.ReplaceBucket(db, before, p)
		}, ""})
	}
	edits = append(edits,
		edit{"delete the newest manifest record", func(db, _ *bbolt.DB) error {
			return dbedit.Delete(db, dbedit.Path{"broker", "manifests"}, []byte{0, 0, 0, 0, 0, 0, 0, 2})
		}, "the log holds manifest version 2"},
		edit{"restore the deleted key's record", func(db, before *bbolt.DB) error {
			rec, err := dbedit.Get(before, keystoreKeys, []byte(keyGone))
			if err != nil {
				return err
			}
			return dbedit.Put(db, keystoreKeys, []byte(keyGone), rec)
		}, `"demo/gone": log: version 1 deleted`},
		edit{"swap two keys' records", func(db, _ *bbolt.DB) error {
			return dbedit.Swap(db, keystoreKeys, []byte(keyLive), []byte(keyOther))
		}, "stored under"},
		edit{"swap two keys' records and their ids", func(db, _ *bbolt.DB) error {
			a, _ := dbedit.Get(db, keystoreKeys, []byte(keyLive))
			c, _ := dbedit.Get(db, keystoreKeys, []byte(keyOther))
			a = bytes.Replace(a, []byte(`"id":"`+keyLive+`"`), []byte(`"id":"`+keyOther+`"`), 1)
			c = bytes.Replace(c, []byte(`"id":"`+keyOther+`"`), []byte(`"id":"`+keyLive+`"`), 1)
			if err := dbedit.Put(db, keystoreKeys, []byte(keyOther), a); err != nil {
				return err
			}
			return dbedit.Put(db, keystoreKeys, []byte(keyLive), c)
		}, "the key store disagrees with the log"},
		edit{"edit the deletion entry's bytes", func(db, _ *bbolt.DB) error {
			return dbedit.CorruptLast(db, logEntries, []byte(`{"type":"key-delete"`))
		}, ""},
		edit{"edit the deletion entry's bytes and drop the state index", func(db, _ *bbolt.DB) error {
			if err := dbedit.CorruptLast(db, logEntries, []byte(`{"type":"key-delete"`)); err != nil {
				return err
			}
			return dbedit.Delete(db, dbedit.Path{"broker", "state"}, []byte("head"))
		}, "does not match the log's tree"},
		edit{"edit the newest manifest entry's bytes", func(db, _ *bbolt.DB) error {
			return dbedit.CorruptLast(db, logEntries, []byte(`{"type":"manifest"`))
		}, "does not check out"},
		edit{"drop the last entries", func(db, _ *bbolt.DB) error {
			keys, err := dbedit.Keys(db, logEntries)
			if err != nil {
				return err
			}
			for _, k := range keys[len(keys)-3:] {
				if err := dbedit.Delete(db, logEntries, k); err != nil {
					return err
				}
			}
			return nil
		}, "does not hold exactly"},
	)
	for i, ed := range edits {
		t.Run(ed.name, func(t *testing.T) {
			dir := filepath.Join(root, "edit-"+strconv.Itoa(i))
			copyTree(t, base, dir)
			db, err := dbedit.Open(filepath.Join(dir, "kbs.db"))
			if err != nil {
				t.Fatal(err)
			}
			old, err := dbedit.Open(before)
			if err != nil {
				t.Fatal(err)
			}
			err = ed.f(db, old)
			db.Close()
			old.Close()
			if err != nil {
				t.Fatal(err)
			}
			k, err := testbin.TryStartKbsd(t, kbsdBin, dir, "--dev", "--listen-tcp", "none")
			var refused *testbin.RefusedError
			switch {
			case errors.As(err, &refused):
				if ed.refuse != "" && !strings.Contains(refused.Output, ed.refuse) {
					t.Fatalf("kbsd refused to start, but not because %q:\n%s", ed.refuse, refused.Output)
				}
				if !clearRefusal(refused.Output) {
					t.Fatalf("kbsd refused to start without a clear reason:\n%s", refused.Output)
				}
				t.Logf("refused: %s", refusalLine(refused.Output))
			case err != nil:
				t.Fatal(err)
			default:
				hd := &daemon{Kbsd: k, t: t, hc: k.HTTPClient()}
				defer hd.Kill()
				if ed.refuse != "" {
					t.Errorf("kbsd started; want a refusal mentioning %q", ed.refuse)
				}
				n := checkHostileReleases(t, hd)
				t.Logf("started; %d of the 2 live keys released", n)
			}
		})
	}

	// While kbsd runs.
	live := filepath.Join(root, "live")
	copyTree(t, base, live)
	d = startDaemon(t, live)
	if db, err := dbedit.Open(filepath.Join(live, "kbs.db")); !errors.Is(err, berrors.ErrTimeout) {
		if err == nil {
			db.Close()
		}
		t.Fatalf("opening kbs.db while kbsd runs: %v, want bbolt's lock timeout", err)
	}
	swapCiphertexts(t, filepath.Join(live, "kbs.db"), keyLive, keyOther)
	for _, id := range []string{keyLive, keyOther} {
		keys, _, err := fetch(d, attest.SNP, api.KEMX25519, id)
		if err == nil {
			t.Errorf("release of %s after its sealed record was swapped under kbsd: %q", id, keys[id])
		} else if !strings.Contains(err.Error(), "does not hold the version the log says is live") {
			t.Errorf("release of %s after its sealed record was swapped: %v, want an error naming the mismatch", id, err)
		}
	}
	checkHostileReleases(t, d)
	d.stop()
	// A start reads the staged changes and the keys' metadata records,
	// not their ciphertexts: kbsd starts, and the swapped keys are still
	// refused when asked for.
	k, err := testbin.TryStartKbsd(t, kbsdBin, live, "--dev", "--listen-tcp", "none")
	if err != nil {
		t.Fatalf("restart after a live edit of ciphertexts: %v", err)
	}
	d = &daemon{Kbsd: k, t: t, hc: k.HTTPClient()}
	defer d.Kill()
	for _, id := range []string{keyLive, keyOther} {
		if _, _, err := fetch(d, attest.SNP, api.KEMX25519, id); err == nil || !strings.Contains(err.Error(), "does not hold the version the log says is live") {
			t.Errorf("release of %s after a restart on swapped ciphertexts: %v, want an error naming the mismatch", id, err)
		}
	}
	checkHostileReleases(t, d)
}

// checkHostileReleases asks for each key of the scenario and fails the test
// if anything leaves that the log does not back. It returns how many keys
// were released.
func checkHostileReleases(t *testing.T, d *daemon) int {
	t.Helper()
	n := 0
	for _, id := range []string{keyLive, keyOther, keyGone, keyRevoked} {
		keys, rel, err := fetch(d, attest.SNP, api.KEMX25519, id)
		if err != nil {
			continue
		}
		n++
		switch {
		case id == keyGone:
			t.Errorf("the deleted key %s was released", id)
		case id == keyRevoked:
			t.Errorf("the revoked key %s was released (manifest %s)", id, rel.Class)
		case !bytes.Equal(keys[id], hostileMaterial[id]):
			t.Errorf("%s released as %q (version %d), want %q", id, keys[id], rel.Keys[0].Version, hostileMaterial[id])
		}
	}
	return n
}

// clearRefusal reports whether kbsd's output says why it refused to start.
func clearRefusal(out string) bool {
	for _, s := range []string{
		"the log was rolled back", "does not check out", "disagrees with the log", "does not hold exactly",
		"does not match the log's tree", "not an extension", "does not read back", "boltlog:", "key store",
	} {
		if strings.Contains(out, "kbsd: ") && strings.Contains(out, s) {
			return true
		}
	}
	return false
}

// refusalLine returns the line in which kbsd says why it exits.
func refusalLine(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "kbsd: ") {
			return l
		}
	}
	return out
}

// swapCiphertexts exchanges, in the file's bytes (as the host can while
// kbsd holds the file), the sealed material of the latest versions of two
// keys whose materials have the same length.
func swapCiphertexts(t *testing.T, path, a, b string) {
	t.Helper()
	snap := filepath.Join(t.TempDir(), "snap.db")
	copyTree(t, path, snap)
	db, err := dbedit.Open(snap)
	if err != nil {
		t.Fatal(err)
	}
	ct := func(id string) []byte {
		raw, err := dbedit.Get(db, keystoreKeys, []byte(id))
		var meta struct {
			Version uint64 `json:"version"`
		}
		if err != nil || raw == nil || json.Unmarshal(raw, &meta) != nil {
			t.Fatalf("record of %s: %v", id, err)
		}
		raw, err = dbedit.Get(db, keystoreVersions, binary.BigEndian.AppendUint64([]byte(id+"\x00"), meta.Version))
		var rec struct {
			Ciphertext []byte `json:"ciphertext"`
		}
		if err != nil || raw == nil || json.Unmarshal(raw, &rec) != nil {
			t.Fatalf("record of %s version %d: %v", id, meta.Version, err)
		}
		return []byte(base64.StdEncoding.EncodeToString(rec.Ciphertext))
	}
	ca, cb := ct(a), ct(b)
	db.Close()
	if len(ca) != len(cb) {
		t.Fatalf("ciphertexts of %s and %s differ in length", a, b)
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	for _, sw := range [][2][]byte{{ca, cb}, {cb, ca}} {
		for off := 0; ; {
			i := bytes.Index(file[off:], sw[0])
			if i < 0 {
				break
			}
			if _, err := f.WriteAt(sw[1], int64(off+i)); err != nil {
				t.Fatal(err)
			}
			n++
			off += i + len(sw[0])
		}
	}
	if n < 2 {
		t.Fatalf("found the ciphertexts %d times in the file", n)
	}
}

// copyTree copies a file or a directory tree.
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if de.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		if de.Type()&fs.ModeSocket != 0 {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// deleteKey deletes key id at version as the dev client.
func (c *client) deleteKey(id string, version uint64) {
	c.t.Helper()
	sig, err := api.SignStatement(c.clientKey(), api.DeleteStatement("demo-client", id, version, c.att.HPKEPublicKey))
	if err != nil {
		c.t.Fatal(err)
	}
	c.d.mustCall("DELETE", api.PathKeys+"/"+id, api.KeyDelete{Client: "demo-client", Version: version, Signature: sig}, nil)
}

// publishRevocation publishes version 2 of the dev manifest, signed by the
// dev owner, in which the worker class gets only demo/live/* keys: it loses
// revoked (and every other demo/ key).
func (c *client) publishRevocation(revoked string) {
	c.t.Helper()
	m, err := manifest.Parse(c.manifest)
	if err != nil {
		c.t.Fatal(err)
	}
	doc := m.Document()
	doc.Version, doc.Previous = 2, m.Hash()
	var rules []manifest.KeyRule
	for _, r := range doc.Keys {
		if r.Match == "demo/*" {
			r.Match = "demo/live/*"
		}
		rules = append(rules, r)
	}
	doc.Keys = rules
	body, err := manifest.Encode(doc)
	if err != nil {
		c.t.Fatal(err)
	}
	if m2, err := manifest.Parse(body); err != nil || m2.ReleaseAllowed("demo-worker", revoked) {
		c.t.Fatalf("version 2 (%v) still releases %s", err, revoked)
	}
	pemBytes, err := os.ReadFile(filepath.Join(c.d.Data, "owner.key"))
	if err != nil {
		c.t.Fatal(err)
	}
	owner, err := manifest.ParsePrivateKey(pemBytes, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	sig, err := manifest.Sign(owner, body)
	if err != nil {
		c.t.Fatal(err)
	}
	c.d.mustCall("PUT", api.PathManifest, api.ManifestUpdate{Body: body, Signatures: []string{sig}}, nil)
}
