// Package kbs is the broker: the HTTP API of kbsd (DESIGN.md §5) over the
// transparency log, the sealed key store, the attestation verifiers and the
// manifest.
//
// # What it trusts and guarantees
//
// The broker trusts its own process and memory (it runs as the measured
// kbsd in a confidential VM), the evidence Verifier it is given (vendor
// roots, or a simulated root in development), its Issuer for its own
// evidence, and the initial manifest it was configured with. It trusts
// nothing that arrives over HTTP and nothing on disk beyond what the key
// store's sealing and the log's signatures protect.
//
// It guarantees:
//   - A key leaves only HPKE-sealed to a public key bound by fresh,
//     verified evidence (the worker binding of a single-use challenge
//     nonce), from a worker whose claims match a worker class of the active
//     manifest that may receive every requested key.
//   - The release entry is durable in the log before any sealed key is
//     returned, and a manifest version is durable in the log before it is
//     activated. If the log cannot be written, nothing is released or
//     activated.
//   - A rejected request writes no log entry and changes no key, manifest
//     or version (it may use up the challenge nonce it presented: nonces
//     are single use, whatever the outcome).
//   - Every error is an api.ErrorBody with a stable code, mapped to its
//     HTTP status in one place (writeError); details go to the broker's
//     log, never key material.
package kbs

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/bbolt"

	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/keystore"
	"github.com/kbs-dev/kbs/kbs/policy"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// Config configures a Broker.
type Config struct {
	// DB is the bbolt database for the broker's own state (the manifest
	// chain it activated). Required. It may be the database the key store
	// and the log live in; the broker uses the bucket "broker".
	DB *bbolt.DB
	// Log is the transparency log. Required. Its checkpoints must be signed
	// by Identity.Checkpoints.
	Log tlog.Backend
	// Keys is the sealed key store. Required.
	Keys *keystore.Store
	// Identity is the broker identity (LoadIdentity). Required.
	Identity *Identity
	// Issuer produces the broker's own evidence. Required.
	Issuer attest.Issuer
	// Verifier checks worker evidence. Required. It decides which roots are
	// trusted (simulated roots only in development).
	Verifier attest.Verifier
	// Simulated says that Issuer is the simulated TEE (development only).
	// It is published in attestation answers and the identity entry.
	Simulated bool

	// InitialManifest is the version-1 manifest, trusted by configuration:
	// configuring it is the operator's explicit trust decision. Required on
	// first start. InitialSignatures are optional base64 signatures of its
	// own owners over its bytes: when given, they must all verify and reach
	// the owners' threshold, and the manifest entry names their signers;
	// without them the entry names no signers and the broker logs that
	// version 1 is trusted by the operator's decision only. On later
	// starts it is optional; when given it must be a version the broker
	// already activated (the current chain is never replaced by
	// configuration: later versions come only through PUT /v1/manifest).
	InitialManifest   []byte
	InitialSignatures []string

	// Logger receives the broker's log. Optional; default hclog.NewNullLogger.
	Logger hclog.Logger
	// Now returns the current time. Optional; default clock.Now (the wall clock).
	Now func() time.Time
	// NonceTTL is how long a release challenge stays valid. Optional;
	// default 60s.
	NonceTTL time.Duration
	// MaxNonces bounds the number of pending challenges. Optional; default
	// 100000 (about 10 MB).
	MaxNonces int
	// AttestationRate and AttestationBurst limit GET /v1/attestation and
	// POST /v1/release/challenge (requests per second, and the bucket
	// size). Optional; defaults 50 and 100.
	AttestationRate  float64
	AttestationBurst int
}

// ErrInitialSignatures is returned by New when signatures were given for the
// version-1 manifest but do not reach its own owners' threshold.
var ErrInitialSignatures = errors.New("initial manifest not signed by its owners")

// Broker serves the kbs API. Create it with New; serve Handler.
type Broker struct {
	cfg    Config
	log    hclog.Logger
	now    func() time.Time
	nonces *nonceTable
	limit  *rateLimiter
	m      *metrics

	active atomic.Pointer[activeManifest]

	manifestMu sync.Mutex // serializes manifest updates
	keyMu      sync.Mutex // serializes key uploads and deletes

	// confirm is policy.Confirm (replaced in tests).
	confirm confirmFunc

	closing atomic.Bool
	// appendFailing is set while appends to the log fail (health checks
	// report it), and cleared by the next successful append.
	appendFailing atomic.Bool
}

