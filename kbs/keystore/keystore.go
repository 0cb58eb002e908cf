// Package keystore is kbsd's sealed key store: the prompt-encryption keys
// clients upload, and the broker's own secrets (identity keys), in a bbolt
// database the host can read and write.
//
// # What it trusts and guarantees
//
// The store trusts its Sealer for one 32-byte key-encryption key (KEK) that
// only this broker can reproduce (the SNP firmware's derived key, bound to
// the launch measurement and policy; or a plain file in development). The
// KEK seals a random 256-bit master key, kept in the database. A TEE
// without a sealing key (TDX: NoSealer) keeps the master key in memory
// only. The master key leaves the store only through MasterKey, for the
// broker's two logged paths (a handover to an attested successor, which
// opens the store with OpenWithMaster; Shamir shares for the recovery
// holders, Split and Combine). The master
// key wraps one random AES-256-GCM data key per key id, and each data key
// encrypts that id's key material. The broker's secrets are encrypted under
// the master key directly. Every ciphertext is AES-256-GCM with associated
// data naming what it is (key id, version, secret name), so the host cannot
// move ciphertexts between records.
//
// A host that reads the database file learns key ids, versions, client
// names and timestamps (the same metadata the transparency log publishes),
// never key material. A host that writes it can delete, roll back or swap
// records; it cannot forge key material. The store does not decide which
// version is live or whether a key is deleted: the broker does, from its
// transparency log, and uses a record only when its version and sealed
// digest (Key.SealedDigest, the SHA-256 of the version's ciphertext, which
// the log's key-upload entry names) are the ones the log says.
//
// Keys are versioned: version N+1 is accepted only after version N, and
// versions are never reused, even after a delete. Delete destroys the key
// id's data key (crypto-shredding) together with its ciphertexts. Note that
// bbolt does not zero freed pages, and a disk snapshot taken before the
// delete still holds the wrapped data key: shredding protects against a
// later compromise of the running broker's store, not against an old copy
// unsealed by the same broker (see SECURITY.md, known gaps).
//
// Changes can be staged (PreparePut, PrepareDelete), then committed or
// aborted, so that the broker can make a change durable in the
// transparency log between staging and committing: a staged key is never
// released, a key whose deletion is staged no longer is, and after a crash
// PendingChanges tells which changes to settle against the log.
//
// # Layout
//
// Everything is in the bucket "keystore" of the database:
//
//   - "meta": the sealed master key ("master");
//   - "keymeta": per key id, its metadata (JSON: latest version, uploader,
//     times, deleted, the sealed digest of the latest version) and its
//     wrapped data key. A few hundred bytes, never a ciphertext: listing
//     and checking keys reads only these.
//   - "versions": one record per stored version, under the key
//     id, a zero byte and the version (8 bytes, big-endian), so that the
//     versions of an id are adjacent and in order: its ciphertext, uploader
//     and time;
//   - "pending": per key id with a staged change, that change (with the
//     staged ciphertext, and the fresh data key of a new or deleted id);
//   - "secrets": the broker's secrets, by name.
//
// An upload and a release touch O(1) records whatever the number of keys
// and of versions; a start reads only "pending" to settle changes. Stores
// written before this layout (one record per key id holding every
// version, in "keys") are migrated by Open, in batches that each commit
// atomically, so a crash during the migration loses nothing.
//
// A Store is safe for concurrent use. Mutations are serialized.
package keystore

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"go.etcd.io/bbolt"
)

// Bucket names inside the shared database.
var (
	bucketRoot     = []byte("keystore")
	bucketMeta     = []byte("meta")
	bucketKeyMeta  = []byte("keymeta")
	bucketVersions = []byte("versions")
	bucketPending  = []byte("pending")
	bucketSecrets  = []byte("secrets")
	keyMaster      = []byte("master")
	// bucketOldKeys is the layout before "keymeta", "versions" and
	// "pending": one record per key id (oldKeyRecord). Open migrates it.
	bucketOldKeys = []byte("keys")
)

// Errors callers branch on.
var (
	// ErrNotFound: the key id (or secret) does not exist or was deleted.
	ErrNotFound = errors.New("keystore: not found")
	// ErrVersion: the version is not the next one (a replay or a stale
	// write), or not the latest one for a delete.
	ErrVersion = errors.New("keystore: wrong version")
	// ErrSealer: the master key could not be unsealed: another sealer,
	// another machine or another measurement.
	ErrSealer = errors.New("keystore: cannot unseal the master key")
)

