package keystore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-sev-guest/client"
	labi "github.com/google/go-sev-guest/client/linuxabi"
	sgtest "github.com/google/go-sev-guest/testing"
	"go.etcd.io/bbolt"
)

func openDB(t *testing.T, path string) *bbolt.DB {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func TestPutGetVersionsDelete(t *testing.T) {
	dir := t.TempDir()
	db := openDB(t, filepath.Join(dir, "kbs.db"))
	sealer := &SimSealer{Path: filepath.Join(dir, "sim", "sealing.key")}
	s, err := Open(context.Background(), db, sealer)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1700000000, 0).UTC()
	if err := s.Put("demo/a", 2, "c", []byte("k"), now); !errors.Is(err, ErrVersion) {
		t.Fatalf("Put(v2 of new key) = %v, want ErrVersion", err)
	}
	if err := s.Put("demo/a", 1, "c", []byte("key-one"), now); err != nil {
		t.Fatal(err)
	}
	if err := s.Put("demo/a", 1, "c", []byte("replay"), now); !errors.Is(err, ErrVersion) {
		t.Fatalf("replayed Put(v1) = %v, want ErrVersion", err)
	}
	if err := s.Put("demo/a", 2, "c", []byte("key-two"), now); err != nil {
		t.Fatal(err)
	}
	k, err := s.Get("demo/a")
	if err != nil || k.Version != 2 || string(k.Material) != "key-two" {
		t.Fatalf("Get = %+v, %v; want version 2 key-two", k, err)
	}
	if err := s.Delete("demo/a", 1, now); !errors.Is(err, ErrVersion) {
		t.Fatalf("Delete(stale version) = %v, want ErrVersion", err)
	}
	if err := s.Delete("demo/a", 2, now); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("demo/a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after delete = %v, want ErrNotFound", err)
	}
	if err := s.Delete("demo/a", 2, now); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Delete = %v, want ErrNotFound", err)
	}
	// Versions are never reused after a delete.
	if err := s.Put("demo/a", 1, "c", []byte("again"), now); !errors.Is(err, ErrVersion) {
		t.Fatalf("Put(v1) after delete = %v, want ErrVersion", err)
	}
	if n, _ := s.NextVersion("demo/a"); n != 3 {
		t.Fatalf("NextVersion after delete = %d, want 3", n)
	}
	if err := s.Put("demo/a", 3, "c", []byte("key-three"), now); err != nil {
		t.Fatal(err)
	}
	list, err := s.List()
	if err != nil || len(list) != 1 || list[0].Version != 3 || list[0].Deleted {
		t.Fatalf("List = %+v, %v", list, err)
	}

	// The database holds no key material in the clear.
	if err := s.PutSecret("identity", []byte("very-secret-identity")); err != nil {
		t.Fatal(err)
	}
	db.Close()
	raw, _ := os.ReadFile(filepath.Join(dir, "kbs.db"))
	for _, secret := range []string{"key-one", "key-two", "key-three", "very-secret-identity"} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("database file contains %q in the clear", secret)
		}
	}

	// Reopen: same master key through the sealer.
	db = openDB(t, filepath.Join(dir, "kbs.db"))
	defer db.Close()
	s, err = Open(context.Background(), db, sealer)
	if err != nil {
		t.Fatal(err)
	}
	if k, err := s.Get("demo/a"); err != nil || string(k.Material) != "key-three" {
		t.Fatalf("Get after reopen = %+v, %v", k, err)
	}
	if sec, err := s.Secret("identity"); err != nil || string(sec) != "very-secret-identity" {
		t.Fatalf("Secret after reopen = %q, %v", sec, err)
	}
	if _, err := s.Secret("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Secret(unknown) = %v, want ErrNotFound", err)
	}
}

func TestWrongSealer(t *testing.T) {
	dir := t.TempDir()
	db := openDB(t, filepath.Join(dir, "kbs.db"))
	defer db.Close()
	if _, err := Open(context.Background(), db, &SimSealer{Path: filepath.Join(dir, "a.key")}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), db, &SimSealer{Path: filepath.Join(dir, "b.key")}); !errors.Is(err, ErrSealer) {
		t.Fatalf("Open with another KEK = %v, want ErrSealer", err)
	}
	if _, err := Open(context.Background(), db, &SNPSealer{Device: mockDevice(t, 7)}); !errors.Is(err, ErrSealer) {
		t.Fatalf("Open with another sealer = %v, want ErrSealer", err)
	}
}

