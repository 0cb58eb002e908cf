package kbs

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"go.etcd.io/bbolt"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// Handover: the running broker's side (lifecycle.go has the whole story;
// kbs/client Broker.Handover is the newcomer's side).
//
// Order, which is the security argument:
//  1. the newcomer's nonce is consumed (a replayed request fails here);
//  2. its evidence is verified and must bind that nonce, the HPKE key the
//     master key is to be sealed to, and this log's note key;
//  3. as one step against the state (no manifest change in between): the
//     evidence must match the service reference values of the active
//     manifest, as a client's evidence check of a broker would (debug
//     guests, other measurements and simulated evidence under a manifest
//     that does not allow it all fail here), and the vendor library must
//     agree; the broker issues its own evidence for the handover (binding
//     the nonce and the newcomer's evidence) and appends the handover
//     entry, durably. From that entry on this broker decides nothing;
//  4. only then is the master key sealed to the newcomer's key, and the
//     answer carries the receipt of the entry and a single-use token for
//     the database snapshot the newcomer continues from.
//
// A refused request writes nothing to the log and changes nothing.

// snapshotTTL is how long a handover's snapshot token stays valid.
const snapshotTTL = 10 * time.Minute

// snapshotGrant is the one database snapshot a handover authorized.
type snapshotGrant struct {
	mu      sync.Mutex
	token   []byte
	expires time.Time
}

// HandoverChallenge returns a fresh single-use nonce for one handover
// (POST /v1/handover/challenge).
func (b *Broker) HandoverChallenge(ctx context.Context) (*api.Challenge, error) {
	return b.challenge(b.handoverNonces, "handover challenges")
}

func checkHandoverRequest(req *api.HandoverRequest) error {
	return checkEvidenceShape(req.Platform, req.Nonce, req.Evidence)
}

// Handover hands the master key over to the newcomer broker whose evidence
// req carries (POST /v1/handover). See the order above.
func (b *Broker) Handover(ctx context.Context, req *api.HandoverRequest) (*api.Handover, error) {
	if err := checkHandoverRequest(req); err != nil {
		return nil, err
	}
	newcomerKey, err := api.ParsePublicKey(req.HPKEPublicKey)
	if err != nil {
		return nil, api.Errorf(api.CodeBadRequest, "hpke_public_key: %v", err)
	}
	if !b.handoverNonces.consume(req.Nonce) {
		return nil, api.Errorf(api.CodeNonceInvalid, "nonce unknown, already used or expired; get a new one from %s", api.PathHandoverChallenge)
	}
	id := b.cfg.Identity
	rd := api.ReportData(api.HandoverBinding(req.Nonce, req.HPKEPublicKey, id.NoteKey))
	ev := attest.Evidence{Platform: attest.Platform(req.Platform), Data: req.Evidence}
	claims, err := b.cfg.Verifier.Verify(ctx, ev, rd)
	if err != nil {
		return nil, api.Errorf(api.CodeEvidenceRejected, "%v", err)
	}
	newDigest := digestString(claims.EvidenceDigest)
	var (
		mine attest.Evidence
		l    logged
		am   *activeManifest
	)
	err = b.exclusive(ctx, func(tx *changeTx) error {
		am = b.active.Load()
		r := am.m.MatchService(claims)
		if !r.OK() {
			return api.Errorf(api.CodePolicyDenied, "the newcomer does not match the service reference values of the active manifest (version %d): %s; publish a manifest version that lists it first", am.rec.Version, r.Summary())
		}
		if err := b.confirm(am.m, r, manifest.ServiceClass, claims); err != nil {
			b.log.Error("INTERNAL INCONSISTENCY: the manifest's service values match the newcomer but the vendor library's validation rejects its evidence; handover refused",
				"manifest", am.rec.Hash, "platform", claims.Platform, "error", err)
			return api.Errorf(api.CodePolicyDenied, "the newcomer's evidence matches the service reference values but fails the vendor library's validation of them")
		}
		ownRD := api.ReportData(api.HandoverFromBinding(req.Nonce, newDigest, id.NoteKey, id.HPKEPublicKey, id.TLSSPKISHA256))
		var err error
		if mine, err = b.cfg.Issuer.Issue(ctx, ownRD); err != nil {
			return fmt.Errorf("couldn't obtain the broker's own evidence: %w", err)
		}
		keyDigest := sha256.Sum256(req.HPKEPublicKey)
		l, err = tx.log(&tlog.Entry{Type: tlog.TypeHandover, Time: b.now(), Handover: &tlog.HandoverEntry{
			ManifestHash:       am.rec.Hash,
			FromEvidenceDigest: digestString(mine.Digest()),
			Platform:           string(claims.Platform),
			Simulated:          claims.Simulated,
			Measurement:        hex.EncodeToString(claims.Measurement),
			EvidenceDigest:     newDigest,
			KeyDigest:          digestString(keyDigest),
		}}, nil)
		return err
	})
	if err != nil {
		return nil, err
	}
	// The entry is durable: from here on this broker is read-only, and the
	// key may leave.
	master := b.cfg.Keys.MasterKey()
	sealed, err := api.SealTo(newcomerKey, api.HandoverInfo(l.index), master)
	clear(master)
	if err != nil {
		return nil, fmt.Errorf("couldn't seal the master key: %w", err)
	}
	// With witnesses, the key leaves only once a checkpoint containing the
	// handover entry carries their quorum, as a release's keys do.
	receipt, err := b.receipt(ctx, fmt.Sprintf("the handover was logged at index %d, so this broker decides nothing any more, and the master key is withheld (the recovery holders can restore it)", l.index), l.entry, l.index, l.cp)
	if err != nil {
		return nil, err
	}
	// The log stops growing here and goes on with the successor, which
	// submits its own checkpoints: this broker's rounds would only meet
	// witnesses that cosigned more (and log that it is behind).
	b.wit.stop()
	token := make([]byte, 32)
	if _, err := rand.Read(token); err != nil {
		return nil, err
	}
	b.snapshot.mu.Lock()
	b.snapshot.token, b.snapshot.expires = token, b.now().Add(snapshotTTL)
	b.snapshot.mu.Unlock()
	b.log.Warn("handed the master key over to a newcomer broker; this broker takes no decision any more",
		"log_index", l.index, "platform", claims.Platform, "measurement", hex.EncodeToString(claims.Measurement), "manifest_version", am.rec.Version)
	return &api.Handover{LogIndex: l.index, Receipt: receipt, Platform: string(mine.Platform), Evidence: mine.Data, SealedMaster: sealed, SnapshotToken: token}, nil
}

