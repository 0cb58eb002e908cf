package kbs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/keystore"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// restore rebuilds the authorization state from the log at start: from the
// state index when it checks out (index.go), else from the first entry,
// then every entry after it, each read and checked against the log's
// signed tree (tlog.ReadVerified). It then checks the database against
// that state: the manifest records against the chain (loadManifests), and
// the key store against the keys (loadKeys), settling the changes a crash
// or an append of unknown outcome left staged.
func (b *Broker) restore(ctx context.Context) error {
	cp, err := b.cfg.Log.Checkpoint(ctx)
	if err != nil {
		return fmt.Errorf("kbs: couldn't read the log checkpoint: %w", err)
	}
	st, why, err := b.index.load(ctx, b.cfg.Log, cp)
	if err != nil {
		return err
	}
	if st == nil {
		if why != "" {
			b.log.Warn("the state index does not check out; rebuilding the state from the whole log", "reason", why, "log_size", cp.Size)
		}
		st = newAuthState()
		b.index.rebuild()
	}
	from := st.size
	b.st = st
	start := time.Now()
	if err := b.replay(ctx, cp, cp.Size); err != nil {
		return err
	}
	if cp.Size > from {
		b.log.Info("replayed the log into the broker's state", "from", from, "to", cp.Size, "seconds", time.Since(start).Seconds())
	}
	if err := b.loadManifests(ctx, cp); err != nil {
		return err
	}
	b.restored = true
	return b.loadKeys()
}

// StoreMismatchError is returned by New when the key store disagrees with
// the log: a key record the log does not back (a deleted key restored, a
// record rolled back to an older version, records swapped), or a key the
// log holds without its record. The broker does not start on such a store.
type StoreMismatchError struct {
	// Keys says what differs, one line per key id.
	Keys []string
}

func (e *StoreMismatchError) Error() string {
	const show = 20
	lines := e.Keys
	more := ""
	if len(lines) > show {
		lines, more = lines[:show], fmt.Sprintf("\n  ... and %d more", len(e.Keys)-show)
	}
	return fmt.Sprintf("kbs: the key store disagrees with the log about %d key(s); the log is the record of what happened, so the database was modified or rolled back outside kbsd:\n  %s%s", len(e.Keys), strings.Join(lines, "\n  "), more)
}

// loadKeys settles the key changes left staged (the store's small index
// of them), and checks every key's metadata record against the state.
func (b *Broker) loadKeys() error {
	st := b.st
	var diff []string
	pending, err := b.cfg.Keys.PendingChanges()
	if err != nil {
		return fmt.Errorf("kbs: couldn't read the key store: %w", err)
	}
	for _, p := range pending {
		k, ok := st.key(p.ID)
		commit, abort := false, false
		switch p.Op {
		case keystore.OpPut:
			commit = ok && !k.Deleted && k.Version == p.Version && (k.SealedDigest == "" || k.SealedDigest == p.SealedDigest)
			abort = !ok || k.Version < p.Version
		case keystore.OpDelete:
			commit = ok && k.Deleted && k.Version == p.Version
			abort = ok && !k.Deleted && k.Version == p.Version
		}
		switch {
		case commit:
			b.log.Warn("committing a key change logged before a crash", "id", p.ID, "op", p.Op, "version", p.Version)
			err = b.cfg.Keys.Commit(p.ID)
		case abort:
			b.log.Warn("dropping a key change that never reached the log", "id", p.ID, "op", p.Op, "version", p.Version)
			err = b.cfg.Keys.Abort(p.ID)
		default:
			diff = append(diff, fmt.Sprintf("%q: log: %s; store: a staged %s of version %d", p.ID, k.describe(ok), p.Op, p.Version))
			continue
		}
		if err != nil {
			return fmt.Errorf("kbs: couldn't settle the staged change of key %q: %w", p.ID, err)
		}
	}
	// Every metadata record against the state (never a ciphertext: a
	// version's sealed material is checked when it is released), then, if
	// the log holds keys the records did not name, which.
	matched := 0
	err = b.cfg.Keys.ForEachMeta(func(m keystore.Meta) error {
		k, ok := st.key(m.ID)
		if ok {
			matched++
		}
		if ok && k.matches(m) {
			return nil
		}
		got := fmt.Sprintf("version %d live (%s)", m.Version, m.SealedDigest)
		if m.Deleted {
			got = fmt.Sprintf("version %d deleted", m.Version)
		}
		diff = append(diff, fmt.Sprintf("%q: log: %s; store: %s", m.ID, k.describe(ok), got))
		return nil
	})
	if err != nil {
		return fmt.Errorf("kbs: the key store does not read back (the database was modified?): %w", err)
	}
	if st.keyCount() != matched {
		for _, k := range st.keyList() {
			if _, err := b.cfg.Keys.Meta(k.ID); errors.Is(err, keystore.ErrNotFound) {
				diff = append(diff, fmt.Sprintf("%q: log: %s; store: no record", k.ID, k.describe(true)))
			}
		}
	}
	if len(diff) > 0 {
		return &StoreMismatchError{Keys: diff}
	}
	return nil
}

