package kbs

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/kbs-dev/kbs/kbs/keystore"
	"github.com/kbs-dev/kbs/tlog"
)

// The state index is a copy of the authorization state in the database, so
// that a start replays only the log entries appended since the copy was
// written, not the whole log. It is in the host's reach, so it is used only
// when all of this holds:
//
//   - its head (log size and root, manifest chain, logged identities, the
//     number and digest of the key records) carries a MAC under a key that
//     is sealed in the key store (the keystore secret indexSecret: only
//     this broker can unseal it);
//   - the key records hash to the head's digest: the XOR of each record's
//     MAC, which is not stored, so no record can be added, removed,
//     changed or rolled back alone;
//   - the log's latest signed checkpoint extends the head's tree (a
//     consistency proof from the head's size and root).
//
// A head whose MAC verifies but whose tree the log does not extend means
// that the log was rolled back or replaced: the broker refuses to start. Any
// other problem (no index, a bad MAC, records that do not match) only costs
// time: the state is rebuilt from the whole log. A whole index rolled back
// to an older, authentic copy is harmless too: the replay starts earlier.
//
// Layout, in the "broker" bucket: "state" holds "head" (JSON indexHead)
// and the bucket "keys" (key id → JSON keyState).
var (
	bucketState     = []byte("state")
	bucketStateKeys = []byte("keys")
	keyStateHead    = []byte("head")
)

// indexSecret names the key store secret holding the index's MAC key.
const indexSecret = "broker-state-index"

// stateIndex reads and writes the state index.
type stateIndex struct {
	db  *bbolt.DB
	key []byte // MAC key

	mu sync.Mutex // serializes writes; guards the fields below
	// recMAC is the MAC of each key record as last written, and digest
	// the XOR of all of them.
	recMAC map[string][32]byte
	digest [32]byte
	// reset makes the next write replace every key record (after a
	// rebuild, or a failed write).
	reset bool
	// head is the head as last written or loaded: a write that would
	// change nothing is skipped.
	head []byte
}

// indexHead is the MAC'd head of the index.
type indexHead struct {
	Size       uint64           `json:"size"`
	Root       []byte           `json:"root"`
	Manifests  []chainLink      `json:"manifests"`
	Identities []loggedIdentity `json:"identities"`
	Keys       int              `json:"keys"`
	KeysDigest []byte           `json:"keys_digest"`
	// Handover and Shares are the state's lifecycle entries (absent
	// before the first of each, so older heads keep their MAC).
	Handover *handoverState `json:"handover,omitempty"`
	Shares   *sharesState   `json:"shares,omitempty"`
	MAC      []byte         `json:"mac,omitempty"`
}

type loggedIdentity struct {
	NoteKey string `json:"note_key"`
	Index   uint64 `json:"index"`
}

// stateSnapshot is a consistent copy of the state, taken by snapshot for
// one write of the index.
type stateSnapshot struct {
	head indexHead // without Keys, KeysDigest and MAC
	// keys are the key records to write: those changed since the last
	// snapshot, or all of them.
	keys []keyState
	all  bool
}

