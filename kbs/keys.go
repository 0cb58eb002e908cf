package kbs

import (
	"context"
	"fmt"
	"net/http"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/keystore"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// authorizeClient checks that client is listed in the active manifest, may
// write id, and signed statement.
func authorizeClient(m *manifest.Manifest, client, id string, statement, sig []byte) error {
	if err := api.ValidKeyID(id); err != nil {
		return api.Errorf(api.CodeBadRequest, "%v", err)
	}
	ci, ok := m.ClientByName(client)
	if !ok {
		return api.Errorf(api.CodeUnauthorized, "client %q is not in the active manifest", client)
	}
	if err := api.VerifyStatement(ci.PublicKey, statement, sig); err != nil {
		return api.Errorf(api.CodeUnauthorized, "client %q: %v", client, err)
	}
	if !m.MayWrite(client, id) {
		return api.Errorf(api.CodeForbidden, "client %q may not write key %q", client, id)
	}
	return nil
}

// handleUpload serves POST /v1/keys: a key sealed to the broker's HPKE key
// and signed by a client of the manifest. Order: check the signature, open
// the sealed key, check the version, stage the key, log the upload
// durably, commit the key.
func (b *Broker) handleUpload(w http.ResponseWriter, r *http.Request) error {
	var req api.KeyUpload
	if err := decodeBody(w, r, api.MaxKeyBody, &req); err != nil {
		return err
	}
	if req.Version == 0 {
		return api.Errorf(api.CodeBadRequest, "version must be at least 1")
	}
	am := b.active.Load()
	id := b.cfg.Identity
	stmt := api.UploadStatement(req.Client, req.ID, req.Version, id.HPKEPublicKey, req.Sealed)
	if err := authorizeClient(am.m, req.Client, req.ID, stmt, req.Signature); err != nil {
		return err
	}
	material, err := api.Open(id.HPKE, api.UploadInfo(req.ID, req.Version), req.Sealed)
	if err != nil {
		return api.Errorf(api.CodeBadRequest, "the sealed key does not open under this broker's HPKE key for %s version %d", req.ID, req.Version)
	}
	defer clear(material)
	if len(material) == 0 || len(material) > api.MaxKeySize {
		return api.Errorf(api.CodeBadRequest, "key is %d bytes, want 1 to %d", len(material), api.MaxKeySize)
	}

	b.keyMu.Lock()
	defer b.keyMu.Unlock()
	next, err := b.cfg.Keys.NextVersion(req.ID)
	if err != nil {
		return err
	}
	if req.Version != next {
		return api.Errorf(api.CodeConflict, "key %q needs version %d, not %d (a replayed or stale upload)", req.ID, next, req.Version)
	}
	entry, err := tlog.EncodeEntry(&tlog.Entry{
		Type:      tlog.TypeKeyUpload,
		Time:      b.now(),
		KeyUpload: &tlog.KeyEntry{ID: req.ID, Version: req.Version, Client: req.Client},
	})
	if err != nil {
		return api.Errorf(api.CodeBadRequest, "upload cannot be logged: %v", err)
	}
	// Stage the key, log the upload, then commit: a key is never released
	// without its upload in the log, and a crash in between is settled
	// against the log at the next start.
	idx, cp, err := b.staged(r.Context(), req.ID, entry, func(logSize uint64) error {
		return b.cfg.Keys.PreparePut(req.ID, req.Version, req.Client, material, logSize, b.now())
	})
	if err != nil {
		return err
	}
	b.m.uploads.Add(1)
	b.log.Info("key uploaded", "id", req.ID, "version", req.Version, "client", req.Client, "log_index", idx)
	receipt, err := b.receipt(r.Context(), entry, idx, cp)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.KeyUploadResult{ID: req.ID, Version: req.Version, LogIndex: idx, Receipt: receipt})
	return nil
}