// TestMovedCiphertext checks that the associated data stops a host from
// moving one key's record under another id.
func TestMovedCiphertext(t *testing.T) {
	dir := t.TempDir()
	db := openDB(t, filepath.Join(dir, "kbs.db"))
	defer db.Close()
	s, err := Open(context.Background(), db, &SimSealer{Path: filepath.Join(dir, "k")})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put("a", 1, "c", []byte("material-a"), time.Now()); err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketRoot).Bucket(bucketKeyMeta)
		raw := bytes.Replace(b.Get([]byte("a")), []byte(`"id":"a"`), []byte(`"id":"b"`), 1)
		if err := b.Put([]byte("b"), raw); err != nil {
			return err
		}
		v := tx.Bucket(bucketRoot).Bucket(bucketVersions)
		return v.Put(versionKey("b", 1), v.Get(versionKey("a", 1)))
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Meta("b"); err != nil {
		t.Fatalf("Meta of the moved record: %v", err)
	}
	if _, err := s.Get("b"); err == nil {
		t.Fatal("Get of a moved record succeeded")
	}
}

func mockDevice(t *testing.T, fill byte) client.Device {
	t.Helper()
	req := snpKeyRequest()
	abiReq := &labi.SnpDerivedKeyReqABI{RootKeySelect: 0, GuestFieldSelect: req.GuestFieldSelect.ABI()}
	return &sgtest.Device{Keys: map[string][]byte{
		sgtest.DerivedKeyRequestToString(abiReq): bytes.Repeat([]byte{fill}, 32),
	}}
}