// openIndex returns the index of db, with its MAC key from the key store
// (created on first use).
func openIndex(db *bbolt.DB, keys *keystore.Store) (*stateIndex, error) {
	key, err := keys.Secret(indexSecret)
	if errors.Is(err, keystore.ErrNotFound) {
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		if err := keys.PutSecret(indexSecret, key); err != nil {
			return nil, fmt.Errorf("couldn't store the state index key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("couldn't unseal the state index key: %w", err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		st, err := tx.Bucket(bucketBroker).CreateBucketIfNotExists(bucketState)
		if err != nil {
			return err
		}
		_, err = st.CreateBucketIfNotExists(bucketStateKeys)
		return err
	}); err != nil {
		return nil, fmt.Errorf("couldn't create the state index: %w", err)
	}
	return &stateIndex{db: db, key: key, recMAC: map[string][32]byte{}}, nil
}

func (x *stateIndex) mac(label string, b []byte) [32]byte {
	m := hmac.New(sha256.New, x.key)
	m.Write([]byte(label))
	m.Write(b)
	return [32]byte(m.Sum(nil))
}

func (x *stateIndex) recordMAC(raw []byte) [32]byte { return x.mac("kbs-state-key-v1\n", raw) }

func (x *stateIndex) headMAC(h indexHead) ([32]byte, error) {
	h.MAC = nil
	raw, err := json.Marshal(&h)
	if err != nil {
		return [32]byte{}, err
	}
	return x.mac("kbs-state-head-v1\n", raw), nil
}

// load returns the state the index holds, checked against lg, whose latest
// checkpoint is cp. When there is no usable index it returns a nil state
// and why ("" when there is no index at all), and the caller rebuilds the
// state from the whole log. It returns an error when the index is
// authentic but the log is shorter than the tree it had seen, or not an
// extension of it.
func (x *stateIndex) load(ctx context.Context, lg tlog.Backend, cp tlog.SignedCheckpoint) (st *authState, why string, err error) {
	var head indexHead
	var found bool
	recs := map[string]keyState{}
	macs := map[string][32]byte{}
	var digest [32]byte
	err = x.db.View(func(tx *bbolt.Tx) error {
		sb := tx.Bucket(bucketBroker).Bucket(bucketState)
		raw := sb.Get(keyStateHead)
		if raw == nil {
			return nil
		}
		found = true
		x.mu.Lock()
		x.head = bytes.Clone(raw)
		x.mu.Unlock()
		if err := json.Unmarshal(raw, &head); err != nil {
			why = "its head does not decode"
			return nil
		}
		want, err := x.headMAC(head)
		if err != nil || !hmac.Equal(want[:], head.MAC) {
			why = "its MAC does not verify"
			return nil
		}
		return sb.Bucket(bucketStateKeys).ForEach(func(k, v []byte) error {
			var r keyState
			if err := json.Unmarshal(v, &r); err != nil || r.ID != string(k) {
				why = fmt.Sprintf("its record of key %q does not decode", k)
				return errStopRead
			}
			m := x.recordMAC(v)
			xorInto(&digest, m)
			recs[r.ID], macs[r.ID] = r, m
			return nil
		})
	})
	if errors.Is(err, errStopRead) {
		err = nil
	}
	if err != nil || !found || why != "" {
		return nil, why, err
	}
	if len(recs) != head.Keys || !hmac.Equal(digest[:], head.KeysDigest) {
		return nil, "its key records are not the ones its head names", nil
	}
	if len(head.Root) != len(tlog.Hash{}) {
		return nil, "its head names no root", nil
	}
	seen := tlog.SignedCheckpoint{Root: tlog.Root{Size: head.Size, Hash: tlog.Hash(head.Root)}}
	if head.Size > cp.Size {
		return nil, "", fmt.Errorf("kbs: the log has %d entries, but this broker has already seen %d (its sealed state index says so): the log was rolled back or truncated. Restore the data directory that holds the log this broker wrote; clients and auditors holding a later checkpoint will refuse this one", cp.Size, head.Size)
	}
	var proof []tlog.Hash
	if head.Size > 0 && head.Size < cp.Size {
		if proof, err = lg.ConsistencyProof(ctx, head.Size, cp.Size); err != nil {
			return nil, "", fmt.Errorf("kbs: couldn't read the log: %w", err)
		}
	}
	if head.Size > 0 {
		if err := tlog.CheckConsistency(seen, cp, proof); err != nil {
			return nil, "", fmt.Errorf("kbs: the log is not an extension of the tree of size %d this broker has already seen (its sealed state index says so): the log was replaced or rewritten (%v). Restore the data directory that holds the log this broker wrote", head.Size, err)
		}
	}
	st = newAuthState()
	st.size, st.root = head.Size, tlog.Hash(head.Root)
	st.chain = head.Manifests
	for _, id := range head.Identities {
		st.identities[id.NoteKey] = id.Index
	}
	st.keys = recs
	st.handover, st.shares = head.Handover, head.Shares
	x.mu.Lock()
	x.recMAC, x.digest, x.reset = macs, digest, false
	x.mu.Unlock()
	return st, "", nil
}

// errStopRead ends a bbolt iteration or a log read early.
var errStopRead = errors.New("stop")

func xorInto(d *[32]byte, m [32]byte) {
	for i := range d {
		d[i] ^= m[i]
	}
}

// needsAll reports whether the next write must hold every key record.
func (x *stateIndex) needsAll() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.reset
}

