package kbs

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"

	"go.etcd.io/bbolt"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// manifestRecord is what the broker stores for each manifest version the
// log holds: the body, and the owner signatures that admitted it (the log
// names the signers, not their signatures).
type manifestRecord struct {
	Version    uint64   `json:"version"`
	Hash       string   `json:"hash"`
	Body       []byte   `json:"body"`
	Signatures []string `json:"signatures"`
	LogIndex   uint64   `json:"log_index"`
}

// pendingRecord is the record of a manifest version whose log entry is
// being appended (or was, when a crash came in between): the entry names
// no signatures, so they are kept here until the entry is in the log.
type pendingRecord struct {
	SizeFrom uint64         `json:"size_from"`
	Manifest manifestRecord `json:"manifest"`
}

var (
	bucketBroker    = []byte("broker")
	bucketManifests = []byte("manifests")
	keyPending      = []byte("pending-manifest")
)

// manifestStore keeps the manifest records in the database (bucket
// broker/manifests, version → JSON manifestRecord, and the pending record)
// and, once they are checked against the log, in memory. The log, not this
// store, says which versions exist and which is active: a record is used
// only for a version the log holds, after verifyChain, and a record for a
// version the log does not hold stops the broker at start.
type manifestStore struct {
	db *bbolt.DB

	mu   sync.RWMutex
	recs []manifestRecord // checked against the log; version i+1 at [i]
}

// activeManifest is the active manifest version: the last of the log's
// chain, with its record and its exact log entry.
type activeManifest struct {
	m   *manifest.Manifest
	rec manifestRecord
	// entry is the exact log entry at rec.LogIndex.
	entry []byte
}

func (rec *manifestRecord) api() api.Manifest {
	sigs := rec.Signatures
	if sigs == nil {
		sigs = []string{}
	}
	return api.Manifest{Version: rec.Version, Hash: rec.Hash, Body: rec.Body, Signatures: sigs, LogIndex: rec.LogIndex}
}

func putManifestRecord(bb *bbolt.Bucket, rec *manifestRecord) error {
	raw, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return bb.Bucket(bucketManifests).Put(binary.BigEndian.AppendUint64(nil, rec.Version), raw)
}

// openManifestStore returns the manifest store of db, creating its
// buckets on first use.
func openManifestStore(db *bbolt.DB) (*manifestStore, error) {
	err := db.Update(func(tx *bbolt.Tx) error {
		bb, err := tx.CreateBucketIfNotExists(bucketBroker)
		if err != nil {
			return err
		}
		_, err = bb.CreateBucketIfNotExists(bucketManifests)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &manifestStore{db: db}, nil
}

// read returns the stored records by version, and the pending record.
func (s *manifestStore) read() (map[uint64]manifestRecord, *pendingRecord, error) {
	recs := map[uint64]manifestRecord{}
	var p *pendingRecord
	err := s.db.View(func(tx *bbolt.Tx) error {
		bb := tx.Bucket(bucketBroker)
		if raw := bb.Get(keyPending); raw != nil {
			p = new(pendingRecord)
			if err := json.Unmarshal(raw, p); err != nil {
				return fmt.Errorf("corrupt pending manifest record: %w", err)
			}
		}
		return bb.Bucket(bucketManifests).ForEach(func(k, v []byte) error {
			var rec manifestRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("corrupt manifest record: %w", err)
			}
			if len(k) != 8 || binary.BigEndian.Uint64(k) != rec.Version {
				return fmt.Errorf("manifest record of version %d stored under %x", rec.Version, k)
			}
			recs[rec.Version] = rec
			return nil
		})
	})
	return recs, p, err
}

// setPending records rec as the version being appended; the log is at
// size when it is.
func (s *manifestStore) setPending(rec manifestRecord, size uint64) error {
	raw, err := json.Marshal(&pendingRecord{SizeFrom: size, Manifest: rec})
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(bucketBroker).Put(keyPending, raw) })
}

// dropPending deletes the pending record.
func (s *manifestStore) dropPending() error {
	return s.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(bucketBroker).Delete(keyPending) })
}

// history returns the records of every version, oldest first.
func (s *manifestStore) history() []manifestRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Clone(s.recs)
}

