package kbs

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/bbolt"
	"golang.org/x/mod/sumdb/note"

	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/keystore"
	"github.com/kbs-dev/kbs/tlog"
)

// Recovery is a broker that cannot unseal its master key (a lost or
// changed sealing key, a TDX broker's restart) and waits for its recovery
// holders (lifecycle.go).
//
// It trusts what a starting broker trusts: its own process, its Issuer,
// and its log, read and checked against the log's signed tree (whose note
// key it takes from the database's clear record: LoggedNoteKey). It has no
// identity keys (they are sealed under the master key), so it attests with
// keys of this recovery only: a fresh HPKE key, to which holders seal their
// shares, and a fresh TLS key; the evidence binds them with the log's note
// key and checkpoint, in the attestation answer clients know
// (Recovering set). It serves that, the manifest, its history and the log
// read-only, GET /v1/recovery and POST /v1/recovery/share; everything else
// gets 503 recovering.
//
// A share counts only if it opens under this recovery's HPKE key for its
// holder and the recovery-shares entry's index, and matches the commitment
// that entry logged for that holder. With the entry's threshold of shares
// it combines them (Shamir, keystore.Combine) and Wait returns the master
// key; the caller opens the store with it (keystore.OpenWithMaster, which
// checks it once more) and starts the Broker with Config.Recovered, which
// logs the recovery entry before it serves.
type Recovery struct {
	b      *Broker // read-only: attestation, manifest, log
	shares *sharesState

	mu       sync.Mutex
	received map[string]keystore.Share
	result   *RecoveryResult
	done     chan struct{}
}

// RecoveryConfig configures a Recovery.
type RecoveryConfig struct {
	// DB is the broker's database, Log its log opened with a ReadOnlySigner.
	// Required.
	DB  *bbolt.DB
	Log tlog.Backend
	// NoteKey is the log's note verifier key (LoggedNoteKey). Required.
	NoteKey string
	// Issuer produces the broker's evidence; Simulated says it is the
	// simulated TEE. Required.
	Issuer    attest.Issuer
	Simulated bool
	// Logger, Now, AttestationRate, AttestationBurst and Witnesses as in
	// Config. Optional.
	Logger           hclog.Logger
	Now              func() time.Time
	AttestationRate  float64
	AttestationBurst int
	Witnesses        WitnessOptions
}

// RecoveryResult is what a completed Recovery restored.
type RecoveryResult struct {
	// Master is the master key; the caller clears it when done.
	Master []byte
	// Recovered is what Config.Recovered takes.
	Recovered Recovered
}

// ErrNoShares is returned by NewRecovery for a log that holds no recovery
// shares: such a broker cannot be recovered by holders.
var ErrNoShares = errors.New("kbs: the log holds no recovery shares (no manifest version named recovery holders)")