// serveSnapshot streams the database, as of now, to the newcomer that
// holds the handover's snapshot token (GET /v1/handover/snapshot?token=HEX,
// once). The database holds nothing the host cannot read already: key
// material, the identity and the master key are sealed.
func (b *Broker) serveSnapshot(w http.ResponseWriter, r *http.Request) error {
	token, err := hex.DecodeString(r.URL.Query().Get("token"))
	if err != nil || len(token) != 32 {
		return api.Errorf(api.CodeBadRequest, "parameter token: want 64 hex digits")
	}
	b.snapshot.mu.Lock()
	ok := b.snapshot.token != nil && subtle.ConstantTimeCompare(token, b.snapshot.token) == 1 && b.now().Before(b.snapshot.expires)
	if ok {
		b.snapshot.token = nil // single use
	}
	b.snapshot.mu.Unlock()
	if !ok {
		return api.Errorf(api.CodeUnauthorized, "unknown, used or expired snapshot token; a snapshot follows a handover")
	}
	// A large database takes longer than the server's write timeout.
	if err := http.NewResponseController(w).SetWriteDeadline(time.Time{}); err != nil {
		b.log.Warn("couldn't lift the write deadline for the snapshot", "error", err)
	}
	return b.cfg.DB.View(func(tx *bbolt.Tx) error {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(tx.Size(), 10))
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		if _, err := tx.WriteTo(w); err != nil {
			b.log.Error("the database snapshot was cut short", "error", err)
		}
		return nil
	})
}

// lifecycleRoutes registers the handover endpoints.
func (b *Broker) lifecycleRoutes(route func(pattern, name string, h handlerFunc)) {
	route("POST "+api.PathHandoverChallenge, "handover_challenge", b.admitted(budgetChallenge, noBody(b.HandoverChallenge)))
	route("POST "+api.PathHandover, "handover", withBody(api.MaxHandoverBody, b.Handover))
	route("GET "+api.PathHandoverSnapshot, "handover_snapshot", b.serveSnapshot)
	route("GET "+api.PathRecovery, "recovery", noBody(b.recoveryStatus))
}

// recoveryStatus answers GET /v1/recovery on a broker that is not
// recovering.
func (b *Broker) recoveryStatus(context.Context) (*api.RecoveryStatus, error) {
	return &api.RecoveryStatus{Recovering: false, Holders: []api.RecoveryHolderStatus{}}, nil
}
