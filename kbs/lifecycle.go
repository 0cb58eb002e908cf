package kbs

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"go.etcd.io/bbolt"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/keystore"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// The master key's lifecycle, as the log records it.
//
// A master key crosses a machine or measurement boundary only in two ways,
// each logged before the key moves:
//
//   - A handover (handover.go): the running broker verifies a newcomer's
//     evidence against the active manifest's service reference values,
//     appends a handover entry, then seals the master key to the
//     newcomer's attested key. From that entry on, the log's state says
//     the broker handed over: a broker decides nothing unless it holds a
//     takeover record (a broker secret, under the master key) naming that
//     very entry, which only the newcomer writes. The old broker's own
//     database has none, so it refuses every change and release (410
//     handed_over), also after a restart.
//   - A recovery (recovery.go): when a manifest version names recovery
//     holders, the broker splits its master key into Shamir shares, seals
//     each to its holder's key and logs them (a recovery-shares entry). A
//     broker that cannot unseal its master key waits for the threshold of
//     holders to send their shares back, sealed to its attested key, and
//     logs a recovery entry before it serves again.

// handoverState is the log's latest handover entry.
type handoverState struct {
	Index uint64 `json:"index"`
	// EvidenceDigest is the newcomer's evidence digest.
	EvidenceDigest string `json:"evidence_digest"`
}

// sharesState is the log's latest recovery-shares entry.
type sharesState struct {
	Index        uint64        `json:"index"`
	ManifestHash string        `json:"manifest_hash"`
	Threshold    int           `json:"threshold"`
	Holders      []shareHolder `json:"holders"`
}

type shareHolder struct {
	Name        string `json:"name"`
	Fingerprint string `json:"fingerprint"`
	Commitment  string `json:"commitment"`
}

func newSharesState(index uint64, e *tlog.RecoverySharesEntry) *sharesState {
	s := &sharesState{Index: index, ManifestHash: e.ManifestHash, Threshold: e.Threshold}
	for _, sh := range e.Shares {
		s.Holders = append(s.Holders, shareHolder{Name: sh.Holder, Fingerprint: sh.Fingerprint, Commitment: sh.Commitment})
	}
	return s
}

// matches reports whether the shares were made for recovery policy p: the
// same threshold and the same holders (names and keys).
func (s *sharesState) matches(p *manifest.RecoveryPolicy) bool {
	if s == nil || s.Threshold != p.Threshold || len(s.Holders) != len(p.Holders) {
		return false
	}
	for i, h := range p.Holders {
		if s.Holders[i].Name != h.Name || s.Holders[i].Fingerprint != h.Fingerprint() {
			return false
		}
	}
	return true
}

// takeoverSecret names the broker secret in which a newcomer records the
// handover entry it took over at.
const takeoverSecret = "broker-takeover"

type takeoverRecord struct {
	Index uint64 `json:"index"`
}

// RecordTakeover records, in the newcomer's key store (under the master
// key, so the host can neither write nor move it), that this broker took
// over at the handover entry at index: from then on its state's latest
// handover is its own and it decides again. Only the newcomer of that
// handover calls it, after checking the entry and the database it
// received (kbs/client Handover, kbsd --handover-from).
func RecordTakeover(keys *keystore.Store, index uint64) error {
	raw, err := json.Marshal(takeoverRecord{Index: index})
	if err != nil {
		return err
	}
	if err := keys.PutSecret(takeoverSecret, raw); err != nil {
		return fmt.Errorf("kbs: couldn't record the takeover: %w", err)
	}
	return nil
}

// loadTakeover reads the takeover record, if any.
func (b *Broker) loadTakeover() error {
	raw, err := b.cfg.Keys.Secret(takeoverSecret)
	if errors.Is(err, keystore.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kbs: couldn't read the takeover record: %w", err)
	}
	var rec takeoverRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return fmt.Errorf("kbs: corrupt takeover record: %w", err)
	}
	b.takeover, b.hasTakeover = rec.Index, true
	return nil
}

// handedOver returns the index of the handover entry this broker handed
// over at, if its log's latest handover is not one it took over at. The
// caller holds the sequencer.
func (b *Broker) handedOver() (uint64, bool) {
	h := b.st.handover
	if h == nil || (b.hasTakeover && b.takeover == h.Index) {
		return 0, false
	}
	return h.Index, true
}

// fencedError refuses a decision of a broker that handed over. The caller
// holds the sequencer.
func (b *Broker) fencedError() error {
	if i, ok := b.handedOver(); ok {
		return api.Errorf(api.CodeHandedOver, "this broker handed its master key over to its successor at log entry %d and takes no decision any more; use the successor", i)
	}
	return nil
}

// fencedNow is fencedError for callers that do not hold the sequencer (a
// challenge: the decision it leads to is checked again).
func (b *Broker) fencedNow() error {
	b.seq.RLock()
	defer b.seq.RUnlock()
	return b.fencedError()
}

// HandedOver reports whether the broker handed its master key over (its
// log's latest handover entry is not one it took over at), and at which
// log index.
func (b *Broker) HandedOver() (uint64, bool) {
	b.seq.RLock()
	defer b.seq.RUnlock()
	return b.handedOver()
}

// noteKeyRecord is where the broker keeps its log's public note key in the
// clear, so that a broker that cannot unseal its identity can still check
// its log's checkpoints (recovery.go). The host can change it; a recovering
// broker's holders check the note key against the log they know, and the
// recovered identity must carry the same key.
var noteKeyRecord = []byte("note-key")

func (b *Broker) writeNoteKey() error {
	return b.cfg.DB.Update(func(tx *bbolt.Tx) error {
		bb := tx.Bucket(bucketBroker)
		if string(bb.Get(noteKeyRecord)) == b.cfg.Identity.NoteKey {
			return nil
		}
		return bb.Put(noteKeyRecord, []byte(b.cfg.Identity.NoteKey))
	})
}