// NewRecovery replays the log into the broker's state, checks the stored
// manifest chain against it, and returns a Recovery waiting for the
// holders of the log's latest recovery-shares entry.
func NewRecovery(ctx context.Context, cfg RecoveryConfig) (*Recovery, error) {
	if cfg.DB == nil || cfg.Log == nil || cfg.Issuer == nil || cfg.NoteKey == "" {
		return nil, errors.New("kbs: RecoveryConfig.DB, Log, NoteKey and Issuer are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Now == nil {
		cfg.Now = clock.Now
	}
	if cfg.AttestationRate <= 0 {
		cfg.AttestationRate = 50
	}
	if cfg.AttestationBurst <= 0 {
		cfg.AttestationBurst = 100
	}
	// Keys of this recovery only; the note key is the log's.
	rec, err := newIdentityRecord()
	if err != nil {
		return nil, err
	}
	id, err := rec.identity()
	if err != nil {
		return nil, err
	}
	id.NoteKey, id.Checkpoints = cfg.NoteKey, nil
	b := &Broker{
		cfg: Config{DB: cfg.DB, Log: cfg.Log, Identity: id, Issuer: cfg.Issuer, Simulated: cfg.Simulated},
		log: cfg.Logger,
		now: cfg.Now,
		budgets: newBudgets(Config{AttestationRate: cfg.AttestationRate, AttestationBurst: cfg.AttestationBurst,
			ChallengeRate: cfg.AttestationRate, ChallengeBurst: cfg.AttestationBurst,
			ManifestRate: cfg.AttestationRate, ManifestBurst: cfg.AttestationBurst, // shares
			PeerShare: 0.25, Now: cfg.Now}),
		m:          newMetrics(),
		haltCh:     make(chan struct{}),
		st:         newAuthState(),
		recovering: true,
	}
	if b.manifests, err = openManifestStore(cfg.DB); err != nil {
		return nil, fmt.Errorf("kbs: %w", err)
	}
	cp, err := cfg.Log.Checkpoint(ctx)
	if err != nil {
		return nil, fmt.Errorf("kbs: couldn't read the log checkpoint: %w", err)
	}
	if err := b.replay(ctx, cp, cp.Size); err != nil {
		return nil, err
	}
	if err := b.loadManifests(ctx, cp); err != nil {
		return nil, err
	}
	if b.active.Load() == nil {
		return nil, errors.New("kbs: the log holds no manifest")
	}
	if b.st.shares == nil {
		return nil, ErrNoShares
	}
	// Under a witness policy, the log's checkpoint is submitted to the
	// witnesses (the log does not grow while recovering) and served with
	// their cosignatures, so that holders, who require the quorum as any
	// client does, can verify this broker; a copy of the data directory
	// older than what they cosigned gets none (kbsd logs BEHIND ITS
	// WITNESSES), and holders refuse it. Close stops it.
	b.cfg.Witnesses = cfg.Witnesses
	if b.wit, err = startWitnesses(b); err != nil {
		return nil, err
	}
	return &Recovery{b: b, shares: b.st.shares, received: map[string]keystore.Share{}, done: make(chan struct{})}, nil
}

// TLSCertificate returns this recovery's TLS certificate, which its
// attestation binds.
func (r *Recovery) TLSCertificate() *tls.Certificate { return &r.b.cfg.Identity.TLS }

// Handler serves the recovery endpoints (see Recovery).
func (r *Recovery) Handler() http.Handler {
	b := r.b
	mux := http.NewServeMux()
	route := func(pattern, name string, h handlerFunc) { mux.HandleFunc(pattern, b.wrap(name, h)) }
	route("GET "+api.PathAttestation, "attestation", b.admitted(budgetAttestation, b.serveAttestation))
	route("GET "+api.PathManifest, "manifest", noBody(b.Manifest))
	route("GET "+api.PathManifestHistory, "manifest_history", noBody(b.ManifestHistory))
	route("GET "+api.PathRecovery, "recovery", noBody(r.Status))
	route("POST "+api.PathRecoveryShare, "recovery_share", b.admitted(budgetManifest, withBody(api.MaxShareBody, r.AddShare)))
	route("GET "+api.PathLogProof, "log_proof", b.serveLogProof)
	route("GET "+api.PathLogConsistency, "log_consistency", b.serveLogConsistency)
	tiles := tlog.NewHandler(b.cfg.Log)
	mux.HandleFunc("GET "+api.PathLogPrefix, tiles.ServeHTTP)
	mux.HandleFunc("GET "+api.PathHealth, func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "recovering: waiting for the recovery holders' shares", http.StatusServiceUnavailable)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if _, pattern := mux.Handler(req); pattern != "" {
			mux.ServeHTTP(w, req)
			return
		}
		b.writeError(w, req, "other", api.Errorf(api.CodeRecovering, "the broker is recovering its master key from its holders' shares and serves only attestation, the manifest, the log and %s", api.PathRecovery))
	})
}

// Status answers GET /v1/recovery.
func (r *Recovery) Status(context.Context) (*api.RecoveryStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := &api.RecoveryStatus{Recovering: r.result == nil, SharesIndex: r.shares.Index, Threshold: r.shares.Threshold}
	for _, h := range r.shares.Holders {
		_, got := r.received[h.Name]
		st.Holders = append(st.Holders, api.RecoveryHolderStatus{Name: h.Name, Received: got})
	}
	return st, nil
}