// Store is the sealed key store. Create it with Open.
type Store struct {
	db     *bbolt.DB
	master cipher.AEAD
	// masterKey is the raw master key, for MasterKey.
	masterKey []byte
	mu        sync.Mutex // serializes mutations
}

type masterRecord struct {
	Sealer string `json:"sealer"`
	Sealed []byte `json:"sealed"` // empty for NoSealer
}

// metaRecord is a key id's record in "keymeta".
type metaRecord struct {
	ID             string    `json:"id"`
	Version        uint64    `json:"version"`
	Client         string    `json:"client"`
	Created        time.Time `json:"created"`
	VersionCreated time.Time `json:"version_created,omitzero"`
	Deleted        bool      `json:"deleted,omitempty"`
	// SealedDigest is that of the latest version's ciphertext (empty once
	// deleted). Get recomputes it from the ciphertext it decrypts.
	SealedDigest string `json:"sealed_digest,omitempty"`
	WrappedDEK   []byte `json:"wrapped_dek,omitempty"`
}

// versionRecord is one stored version, in "versions" (and, staged, in a
// pendingRecord).
type versionRecord struct {
	Version    uint64    `json:"version"`
	Client     string    `json:"client"`
	Created    time.Time `json:"created"`
	Ciphertext []byte    `json:"ciphertext"`
}

// pendingRecord is a staged change, in "pending".
type pendingRecord struct {
	ID      string        `json:"id"`
	Op      string        `json:"op"`
	LogSize uint64        `json:"log_size"`
	Version versionRecord `json:"version"`
	// WrappedDEK is the fresh data key of a put staged for a new or
	// deleted id; Commit makes it the id's data key.
	WrappedDEK []byte `json:"wrapped_dek,omitempty"`
}

// Meta is the metadata of a key id. It never holds key material.
type Meta struct {
	ID      string
	Version uint64 // latest version
	Client  string // uploader of the latest version
	Created time.Time
	// VersionCreated is when the latest version was stored; zero once the
	// key is deleted (its versions are shredded).
	VersionCreated time.Time
	Deleted        bool
	// SealedDigest is the sealed digest of the latest version (see Key);
	// empty for a deleted key.
	SealedDigest string
}

// Key is one version of a key with its material.
type Key struct {
	ID       string
	Version  uint64
	Material []byte
	// SealedDigest is "sha256:<hex>" of the version's ciphertext as
	// stored: it names the stored record of this version without
	// revealing anything about the key, so a log entry can carry it.
	SealedDigest string
}

// sealedDigest returns the SealedDigest of a stored ciphertext.
func sealedDigest(ct []byte) string {
	d := sha256.Sum256(ct)
	return "sha256:" + hex.EncodeToString(d[:])
}

// Open opens the store in db, creating its buckets and master key on first
// use, and migrating a store of the older layout (see Layout). The master
// key is sealed under sealer's key; opening a store created with another
// sealer, or one whose KEK differs (another machine or measurement), fails
// with ErrSealer. With NoSealer (a TEE without a sealing key) a new
// store's master key is kept in memory only, and an existing store always
// fails with ErrSealer: its master key comes back only through
// OpenWithMaster.
func Open(ctx context.Context, db *bbolt.DB, sealer Sealer) (*Store, error) {
	var kekAEAD cipher.AEAD
	if sealer.Name() != noSealerName {
		kek, err := sealer.Key(ctx)
		if err != nil {
			return nil, fmt.Errorf("couldn't get the sealing key: %w", err)
		}
		if kekAEAD, err = newGCM(kek[:]); err != nil {
			return nil, err
		}
	}
	var master []byte
	err := db.Update(func(tx *bbolt.Tx) error {
		meta, err := createBuckets(tx)
		if err != nil {
			return err
		}
		if raw := meta.Get(keyMaster); raw != nil {
			var rec masterRecord
			if err := json.Unmarshal(raw, &rec); err != nil {
				return fmt.Errorf("corrupt master key record: %w", err)
			}
			if rec.Sealer == noSealerName {
				return fmt.Errorf("%w: its master key is not sealed at rest (a TEE without a sealing key): it comes back only from a peer (handover) or from the recovery holders' shares", ErrSealer)
			}
			if rec.Sealer != sealer.Name() {
				return fmt.Errorf("%w: the store was sealed by %q, not %q", ErrSealer, rec.Sealer, sealer.Name())
			}
			if kekAEAD == nil {
				return fmt.Errorf("%w: the store was sealed by %q, and this TEE has no sealing key", ErrSealer, rec.Sealer)
			}
			m, err := open(kekAEAD, rec.Sealed, []byte("kbs-master-v1"))
			if err != nil {
				return fmt.Errorf("%w (sealer %q): %v", ErrSealer, rec.Sealer, err)
			}
			master = m
			return nil
		}
		master = make([]byte, 32)
		if _, err := rand.Read(master); err != nil {
			return err
		}
		return putMaster(meta, kekAEAD, sealer.Name(), master)
	})
	if err != nil {
		return nil, err
	}
	if err := migrate(ctx, db); err != nil {
		return nil, err
	}
	return newStore(db, master)
}

