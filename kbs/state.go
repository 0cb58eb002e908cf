package kbs

import (
	"bytes"
	"cmp"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// authState is the broker's authorization state: which manifest version is
// active, and for every key id its latest version, the sealed digest of
// that version's stored record, and whether the key is deleted. It is a
// function of the log: apply, given the log's entries in order, is the only
// thing that changes it, at start-up (replaying the log, see restore) and
// after each of the broker's own appends (changeTx.log). Nothing read from
// the database decides it; the persisted index (index.go) is a copy that
// is used only when it checks out against the log.
//
// Fields are written only by a goroutine that holds the broker's
// sequencer exclusively and mu; they may be read with either held.
type authState struct {
	mu sync.RWMutex

	// size is the number of log entries the state reflects, and root the
	// root hash of the tree of that size.
	size uint64
	root tlog.Hash
	// chain is the manifest chain: version i+1 at chain[i]. The last one
	// is active.
	chain []chainLink
	keys  map[string]keyState
	// identities maps the note key of each logged identity entry to the
	// index of its first entry.
	identities map[string]uint64
	// dirty holds the key ids changed since the last snapshot (index.go).
	dirty map[string]bool
	// handover is the log's latest handover entry, shares its latest
	// recovery-shares entry (lifecycle.go); nil if none.
	handover *handoverState
	shares   *sharesState
}

// chainLink is a manifest version as the log holds it.
type chainLink struct {
	Version uint64 `json:"version"`
	Hash    string `json:"hash"`
	Index   uint64 `json:"index"`
}

// keyState is what the log says about a key id.
type keyState struct {
	ID string `json:"id"`
	// Version is the latest version uploaded (deleted or not): the next
	// upload must carry Version+1.
	Version uint64 `json:"version"`
	Deleted bool   `json:"deleted,omitempty"`
	// SealedDigest is the sealed digest the upload of Version named; the
	// store's record must have it. Empty for deleted keys, and for uploads
	// logged before key-upload entries carried one.
	SealedDigest string `json:"sealed_digest,omitempty"`
	// Client uploaded Version.
	Client string `json:"client"`
	// Created is the time of the id's first upload entry, and
	// VersionCreated that of the upload entry of Version (zero once the
	// key is deleted).
	Created        time.Time `json:"created"`
	VersionCreated time.Time `json:"version_created"`
	// Index is the index of the entry that set this state.
	Index uint64 `json:"index"`
}

func newAuthState() *authState {
	return &authState{keys: map[string]keyState{}, identities: map[string]uint64{}, dirty: map[string]bool{}}
}

// releasePrefix starts every release entry: entries are canonical JSON
// with the type first (tlog.EncodeEntry), so a replay skips releases, which
// change no state, without decoding them.
var releasePrefix = []byte(`{"type":"` + tlog.TypeRelease + `",`)

// noEffect explains why a logged entry did not change the state.
type noEffect string

// apply advances the state by the entry at index, which must be the entry
// right after the ones the state reflects. It reports what happened: ok
// when the entry changed the state; otherwise the entry is no change
// (a release, an identity logged again) or why it had no effect: an upload
// of a version that is not the next one, a deletion of a version that is
// not live, a manifest version that does not follow the active one. Such
// entries never come from a broker that decides against its state (each
// change is decided and appended as one step); they can come from another
// writer of the same Trillian tree, or from an entry a crashed broker had
// queued in Trillian, and the rule that an entry which does not apply
// changes nothing is what auditors replay too.
func (s *authState) apply(index uint64, e *tlog.Entry) (ok bool, why noEffect) {
	if index != s.size {
		panic(fmt.Sprintf("kbs: applying log entry %d to a state of size %d", index, s.size))
	}
	s.size = index + 1
	switch e.Type {
	case tlog.TypeIdentity:
		if _, seen := s.identities[e.Identity.NoteKey]; seen {
			return false, ""
		}
		s.identities[e.Identity.NoteKey] = index
		return true, ""
	case tlog.TypeManifest:
		return s.applyManifest(index, e.Manifest)
	case tlog.TypeKeyUpload:
		return s.applyUpload(index, e.Time, e.KeyUpload)
	case tlog.TypeKeyDelete:
		return s.applyDelete(index, e.KeyDelete)
	case tlog.TypeHandover:
		s.handover = &handoverState{Index: index, EvidenceDigest: e.Handover.EvidenceDigest}
		return true, ""
	case tlog.TypeRecoveryShares:
		s.shares = newSharesState(index, e.RecoveryShares)
		return true, ""
	case tlog.TypeRecovery:
		return true, "" // a record: the state is what it was
	}
	return false, ""
}

func (s *authState) applyManifest(index uint64, m *tlog.ManifestEntry) (bool, noEffect) {
	n := uint64(len(s.chain))
	if n > 0 && m.Version == n && m.Hash == s.chain[n-1].Hash {
		return false, noEffect(fmt.Sprintf("manifest version %d (%s) logged again", m.Version, m.Hash))
	}
	if m.Version != n+1 {
		return false, noEffect(fmt.Sprintf("manifest version %d does not follow the active version %d", m.Version, n))
	}
	if n > 0 && m.Previous != s.chain[n-1].Hash {
		return false, noEffect(fmt.Sprintf("manifest version %d names previous %s, not the active %s", m.Version, m.Previous, s.chain[n-1].Hash))
	}
	if manifest.HashOf(m.Body) != m.Hash {
		return false, noEffect(fmt.Sprintf("manifest version %d: its body does not hash to %s", m.Version, m.Hash))
	}
	s.chain = append(s.chain, chainLink{Version: m.Version, Hash: m.Hash, Index: index})
	return true, ""
}

func (s *authState) applyUpload(index uint64, t time.Time, k *tlog.KeyEntry) (bool, noEffect) {
	cur, exists := s.keys[k.ID]
	if exists && k.Version == cur.Version && !cur.Deleted && k.SealedDigest == cur.SealedDigest && k.Client == cur.Client {
		return false, noEffect(fmt.Sprintf("upload of key %q version %d logged again", k.ID, k.Version))
	}
	if k.Version != cur.Version+1 {
		return false, noEffect(fmt.Sprintf("upload of key %q version %d does not follow version %d", k.ID, k.Version, cur.Version))
	}
	created := cur.Created
	if !exists {
		created = t.UTC()
	}
	s.setKey(keyState{ID: k.ID, Version: k.Version, SealedDigest: k.SealedDigest, Client: k.Client, Created: created, VersionCreated: t.UTC(), Index: index})
	return true, ""
}

func (s *authState) applyDelete(index uint64, k *tlog.KeyEntry) (bool, noEffect) {
	cur, exists := s.keys[k.ID]
	if !exists || cur.Deleted || cur.Version != k.Version {
		return false, noEffect(fmt.Sprintf("deletion of key %q version %d, which is not its live version", k.ID, k.Version))
	}
	cur.Deleted, cur.SealedDigest, cur.VersionCreated, cur.Index = true, "", time.Time{}, index
	s.setKey(cur)
	return true, ""
}

func (s *authState) setKey(k keyState) {
	s.keys[k.ID] = k
	s.dirty[k.ID] = true
}

// key returns the log's state of key id.
func (s *authState) key(id string) (keyState, bool) {
	k, ok := s.keys[id]
	return k, ok
}

// nextVersion returns the version the next upload of id must carry.
func (s *authState) nextVersion(id string) uint64 { return s.keys[id].Version + 1 }

// keyCount returns the number of key ids the log holds.
func (s *authState) keyCount() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.keys)
}

// keyList returns the state of every key id, sorted by id.
func (s *authState) keyList() []keyState {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := slices.Collect(maps.Values(s.keys))
	slices.SortFunc(out, func(a, b keyState) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// replayEntry applies one raw log entry during a replay: releases are
// skipped unread, entries that do not decode change nothing.
func (s *authState) replayEntry(index uint64, raw []byte) (e *tlog.Entry, ok bool, why noEffect) {
	if bytes.HasPrefix(raw, releasePrefix) {
		s.size = index + 1
		return nil, false, ""
	}
	e, err := tlog.DecodeEntry(raw)
	if err != nil {
		s.size = index + 1
		return nil, false, noEffect(fmt.Sprintf("entry does not decode: %v", err))
	}
	ok, why = s.apply(index, e)
	return e, ok, why
}