// chainError is how a store that disagrees with the log's manifest chain
// is reported.
func chainError(format string, args ...any) error {
	return fmt.Errorf("kbs: the stored manifest chain does not check out (the database was modified or rolled back?): "+format, args...)
}

// loadManifests checks the stored manifest records against the log's chain
// at start and makes the last version active. A pending record that the
// log holds becomes a record; one it does not hold was never logged and is
// dropped. A version the log holds without a record, or a record of a
// version the log does not hold, stops the broker.
func (b *Broker) loadManifests(ctx context.Context, cp tlog.SignedCheckpoint) error {
	s := b.manifests
	recs, pending, err := s.read()
	if err != nil {
		return chainError("%v", err)
	}
	chain := b.st.chain
	vs := make([]chainVersion, len(chain))
	adopted := false
	for i, link := range chain {
		rec, ok := recs[link.Version]
		if !ok && pending != nil && pending.Manifest.Version == link.Version && pending.Manifest.Hash == link.Hash {
			rec, ok, adopted = pending.Manifest, true, true
			rec.LogIndex = link.Index
			b.log.Warn("activating a manifest version logged before a crash", "version", rec.Version, "log_index", rec.LogIndex)
		}
		if !ok {
			return chainError("the log holds manifest version %d (%s, at index %d), but the store has no record of it (its owner signatures)", link.Version, link.Hash, link.Index)
		}
		entry, err := b.verifiedEntry(ctx, cp, link.Index)
		if err != nil {
			return chainError("version %d: %v", link.Version, err)
		}
		vs[i] = chainVersion{link: link, entry: entry, rec: rec}
	}
	for v := range recs {
		if v > uint64(len(chain)) {
			return chainError("the store holds a record of manifest version %d, which the log does not hold (the log's chain ends at version %d)", v, len(chain))
		}
	}
	ms, err := verifyChain(vs)
	if err != nil {
		return chainError("%v", err)
	}
	if pending != nil && !adopted {
		b.log.Warn("dropping a manifest update that never reached the log", "version", pending.Manifest.Version)
	}
	if pending != nil {
		if err := s.db.Update(func(tx *bbolt.Tx) error {
			bb := tx.Bucket(bucketBroker)
			if adopted {
				if err := putManifestRecord(bb, &vs[len(vs)-1].rec); err != nil {
					return err
				}
			}
			return bb.Delete(keyPending)
		}); err != nil {
			return fmt.Errorf("kbs: couldn't settle the pending manifest record: %w", err)
		}
	}
	s.mu.Lock()
	s.recs = s.recs[:0]
	for _, v := range vs {
		s.recs = append(s.recs, v.rec)
	}
	s.mu.Unlock()
	if n := len(vs); n > 0 {
		b.active.Store(&activeManifest{m: ms[n-1], rec: vs[n-1].rec, entry: vs[n-1].entry})
		b.log.Info("active manifest", "version", vs[n-1].rec.Version, "hash", vs[n-1].rec.Hash, "log_index", vs[n-1].rec.LogIndex)
	}
	return nil
}

// manifestApplied follows a manifest version the state just took from the
// log (the broker's own activation, or an entry another writer appended):
// its record must be the pending one, whose signatures are verified
// against the active version's owners before it becomes active.
func (b *Broker) manifestApplied(link chainLink, entry []byte) error {
	s := b.manifests
	_, pending, err := s.read()
	if err != nil {
		return err
	}
	if pending == nil || pending.Manifest.Version != link.Version || pending.Manifest.Hash != link.Hash {
		return fmt.Errorf("the log holds manifest version %d (%s, at index %d), which this broker has no record of", link.Version, link.Hash, link.Index)
	}
	rec := pending.Manifest
	rec.LogIndex = link.Index
	prev := b.active.Load()
	var prevM *manifest.Manifest
	if prev != nil {
		prevM = prev.m
	}
	m, err := verifyLink(prevM, chainVersion{link: link, entry: entry, rec: rec})
	if err != nil {
		return err
	}
	b.active.Store(&activeManifest{m: m, rec: rec, entry: entry})
	if err := b.wit.policyChanged(prevM, m, link.Index); err != nil {
		return err
	}
	s.mu.Lock()
	s.recs = append(s.recs, rec)
	s.mu.Unlock()
	return s.db.Update(func(tx *bbolt.Tx) error {
		bb := tx.Bucket(bucketBroker)
		if err := putManifestRecord(bb, &rec); err != nil {
			return err
		}
		return bb.Delete(keyPending)
	})
}

