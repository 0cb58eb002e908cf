package audit

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/kbs-dev/kbs/manifest"
)

// snapshotVersion is the format of Snapshot; Restore refuses others.
const snapshotVersion = 1

// snapshot is a Replayer's state as Snapshot writes it (JSON).
type snapshot struct {
	Format    int                 `json:"format"`
	NoteKey   string              `json:"note_key"`
	Next      uint64              `json:"next"`
	Active    []byte              `json:"active,omitempty"` // the active manifest's exact bytes
	Keys      map[string]keyEntry `json:"keys"`
	Manifests []manifestEntry     `json:"manifests"`
	Counts    map[string]int      `json:"counts"`
	Anomalies int                 `json:"anomalies"`
	// Shares are the recovery-shares entries by index (absent in states
	// written before lifecycle entries).
	Shares map[uint64]sharesRecord `json:"shares,omitempty"`
}

type keyEntry struct {
	Version  uint64 `json:"v"`
	Client   string `json:"c"`
	Uploaded uint64 `json:"u"`
	Deleted  bool   `json:"d,omitempty"`
	Released bool   `json:"r,omitempty"`
}

type manifestEntry struct {
	Manifest
	Parsed bool `json:"parsed"`
}

// Snapshot returns the replayer's state: where it stands in the log, the
// active manifest, the state of every key id, the manifest entries, the
// counts. A replayer given it by Restore judges the following entries
// exactly as this one would, so a monitor that saves it with its own
// progress, in one transaction, resumes after a crash without replaying
// the log again. Its size grows with the number of key ids and manifest
// versions, not with the log.
func (a *Replayer) Snapshot() ([]byte, error) {
	s := snapshot{Format: snapshotVersion, NoteKey: a.noteKey, Next: a.next, Keys: make(map[string]keyEntry, len(a.keys)),
		Manifests: make([]manifestEntry, len(a.manifests)), Counts: a.counts, Anomalies: a.anomalies, Shares: a.shares}
	if a.active != nil {
		s.Active = a.active.Bytes()
	}
	for id, k := range a.keys {
		s.Keys[id] = keyEntry{Version: k.version, Client: k.client, Uploaded: k.uploaded, Deleted: k.deleted, Released: k.released}
	}
	for i, m := range a.manifests {
		s.Manifests[i] = manifestEntry{Manifest: m, Parsed: m.parsed}
	}
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("audit: couldn't encode the replayer's state: %w", err)
	}
	return b, nil
}

// Restore replaces the replayer's state with one that Snapshot returned
// for a replayer of the same log (the same note key). Events are not
// replayed: the replayer goes on from the snapshot's Next.
func (a *Replayer) Restore(b []byte) error {
	var s snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("audit: couldn't decode the replayer's state: %w", err)
	}
	if s.Format != snapshotVersion {
		return fmt.Errorf("audit: replayer state format %d, want %d", s.Format, snapshotVersion)
	}
	if s.NoteKey != a.noteKey {
		return fmt.Errorf("audit: the replayer state is of the log signed by %s, not %s", s.NoteKey, a.noteKey)
	}
	var active *manifest.Manifest
	if s.Active != nil {
		m, err := manifest.Parse(s.Active)
		if err != nil {
			return fmt.Errorf("audit: the replayer state's active manifest: %w", err)
		}
		active = m
	}
	if active == nil && len(s.Manifests) > 0 {
		for _, m := range s.Manifests {
			if m.Parsed {
				return errors.New("audit: the replayer state has manifest entries but no active manifest")
			}
		}
	}
	keys := make(map[string]*keyState, len(s.Keys))
	for id, k := range s.Keys {
		keys[id] = &keyState{version: k.Version, client: k.Client, uploaded: k.Uploaded, deleted: k.Deleted, released: k.Released}
	}
	manifests := make([]Manifest, len(s.Manifests))
	for i, m := range s.Manifests {
		manifests[i] = m.Manifest
		manifests[i].parsed = m.Parsed
	}
	if s.Counts == nil {
		s.Counts = map[string]int{}
	}
	if s.Shares == nil {
		s.Shares = map[uint64]sharesRecord{}
	}
	a.shares = s.Shares
	a.next, a.active, a.keys, a.manifests, a.counts, a.anomalies = s.Next, active, keys, manifests, s.Counts, s.Anomalies
	a.allowed = map[[2]string]bool{}
	return nil
}