// LoggedNoteKey returns the log's note verifier key as the broker recorded
// it in db in the clear, or "" if it has none.
func LoggedNoteKey(db *bbolt.DB) (string, error) {
	var vkey string
	err := db.View(func(tx *bbolt.Tx) error {
		if bb := tx.Bucket(bucketBroker); bb != nil {
			vkey = string(bb.Get(noteKeyRecord))
		}
		return nil
	})
	return vkey, err
}

// ensureShares logs recovery shares for the active manifest's holders
// unless the log's latest shares were made for the same holders and
// threshold. The caller holds the sequencer exclusively.
func (b *Broker) ensureShares(tx *changeTx) error {
	am := b.active.Load()
	p := am.m.Recovery()
	if !p.Active() || b.st.shares.matches(p) {
		return nil
	}
	master := b.cfg.Keys.MasterKey()
	defer clear(master)
	shares, err := keystore.Split(master, len(p.Holders), p.Threshold)
	if err != nil {
		return fmt.Errorf("kbs: couldn't split the master key: %w", err)
	}
	e := &tlog.RecoverySharesEntry{ManifestHash: am.rec.Hash, Threshold: p.Threshold}
	for i, h := range p.Holders {
		pub, err := api.ParsePublicKey(h.Key())
		if err != nil {
			return fmt.Errorf("kbs: recovery holder %q: %w", h.Name, err)
		}
		sealed, err := api.SealTo(pub, api.ShareInfo(h.Name, am.rec.Version), shares[i])
		if err != nil {
			return fmt.Errorf("kbs: couldn't seal the share of %q: %w", h.Name, err)
		}
		e.Shares = append(e.Shares, tlog.SealedShare{Holder: h.Name, Fingerprint: h.Fingerprint(), Sealed: sealed, Commitment: api.ShareCommitment(h.Name, shares[i])})
		clear(shares[i])
	}
	l, err := tx.log(&tlog.Entry{Type: tlog.TypeRecoveryShares, Time: b.now(), RecoveryShares: e}, nil)
	if err != nil {
		return fmt.Errorf("kbs: couldn't log the recovery shares: %w", err)
	}
	b.log.Info("logged recovery shares of the master key", "log_index", l.index, "holders", len(p.Holders), "threshold", p.Threshold, "manifest_version", am.rec.Version)
	return nil
}

// Recoverable reports whether the log holds recovery shares for the
// active manifest's holders: whether this broker's master key can come
// back from its holders if it cannot be unsealed.
func (b *Broker) Recoverable() bool {
	b.seq.RLock()
	defer b.seq.RUnlock()
	am := b.active.Load()
	return am != nil && am.m.Recovery().Active() && b.st.shares.matches(am.m.Recovery())
}

// Recovered says that the broker's master key was restored from recovery
// shares (Config.Recovered): New logs a recovery entry before it serves.
type Recovered struct {
	// SharesIndex is the index of the recovery-shares entry whose shares
	// were used, and Holders the holders who sent them.
	SharesIndex uint64
	Holders     []string
}

// logRecovered appends the recovery entry of cfg.Recovered, with the
// digest and claims of the broker's own fresh evidence.
func (b *Broker) logRecovered(ctx context.Context) error {
	r := b.cfg.Recovered
	if r == nil {
		return nil
	}
	b.seq.RLock()
	idx, fenced := b.handedOver()
	b.seq.RUnlock()
	if fenced {
		b.log.Warn("master key restored, but this broker handed over at that log entry: it stays read-only and logs no recovery", "handover_index", idx)
		return nil
	}
	claims, digest, err := b.ownClaims(ctx)
	if err != nil {
		return err
	}
	return b.exclusive(ctx, func(tx *changeTx) error {
		e := &tlog.RecoveryEntry{SharesIndex: r.SharesIndex, Holders: slices.Clone(r.Holders), ManifestHash: b.active.Load().rec.Hash,
			Platform: string(claims.Platform), Simulated: claims.Simulated, Measurement: hex.EncodeToString(claims.Measurement), EvidenceDigest: digest}
		l, err := tx.log(&tlog.Entry{Type: tlog.TypeRecovery, Time: b.now(), Recovery: e}, nil)
		if err != nil {
			return fmt.Errorf("kbs: couldn't log the recovery: %w", err)
		}
		b.log.Info("logged the recovery of the master key", "log_index", l.index, "holders", r.Holders, "shares_index", r.SharesIndex)
		return nil
	})
}

// ownClaims issues and verifies the broker's own evidence (bound to its
// identity keys and a zero nonce) and returns its claims and digest.
func (b *Broker) ownClaims(ctx context.Context) (*attest.Claims, string, error) {
	id := b.cfg.Identity
	rd := api.ReportData(api.BrokerBinding(make([]byte, api.NonceSize), id.NoteKey, id.HPKEPublicKey, id.TLSSPKISHA256, ""))
	ev, err := b.cfg.Issuer.Issue(ctx, rd)
	if err != nil {
		return nil, "", fmt.Errorf("kbs: couldn't obtain the broker's own evidence: %w", err)
	}
	c, err := b.cfg.Verifier.Verify(ctx, ev, rd)
	if err != nil {
		return nil, "", fmt.Errorf("kbs: couldn't verify the broker's own evidence: %w", err)
	}
	return c, digestString(ev.Digest()), nil
}

// holder returns the holder called name.
func (s *sharesState) holder(name string) (shareHolder, bool) {
	for _, h := range s.Holders {
		if h.Name == name {
			return h, true
		}
	}
	return shareHolder{}, false
}