// OpenWithMaster opens the store in db with master, its master key as
// another broker held it (a handover) or as the recovery shares restore it,
// and seals it under sealer from then on (replacing the record of the
// sealer it had); it migrates a store of the older layout as Open does. master must open every broker secret the store holds,
// and the store must hold at least one (the broker identity), else
// OpenWithMaster fails and changes nothing.
func OpenWithMaster(ctx context.Context, db *bbolt.DB, sealer Sealer, master []byte) (*Store, error) {
	if len(master) != 32 {
		return nil, fmt.Errorf("keystore: a master key is 32 bytes, got %d", len(master))
	}
	m, err := newGCM(master)
	if err != nil {
		return nil, err
	}
	var kekAEAD cipher.AEAD
	if sealer.Name() != noSealerName {
		kek, err := sealer.Key(ctx)
		if err != nil {
			return nil, fmt.Errorf("couldn't get the sealing key: %w", err)
		}
		if kekAEAD, err = newGCM(kek[:]); err != nil {
			return nil, err
		}
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		meta, err := createBuckets(tx)
		if err != nil {
			return err
		}
		n := 0
		err = tx.Bucket(bucketRoot).Bucket(bucketSecrets).ForEach(func(k, v []byte) error {
			n++
			if _, err := open(m, v, secretAD(string(k))); err != nil {
				return fmt.Errorf("%w: it does not open the broker secret %q", ErrMasterKey, k)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("%w: the store holds no broker secret to check it against", ErrMasterKey)
		}
		return putMaster(meta, kekAEAD, sealer.Name(), master)
	})
	if err != nil {
		return nil, err
	}
	if err := migrate(ctx, db); err != nil {
		return nil, err
	}
	return newStore(db, bytes.Clone(master))
}

// ErrMasterKey is returned by OpenWithMaster for a master key that is not
// the store's.
var ErrMasterKey = errors.New("keystore: not this store's master key")

func createBuckets(tx *bbolt.Tx) (*bbolt.Bucket, error) {
	root, err := tx.CreateBucketIfNotExists(bucketRoot)
	if err != nil {
		return nil, err
	}
	for _, name := range [][]byte{bucketMeta, bucketKeyMeta, bucketVersions, bucketPending, bucketSecrets} {
		if _, err := root.CreateBucketIfNotExists(name); err != nil {
			return nil, err
		}
	}
	return root.Bucket(bucketMeta), nil
}

// putMaster writes the master key record: sealed under kek, or, for
// NoSealer (kek nil), only the sealer's name.
func putMaster(meta *bbolt.Bucket, kek cipher.AEAD, sealer string, master []byte) error {
	rec := masterRecord{Sealer: sealer}
	if kek != nil {
		sealed, err := seal(kek, master, []byte("kbs-master-v1"))
		if err != nil {
			return err
		}
		rec.Sealed = sealed
	}
	raw, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return meta.Put(keyMaster, raw)
}

func newStore(db *bbolt.DB, master []byte) (*Store, error) {
	m, err := newGCM(master)
	if err != nil {
		return nil, err
	}
	return &Store{db: db, master: m, masterKey: master}, nil
}

// MasterKey returns a copy of the store's master key. It leaves the broker
// only by the two logged paths: sealed to an attested successor
// (handover), or split into shares sealed to the recovery holders the
// manifest names. Callers clear the copy when done.
func (s *Store) MasterKey() []byte { return bytes.Clone(s.masterKey) }

// NextVersion returns the version an upload of id must carry: 1 for a new
// id, else one more than the latest version (deleted or not).
func (s *Store) NextVersion(id string) (uint64, error) {
	var next uint64 = 1
	err := s.db.View(func(tx *bbolt.Tx) error {
		rec, err := getMeta(tx, id)
		if err != nil || rec == nil {
			return err
		}
		next = rec.Version + 1
		return nil
	})
	return next, err
}

// Put stores version of key id with material, uploaded by client, at once
// (PreparePut and Commit in one step). version must equal NextVersion(id),
// else Put returns an error wrapping ErrVersion and stores nothing.
func (s *Store) Put(id string, version uint64, client string, material []byte, now time.Time) error {
	if _, err := s.PreparePut(id, version, client, material, 0, now); err != nil {
		return err
	}
	return s.Commit(id)
}

// Delete crypto-shreds key id at once (PrepareDelete and Commit in one
// step).
func (s *Store) Delete(id string, version uint64, now time.Time) error {
	if err := s.PrepareDelete(id, version, 0, now); err != nil {
		return err
	}
	return s.Commit(id)
}

// Pending is a staged change of a key id: prepared, not yet committed or
// aborted. The broker stages a change, logs it, then commits it; after a
// crash it commits the pending changes the log holds and aborts the
// others.
type Pending struct {
	ID      string
	Op      string // "put" or "delete"
	Version uint64
	Client  string
	// LogSize is the log's size when the change was staged: its log entry,
	// if any, is at this index or later.
	LogSize uint64
	// SealedDigest is the sealed digest of a staged put (see Key).
	SealedDigest string
}

// Staged operations.
const (
	OpPut    = "put"
	OpDelete = "delete"
)

// PreparePut stages version of key id with material: it is stored
// (encrypted) but not released by Get until Commit. version must equal
// NextVersion(id) (ErrVersion otherwise). A change already staged for id
// is replaced. It returns the staged version's sealed digest (see Key).
func (s *Store) PreparePut(id string, version uint64, client string, material []byte, logSize uint64, now time.Time) (string, error) {
	digests, errs, err := s.PreparePuts([]Put{{ID: id, Version: version, Client: client, Material: material}}, logSize, now)
	if err != nil {
		return "", err
	}
	return digests[0], errs[0]
}

// Put is one key version to stage (PreparePuts).
type Put struct {
	ID       string
	Version  uint64
	Client   string
	Material []byte
}

// PreparePuts stages puts, as PreparePut would one by one, in one
// transaction (one fsync for all). The ids must differ. It returns, for
// each put, its sealed digest or why it was not staged (ErrVersion...);
// err is a failure of the transaction, which stages none of them.
func (s *Store) PreparePuts(puts []Put, logSize uint64, now time.Time) (digests []string, errs []error, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	err = s.db.Update(func(tx *bbolt.Tx) error {
		digests, errs = make([]string, len(puts)), make([]error, len(puts))
		for i, p := range puts {
			p, err := s.preparePut(tx, p, logSize, now)
			if err != nil {
				errs[i] = err
				continue
			}
			digests[i] = sealedDigest(p.Version.Ciphertext)
			if err := putJSON(tx, bucketPending, []byte(p.ID), p); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return digests, errs, nil
}

// preparePut returns the staged change of put, checked against the
// store's record of its id.
func (s *Store) preparePut(tx *bbolt.Tx, put Put, logSize uint64, now time.Time) (*pendingRecord, error) {
	id, version := put.ID, put.Version
	rec, err := getMeta(tx, id)
	if err != nil {
		return nil, err
	}
	var want uint64 = 1
	if rec != nil {
		want = rec.Version + 1
	}
	if version != want {
		return nil, fmt.Errorf("%w: key %q needs version %d, got %d", ErrVersion, id, want, version)
	}
	p := &pendingRecord{ID: id, Op: OpPut, LogSize: logSize}
	wrapped := []byte(nil)
	if rec != nil {
		wrapped = rec.WrappedDEK
	}
	if wrapped == nil {
		// A new or deleted key gets a fresh data key.
		dek := make([]byte, 32)
		if _, err := rand.Read(dek); err != nil {
			return nil, err
		}
		wrapped, err = seal(s.master, dek, dekAD(id))
		clear(dek)
		if err != nil {
			return nil, err
		}
		p.WrappedDEK = wrapped
	}
	dek, err := s.dek(id, wrapped)
	if err != nil {
		return nil, err
	}
	ct, err := seal(dek, put.Material, materialAD(id, version))
	if err != nil {
		return nil, err
	}
	p.Version = versionRecord{Version: version, Client: put.Client, Created: now.UTC(), Ciphertext: ct}
	return p, nil
}

// PrepareDelete stages the deletion of key id, whose latest version must
// be version (ErrVersion otherwise; ErrNotFound for unknown or deleted
// keys). From then on Get no longer returns the key; Commit shreds it,
// Abort restores it.
func (s *Store) PrepareDelete(id string, version uint64, logSize uint64, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db.Update(func(tx *bbolt.Tx) error {
		rec, err := getMeta(tx, id)
		if err != nil {
			return err
		}
		if rec == nil || rec.Deleted || rec.Version == 0 {
			return fmt.Errorf("%w: key %q", ErrNotFound, id)
		}
		if rec.Version != version {
			return fmt.Errorf("%w: key %q is at version %d, not %d", ErrVersion, id, rec.Version, version)
		}
		return putJSON(tx, bucketPending, []byte(id), &pendingRecord{ID: id, Op: OpDelete, LogSize: logSize,
			Version: versionRecord{Version: version, Created: now.UTC()}})
	})
}

// Commit applies the change staged for key id: a put becomes the latest
// version; a delete destroys the data key and every ciphertext
// (crypto-shredding), keeping the metadata so that versions are never
// reused.
func (s *Store) Commit(id string) error { return s.CommitAll([]string{id}) }

// CommitAll commits the changes staged for ids (see Commit) in one
// transaction: all of them, or none if one fails.
func (s *Store) CommitAll(ids []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db.Update(func(tx *bbolt.Tx) error {
		for _, id := range ids {
			if err := commit(tx, id); err != nil {
				return err
			}
		}
		return nil
	})
}

func commit(tx *bbolt.Tx, id string) error {
	p, err := getPending(tx, id)
	if err != nil {
		return err
	}
	if p == nil {
		return fmt.Errorf("keystore: no change staged for key %q", id)
	}
	rec, err := getMeta(tx, id)
	if err != nil {
		return err
	}
	switch p.Op {
	case OpPut:
		if rec == nil {
			rec = &metaRecord{ID: id, Created: p.Version.Created}
		}
		if p.Version.Version != rec.Version+1 {
			return fmt.Errorf("%w: staged version %d of key %q does not follow %d", ErrVersion, p.Version.Version, id, rec.Version)
		}
		if p.WrappedDEK != nil {
			rec.WrappedDEK = p.WrappedDEK
		}
		if rec.WrappedDEK == nil {
			return fmt.Errorf("corrupt record for key %q: no data key", id)
		}
		rec.Version, rec.Client, rec.VersionCreated = p.Version.Version, p.Version.Client, p.Version.Created
		rec.Deleted = false
		rec.SealedDigest = sealedDigest(p.Version.Ciphertext)
		if err := putJSON(tx, bucketVersions, versionKey(id, rec.Version), &p.Version); err != nil {
			return err
		}
	case OpDelete:
		if rec == nil || rec.Deleted || rec.Version != p.Version.Version {
			return fmt.Errorf("%w: staged deletion of version %d of key %q, which is not its live version", ErrVersion, p.Version.Version, id)
		}
		rec.Deleted = true
		rec.WrappedDEK, rec.SealedDigest, rec.VersionCreated = nil, "", time.Time{}
		if err := shredVersions(tx, id); err != nil {
			return err
		}
	default:
		return fmt.Errorf("keystore: unknown staged operation %q for key %q", p.Op, id)
	}
	if err := tx.Bucket(bucketRoot).Bucket(bucketPending).Delete([]byte(id)); err != nil {
		return err
	}
	return putJSON(tx, bucketKeyMeta, []byte(id), rec)
}

// shredVersions deletes every stored version of id.
func shredVersions(tx *bbolt.Tx, id string) error {
	prefix := versionKey(id, 0)[:len(id)+1]
	c := tx.Bucket(bucketRoot).Bucket(bucketVersions).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// Abort drops the change staged for key id, if any.
func (s *Store) Abort(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketRoot).Bucket(bucketPending).Delete([]byte(id))
	})
}

// PendingChanges lists the staged changes, sorted by key id. It reads only
// the staged changes, whatever the number of keys.
func (s *Store) PendingChanges() ([]Pending, error) {
	var out []Pending
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketRoot).Bucket(bucketPending).ForEach(func(k, v []byte) error {
			var p pendingRecord
			if err := json.Unmarshal(v, &p); err != nil || p.ID != string(k) {
				return fmt.Errorf("corrupt staged change for key %q", k)
			}
			pc := Pending{ID: p.ID, Op: p.Op, Version: p.Version.Version, Client: p.Version.Client, LogSize: p.LogSize}
			if p.Op == OpPut {
				pc.SealedDigest = sealedDigest(p.Version.Ciphertext)
			}
			out = append(out, pc)
			return nil
		})
	})
	return out, err
}

