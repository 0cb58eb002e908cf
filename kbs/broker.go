// Package kbs is the broker: the HTTP API of kbsd over the transparency
// log, the sealed key store, the attestation verifiers and the manifest.
//
// # Shape
//
// A Broker's methods are the API: each takes a typed request from kbs/api
// and returns a typed answer or an error (Release, UploadKey, DeleteKey,
// ListKeys, UpdateManifest, Manifest, ManifestHistory, Attestation,
// Challenge, InclusionProof, ConsistencyProof). Handler is the HTTP edge:
// it reads and decodes requests, calls the method, and writes the answer;
// writeError maps every error to its status and api.ErrorBody in one
// place. Decisions can thus be tested and reused without HTTP.
//
// # What it trusts and guarantees
//
// The broker trusts its own process and memory (it runs as the measured
// kbsd in a confidential VM), the evidence Verifier it is given (vendor
// roots, or a simulated root in development), its Issuer for its own
// evidence, and the initial manifest it was configured with. It trusts
// nothing that arrives over HTTP, and nothing in its database (the host's
// disk) that its log's signed tree or its key store's sealing does not
// protect.
//
// It guarantees:
//   - Its authorization state (the active manifest; for every key id the
//     live version, the digest of that version's sealed record, and
//     whether the key is deleted) is a function of its log: rebuilt at
//     start from log entries checked against the signed tree (or from a
//     sealed index of it that the log's tree must extend, see index.go),
//     and advanced by the same code that appends (sequencer.go). A record
//     of the database that the log does not back is never used: a key
//     record is only sealed material, used when its version and sealed
//     digest are the log's; the broker refuses to start on a store that
//     disagrees with its log and says what differs (StoreMismatchError).
//   - Each decision is made against the state at its own position in the
//     log: a release, upload, deletion or manifest activation is decided
//     and appended as one step, so no release is logged after a deletion
//     or manifest version that contradicts it (sequencer.go).
//   - A key leaves only HPKE-sealed to a public key bound by fresh,
//     verified evidence (the worker binding of a single-use challenge
//     nonce), from a worker whose claims match a worker class of the active
//     manifest that may receive every requested key.
//   - The release entry is durable in the log before any sealed key is
//     returned, and a manifest version is durable in the log before it is
//     activated. If the log cannot be written, nothing is released or
//     activated. An append whose outcome the log cannot tell
//     (tlog.ErrUnknownOutcome) stops all decisions until a restart settles
//     it against the log.
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
	"github.com/kbs-dev/kbs/tlog"
)

// Config configures a Broker.
type Config struct {
	// DB is the bbolt database for the broker's own records (the owner
	// signatures of the manifest chain, and the sealed index of its
	// state). Required. It may be the database the key store and the log
	// live in; the broker uses the bucket "broker".
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

	// Recovered says that the master key was restored from recovery
	// shares just now: New logs a recovery entry before it serves.
	// Optional.
	Recovered *Recovered

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
	// AttestationRate and AttestationBurst limit GET /v1/attestation
	// (requests per second, and the bucket size) for the whole broker.
	// Optional; defaults 50 and 100.
	AttestationRate  float64
	AttestationBurst int
	// ChallengeRate and ChallengeBurst limit POST /v1/release/challenge:
	// the releases' own budget (ratelimit.go). Optional; defaults
	// AttestationRate and AttestationBurst.
	ChallengeRate  float64
	ChallengeBurst int
	// ManifestRate and ManifestBurst limit PUT /v1/manifest, unauthenticated
	// signature checks. Optional; defaults 5 and 10.
	ManifestRate  float64
	ManifestBurst int
	// PeerShare is the share of each budget one peer (a process on the unix
	// socket, a TCP source address; see PeerOf) may use, 0 to 1. Optional;
	// default 0.25.
	PeerShare float64
	// Witnesses tunes the work with the witnesses the active manifest
	// names (witness.go). Optional; the zero value is the defaults.
	Witnesses WitnessOptions
}

// ErrInitialSignatures is returned by New when signatures were given for the
// version-1 manifest but do not reach its own owners' threshold.
var ErrInitialSignatures = errors.New("initial manifest not signed by its owners")

