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
// A Store is safe for concurrent use. Mutations are serialized.
package keystore

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"go.etcd.io/bbolt"
)

// Bucket names inside the shared database.
var (
	bucketRoot    = []byte("keystore")
	bucketMeta    = []byte("meta")
	bucketKeys    = []byte("keys")
	bucketSecrets = []byte("secrets")
	keyMaster     = []byte("master")
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

type keyRecord struct {
	ID         string          `json:"id"`
	Version    uint64          `json:"version"`
	Client     string          `json:"client"`
	Created    time.Time       `json:"created"`
	Deleted    bool            `json:"deleted,omitempty"`
	WrappedDEK []byte          `json:"wrapped_dek,omitempty"`
	Versions   []versionRecord `json:"versions,omitempty"`
	Pending    *pendingRecord  `json:"pending,omitempty"`
}

type versionRecord struct {
	Version    uint64    `json:"version"`
	Client     string    `json:"client"`
	Created    time.Time `json:"created"`
	Ciphertext []byte    `json:"ciphertext"`
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
// use. The master key is sealed under sealer's key; opening a store created
// with another sealer, or one whose KEK differs (another machine or
// measurement), fails with ErrSealer. With NoSealer (a TEE without a
// sealing key) a new store's master key is kept in memory only, and an
// existing store always fails with ErrSealer: its master key comes back
// only through OpenWithMaster.
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
	return newStore(db, master)
}

// OpenWithMaster opens the store in db with master, its master key as
// another broker held it (a handover) or as the recovery shares restore it,
// and seals it under sealer from then on (replacing the record of the
// sealer it had). master must open every broker secret the store holds,
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
	for _, name := range [][]byte{bucketMeta, bucketKeys, bucketSecrets} {
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
		rec, err := getRecord(tx, id)
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

type pendingRecord struct {
	Op      string        `json:"op"`
	LogSize uint64        `json:"log_size"`
	Version versionRecord `json:"version"`
}

// PreparePut stages version of key id with material: it is stored
// (encrypted) but not released by Get until Commit. version must equal
// NextVersion(id) (ErrVersion otherwise). A change already staged for id
// is replaced. It returns the staged version's sealed digest (see Key).
func (s *Store) PreparePut(id string, version uint64, client string, material []byte, logSize uint64, now time.Time) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var digest string
	err := s.db.Update(func(tx *bbolt.Tx) error {
		rec, err := getRecord(tx, id)
		if err != nil {
			return err
		}
		var want uint64 = 1
		if rec != nil {
			want = rec.Version + 1
		}
		if version != want {
			return fmt.Errorf("%w: key %q needs version %d, got %d", ErrVersion, id, want, version)
		}
		if rec == nil {
			rec = &keyRecord{ID: id, Created: now.UTC()}
		}
		if rec.WrappedDEK == nil {
			// A new or deleted key gets a fresh data key.
			dek := make([]byte, 32)
			if _, err := rand.Read(dek); err != nil {
				return err
			}
			wrapped, err := seal(s.master, dek, dekAD(id))
			clear(dek)
			if err != nil {
				return err
			}
			rec.WrappedDEK = wrapped
		}
		dek, err := s.dek(rec)
		if err != nil {
			return err
		}
		ct, err := seal(dek, material, materialAD(id, version))
		if err != nil {
			return err
		}
		rec.Pending = &pendingRecord{Op: OpPut, LogSize: logSize,
			Version: versionRecord{Version: version, Client: client, Created: now.UTC(), Ciphertext: ct}}
		digest = sealedDigest(ct)
		return putRecord(tx, rec)
	})
	if err != nil {
		return "", err
	}
	return digest, nil
}

// PrepareDelete stages the deletion of key id, whose latest version must
// be version (ErrVersion otherwise; ErrNotFound for unknown or deleted
// keys). From then on Get no longer returns the key; Commit shreds it,
// Abort restores it.
func (s *Store) PrepareDelete(id string, version uint64, logSize uint64, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db.Update(func(tx *bbolt.Tx) error {
		rec, err := getRecord(tx, id)
		if err != nil {
			return err
		}
		if rec == nil || rec.Deleted || rec.Version == 0 {
			return fmt.Errorf("%w: key %q", ErrNotFound, id)
		}
		if rec.Version != version {
			return fmt.Errorf("%w: key %q is at version %d, not %d", ErrVersion, id, rec.Version, version)
		}
		rec.Pending = &pendingRecord{Op: OpDelete, LogSize: logSize, Version: versionRecord{Version: version, Created: now.UTC()}}
		return putRecord(tx, rec)
	})
}

// Commit applies the change staged for key id: a put becomes the latest
// version; a delete destroys the data key and every ciphertext
// (crypto-shredding), keeping the metadata so that versions are never
// reused.
func (s *Store) Commit(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db.Update(func(tx *bbolt.Tx) error {
		rec, err := getRecord(tx, id)
		if err != nil {
			return err
		}
		if rec == nil || rec.Pending == nil {
			return fmt.Errorf("keystore: no change staged for key %q", id)
		}
		p := rec.Pending
		rec.Pending = nil
		switch p.Op {
		case OpPut:
			if p.Version.Version != rec.Version+1 {
				return fmt.Errorf("%w: staged version %d of key %q does not follow %d", ErrVersion, p.Version.Version, id, rec.Version)
			}
			rec.Version = p.Version.Version
			rec.Client = p.Version.Client
			rec.Deleted = false
			rec.Versions = append(rec.Versions, p.Version)
		case OpDelete:
			rec.Deleted = true
			rec.WrappedDEK = nil
			rec.Versions = nil
		default:
			return fmt.Errorf("keystore: unknown staged operation %q for key %q", p.Op, id)
		}
		return putRecord(tx, rec)
	})
}

// Abort drops the change staged for key id, if any.
func (s *Store) Abort(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db.Update(func(tx *bbolt.Tx) error {
		rec, err := getRecord(tx, id)
		if err != nil || rec == nil || rec.Pending == nil {
			return err
		}
		rec.Pending = nil
		if rec.Version == 0 {
			// Never committed: the id does not exist.
			return tx.Bucket(bucketRoot).Bucket(bucketKeys).Delete([]byte(id))
		}
		if rec.Deleted {
			rec.WrappedDEK = nil // the fresh data key of the aborted put
		}
		return putRecord(tx, rec)
	})
}

// PendingChanges lists the staged changes, sorted by key id.
func (s *Store) PendingChanges() ([]Pending, error) {
	var out []Pending
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketRoot).Bucket(bucketKeys).ForEach(func(k, v []byte) error {
			var rec keyRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("corrupt record for key %q: %w", k, err)
			}
			if p := rec.Pending; p != nil {
				pc := Pending{ID: rec.ID, Op: p.Op, Version: p.Version.Version, Client: p.Version.Client, LogSize: p.LogSize}
				if p.Op == OpPut {
					pc.SealedDigest = sealedDigest(p.Version.Ciphertext)
				}
				out = append(out, pc)
			}
			return nil
		})
	})
	return out, err
}