// AddShare takes one holder's share (POST /v1/recovery/share). A share
// that does not open, or is not the one the log committed to, is refused
// and changes nothing; a holder's second share replaces nothing.
func (r *Recovery) AddShare(ctx context.Context, req *api.RecoveryShare) (*api.RecoveryShareResult, error) {
	h, ok := r.shares.holder(req.Holder)
	if !ok {
		return nil, api.Errorf(api.CodeNotFound, "no holder %q in the recovery-shares entry at log index %d", req.Holder, r.shares.Index)
	}
	share, err := api.Open(r.b.cfg.Identity.HPKE, api.ShareReturnInfo(h.Name, r.shares.Index), req.Sealed)
	if err != nil {
		return nil, api.Errorf(api.CodeBadRequest, "the share does not open under this recovery's key for holder %q and entry %d (seal it to the key of a fresh attestation)", h.Name, r.shares.Index)
	}
	if api.ShareCommitment(h.Name, share) != h.Commitment {
		clear(share)
		return nil, api.Errorf(api.CodeForbidden, "that is not the share the log committed to for holder %q at entry %d", h.Name, r.shares.Index)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.result != nil {
		clear(share)
		return nil, api.Errorf(api.CodeConflict, "the master key is restored already")
	}
	if _, dup := r.received[h.Name]; !dup {
		r.received[h.Name] = keystore.Share(share)
		r.b.log.Info("received a recovery share", "holder", h.Name, "received", len(r.received), "threshold", r.shares.Threshold)
	}
	ans := &api.RecoveryShareResult{Received: len(r.received), Threshold: r.shares.Threshold}
	if len(r.received) < r.shares.Threshold {
		return ans, nil
	}
	var shares []keystore.Share
	var holders []string
	for _, hh := range r.shares.Holders { // in the entry's order
		if s, ok := r.received[hh.Name]; ok {
			shares, holders = append(shares, s), append(holders, hh.Name)
		}
	}
	master, err := keystore.Combine(shares)
	if err != nil {
		return nil, fmt.Errorf("couldn't combine the shares: %w", err)
	}
	for _, s := range r.received {
		clear(s)
	}
	r.result = &RecoveryResult{Master: master, Recovered: Recovered{SharesIndex: r.shares.Index, Holders: slices.Clone(holders)}}
	close(r.done)
	ans.Restored = true
	return ans, nil
}

// Wait returns the restored master key once the threshold of shares has
// arrived, or ctx's error.
func (r *Recovery) Wait(ctx context.Context) (*RecoveryResult, error) {
	select {
	case <-r.done:
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.result, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close stops the recovery's work with its witnesses. The caller closes
// the log and the database afterwards.
func (r *Recovery) Close() { r.b.wit.stop() }

// Threshold returns how many shares the recovery waits for, and the
// holders' names.
func (r *Recovery) Threshold() (int, []string) {
	var names []string
	for _, h := range r.shares.Holders {
		names = append(names, h.Name)
	}
	return r.shares.Threshold, names
}

// ReadOnlySigner returns a checkpoint signer for the log with note key
// vkey that verifies checkpoints and refuses to sign: a recovering broker
// opens its log with it to read and serve it.
func ReadOnlySigner(vkey string) (*tlog.CheckpointSigner, error) {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("kbs: the recorded note key %q: %w", vkey, err)
	}
	return tlog.NewCheckpointSigner(v.Name(), readOnlySigner{v}, v)
}

type readOnlySigner struct{ v note.Verifier }

func (s readOnlySigner) Name() string    { return s.v.Name() }
func (s readOnlySigner) KeyHash() uint32 { return s.v.KeyHash() }
func (readOnlySigner) Sign([]byte) ([]byte, error) {
	return nil, errors.New("kbs: a recovering broker cannot sign checkpoints")
}