// Get returns the latest committed version of key id. It returns
// ErrNotFound for unknown and deleted ids, and for ids whose deletion is
// staged. It reads the id's metadata, its staged change and one version.
func (s *Store) Get(id string) (Key, error) {
	var k Key
	err := s.db.View(func(tx *bbolt.Tx) error {
		rec, err := getMeta(tx, id)
		if err != nil {
			return err
		}
		if rec == nil || rec.Deleted || rec.Version == 0 {
			return fmt.Errorf("%w: key %q", ErrNotFound, id)
		}
		p, err := getPending(tx, id)
		if err != nil {
			return err
		}
		if p != nil && p.Op == OpDelete {
			return fmt.Errorf("%w: key %q", ErrNotFound, id)
		}
		var v versionRecord
		raw := tx.Bucket(bucketRoot).Bucket(bucketVersions).Get(versionKey(id, rec.Version))
		if raw == nil {
			return fmt.Errorf("corrupt store: key %q has no record of its latest version %d", id, rec.Version)
		}
		if err := json.Unmarshal(raw, &v); err != nil || v.Version != rec.Version {
			return fmt.Errorf("corrupt record of key %q version %d", id, rec.Version)
		}
		dek, err := s.dek(id, rec.WrappedDEK)
		if err != nil {
			return err
		}
		m, err := open(dek, v.Ciphertext, materialAD(id, v.Version))
		if err != nil {
			return fmt.Errorf("couldn't decrypt key %q version %d: %w", id, v.Version, err)
		}
		k = Key{ID: id, Version: v.Version, Material: m, SealedDigest: sealedDigest(v.Ciphertext)}
		return nil
	})
	return k, err
}

