package kbs

import (
	"context"
	"errors"
	"fmt"

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

// authorizeChange checks a client's signed change of key id against the
// active manifest: first outside the sequencer, so that a request that
// would be refused waits for nothing, then, inside the change, again if
// the active manifest changed meanwhile. It returns the manifest it
// checked against.
func (b *Broker) authorizeChange(seen *activeManifest, client, id string, statement, sig []byte) (*activeManifest, error) {
	am := b.active.Load()
	if am == seen {
		return am, nil
	}
	return am, authorizeClient(am.m, client, id, statement, sig)
}

// UploadKey stores a key (POST /v1/keys): sealed to the broker's HPKE key
// and signed by a client of the active manifest that may write its id, at
// exactly the next version of the id. Order: check the signature, open the
// sealed key; then, as one step against the state: check the version,
// stage the key, log the upload (naming the staged record's sealed
// digest) durably, commit the key. Uploads that arrive together take that
// step together (keys_batch.go).
func (b *Broker) UploadKey(ctx context.Context, req *api.KeyUpload) (*api.KeyUploadResult, error) {
	if req.Version == 0 {
		return nil, api.Errorf(api.CodeBadRequest, "version must be at least 1")
	}
	id := b.cfg.Identity
	stmt := api.UploadStatement(req.Client, req.ID, req.Version, id.HPKEPublicKey, req.Sealed)
	seen, err := b.authorizeChange(nil, req.Client, req.ID, stmt, req.Signature)
	if err != nil {
		return nil, err
	}
	material, err := api.Open(id.HPKE, api.UploadInfo(req.ID, req.Version), req.Sealed)
	if err != nil {
		return nil, api.Errorf(api.CodeBadRequest, "the sealed key does not open under this broker's HPKE key for %s version %d", req.ID, req.Version)
	}
	defer clear(material)
	if len(material) == 0 || len(material) > api.MaxKeySize {
		return nil, api.Errorf(api.CodeBadRequest, "key is %d bytes, want 1 to %d", len(material), api.MaxKeySize)
	}
	l, err := b.uploadBatched(ctx, &uploadJob{req: req, stmt: stmt, seen: seen, material: material})
	if err != nil {
		return nil, err
	}
	b.m.uploads.Add(1)
	b.log.Info("key uploaded", "id", req.ID, "version", req.Version, "client", req.Client, "log_index", l.index)
	receipt, err := b.receipt(ctx, fmt.Sprintf("key %q version %d was uploaded and logged at index %d", req.ID, req.Version, l.index), l.entry, l.index, l.cp)
	if err != nil {
		return nil, err
	}
	return &api.KeyUploadResult{ID: req.ID, Version: req.Version, LogIndex: l.index, Receipt: receipt}, nil
}

// DeleteKey crypto-shreds key id (DELETE /v1/keys/{id}), at its live
// version, for a client of the active manifest that may write it: as one
// step against the state, it stages the deletion (the store stops handing
// out the key), logs it durably, then shreds the key.
func (b *Broker) DeleteKey(ctx context.Context, keyID string, req *api.KeyDelete) (*api.KeyDeleteResult, error) {
	stmt := api.DeleteStatement(req.Client, keyID, req.Version, b.cfg.Identity.HPKEPublicKey)
	seen, err := b.authorizeChange(nil, req.Client, keyID, stmt, req.Signature)
	if err != nil {
		return nil, err
	}
	var l logged
	err = b.exclusive(ctx, func(tx *changeTx) error {
		if _, err := b.authorizeChange(seen, req.Client, keyID, stmt, req.Signature); err != nil {
			return err
		}
		k, ok := b.st.key(keyID)
		switch {
		case !ok:
			return fmt.Errorf("%w: key %q", keystore.ErrNotFound, keyID)
		case k.Deleted:
			return api.Errorf(api.CodeNotFound, "key %q is already deleted", keyID)
		case k.Version != req.Version:
			return api.Errorf(api.CodeConflict, "key %q is at version %d, not %d", keyID, k.Version, req.Version)
		}
		if err := b.cfg.Keys.PrepareDelete(keyID, req.Version, b.st.size, b.now()); err != nil {
			return err
		}
		entry := &tlog.Entry{
			Type:      tlog.TypeKeyDelete,
			Time:      b.now(),
			KeyDelete: &tlog.KeyEntry{ID: keyID, Version: req.Version, Client: req.Client},
		}
		var err error
		if l, err = tx.log(entry, func() { b.abortStaged(keyID) }); err != nil {
			return err
		}
		return b.commitStaged(keyID, l.index)
	})
	if err != nil {
		return nil, err
	}
	b.m.deletes.Add(1)
	b.log.Info("key deleted", "id", keyID, "version", req.Version, "client", req.Client, "log_index", l.index)
	receipt, err := b.receipt(ctx, fmt.Sprintf("key %q version %d was deleted and logged at index %d", keyID, req.Version, l.index), l.entry, l.index, l.cp)
	if err != nil {
		return nil, err
	}
	return &api.KeyDeleteResult{ID: keyID, Version: req.Version, LogIndex: l.index, Receipt: receipt}, nil
}

func (b *Broker) abortStaged(id string) {
	if err := b.cfg.Keys.Abort(id); err != nil {
		b.log.Error("couldn't abort a staged key change", "id", id, "error", err)
	}
}

// commitStaged commits the key change the log now holds. If the store
// cannot be written, the store and the log disagree until the next start
// settles the staged change: the broker stops deciding until then.
func (b *Broker) commitStaged(id string, idx uint64) error {
	if err := b.cfg.Keys.Commit(id); err != nil {
		err = fmt.Errorf("couldn't commit key %q after logging it at %d: %w", id, idx, err)
		b.halt(err)
		return err
	}
	return nil
}

// ListKeys returns a page of key metadata, as the log says (GET
// /v1/keys): the keys whose ids start with prefix, sorted by id, after the
// id after, at most limit (1 to api.MaxKeyListLimit; 0 for
// api.DefaultKeyListLimit). The key store gives the ids in order (its
// metadata records, never a ciphertext); the log's state says what each
// key is, and ids the log does not hold are left out.
func (b *Broker) ListKeys(ctx context.Context, prefix, after string, limit int) (*api.KeyList, error) {
	for _, p := range []struct{ name, v string }{{api.KeyListPrefix, prefix}, {api.KeyListAfter, after}} {
		if err := validIDPart(p.v); err != nil {
			return nil, api.Errorf(api.CodeBadRequest, "%s: %v", p.name, err)
		}
	}
	switch {
	case limit == 0:
		limit = api.DefaultKeyListLimit
	case limit < 0 || limit > api.MaxKeyListLimit:
		return nil, api.Errorf(api.CodeBadRequest, "%s must be 1 to %d, not %d", api.KeyListLimit, api.MaxKeyListLimit, limit)
	}
	out := &api.KeyList{Keys: []api.KeyInfo{}}
	err := b.cfg.Keys.IDs(prefix, after, func(id string) bool {
		k, ok := b.st.key(id)
		if !ok {
			return true // staged, or a record the log does not back
		}
		if len(out.Keys) == limit {
			out.Next = out.Keys[limit-1].ID
			return false
		}
		out.Keys = append(out.Keys, k.info())
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("couldn't read the key store: %w", err)
	}
	return out, nil
}

// KeyInfo returns the metadata of key id, deleted or not, as the log says
// (GET /v1/keys/{id}).
func (b *Broker) KeyInfo(ctx context.Context, id string) (*api.KeyInfo, error) {
	if err := api.ValidKeyID(id); err != nil {
		return nil, api.Errorf(api.CodeBadRequest, "%v", err)
	}
	k, ok := b.st.key(id)
	if !ok {
		return nil, api.Errorf(api.CodeNotFound, "no key %q", id)
	}
	info := k.info()
	return &info, nil
}

func (k keyState) info() api.KeyInfo {
	return api.KeyInfo{ID: k.ID, Version: k.Version, Client: k.Client, Created: k.Created, VersionCreated: k.VersionCreated, Deleted: k.Deleted}
}

// validIDPart checks a prefix of a key id, or an id to list after: empty,
// or at most api.MaxKeyIDLen key id characters.
func validIDPart(s string) error {
	if len(s) > api.MaxKeyIDLen {
		return fmt.Errorf("%d bytes, longer than %d", len(s), api.MaxKeyIDLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '/') {
			return fmt.Errorf("%q has a character outside [A-Za-z0-9._-/]", s)
		}
	}
	return nil
}

// KeyMismatchError reports a key whose stored record is not the one the
// log says is live (a record rolled back, restored after its deletion, or
// swapped with another): the key is not released.
type KeyMismatchError struct {
	ID string
	// Log is what the log says; Store what the record holds.
	Log, Store string
}

func (e *KeyMismatchError) Error() string {
	return fmt.Sprintf("key %q: the broker's key store does not hold the version the log says is live (log: %s; store: %s); it is not released until the store is restored", e.ID, e.Log, e.Store)
}

// liveKey returns the material of key id at the version the log says is
// live, from the store's record, which must be that version with the
// sealed digest the log names.
func (b *Broker) liveKey(id string) (keystore.Key, error) {
	k, ok := b.st.key(id)
	if !ok {
		return keystore.Key{}, fmt.Errorf("%w: key %q", keystore.ErrNotFound, id)
	}
	if k.Deleted {
		return keystore.Key{}, fmt.Errorf("%w: key %q is deleted", keystore.ErrNotFound, id)
	}
	sk, err := b.cfg.Keys.Get(id)
	if errors.Is(err, keystore.ErrNotFound) {
		return sk, fmt.Errorf("key %q: the log says %s, the store has no live record: %w", id, k.describe(true), err)
	}
	if err != nil {
		return sk, &KeyMismatchError{ID: id, Log: k.describe(true), Store: err.Error()}
	}
	if sk.Version != k.Version || (k.SealedDigest != "" && sk.SealedDigest != k.SealedDigest) {
		clear(sk.Material)
		return keystore.Key{}, &KeyMismatchError{ID: id, Log: k.describe(true), Store: fmt.Sprintf("version %d (%s)", sk.Version, sk.SealedDigest)}
	}
	return sk, nil
}