// rebuild makes the next write replace every key record.
func (x *stateIndex) rebuild() {
	x.mu.Lock()
	x.reset = true
	x.mu.Unlock()
}

// snapshot copies what the next index write needs: the head, and the key
// records changed since the last snapshot (all of them if all is set). The
// caller holds the sequencer exclusively, so size and root are those of a
// tree the state reflects exactly.
func (s *authState) snapshot(all bool) stateSnapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := stateSnapshot{all: all, head: indexHead{Size: s.size, Root: bytes.Clone(s.root[:]), Manifests: slices.Clone(s.chain), Handover: s.handover, Shares: s.shares}}
	if snap.head.Manifests == nil {
		snap.head.Manifests = []chainLink{}
	}
	snap.head.Identities = []loggedIdentity{}
	for _, nk := range slices.Sorted(maps.Keys(s.identities)) {
		snap.head.Identities = append(snap.head.Identities, loggedIdentity{NoteKey: nk, Index: s.identities[nk]})
	}
	if all {
		snap.keys = slices.Collect(maps.Values(s.keys))
	} else {
		for id := range s.dirty {
			snap.keys = append(snap.keys, s.keys[id])
		}
	}
	// In key order: bbolt splits a node only when its transaction
	// commits, so puts in random order into one transaction move ever
	// larger node slices (quadratic: minutes for a million keys), while
	// puts in order append.
	slices.SortFunc(snap.keys, func(a, b keyState) int { return cmp.Compare(a.ID, b.ID) })
	clear(s.dirty)
	return snap
}

// signedHead returns the encoded head h with the key records' count and
// digest, and its MAC.
func (x *stateIndex) signedHead(h indexHead, keys int, digest [32]byte) ([]byte, error) {
	h.Keys, h.KeysDigest = keys, digest[:]
	m, err := x.headMAC(h)
	if err != nil {
		return nil, err
	}
	h.MAC = m[:]
	return json.Marshal(&h)
}

// write stores snap durably, in one transaction. On failure the next write
// replaces every record.
func (x *stateIndex) write(snap stateSnapshot) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.reset && !snap.all {
		return errors.New("kbs: state index write needs every key record")
	}
	macs := maps.Clone(x.recMAC)
	digest := x.digest
	if snap.all {
		macs, digest = map[string][32]byte{}, [32]byte{}
	}
	var written []byte
	if !snap.all && len(snap.keys) == 0 {
		if raw, err := x.signedHead(snap.head, len(macs), digest); err == nil && bytes.Equal(raw, x.head) {
			return nil // nothing changed
		}
	}
	err := x.db.Update(func(tx *bbolt.Tx) error {
		sb := tx.Bucket(bucketBroker).Bucket(bucketState)
		if snap.all {
			if err := sb.DeleteBucket(bucketStateKeys); err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
				return err
			}
			if _, err := sb.CreateBucket(bucketStateKeys); err != nil {
				return err
			}
		}
		kb := sb.Bucket(bucketStateKeys)
		for _, r := range snap.keys {
			raw, err := json.Marshal(&r)
			if err != nil {
				return err
			}
			m := x.recordMAC(raw)
			if old, ok := macs[r.ID]; ok {
				xorInto(&digest, old)
			}
			xorInto(&digest, m)
			macs[r.ID] = m
			if err := kb.Put([]byte(r.ID), raw); err != nil {
				return err
			}
		}
		raw, err := x.signedHead(snap.head, len(macs), digest)
		if err != nil {
			return err
		}
		written = raw
		return sb.Put(keyStateHead, raw)
	})
	if err != nil {
		x.reset = true
		return fmt.Errorf("kbs: couldn't write the state index: %w", err)
	}
	x.recMAC, x.digest, x.reset, x.head = macs, digest, false, written
	return nil
}