// append appends entry to the log, durably, and tracks the log's health.
func (b *Broker) append(ctx context.Context, entry []byte) (uint64, tlog.SignedCheckpoint, error) {
	idx, cp, err := b.cfg.Log.Append(ctx, entry)
	if err != nil {
		if ctx.Err() == nil {
			b.appendFailing.Store(true)
		}
		return 0, cp, err
	}
	b.appendFailing.Store(false)
	return idx, cp, nil
}

// activeManifest is a manifest version the broker activated.
type activeManifest struct {
	m   *manifest.Manifest
	rec manifestRecord
	// entry is the exact log entry at rec.LogIndex.
	entry []byte
}

// manifestRecord is what the broker stores for each activated version.
type manifestRecord struct {
	Version    uint64   `json:"version"`
	Hash       string   `json:"hash"`
	Body       []byte   `json:"body"`
	Signatures []string `json:"signatures"`
	LogIndex   uint64   `json:"log_index"`
}

// pendingRecord marks a manifest version whose log entry may have been
// appended but that was not yet activated (a crash in between).
type pendingRecord struct {
	SizeFrom uint64         `json:"size_from"`
	Manifest manifestRecord `json:"manifest"`
}

var (
	bucketBroker    = []byte("broker")
	bucketManifests = []byte("manifests")
	keyPending      = []byte("pending-manifest")
	keyIdentityLog  = []byte("identity-log-index")
)

// New starts a broker. On first start it logs an identity entry (the
// broker's public keys and the digest of its own evidence) and the initial
// manifest; on later starts it restores the active manifest, finishing a
// manifest activation a crash interrupted.
func New(ctx context.Context, cfg Config) (*Broker, error) {
	if cfg.DB == nil || cfg.Log == nil || cfg.Keys == nil || cfg.Identity == nil || cfg.Issuer == nil || cfg.Verifier == nil {
		return nil, errors.New("kbs: Config.DB, Log, Keys, Identity, Issuer and Verifier are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Now == nil {
		cfg.Now = clock.Now
	}
	if cfg.NonceTTL <= 0 {
		cfg.NonceTTL = 60 * time.Second
	}
	if cfg.MaxNonces <= 0 {
		cfg.MaxNonces = 100000
	}
	if cfg.AttestationRate <= 0 {
		cfg.AttestationRate = 50
	}
	if cfg.AttestationBurst <= 0 {
		cfg.AttestationBurst = 100
	}
	b := &Broker{
		cfg:     cfg,
		log:     cfg.Logger,
		now:     cfg.Now,
		nonces:  newNonceTable(cfg.MaxNonces, cfg.NonceTTL, cfg.Now),
		limit:   newRateLimiter(cfg.AttestationRate, cfg.AttestationBurst, cfg.Now),
		m:       newMetrics(),
		confirm: policy.Confirm,
	}
	if err := cfg.DB.Update(func(tx *bbolt.Tx) error {
		bb, err := tx.CreateBucketIfNotExists(bucketBroker)
		if err != nil {
			return err
		}
		_, err = bb.CreateBucketIfNotExists(bucketManifests)
		return err
	}); err != nil {
		return nil, fmt.Errorf("kbs: couldn't create broker state: %w", err)
	}
	if err := b.logIdentity(ctx); err != nil {
		return nil, err
	}
	if err := b.recoverPending(ctx); err != nil {
		return nil, err
	}
	if err := b.settleKeys(ctx); err != nil {
		return nil, fmt.Errorf("kbs: couldn't settle staged key changes: %w", err)
	}
	if err := b.loadManifest(ctx); err != nil {
		return nil, err
	}
	// A broker that its own manifest does not describe still serves (the
	// owners may be rolling out a new manifest), but clients will reject
	// it: say so loudly.
	if am := b.active.Load(); am != nil {
		if err := b.checkServesManifest(ctx, am.m); err != nil {
			b.log.Error("this broker does not match the active manifest's service reference values; clients will refuse it until the owners publish a manifest that lists it", "error", err)
		}
	}
	return b, nil
}

// Close marks the broker as shutting down: health checks fail from then on
// so load balancers stop sending traffic. It does not close the log or the
// store, which the caller owns.
func (b *Broker) Close() { b.closing.Store(true) }

// logIdentity appends the identity entry once per identity.
func (b *Broker) logIdentity(ctx context.Context) error {
	var logged bool
	b.cfg.DB.View(func(tx *bbolt.Tx) error {
		logged = tx.Bucket(bucketBroker).Get(keyIdentityLog) != nil
		return nil
	})
	if logged {
		return nil
	}
	id := b.cfg.Identity
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
	entry, err := tlog.EncodeEntry(&tlog.Entry{
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
	})
	if err != nil {
		return fmt.Errorf("kbs: couldn't encode the identity entry: %w", err)
	}
	idx, _, err := b.append(ctx, entry)
	if err != nil {
		return fmt.Errorf("kbs: couldn't log the broker identity: %w", err)
	}
	b.log.Info("logged broker identity", "log_index", idx, "note_key", id.NoteKey, "tls_spki_sha256", id.TLSSPKISHA256)
	return b.cfg.DB.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketBroker).Put(keyIdentityLog, binary.BigEndian.AppendUint64(nil, idx))
	})
}