// Get returns the latest committed version of key id. It returns
// ErrNotFound for unknown and deleted ids, and for ids whose deletion is
// staged.
func (s *Store) Get(id string) (Key, error) {
	var k Key
	err := s.db.View(func(tx *bbolt.Tx) error {
		rec, err := getRecord(tx, id)
		if err != nil {
			return err
		}
		if rec == nil || rec.Deleted || len(rec.Versions) == 0 || (rec.Pending != nil && rec.Pending.Op == OpDelete) {
			return fmt.Errorf("%w: key %q", ErrNotFound, id)
		}
		dek, err := s.dek(rec)
		if err != nil {
			return err
		}
		v := rec.Versions[len(rec.Versions)-1]
		if v.Version != rec.Version {
			return fmt.Errorf("corrupt record for key %q: latest version %d, stored %d", id, rec.Version, v.Version)
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
		rec, err := getRecord(tx, id)
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

// List returns the metadata of every key id, sorted by id. A record that
// does not decode, or is stored under another id than its own, is an
// error.
func (s *Store) List() ([]Meta, error) {
	var out []Meta
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketRoot).Bucket(bucketKeys).ForEach(func(k, v []byte) error {
			var rec keyRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("corrupt record for key %q: %w", k, err)
			}
			if rec.ID != string(k) {
				return fmt.Errorf("corrupt record: key %q stored under %q", rec.ID, k)
			}
			if rec.Version > 0 {
				out = append(out, rec.meta())
			}
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, err
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

func (r *keyRecord) meta() Meta {
	m := Meta{ID: r.ID, Version: r.Version, Client: r.Client, Created: r.Created, Deleted: r.Deleted}
	if n := len(r.Versions); n > 0 {
		m.VersionCreated = r.Versions[n-1].Created
		if !r.Deleted {
			m.SealedDigest = sealedDigest(r.Versions[n-1].Ciphertext)
		}
	}
	return m
}

func (s *Store) dek(rec *keyRecord) (cipher.AEAD, error) {
	raw, err := open(s.master, rec.WrappedDEK, dekAD(rec.ID))
	if err != nil {
		return nil, fmt.Errorf("couldn't unwrap the data key of %q: %w", rec.ID, err)
	}
	defer clear(raw)
	return newGCM(raw)
}

func getRecord(tx *bbolt.Tx, id string) (*keyRecord, error) {
	raw := tx.Bucket(bucketRoot).Bucket(bucketKeys).Get([]byte(id))
	if raw == nil {
		return nil, nil
	}
	var rec keyRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return nil, fmt.Errorf("corrupt record for key %q: %w", id, err)
	}
	if rec.ID != id {
		return nil, fmt.Errorf("corrupt record: key %q stored under %q", rec.ID, id)
	}
	return &rec, nil
}

func putRecord(tx *bbolt.Tx, rec *keyRecord) error {
	raw, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketRoot).Bucket(bucketKeys).Put([]byte(rec.ID), raw)
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
