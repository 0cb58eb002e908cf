package kbs

import (
	"context"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/tlog"
)

// receipt returns the C2SP tlog-proof of entry at index: the entry's exact
// bytes as extra data, the inclusion proof and the signed checkpoint, one
// that contains it and that the witness policy's quorum cosigned (the
// answer waits for it; with no witnesses, cp, what the append returned).
// The file alone proves what was logged, to anyone with the log's and the
// witnesses' keys. what names the change for the error when no quorum
// cosigns in time.
func (b *Broker) receipt(ctx context.Context, what string, entry []byte, index uint64, cp tlog.SignedCheckpoint) (string, error) {
	cp, err := b.wit.witnessed(ctx, index+1, cp, what)
	if err != nil {
		return "", err
	}
	r, err := tlog.NewReceipt(ctx, b.cfg.Log, index, entry, cp)
	if err != nil {
		return "", logUnavailable(err)
	}
	return string(r), nil
}

// InclusionProof answers GET /v1/log/proof?index=I&size=N: the inclusion
// proof of the entry at index in the tree of size (nil: the latest
// checkpoint's size).
func (b *Broker) InclusionProof(ctx context.Context, index uint64, size *uint64) (*api.InclusionProof, error) {
	cp, err := b.cfg.Log.Checkpoint(ctx)
	if err != nil {
		return nil, logUnavailable(err)
	}
	n := cp.Size
	if size != nil {
		n = *size
	}
	if n > cp.Size {
		return nil, api.Errorf(api.CodeBadRequest, "size %d is beyond the latest checkpoint (%d)", n, cp.Size)
	}
	if index >= n {
		return nil, api.Errorf(api.CodeBadRequest, "index %d is not in a tree of size %d", index, n)
	}
	proof, err := b.cfg.Log.InclusionProof(ctx, index, n)
	if err != nil {
		return nil, logUnavailable(err)
	}
	return &api.InclusionProof{Index: index, TreeSize: n, Proof: nonNil(hashesToBytes(proof))}, nil
}

// ConsistencyProof answers GET /v1/log/consistency?old=M&new=N: the
// consistency proof from the tree of size old to the tree of size newSize
// (nil: the latest checkpoint's size).
func (b *Broker) ConsistencyProof(ctx context.Context, old uint64, newSize *uint64) (*api.ConsistencyProof, error) {
	cp, err := b.cfg.Log.Checkpoint(ctx)
	if err != nil {
		return nil, logUnavailable(err)
	}
	n := cp.Size
	if newSize != nil {
		n = *newSize
	}
	if n > cp.Size {
		return nil, api.Errorf(api.CodeBadRequest, "new %d is beyond the latest checkpoint (%d)", n, cp.Size)
	}
	if old > n {
		return nil, api.Errorf(api.CodeBadRequest, "old %d is larger than new %d", old, n)
	}
	var proof []tlog.Hash
	if old > 0 && old < n {
		if proof, err = b.cfg.Log.ConsistencyProof(ctx, old, n); err != nil {
			return nil, logUnavailable(err)
		}
	}
	return &api.ConsistencyProof{Old: old, New: n, Proof: nonNil(hashesToBytes(proof))}, nil
}

func nonNil(b [][]byte) [][]byte {
	if b == nil {
		return [][]byte{}
	}
	return b
}