func TestSNPSealer(t *testing.T) {
	k1, err := (&SNPSealer{Device: mockDevice(t, 1)}).Key(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	k1b, _ := (&SNPSealer{Device: mockDevice(t, 1)}).Key(context.Background())
	k2, _ := (&SNPSealer{Device: mockDevice(t, 2)}).Key(context.Background())
	if k1 != k1b || k1 == k2 {
		t.Fatalf("SNP sealer keys: same firmware key gave %x and %x; other gave %x", k1, k1b, k2)
	}
	dir := t.TempDir()
	db := openDB(t, filepath.Join(dir, "kbs.db"))
	defer db.Close()
	s, err := Open(context.Background(), db, &SNPSealer{Device: mockDevice(t, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutSecret("x", []byte("y")); err != nil {
		t.Fatal(err)
	}
	// Another measurement means another firmware key: the store stays sealed.
	if _, err := Open(context.Background(), db, &SNPSealer{Device: mockDevice(t, 2)}); !errors.Is(err, ErrSealer) {
		t.Fatalf("Open under another measurement = %v, want ErrSealer", err)
	}
}

func TestNewSealer(t *testing.T) {
	if s, err := NewSealer("tdx", ""); err != nil || s.Name() != "none" {
		t.Errorf("NewSealer(tdx) = %v, %v, want NoSealer", s, err)
	}
	if _, err := NewSealer("sim", ""); err == nil {
		t.Error("NewSealer(sim) without a path succeeded")
	}
	if s, err := NewSealer("snp", ""); err != nil || s.Name() != "snp" {
		t.Errorf("NewSealer(snp) = %v, %v", s, err)
	}
}

func TestStagedChanges(t *testing.T) {
	dir := t.TempDir()
	db := openDB(t, filepath.Join(dir, "kbs.db"))
	defer db.Close()
	s, err := Open(context.Background(), db, &SimSealer{Path: filepath.Join(dir, "k")})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1700000000, 0)
	// A staged put of a new key is invisible, and aborting it leaves nothing.
	digest, err := s.PreparePut("demo/a", 1, "c", []byte("one"), 5, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("demo/a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of a staged key = %v, want ErrNotFound", err)
	}
	if l, _ := s.List(); len(l) != 0 {
		t.Fatalf("List shows a staged key: %+v", l)
	}
	p, err := s.PendingChanges()
	if err != nil || len(p) != 1 || p[0] != (Pending{ID: "demo/a", Op: OpPut, Version: 1, Client: "c", LogSize: 5, SealedDigest: digest}) {
		t.Fatalf("PendingChanges = %+v, %v", p, err)
	}
	if err := s.Abort("demo/a"); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.NextVersion("demo/a"); n != 1 {
		t.Fatalf("NextVersion after abort = %d, want 1", n)
	}
	// Staged, then committed.
	if digest, err = s.PreparePut("demo/a", 1, "c", []byte("one"), 5, now); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit("demo/a"); err != nil {
		t.Fatal(err)
	}
	if k, err := s.Get("demo/a"); err != nil || string(k.Material) != "one" || k.SealedDigest != digest {
		t.Fatalf("Get after commit = %+v, %v (want sealed digest %s)", k, err, digest)
	}
	if m, err := s.Meta("demo/a"); err != nil || m.SealedDigest != digest {
		t.Fatalf("Meta after commit = %+v, %v (want sealed digest %s)", m, err, digest)
	}
	// A second version staged: the first is still what Get returns.
	if _, err := s.PreparePut("demo/a", 2, "c", []byte("two"), 6, now); err != nil {
		t.Fatal(err)
	}
	if k, _ := s.Get("demo/a"); k.Version != 1 {
		t.Fatalf("Get with version 2 staged = version %d, want 1", k.Version)
	}
	s.Abort("demo/a")
	if k, _ := s.Get("demo/a"); k.Version != 1 || string(k.Material) != "one" {
		t.Fatalf("Get after aborting version 2 = %+v", k)
	}
	// A staged delete hides the key at once; abort restores it.
	if err := s.PrepareDelete("demo/a", 1, 7, now); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("demo/a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get with its deletion staged = %v, want ErrNotFound", err)
	}
	s.Abort("demo/a")
	if _, err := s.Get("demo/a"); err != nil {
		t.Fatalf("Get after aborted delete: %v", err)
	}
	if err := s.PrepareDelete("demo/a", 1, 7, now); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit("demo/a"); err != nil {
		t.Fatal(err)
	}
	if m, err := s.Meta("demo/a"); err != nil || !m.Deleted || m.SealedDigest != "" {
		t.Fatalf("Meta after committed delete = %+v, %v", m, err)
	}
	if err := s.Commit("demo/a"); err == nil {
		t.Fatal("Commit with nothing staged succeeded")
	}
	// A put staged on a deleted key and aborted leaves it deleted.
	if _, err := s.PreparePut("demo/a", 2, "c", []byte("again"), 8, now); err != nil {
		t.Fatal(err)
	}
	s.Abort("demo/a")
	if m, _ := s.Meta("demo/a"); !m.Deleted || m.Version != 1 {
		t.Fatalf("Meta after aborted re-upload = %+v", m)
	}
	if p, _ := s.PendingChanges(); len(p) != 0 {
		t.Fatalf("PendingChanges at the end = %+v", p)
	}
}

// TestIDs checks the id scan behind paginated lists: committed ids only
// (a staged new id is not one), in order, within the prefix, after the
// given id.
func TestIDs(t *testing.T) {
	dir := t.TempDir()
	db := openDB(t, filepath.Join(dir, "kbs.db"))
	defer db.Close()
	s, err := Open(context.Background(), db, &SimSealer{Path: filepath.Join(dir, "k")})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1700000000, 0)
	for _, id := range []string{"a", "a/b", "a/c", "ab", "b/x", "b/y"} {
		if err := s.Put(id, 1, "c", []byte("k"), now); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Put("a/b", 2, "c", []byte("k2"), now); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("b/x", 1, now); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PreparePut("a/staged", 1, "c", []byte("k"), 0, now); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		prefix, after string
		limit         int
		want          []string
	}{
		{"", "", 100, []string{"a", "a/b", "a/c", "ab", "b/x", "b/y"}},
		{"", "", 2, []string{"a", "a/b"}},
		{"", "a/b", 2, []string{"a/c", "ab"}},
		{"a/", "", 100, []string{"a/b", "a/c"}},
		{"a/", "a/b", 100, []string{"a/c"}},
		{"a/", "0", 100, []string{"a/b", "a/c"}},
		{"a/", "zz", 100, nil},
		{"b/", "", 100, []string{"b/x", "b/y"}},
		{"c", "", 100, nil},
	} {
		var got []string
		err := s.IDs(tt.prefix, tt.after, func(id string) bool {
			got = append(got, id)
			return len(got) < tt.limit
		})
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("IDs(%q, %q) limit %d = %q, %v; want %q", tt.prefix, tt.after, tt.limit, got, err, tt.want)
		}
	}
}

