package kbs

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/manifest"
)

func (rec *manifestRecord) api() api.Manifest {
	sigs := rec.Signatures
	if sigs == nil {
		sigs = []string{}
	}
	return api.Manifest{Version: rec.Version, Hash: rec.Hash, Body: rec.Body, Signatures: sigs, LogIndex: rec.LogIndex}
}

func (b *Broker) handleGetManifest(w http.ResponseWriter, r *http.Request) error {
	am := b.active.Load()
	writeJSON(w, http.StatusOK, am.rec.api())
	return nil
}

func (b *Broker) handleManifestHistory(w http.ResponseWriter, r *http.Request) error {
	recs, err := b.history()
	if err != nil {
		return err
	}
	out := api.ManifestHistory{Manifests: make([]api.Manifest, len(recs))}
	for i := range recs {
		out.Manifests[i] = recs[i].api()
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// handlePutManifest serves PUT /v1/manifest: the new version must parse,
// follow the active version and carry threshold signatures of its owners.
// It is logged durably, and only then activated.
func (b *Broker) handlePutManifest(w http.ResponseWriter, r *http.Request) error {
	var req api.ManifestUpdate
	if err := decodeBody(w, r, api.MaxManifestBody, &req); err != nil {
		return err
	}
	next, err := manifest.Parse(req.Body)
	if err != nil {
		return api.Errorf(api.CodeBadRequest, "%v", err)
	}
	b.manifestMu.Lock()
	defer b.manifestMu.Unlock()
	prev := b.active.Load()
	signers, err := manifest.Verify(prev.m, next, req.Signatures)
	switch {
	case err == nil:
	case errors.Is(err, manifest.ErrVersionRollback), errors.Is(err, manifest.ErrVersionSkip), errors.Is(err, manifest.ErrPreviousMismatch):
		return api.Errorf(api.CodeConflict, "%v", err)
	case errors.Is(err, manifest.ErrMalformedSignature):
		return api.Errorf(api.CodeBadRequest, "%v", err)
	default:
		return api.Errorf(api.CodeUnauthorized, "%v", err)
	}
	if err := b.checkServesManifest(r.Context(), next); err != nil {
		return err
	}
	am, err := b.activate(r.Context(), next, req.Signatures, signers)
	if err != nil {
		return err
	}
	b.m.manifests.Add(1)
	writeJSON(w, http.StatusOK, am.rec.api())
	return nil
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