// Broker serves the kbs API. Create it with New; serve Handler; call Close
// when shutting down starts and Shutdown once requests are drained.
type Broker struct {
	cfg     Config
	log     hclog.Logger
	now     func() time.Time
	nonces  *nonceTable
	budgets budgets

	// listeners are kbsd's connection-limited listeners, for /metrics
	// (ReportListener).
	listenersMu sync.Mutex
	listeners   map[string]*LimitedListener
	m           *metrics

	// seq orders decisions with appends (sequencer.go).
	seq sync.RWMutex
	// uploads gathers the uploads decided and logged together (keys_batch.go).
	uploads uploadQueue
	// st is the authorization state, a function of the log (state.go).
	st *authState
	// appended counts the releases appended since the state's size was
	// last set (sequencer.go).
	appended atomic.Uint64
	// halted is set when the state may no longer be the log's (an append
	// of unknown outcome): every decision is refused until a restart.
	halted atomic.Pointer[error]
	haltCh chan struct{} // closed by halt
	// restored is set once restore has checked the database against the
	// state; from then on, applied entries update what hangs off the
	// state (the active manifest).
	restored bool

	// active is the active manifest (the last of the state's chain).
	active atomic.Pointer[activeManifest]
	// wit is the witnessing of the active manifest's witness policy
	// (witness.go); nil until New has logged what a first start logs.
	wit       *witnesses
	manifests *manifestStore
	index     *stateIndex

	flushMu   sync.Mutex // serializes index writes
	flushReq  chan struct{}
	quit      chan struct{}
	flushDone chan struct{}
	stopOnce  sync.Once

	// confirm is policy.Confirm (replaced in tests).
	confirm confirmFunc

	// takeover is the handover entry this broker took over at, if
	// hasTakeover (lifecycle.go).
	takeover    uint64
	hasTakeover bool
	// handoverNonces are the pending handover challenges; snapshot the
	// database snapshot a handover authorized (handover.go).
	handoverNonces *nonceTable
	snapshot       snapshotGrant

	// recovering marks the read-only broker of a Recovery.
	recovering bool

	closing atomic.Bool
	// appendFailing is set while appends to the log fail (health checks
	// report it), and cleared by the next successful append.
	appendFailing atomic.Bool
}

// New starts a broker. It restores the authorization state from the log
// (restore), refusing a database that disagrees with it; on first start it
// logs an identity entry (the broker's public keys and the digest of its
// own evidence) and the initial manifest.
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
	if cfg.ChallengeRate <= 0 {
		cfg.ChallengeRate = cfg.AttestationRate
	}
	if cfg.ChallengeBurst <= 0 {
		cfg.ChallengeBurst = cfg.AttestationBurst
	}
	if cfg.ManifestRate <= 0 {
		cfg.ManifestRate = 5
	}
	if cfg.ManifestBurst <= 0 {
		cfg.ManifestBurst = 10
	}
	if cfg.PeerShare <= 0 || cfg.PeerShare > 1 {
		cfg.PeerShare = 0.25
	}
	b := &Broker{
		cfg:     cfg,
		log:     cfg.Logger,
		now:     cfg.Now,
		nonces:  newNonceTable(cfg.MaxNonces, cfg.NonceTTL, cfg.Now),
		budgets: newBudgets(cfg),
		// Handovers are rare: a few pending challenges suffice.
		handoverNonces: newNonceTable(16, cfg.NonceTTL, cfg.Now),
		m:              newMetrics(),
		confirm:        policy.Confirm,
		flushReq:       make(chan struct{}, 1),
		haltCh:         make(chan struct{}),
		quit:           make(chan struct{}),
		flushDone:      make(chan struct{}),
	}
	var err error
	if b.manifests, err = openManifestStore(cfg.DB); err != nil {
		return nil, fmt.Errorf("kbs: couldn't create broker state: %w", err)
	}
	if b.index, err = openIndex(cfg.DB, cfg.Keys); err != nil {
		return nil, fmt.Errorf("kbs: %w", err)
	}
	if err := b.loadTakeover(); err != nil {
		return nil, err
	}
	if err := b.restore(ctx); err != nil {
		return nil, err
	}
	if err := b.writeNoteKey(); err != nil {
		return nil, fmt.Errorf("kbs: couldn't record the note key: %w", err)
	}
	if idx, fenced := b.HandedOver(); fenced {
		b.log.Warn("this broker handed its master key over to a successor: it serves its log and refuses every change and release", "handover_index", idx)
	} else {
		if err := b.logIdentity(ctx); err != nil {
			return nil, err
		}
		if err := b.loadInitialManifest(ctx); err != nil {
			return nil, err
		}
		if err := b.logRecovered(ctx); err != nil {
			return nil, err
		}
		if err := b.exclusive(ctx, func(tx *changeTx) error { return b.ensureShares(tx) }); err != nil {
			return nil, err
		}
	}
	// A broker that its own manifest does not describe still serves (the
	// owners may be rolling out a new manifest), but clients will reject
	// it: say so loudly.
	if am := b.active.Load(); am != nil {
		if err := b.checkServesManifest(ctx, am.m); err != nil {
			b.log.Error("this broker does not match the active manifest's service reference values; clients will refuse it until the owners publish a manifest that lists it", "error", err)
		}
	}
	if err := b.flush(ctx); err != nil {
		return nil, err
	}
	if b.wit, err = startWitnesses(b); err != nil {
		return nil, err
	}
	go b.flushLoop()
	return b, nil
}

// Close marks the broker as shutting down: health checks fail from then on
// so load balancers stop sending traffic. It does not close the log or the
// store, which the caller owns.
func (b *Broker) Close() { b.closing.Store(true) }

// Shutdown stops the broker's background work and writes its state index,
// so that the next start replays nothing. Call it once requests are
// drained, before closing the log and the database. Calling it again does
// nothing.
func (b *Broker) Shutdown(ctx context.Context) error {
	var err error
	b.stopOnce.Do(func() {
		b.closing.Store(true)
		close(b.quit)
		<-b.flushDone
		b.wit.stop()
		err = b.flush(ctx)
	})
	return err
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
	recs := b.manifests.history()
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
	var se *statusError
	if errors.As(err, &se) {
		return err
	}
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