// Meta returns the metadata of key id, deleted or not, or ErrNotFound.
func (s *Store) Meta(id string) (Meta, error) {
	var m Meta
	err := s.db.View(func(tx *bbolt.Tx) error {
		rec, err := getMeta(tx, id)
		if err != nil {
			return err
		}
		if rec == nil || rec.Version == 0 {
			return fmt.Errorf("%w: key %q", ErrNotFound, id)
		}
		m = rec.meta()
		return nil
	})
	return m, err
}

// List returns the metadata of every key id, sorted by id (see
// ForEachMeta).
func (s *Store) List() ([]Meta, error) {
	var out []Meta
	err := s.ForEachMeta(func(m Meta) error {
		out = append(out, m)
		return nil
	})
	return out, err
}

// ForEachMeta calls fn with the metadata of every key id, in id order,
// until fn returns an error, which it returns. It reads the metadata
// records only, never a ciphertext. A record that does not decode, or is
// stored under another id than its own, is an error.
func (s *Store) ForEachMeta(fn func(Meta) error) error {
	return s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketRoot).Bucket(bucketKeyMeta).ForEach(func(k, v []byte) error {
			rec, err := decodeMeta(string(k), v)
			if err != nil {
				return err
			}
			if rec.Version == 0 {
				return nil
			}
			return fn(rec.meta())
		})
	})
}