// recoverPending finishes or drops a manifest activation that a crash
// interrupted between the log append and the activation.
func (b *Broker) recoverPending(ctx context.Context) error {
	var p *pendingRecord
	if err := b.cfg.DB.View(func(tx *bbolt.Tx) error {
		raw := tx.Bucket(bucketBroker).Get(keyPending)
		if raw == nil {
			return nil
		}
		p = new(pendingRecord)
		return json.Unmarshal(raw, p)
	}); err != nil {
		return fmt.Errorf("kbs: corrupt pending manifest record: %w", err)
	}
	if p == nil {
		return nil
	}
	cp, err := b.cfg.Log.Checkpoint(ctx)
	if err != nil {
		return fmt.Errorf("kbs: couldn't read the log checkpoint: %w", err)
	}
	found := false
	if cp.Size > p.SizeFrom {
		entries, err := b.cfg.Log.Entries(ctx, p.SizeFrom, cp.Size)
		if err != nil {
			return fmt.Errorf("kbs: couldn't read log entries: %w", err)
		}
		for i, raw := range entries {
			e, err := tlog.DecodeEntry(raw)
			if err == nil && e.Type == tlog.TypeManifest && e.Manifest.Hash == p.Manifest.Hash {
				p.Manifest.LogIndex = p.SizeFrom + uint64(i)
				found = true
				break
			}
		}
	}
	return b.cfg.DB.Update(func(tx *bbolt.Tx) error {
		bb := tx.Bucket(bucketBroker)
		if found {
			b.log.Warn("activating a manifest version logged before a crash", "version", p.Manifest.Version, "log_index", p.Manifest.LogIndex)
			if err := putManifestRecord(bb, &p.Manifest); err != nil {
				return err
			}
		} else {
			b.log.Warn("dropping a manifest update that never reached the log", "version", p.Manifest.Version)
		}
		return bb.Delete(keyPending)
	})
}

// loadManifest restores the active manifest, or logs and activates the
// initial one on first start.
func (b *Broker) loadManifest(ctx context.Context) error {
	var latest *manifestRecord
	var initial []byte
	if err := b.cfg.DB.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketBroker).Bucket(bucketManifests).Cursor()
		if k, v := c.Last(); k != nil {
			latest = new(manifestRecord)
			if err := json.Unmarshal(v, latest); err != nil {
				return err
			}
		}
		if k, v := c.First(); k != nil {
			var first manifestRecord
			if err := json.Unmarshal(v, &first); err != nil {
				return err
			}
			initial = first.Body
		}
		return nil
	}); err != nil {
		return fmt.Errorf("kbs: corrupt manifest state: %w", err)
	}
	if latest != nil {
		if b.cfg.InitialManifest != nil && !bytes.Equal(b.cfg.InitialManifest, initial) {
			e := &InitialManifestError{Configured: manifest.HashOf(b.cfg.InitialManifest), Initial: manifest.HashOf(initial), ActiveVersion: latest.Version}
			if m, err := manifest.Parse(b.cfg.InitialManifest); err == nil {
				e.ConfiguredVersion = m.Version()
			}
			return e
		}
		m, entry, err := b.checkStoredChain(ctx)
		if err != nil {
			return fmt.Errorf("kbs: the stored manifest chain does not check out (the database was modified?): %w", err)
		}
		b.active.Store(&activeManifest{m: m, rec: *latest, entry: entry})
		b.log.Info("active manifest", "version", latest.Version, "hash", latest.Hash, "log_index", latest.LogIndex)
		return nil
	}
	if b.cfg.InitialManifest == nil {
		return errors.New("kbs: no manifest: the first start needs the version 1 manifest")
	}
	m, err := manifest.Parse(b.cfg.InitialManifest)
	if err != nil {
		return fmt.Errorf("kbs: initial manifest: %w", err)
	}
	if err := manifest.VerifyInitial(m, m.Hash()); err != nil {
		return fmt.Errorf("kbs: initial manifest: %w", err)
	}
	signers, err := verifySelfSigned(m, b.cfg.InitialSignatures)
	if err != nil {
		return fmt.Errorf("kbs: initial manifest: %w", err)
	}
	if len(signers) == 0 {
		b.log.Warn("manifest version 1 carries no owner signatures: it is trusted by the operator's decision (the configured manifest file) only, and its log entry names no signers",
			"hash", m.Hash())
	}
	_, err = b.activate(ctx, m, b.cfg.InitialSignatures, signers)
	return err
}