// matches reports whether the store's metadata of a key is what the log
// says.
func (k keyState) matches(m keystore.Meta) bool {
	if k.Deleted {
		return m.Deleted && m.Version == k.Version
	}
	return !m.Deleted && m.Version == k.Version && (k.SealedDigest == "" || m.SealedDigest == k.SealedDigest)
}

// describe says what the log holds about a key.
func (k keyState) describe(ok bool) string {
	switch {
	case !ok:
		return "no such key"
	case k.Deleted:
		return fmt.Sprintf("version %d deleted (entry %d)", k.Version, k.Index)
	case k.SealedDigest == "":
		return fmt.Sprintf("version %d live (entry %d)", k.Version, k.Index)
	}
	return fmt.Sprintf("version %d live (entry %d, %s)", k.Version, k.Index, k.SealedDigest)
}

// logIdentity appends the identity entry once per identity: unless the log
// already holds one for the broker's note key.
func (b *Broker) logIdentity(ctx context.Context) error {
	id := b.cfg.Identity
	b.st.mu.RLock()
	_, done := b.st.identities[id.NoteKey]
	b.st.mu.RUnlock()
	if done {
		return nil
	}
	cp, err := b.cfg.Log.Checkpoint(ctx)
	if err != nil {
		return fmt.Errorf("kbs: couldn't read the log checkpoint: %w", err)
	}
	// The identity evidence binds the keys, with an all-zero nonce, to the
	// checkpoint before the identity entry.
	rd := api.ReportData(api.BrokerBinding(make([]byte, api.NonceSize), id.NoteKey, id.HPKEPublicKey, id.TLSSPKISHA256, string(cp.Note)))
	ev, err := b.cfg.Issuer.Issue(ctx, rd)
	if err != nil {
		return fmt.Errorf("kbs: couldn't obtain the broker's own evidence: %w", err)
	}
	entry := &tlog.Entry{
		Type: tlog.TypeIdentity,
		Time: b.now(),
		Identity: &tlog.IdentityEntry{
			NoteKey:        id.NoteKey,
			HPKEPublicKey:  id.HPKEPublicKey,
			TLSSPKISHA256:  id.TLSSPKISHA256,
			Platform:       string(ev.Platform),
			Simulated:      b.cfg.Simulated,
			EvidenceDigest: digestString(ev.Digest()),
		},
	}
	var l logged
	err = b.exclusive(ctx, func(tx *changeTx) (err error) {
		l, err = tx.log(entry, nil)
		return err
	})
	if err != nil {
		return fmt.Errorf("kbs: couldn't log the broker identity: %w", err)
	}
	b.log.Info("logged broker identity", "log_index", l.index, "note_key", id.NoteKey, "tls_spki_sha256", id.TLSSPKISHA256)
	return nil
}

// loadInitialManifest logs and activates the configured version 1 on first
// start; on later starts it checks that a configured version 1 is the one
// the chain starts from.
func (b *Broker) loadInitialManifest(ctx context.Context) error {
	if am := b.active.Load(); am != nil {
		if b.cfg.InitialManifest == nil {
			return nil
		}
		initial, err := b.InitialManifest()
		if err != nil {
			return err
		}
		if !bytes.Equal(b.cfg.InitialManifest, initial) {
			e := &InitialManifestError{Configured: manifest.HashOf(b.cfg.InitialManifest), Initial: manifest.HashOf(initial), ActiveVersion: am.rec.Version}
			if m, err := manifest.Parse(b.cfg.InitialManifest); err == nil {
				e.ConfiguredVersion = m.Version()
			}
			return e
		}
		return nil
	}
	if b.cfg.InitialManifest == nil {
		return errors.New("kbs: no manifest: the first start needs the version 1 manifest")
	}
	m, err := manifest.Parse(b.cfg.InitialManifest)
	if err != nil {
		return fmt.Errorf("kbs: initial manifest: %w", err)
	}
	signers, err := verifyInitial(m, b.cfg.InitialSignatures)
	if err != nil {
		return fmt.Errorf("kbs: initial manifest: %w", err)
	}
	if len(signers) == 0 {
		b.log.Warn("manifest version 1 carries no owner signatures: it is trusted by the operator's decision (the configured manifest file) only, and its log entry names no signers",
			"hash", m.Hash())
	}
	return b.exclusive(ctx, func(tx *changeTx) error {
		_, err := b.activate(tx, m, b.cfg.InitialSignatures, signers)
		return err
	})
}