// TestOpenWithMaster follows a master key across sealers: a store sealed by
// one SNP measurement opens under another only with its master key (a
// handover), which is then sealed for the new one; NoSealer keeps it in
// memory only, so every later Open needs the key again; a wrong key, or a
// store without a secret to check it against, changes nothing.
func TestOpenWithMaster(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db := openDB(t, filepath.Join(dir, "kbs.db"))
	defer db.Close()
	oldSealer, newSealer := &SNPSealer{Device: mockDevice(t, 1)}, &SNPSealer{Device: mockDevice(t, 2)}
	if _, err := OpenWithMaster(ctx, db, newSealer, bytes.Repeat([]byte{1}, 32)); !errors.Is(err, ErrMasterKey) {
		t.Fatalf("OpenWithMaster on an empty store = %v, want ErrMasterKey", err)
	}
	s, err := Open(ctx, db, oldSealer)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutSecret("identity", []byte("id")); err != nil {
		t.Fatal(err)
	}
	if err := s.Put("demo/a", 1, "c", []byte("material"), time.Now()); err != nil {
		t.Fatal(err)
	}
	master := s.MasterKey()
	wrong := bytes.Clone(master)
	wrong[0] ^= 1
	if _, err := OpenWithMaster(ctx, db, newSealer, wrong); !errors.Is(err, ErrMasterKey) {
		t.Fatalf("OpenWithMaster with a wrong key = %v, want ErrMasterKey", err)
	}
	if _, err := Open(ctx, db, oldSealer); err != nil {
		t.Fatalf("a refused OpenWithMaster changed the store: %v", err)
	}
	if _, err := OpenWithMaster(ctx, db, newSealer, master); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, db, oldSealer); !errors.Is(err, ErrSealer) {
		t.Fatalf("Open under the old measurement after a handover = %v, want ErrSealer", err)
	}
	s2, err := Open(ctx, db, newSealer)
	if err != nil {
		t.Fatal(err)
	}
	if k, err := s2.Get("demo/a"); err != nil || string(k.Material) != "material" {
		t.Fatalf("Get under the new sealer = %q, %v", k.Material, err)
	}
	// To a TEE without a sealing key: in memory only.
	if _, err := OpenWithMaster(ctx, db, NoSealer{}, master); err != nil {
		t.Fatal(err)
	}
	for _, sl := range []Sealer{NoSealer{}, newSealer} {
		if _, err := Open(ctx, db, sl); !errors.Is(err, ErrSealer) {
			t.Fatalf("Open(%s) of a store without a sealed master key = %v, want ErrSealer", sl.Name(), err)
		}
	}
	s3, err := OpenWithMaster(ctx, db, NoSealer{}, master)
	if err != nil {
		t.Fatal(err)
	}
	if k, err := s3.Get("demo/a"); err != nil || string(k.Material) != "material" {
		t.Fatalf("Get with the master key in memory = %q, %v", k.Material, err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "kbs.db"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, master) {
		t.Fatal("the database holds the master key in the clear")
	}
}

// TestNoSealerNewStore: a new store under NoSealer works, with its master
// key in memory only.
func TestNoSealerNewStore(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, filepath.Join(t.TempDir(), "kbs.db"))
	defer db.Close()
	s, err := Open(ctx, db, NoSealer{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutSecret("identity", []byte("id")); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, db, NoSealer{}); !errors.Is(err, ErrSealer) {
		t.Fatalf("second Open(NoSealer) = %v, want ErrSealer", err)
	}
	if _, err := OpenWithMaster(ctx, db, NoSealer{}, s.MasterKey()); err != nil {
		t.Fatal(err)
	}
}