// checkStoredChain re-verifies the manifest chain kept in the database,
// which the host can write: version 1 with its owners' signatures, each
// later version with the signatures of its predecessor's owners, and every
// version's log entry (same bytes) included in the current signed
// checkpoint. It returns the latest version and its log entry.
func (b *Broker) checkStoredChain(ctx context.Context) (*manifest.Manifest, []byte, error) {
	recs, err := b.history()
	if err != nil {
		return nil, nil, err
	}
	cp, err := b.cfg.Log.Checkpoint(ctx)
	if err != nil {
		return nil, nil, err
	}
	var prev *manifest.Manifest
	var entry []byte
	for i, rec := range recs {
		m, err := manifest.Parse(rec.Body)
		if err != nil {
			return nil, nil, fmt.Errorf("version %d: %w", rec.Version, err)
		}
		if m.Version() != uint64(i+1) || rec.Version != m.Version() || rec.Hash != m.Hash() {
			return nil, nil, fmt.Errorf("record %d holds version %d (%s)", i+1, m.Version(), m.Hash())
		}
		if prev == nil {
			_, err = verifySelfSigned(m, rec.Signatures)
		} else {
			_, err = manifest.Verify(prev, m, rec.Signatures)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("version %d: %w", rec.Version, err)
		}
		if rec.LogIndex >= cp.Size {
			return nil, nil, fmt.Errorf("version %d: log index %d is beyond the log (size %d)", rec.Version, rec.LogIndex, cp.Size)
		}
		ents, err := b.cfg.Log.Entries(ctx, rec.LogIndex, rec.LogIndex+1)
		if err != nil {
			return nil, nil, err
		}
		proof, err := b.cfg.Log.InclusionProof(ctx, rec.LogIndex, cp.Size)
		if err != nil {
			return nil, nil, err
		}
		if err := tlog.VerifyInclusion(cp, rec.LogIndex, ents[0], proof); err != nil {
			return nil, nil, fmt.Errorf("version %d: %w", rec.Version, err)
		}
		e, err := tlog.DecodeEntry(ents[0])
		if err != nil || e.Type != tlog.TypeManifest || !bytes.Equal(e.Manifest.Body, rec.Body) {
			return nil, nil, fmt.Errorf("version %d: log entry %d is not this manifest", rec.Version, rec.LogIndex)
		}
		prev, entry = m, ents[0]
	}
	if prev == nil {
		return nil, nil, errors.New("no manifest")
	}
	return prev, entry, nil
}