// IDs calls fn with the ids of the stored keys (committed at least once,
// deleted or not) that start with prefix and sort after after, in order,
// until fn returns false. It reads no record: a caller takes what it says
// about each id from elsewhere (the broker, from its log).
func (s *Store) IDs(prefix, after string, fn func(id string) bool) error {
	return s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketRoot).Bucket(bucketKeyMeta).Cursor()
		seek := prefix
		if after >= prefix {
			seek = after + "\x00"
		}
		for k, _ := c.Seek([]byte(seek)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, _ = c.Next() {
			if !fn(string(k)) {
				return nil
			}
		}
		return nil
	})
}

// PutSecret stores a broker secret under name, encrypted under the master
// key. It overwrites an existing secret of that name.
func (s *Store) PutSecret(name string, secret []byte) error {
	ct, err := seal(s.master, secret, secretAD(name))
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketRoot).Bucket(bucketSecrets).Put([]byte(name), ct)
	})
}

// Secret returns the broker secret stored under name, or ErrNotFound.
func (s *Store) Secret(name string) ([]byte, error) {
	var out []byte
	err := s.db.View(func(tx *bbolt.Tx) error {
		ct := tx.Bucket(bucketRoot).Bucket(bucketSecrets).Get([]byte(name))
		if ct == nil {
			return fmt.Errorf("%w: secret %q", ErrNotFound, name)
		}
		pt, err := open(s.master, ct, secretAD(name))
		if err != nil {
			return fmt.Errorf("couldn't decrypt secret %q: %w", name, err)
		}
		out = pt
		return nil
	})
	return out, err
}

