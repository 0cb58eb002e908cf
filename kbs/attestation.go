package kbs

import (
	"context"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/tlog"
)

// Attestation answers GET /v1/attestation?nonce=HEX&since=N: fresh
// evidence binding the client's nonce, the broker's identity keys and the
// served checkpoint, with the manifest active in its tree, that manifest's
// inclusion proof and, when since > 0, a consistency proof from the tree
// of that size.
//
// The checkpoint is the one /log/checkpoint serves: the newest the witness
// policy's quorum cosigned, as one note with the log's signature and the
// cosignatures. The binding covers that note exactly as served, its
// cosignature lines included (api.BrokerBinding): the evidence then says
// that this broker, at this nonce, presented this witnessed checkpoint. The
// cosignatures sign the checkpoint text only (the note's first part), so a
// client checks them with the witnesses' keys whatever the binding.
func (b *Broker) Attestation(ctx context.Context, nonce []byte, since uint64) (*api.Attestation, error) {
	if len(nonce) != api.NonceSize {
		return nil, api.Errorf(api.CodeBadRequest, "nonce is %d bytes, want %d", len(nonce), api.NonceSize)
	}
	cp, err := b.wit.served(ctx)
	if err != nil {
		return nil, logUnavailable(err)
	}
	am, err := b.manifestAt(ctx, cp)
	if err != nil {
		return nil, err
	}
	if since > cp.Size {
		return nil, api.Errorf(api.CodeConflict, "since=%d is beyond this log's tree size %d: the log you saw is not this one, or it was rolled back", since, cp.Size)
	}
	incl, err := b.cfg.Log.InclusionProof(ctx, am.rec.LogIndex, cp.Size)
	if err != nil {
		return nil, logUnavailable(err)
	}
	var cons []tlog.Hash
	if since > 0 && since < cp.Size {
		if cons, err = b.cfg.Log.ConsistencyProof(ctx, since, cp.Size); err != nil {
			return nil, logUnavailable(err)
		}
	}
	id := b.cfg.Identity
	rd := api.ReportData(api.BrokerBinding(nonce, id.NoteKey, id.HPKEPublicKey, id.TLSSPKISHA256, string(cp.Note)))
	ev, err := b.cfg.Issuer.Issue(ctx, rd)
	if err != nil {
		return nil, err // 500: the broker cannot attest itself
	}
	ans := &api.Attestation{
		Platform:      string(ev.Platform),
		Simulated:     b.cfg.Simulated,
		Evidence:      ev.Data,
		NoteKey:       id.NoteKey,
		HPKEPublicKey: id.HPKEPublicKey,
		TLSSPKISHA256: id.TLSSPKISHA256,
		Checkpoint:    string(cp.Note),
		Manifest: api.ManifestRef{
			Version:        am.rec.Version,
			Hash:           am.rec.Hash,
			Body:           am.rec.Body,
			LogIndex:       am.rec.LogIndex,
			Entry:          am.entry,
			InclusionProof: hashesToBytes(incl),
		},
		Since: since,
	}
	_, ans.HandedOver = b.HandedOver()
	ans.Recovering = b.recovering
	if since > 0 {
		ans.ConsistencyProof = hashesToBytes(cons)
		if ans.ConsistencyProof == nil {
			ans.ConsistencyProof = [][]byte{}
		}
	}
	return ans, nil
}

func hashesToBytes(hs []tlog.Hash) [][]byte {
	if hs == nil {
		return nil
	}
	out := make([][]byte, len(hs))
	for i := range hs {
		out[i] = append([]byte(nil), hs[i][:]...)
	}
	return out
}