// verifySelfSigned checks the signatures of version 1, if any: each must be
// by a distinct owner of its own, and together they must reach its
// threshold, so the log can record who admitted it. Without signatures it
// returns no signers: version 1 is then trusted by the operator's decision
// alone.
func verifySelfSigned(m *manifest.Manifest, sigs []string) ([]string, error) {
	if len(sigs) == 0 {
		return nil, nil
	}
	var keys []any
	for _, p := range m.Document().Owners.Keys {
		block, _ := pem.Decode([]byte(p))
		if block == nil {
			return nil, errors.New("owner key is not PEM")
		}
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	seen := map[string]bool{}
	for i, s := range sigs {
		ok := false
		for _, k := range keys {
			if manifest.VerifyBlob(k, m.Bytes(), s) == nil {
				fp, err := manifest.Fingerprint(k)
				if err != nil {
					return nil, err
				}
				if seen[fp] {
					return nil, fmt.Errorf("signature %d: owner %s signed twice", i, fp)
				}
				seen[fp] = true
				ok = true
				break
			}
		}
		if !ok {
			return nil, fmt.Errorf("signature %d is not a valid signature of an owner of version 1", i)
		}
	}
	if len(seen) < m.Threshold() {
		return nil, fmt.Errorf("%w: signed version 1 needs signatures of %d of its own owners over its exact bytes, has %d valid (give all of them, or none to trust version 1 by the operator's decision alone)", ErrInitialSignatures, m.Threshold(), len(seen))
	}
	var fps []string
	for fp := range seen {
		fps = append(fps, fp)
	}
	sortStrings(fps)
	return fps, nil
}

// activate logs manifest m durably, then makes it the active version. The
// order is what makes a swap of the manifest visible to every client: a
// version that is not in the log is never active.
func (b *Broker) activate(ctx context.Context, m *manifest.Manifest, sigs []string, signers []string) (*activeManifest, error) {
	entry, err := tlog.EncodeEntry(&tlog.Entry{
		Type: tlog.TypeManifest,
		Time: b.now(),
		Manifest: &tlog.ManifestEntry{
			Version:  m.Version(),
			Hash:     m.Hash(),
			Previous: m.Previous(),
			Body:     m.Bytes(),
			Signers:  signers,
		},
	})
	if err != nil {
		return nil, api.Errorf(api.CodeBadRequest, "manifest cannot be logged: %v", err)
	}
	cp, err := b.cfg.Log.Checkpoint(ctx)
	if err != nil {
		return nil, logUnavailable(err)
	}
	rec := manifestRecord{Version: m.Version(), Hash: m.Hash(), Body: m.Bytes(), Signatures: sigs}
	pending := pendingRecord{SizeFrom: cp.Size, Manifest: rec}
	if err := b.cfg.DB.Update(func(tx *bbolt.Tx) error {
		raw, err := json.Marshal(&pending)
		if err != nil {
			return err
		}
		return tx.Bucket(bucketBroker).Put(keyPending, raw)
	}); err != nil {
		return nil, fmt.Errorf("couldn't record the pending manifest: %w", err)
	}
	idx, _, err := b.append(ctx, entry)
	if err != nil {
		// The pending record stays: if the entry did reach the log after
		// all, the next start activates it (the log is the truth).
		return nil, logUnavailable(err)
	}
	rec.LogIndex = idx
	if err := b.cfg.DB.Update(func(tx *bbolt.Tx) error {
		bb := tx.Bucket(bucketBroker)
		if err := putManifestRecord(bb, &rec); err != nil {
			return err
		}
		return bb.Delete(keyPending)
	}); err != nil {
		return nil, fmt.Errorf("couldn't activate manifest version %d: %w", rec.Version, err)
	}
	am := &activeManifest{m: m, rec: rec, entry: entry}
	b.active.Store(am)
	b.log.Info("activated manifest", "version", rec.Version, "hash", rec.Hash, "log_index", idx)
	return am, nil
}

func putManifestRecord(bb *bbolt.Bucket, rec *manifestRecord) error {
	raw, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return bb.Bucket(bucketManifests).Put(binary.BigEndian.AppendUint64(nil, rec.Version), raw)
}

// history returns every activated manifest, oldest first.
func (b *Broker) history() ([]manifestRecord, error) {
	var out []manifestRecord
	err := b.cfg.DB.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketBroker).Bucket(bucketManifests).ForEach(func(_, v []byte) error {
			var rec manifestRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			out = append(out, rec)
			return nil
		})
	})
	return out, err
}

// InitialManifestError is returned by New when Config.InitialManifest is not
// the version 1 the broker's stored chain starts from (say, the file was
// overwritten with a later version). The stored chain is unaffected.
type InitialManifestError struct {
	// Configured is the hash of the configured manifest, and
	// ConfiguredVersion its version (0 when it does not parse).
	Configured        string
	ConfiguredVersion uint64
	// Initial is the hash of the stored version 1; ActiveVersion the
	// version the chain is at.
	Initial       string
	ActiveVersion uint64
}

func (e *InitialManifestError) Error() string {
	held := "a manifest that does not parse"
	if e.ConfiguredVersion != 0 {
		held = fmt.Sprintf("version %d", e.ConfiguredVersion)
	}
	return fmt.Sprintf("kbs: the configured manifest (%s, %s) is not the version 1 this broker's chain starts from (%s; the chain is at version %d); later versions come only through PUT %s",
		held, e.Configured, e.Initial, e.ActiveVersion, api.PathManifest)
}

// InitialManifest returns the exact bytes of the version 1 the broker's
// chain starts from.
func (b *Broker) InitialManifest() ([]byte, error) {
	recs, err := b.history()
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 {
		return nil, errors.New("kbs: no manifest")
	}
	return bytes.Clone(recs[0].Body), nil
}

// ActiveManifest returns the hash and version of the active manifest.
func (b *Broker) ActiveManifest() (hash string, version uint64) {
	am := b.active.Load()
	return am.rec.Hash, am.rec.Version
}

func logUnavailable(err error) error {
	return &statusError{err: api.Errorf(api.CodeLogUnavailable, "the transparency log cannot be written; nothing was done"), cause: err}
}

// statusError is an API error with an internal cause that is logged but not
// sent.
type statusError struct {
	err   *api.Error
	cause error
}

func (e *statusError) Error() string { return e.err.Error() + ": " + e.cause.Error() }
func (e *statusError) Unwrap() error { return e.cause }