// handleDelete serves DELETE /v1/keys/{id}: stops releasing the key, logs
// the deletion durably, then crypto-shreds it.
func (b *Broker) handleDelete(w http.ResponseWriter, r *http.Request) error {
	keyID := r.PathValue("id")
	var req api.KeyDelete
	if err := decodeBody(w, r, api.MaxKeyBody, &req); err != nil {
		return err
	}
	am := b.active.Load()
	stmt := api.DeleteStatement(req.Client, keyID, req.Version, b.cfg.Identity.HPKEPublicKey)
	if err := authorizeClient(am.m, req.Client, keyID, stmt, req.Signature); err != nil {
		return err
	}
	b.keyMu.Lock()
	defer b.keyMu.Unlock()
	meta, err := b.cfg.Keys.Meta(keyID)
	if err != nil {
		return err
	}
	if meta.Deleted {
		return api.Errorf(api.CodeNotFound, "key %q is already deleted", keyID)
	}
	if meta.Version != req.Version {
		return api.Errorf(api.CodeConflict, "key %q is at version %d, not %d", keyID, meta.Version, req.Version)
	}
	entry, err := tlog.EncodeEntry(&tlog.Entry{
		Type:      tlog.TypeKeyDelete,
		Time:      b.now(),
		KeyDelete: &tlog.KeyEntry{ID: keyID, Version: req.Version, Client: req.Client},
	})
	if err != nil {
		return api.Errorf(api.CodeBadRequest, "deletion cannot be logged: %v", err)
	}
	// Stage the deletion (the key stops being released), log it, then
	// shred.
	idx, cp, err := b.staged(r.Context(), keyID, entry, func(logSize uint64) error {
		return b.cfg.Keys.PrepareDelete(keyID, req.Version, logSize, b.now())
	})
	if err != nil {
		return err
	}
	b.m.deletes.Add(1)
	b.log.Info("key deleted", "id", keyID, "version", req.Version, "client", req.Client, "log_index", idx)
	receipt, err := b.receipt(r.Context(), entry, idx, cp)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.KeyDeleteResult{ID: keyID, Version: req.Version, LogIndex: idx, Receipt: receipt})
	return nil
}

// handleListKeys serves GET /v1/keys: metadata only.
func (b *Broker) handleListKeys(w http.ResponseWriter, r *http.Request) error {
	metas, err := b.cfg.Keys.List()
	if err != nil {
		return err
	}
	out := api.KeyList{Keys: make([]api.KeyInfo, len(metas))}
	for i, m := range metas {
		out.Keys[i] = api.KeyInfo{ID: m.ID, Version: m.Version, Client: m.Client, Created: m.Created, VersionCreated: m.VersionCreated, Deleted: m.Deleted}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// staged runs a key store change through the log: prepare stages it, the
// entry is appended durably, and the change is committed; if the append
// fails the change is aborted. The caller holds keyMu.
func (b *Broker) staged(ctx context.Context, id string, entry []byte, prepare func(logSize uint64) error) (uint64, tlog.SignedCheckpoint, error) {
	cp, err := b.cfg.Log.Checkpoint(ctx)
	if err != nil {
		return 0, cp, logUnavailable(err)
	}
	if err := prepare(cp.Size); err != nil {
		return 0, cp, err
	}
	idx, cp, err := b.append(ctx, entry)
	if err != nil {
		if aerr := b.cfg.Keys.Abort(id); aerr != nil {
			b.log.Error("couldn't abort a staged key change", "id", id, "error", aerr)
		}
		return 0, cp, logUnavailable(err)
	}
	if err := b.cfg.Keys.Commit(id); err != nil {
		return 0, cp, fmt.Errorf("couldn't commit key %q after logging it at %d: %w", id, idx, err)
	}
	return idx, cp, nil
}

// settleKeys commits the key changes a crash left staged whose log entry
// is in the log, and aborts the others.
func (b *Broker) settleKeys(ctx context.Context) error {
	pending, err := b.cfg.Keys.PendingChanges()
	if err != nil || len(pending) == 0 {
		return err
	}
	cp, err := b.cfg.Log.Checkpoint(ctx)
	if err != nil {
		return err
	}
	for _, p := range pending {
		logged := false
		if p.LogSize < cp.Size {
			ents, err := b.cfg.Log.Entries(ctx, p.LogSize, cp.Size)
			if err != nil {
				return err
			}
			for _, raw := range ents {
				e, err := tlog.DecodeEntry(raw)
				if err != nil {
					continue
				}
				var k *tlog.KeyEntry
				switch {
				case p.Op == keystore.OpPut && e.Type == tlog.TypeKeyUpload:
					k = e.KeyUpload
				case p.Op == keystore.OpDelete && e.Type == tlog.TypeKeyDelete:
					k = e.KeyDelete
				}
				if k != nil && k.ID == p.ID && k.Version == p.Version {
					logged = true
					break
				}
			}
		}
		if logged {
			b.log.Warn("committing a key change logged before a crash", "id", p.ID, "op", p.Op, "version", p.Version)
			err = b.cfg.Keys.Commit(p.ID)
		} else {
			b.log.Warn("dropping a key change that never reached the log", "id", p.ID, "op", p.Op, "version", p.Version)
			err = b.cfg.Keys.Abort(p.ID)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