func (r *metaRecord) meta() Meta {
	m := Meta{ID: r.ID, Version: r.Version, Client: r.Client, Created: r.Created, Deleted: r.Deleted}
	if !r.Deleted {
		m.VersionCreated, m.SealedDigest = r.VersionCreated, r.SealedDigest
	}
	return m
}

func (s *Store) dek(id string, wrapped []byte) (cipher.AEAD, error) {
	raw, err := open(s.master, wrapped, dekAD(id))
	if err != nil {
		return nil, fmt.Errorf("couldn't unwrap the data key of %q: %w", id, err)
	}
	defer clear(raw)
	return newGCM(raw)
}

func getMeta(tx *bbolt.Tx, id string) (*metaRecord, error) {
	raw := tx.Bucket(bucketRoot).Bucket(bucketKeyMeta).Get([]byte(id))
	if raw == nil {
		return nil, nil
	}
	return decodeMeta(id, raw)
}

func decodeMeta(id string, raw []byte) (*metaRecord, error) {
	var rec metaRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return nil, fmt.Errorf("corrupt record for key %q: %w", id, err)
	}
	if rec.ID != id {
		return nil, fmt.Errorf("corrupt record: key %q stored under %q", rec.ID, id)
	}
	return &rec, nil
}

func getPending(tx *bbolt.Tx, id string) (*pendingRecord, error) {
	raw := tx.Bucket(bucketRoot).Bucket(bucketPending).Get([]byte(id))
	if raw == nil {
		return nil, nil
	}
	var p pendingRecord
	if err := json.Unmarshal(raw, &p); err != nil || p.ID != id {
		return nil, fmt.Errorf("corrupt staged change for key %q", id)
	}
	return &p, nil
}

func putJSON(tx *bbolt.Tx, bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketRoot).Bucket(bucket).Put(key, raw)
}

// versionKey is the key of a version record: the id, a zero byte (which
// no key id holds) and the version, big-endian.
func versionKey(id string, version uint64) []byte {
	k := make([]byte, len(id)+9)
	copy(k, id)
	binary.BigEndian.PutUint64(k[len(id)+1:], version)
	return k
}

func dekAD(id string) []byte { return []byte("kbs-dek-v1\n" + id) }
func materialAD(id string, version uint64) []byte {
	return []byte("kbs-key-v1\n" + id + "\n" + strconv.FormatUint(version, 10))
}
func secretAD(name string) []byte { return []byte("kbs-secret-v1\n" + name) }

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// seal returns nonce || AES-GCM ciphertext.
func seal(a cipher.AEAD, pt, ad []byte) ([]byte, error) {
	nonce := make([]byte, a.NonceSize(), a.NonceSize()+len(pt)+a.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return a.Seal(nonce, nonce, pt, ad), nil
}

func open(a cipher.AEAD, ct, ad []byte) ([]byte, error) {
	if len(ct) < a.NonceSize()+a.Overhead() {
		return nil, errors.New("ciphertext too short")
	}
	return a.Open(nil, ct[:a.NonceSize()], ct[a.NonceSize():], ad)
}