// verifiedEntry returns the log entry at index, checked against cp with an
// inclusion proof.
func (b *Broker) verifiedEntry(ctx context.Context, cp tlog.SignedCheckpoint, index uint64) ([]byte, error) {
	if index >= cp.Size {
		return nil, fmt.Errorf("log index %d is beyond the log (size %d)", index, cp.Size)
	}
	ents, err := b.cfg.Log.Entries(ctx, index, index+1)
	if err != nil {
		return nil, err
	}
	proof, err := b.cfg.Log.InclusionProof(ctx, index, cp.Size)
	if err != nil {
		return nil, err
	}
	if err := tlog.VerifyInclusion(cp, index, ents[0], proof); err != nil {
		return nil, fmt.Errorf("log entry %d does not match the log's tree of size %d (its bytes were changed)", index, cp.Size)
	}
	return ents[0], nil
}

// Manifest returns the active manifest with its owner signatures
// (GET /v1/manifest).
func (b *Broker) Manifest(ctx context.Context) (*api.Manifest, error) {
	am := b.active.Load()
	m := am.rec.api()
	return &m, nil
}

// ManifestHistory returns every version of the chain, oldest first, with
// its signatures and log index (GET /v1/manifest/history).
func (b *Broker) ManifestHistory(ctx context.Context) (*api.ManifestHistory, error) {
	recs := b.manifests.history()
	out := &api.ManifestHistory{Manifests: make([]api.Manifest, len(recs))}
	for i := range recs {
		out.Manifests[i] = recs[i].api()
	}
	return out, nil
}

