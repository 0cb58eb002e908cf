package kbs

import (
	"context"
	"net/http"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/tlog"
)

// receipt returns the C2SP tlog-proof of entry at index in the tree of cp:
// the entry's exact bytes as extra data, the inclusion proof and the signed
// checkpoint. The file alone proves what was logged.
func (b *Broker) receipt(ctx context.Context, entry []byte, index uint64, cp tlog.SignedCheckpoint) (string, error) {
	r, err := tlog.NewReceipt(ctx, b.cfg.Log, index, entry, cp)
	if err != nil {
		return "", logUnavailable(err)
	}
	return string(r), nil
}

// handleLogProof serves GET /v1/log/proof?index=I&size=N (size defaults to
// the latest checkpoint's).
func (b *Broker) handleLogProof(w http.ResponseWriter, r *http.Request) error {
	index, ok, err := queryUint(r, "index")
	if err != nil {
		return err
	}
	if !ok {
		return api.Errorf(api.CodeBadRequest, "missing parameter index")
	}
	size, hasSize, err := queryUint(r, "size")
	if err != nil {
		return err
	}
	cp, err := b.cfg.Log.Checkpoint(r.Context())
	if err != nil {
		return logUnavailable(err)
	}
	if !hasSize {
		size = cp.Size
	}
	if size > cp.Size {
		return api.Errorf(api.CodeBadRequest, "size %d is beyond the latest checkpoint (%d)", size, cp.Size)
	}
	if index >= size {
		return api.Errorf(api.CodeBadRequest, "index %d is not in a tree of size %d", index, size)
	}
	proof, err := b.cfg.Log.InclusionProof(r.Context(), index, size)
	if err != nil {
		return logUnavailable(err)
	}
	writeJSON(w, http.StatusOK, api.InclusionProof{Index: index, TreeSize: size, Proof: nonNil(hashesToBytes(proof))})
	return nil
}

// handleLogConsistency serves GET /v1/log/consistency?old=M&new=N (new
// defaults to the latest checkpoint's size).
func (b *Broker) handleLogConsistency(w http.ResponseWriter, r *http.Request) error {
	old, ok, err := queryUint(r, "old")
	if err != nil {
		return err
	}
	if !ok {
		return api.Errorf(api.CodeBadRequest, "missing parameter old")
	}
	newSize, hasNew, err := queryUint(r, "new")
	if err != nil {
		return err
	}
	cp, err := b.cfg.Log.Checkpoint(r.Context())
	if err != nil {
		return logUnavailable(err)
	}
	if !hasNew {
		newSize = cp.Size
	}
	if newSize > cp.Size {
		return api.Errorf(api.CodeBadRequest, "new %d is beyond the latest checkpoint (%d)", newSize, cp.Size)
	}
	if old > newSize {
		return api.Errorf(api.CodeBadRequest, "old %d is larger than new %d", old, newSize)
	}
	var proof []tlog.Hash
	if old > 0 && old < newSize {
		if proof, err = b.cfg.Log.ConsistencyProof(r.Context(), old, newSize); err != nil {
			return logUnavailable(err)
		}
	}
	writeJSON(w, http.StatusOK, api.ConsistencyProof{Old: old, New: newSize, Proof: nonNil(hashesToBytes(proof))})
	return nil
}

func nonNil(b [][]byte) [][]byte {
	if b == nil {
		return [][]byte{}
	}
	return b
}