// UpdateManifest activates the next manifest version (PUT /v1/manifest): it
// must parse, follow the active version and carry threshold signatures of
// the active version's owners (and keep stating a witness policy if the
// active one does), its service reference values must match this broker,
// and, when it changes the witness policy, its witnesses must cosign the
// log as it is now. It is logged durably, and only then active; the
// decision and the append are one step (no release or other change in
// between). The answer comes once a checkpoint containing it is witnessed
// (under its own policy), so that /log/checkpoint proves it logged.
func (b *Broker) UpdateManifest(ctx context.Context, req *api.ManifestUpdate) (*api.Manifest, error) {
	next, err := manifest.Parse(req.Body)
	if err != nil {
		return nil, api.Errorf(api.CodeBadRequest, "%v", err)
	}
	// Checked first against the active version without holding anything,
	// so that bad requests cost no waiting; and again in the change.
	if _, err := verifyUpdate(b.active.Load().m, next, req.Signatures); err != nil {
		return nil, err
	}
	if err := manifest.CheckRecoveryKept(b.active.Load().m, next); err != nil {
		return nil, api.Errorf(api.CodeBadRequest, "%v", err)
	}
	if err := b.checkServesManifest(ctx, next); err != nil {
		return nil, err
	}
	if err := b.wit.gate(); err != nil {
		return nil, err
	}
	if err := b.wit.prepare(ctx, b.active.Load().m, next); err != nil {
		return nil, err
	}
	defer b.wit.unprepare(next)
	var am *activeManifest
	err = b.exclusive(ctx, func(tx *changeTx) error {
		signers, err := verifyUpdate(b.active.Load().m, next, req.Signatures)
		if err != nil {
			return err
		}
		if am, err = b.activate(tx, next, req.Signatures, signers); err != nil {
			return err
		}
		// New recovery holders get their shares now. The version is
		// active either way: a failure here is retried at the next start.
		if err := b.ensureShares(tx); err != nil {
			b.log.Error("couldn't log recovery shares for the new manifest version; the next start tries again", "error", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	b.m.manifests.Add(1)
	cp, err := b.cfg.Log.Checkpoint(ctx)
	if err != nil {
		return nil, logUnavailable(err)
	}
	if _, err := b.wit.witnessed(ctx, am.rec.LogIndex+1, cp, fmt.Sprintf("manifest version %d is active (logged at index %d)", am.rec.Version, am.rec.LogIndex)); err != nil {
		return nil, err
	}
	m := am.rec.api()
	return &m, nil
}

// verifyUpdate checks next against the active version prev and maps the
// failure to its API error.
func verifyUpdate(prev, next *manifest.Manifest, sigs []string) ([]string, error) {
	signers, err := manifest.Verify(prev, next, sigs)
	switch {
	case err == nil:
		return signers, nil
	case errors.Is(err, manifest.ErrVersionRollback), errors.Is(err, manifest.ErrVersionSkip), errors.Is(err, manifest.ErrPreviousMismatch):
		return nil, api.Errorf(api.CodeConflict, "%v", err)
	case errors.Is(err, manifest.ErrMalformedSignature), errors.As(err, new(*manifest.FieldError)):
		return nil, api.Errorf(api.CodeBadRequest, "%v", err)
	default:
		return nil, api.Errorf(api.CodeUnauthorized, "%v", err)
	}
}

// activate logs manifest m durably, then makes it the active version. The
// order is what makes a swap of the manifest visible to every client: a
// version that is not in the log is never active. Its record waits as the
// pending record until the entry is in the log (manifestApplied).
func (b *Broker) activate(tx *changeTx, m *manifest.Manifest, sigs []string, signers []string) (*activeManifest, error) {
	entry := &tlog.Entry{
		Type: tlog.TypeManifest,
		Time: b.now(),
		Manifest: &tlog.ManifestEntry{
			Version:  m.Version(),
			Hash:     m.Hash(),
			Previous: m.Previous(),
			Body:     m.Bytes(),
			Signers:  signers,
		},
	}
	if _, err := tlog.EncodeEntry(entry); err != nil {
		return nil, api.Errorf(api.CodeBadRequest, "manifest cannot be logged: %v", err)
	}
	rec := manifestRecord{Version: m.Version(), Hash: m.Hash(), Body: m.Bytes(), Signatures: sigs}
	if err := b.manifests.setPending(rec, b.st.size); err != nil {
		return nil, fmt.Errorf("couldn't record the pending manifest: %w", err)
	}
	l, err := tx.log(entry, func() {
		if err := b.manifests.dropPending(); err != nil {
			b.log.Error("couldn't drop the pending manifest record", "error", err)
		}
	})
	if err != nil {
		return nil, err
	}
	am := b.active.Load()
	b.log.Info("activated manifest", "version", am.rec.Version, "hash", am.rec.Hash, "log_index", l.index)
	return am, nil
}

// checkServesManifest refuses a manifest whose service reference values do
// not match this broker's own evidence: clients that follow the chain would
// reject the broker from then on. This is a safety check for owners, not a
// security boundary (clients check the evidence themselves). When the
// broker cannot verify its own evidence (say, offline without its
// certificates) the check is skipped with a warning.
func (b *Broker) checkServesManifest(ctx context.Context, next *manifest.Manifest) error {
	nonce := make([]byte, api.NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	id := b.cfg.Identity
	rd := api.ReportData(api.BrokerBinding(nonce, id.NoteKey, id.HPKEPublicKey, id.TLSSPKISHA256, ""))
	ev, err := b.cfg.Issuer.Issue(ctx, rd)
	if err != nil {
		return fmt.Errorf("couldn't obtain the broker's own evidence: %w", err)
	}
	c, err := b.cfg.Verifier.Verify(ctx, ev, rd)
	if err != nil {
		b.log.Warn("couldn't verify the broker's own evidence; not checking the new manifest's service values", "error", err)
		return nil
	}
	r := next.MatchService(c)
	if !r.OK() {
		return api.Errorf(api.CodeConflict, "manifest version %d: its service reference values do not match this broker, whose clients would then reject it: %s", next.Version(), r.Summary())
	}
	if err := b.confirm(next, r, manifest.ServiceClass, c); err != nil {
		b.log.Error("INTERNAL INCONSISTENCY: the manifest's service values match this broker but the vendor library's validation rejects its evidence",
			"manifest", next.Hash(), "version", next.Version(), "error", err)
		return api.Errorf(api.CodeConflict, "manifest version %d: its service reference values match this broker, but the vendor library's validation rejects its evidence, so clients would reject it: %v", next.Version(), err)
	}
	return nil
}
