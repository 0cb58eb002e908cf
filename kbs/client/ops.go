package client

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/tlog"
)

// Client returns the client the broker was verified with.
func (b *Broker) Client() *Client { return b.c }

// Log returns the verifier of the broker's log.
func (b *Broker) Log() *tlog.Verifier { return b.log }

// Receipt is a verified receipt: the log entry it proves, decoded.
type Receipt struct {
	*tlog.VerifiedReceipt
	Entry *tlog.Entry
	// Raw is the receipt text as received.
	Raw []byte
	// Cosigned is the receipt's checkpoint with the witness quorum's
	// verified cosignatures.
	Cosigned *tlog.CosignedCheckpoint
}

// VerifyReceipt checks a receipt of the broker's log: the checkpoint's
// signature and the cosignatures of the verified manifest's witness
// quorum, the inclusion of the entry it carries, the entry's encoding, and
// the consistency of its checkpoint with the stored one (fetching a proof
// from the broker); a newer checkpoint is stored.
func (b *Broker) VerifyReceipt(ctx context.Context, receipt []byte) (*Receipt, error) {
	r, err := VerifyReceiptOffline(receipt, b.log, b.Quorum)
	if err != nil {
		return nil, err
	}
	if err := b.sync(ctx, r.Checkpoint); err != nil {
		return nil, err
	}
	return r, nil
}

// VerifyReceiptOffline checks a receipt with the log's key and the
// witnesses' keys alone: the checkpoint's signature and origin, the
// cosignatures of the quorum q (policy.Witnesses of the manifest whose
// witnesses the caller trusts; a quorum of no witnesses requires none),
// the inclusion proof of the entry the receipt carries, and the entry's
// strict encoding. It does not check the checkpoint against earlier ones,
// nor the age of the cosignatures (a receipt is about the past). Too few
// cosignatures are a *VerifyError (step "receipt witnesses") wrapping a
// *tlog.QuorumError that names the missing witnesses.
func VerifyReceiptOffline(receipt []byte, lv *tlog.Verifier, q *tlog.Quorum) (*Receipt, error) {
	if q == nil {
		return nil, errors.New("client: VerifyReceiptOffline needs the witness quorum (policy.Witnesses)")
	}
	vr, err := lv.VerifyReceipt(receipt)
	if err != nil {
		if r, perr := tlog.ParseReceipt(receipt); perr == nil {
			if cp, cerr := lv.VerifyCheckpoint(r.Checkpoint); cerr == nil {
				err = inclusionError(cp, r.Index, "the entry this receipt carries", err)
			}
		}
		return nil, &VerifyError{Step: "receipt", Err: err}
	}
	cc, err := q.Verify(vr.Checkpoint.Note, lv.Origin(), lv.NoteVerifier())
	if err != nil {
		return nil, &VerifyError{Step: "receipt witnesses", Err: err}
	}
	e, err := tlog.DecodeEntry(vr.Entry)
	if err != nil {
		return nil, &VerifyError{Step: "receipt entry", Err: err}
	}
	return &Receipt{VerifiedReceipt: vr, Entry: e, Raw: receipt, Cosigned: cc}, nil
}

// sync checks that cp (a receipt's checkpoint) and the stored checkpoint
// lie on one log, in either order (an older cp, say from an old receipt,
// must be a prefix of the stored one), with proofs from the broker, and
// stores cp when it is newer. A contradiction is a *tlog.ForkError.
func (b *Broker) sync(ctx context.Context, cp tlog.SignedCheckpoint) error {
	_, err := b.log.Advance(ctx, cp.Note, b.c, tlog.AdvanceOptions{Older: true})
	return err
}

// SyncLog fetches the latest checkpoint of lv's log, verifies its
// signature and the cosignatures of the witness quorum q (recent ones when
// lv has no stored checkpoint; see MaxCosignatureAge), and advances lv to
// it (tlog.Verifier.Advance) with consistency proofs from the broker: the
// result holds the new checkpoint and the one stored before. A rolled back
// or forked log is a *tlog.ForkError; a checkpoint without the quorum a
// *VerifyError (step "witnesses").
func (c *Client) SyncLog(ctx context.Context, lv *tlog.Verifier, q *tlog.Quorum) (Synced, error) {
	raw, err := c.Checkpoint(ctx)
	if err != nil {
		return Synced{}, err
	}
	if _, err := lv.VerifyCheckpoint(raw); err != nil {
		return Synced{}, &VerifyError{Step: "checkpoint", Err: err}
	}
	return c.AdvanceTo(ctx, lv, raw, q, tlog.AdvanceOptions{})
}

// AdvanceTo checks that raw, a checkpoint note of lv's log whose
// signature was verified, carries the witness quorum q (CheckWitnessed),
// then advances lv to it with consistency proofs from the broker
// (tlog.Verifier.Advance with opts).
func (c *Client) AdvanceTo(ctx context.Context, lv *tlog.Verifier, raw []byte, q *tlog.Quorum, opts tlog.AdvanceOptions) (Synced, error) {
	cc, fresh, err := c.CheckWitnessed(raw, lv, q)
	if err != nil {
		return Synced{}, err
	}
	res, err := lv.Advance(ctx, raw, c, opts)
	return Synced{Advanced: res, Cosigned: cc, FreshnessChecked: fresh}, err
}

// Synced is what SyncLog established: the advance, and the checkpoint
// with its verified cosignatures; FreshnessChecked reports whether they
// had to be recent (nothing stored before).
type Synced struct {
	tlog.Advanced
	Cosigned         *tlog.CosignedCheckpoint
	FreshnessChecked bool
}

// NextVersion returns the version the next upload of id must carry: one
// more than the broker's latest version (deleted versions are never
// reused), or 1.
func (b *Broker) NextVersion(ctx context.Context, id string) (uint64, error) {
	k, err := b.c.Key(ctx, id)
	var ae *api.Error
	if errors.As(err, &ae) && ae.Code == api.CodeNotFound {
		return 1, nil
	}
	if err != nil {
		return 0, err
	}
	return k.Version + 1, nil
}

// UploadKey seals material to the broker's attested HPKE key, signs the
// upload with the client key signer under the manifest name client, sends
// it, and verifies the receipt: a key-upload entry for exactly this id,
// version and client.
func (b *Broker) UploadKey(ctx context.Context, signer crypto.Signer, client, id string, version uint64, material []byte) (*api.KeyUploadResult, *Receipt, error) {
	if err := api.ValidKeyID(id); err != nil {
		return nil, nil, err
	}
	if len(material) == 0 || len(material) > api.MaxKeySize {
		return nil, nil, fmt.Errorf("key is %d bytes, want 1 to %d", len(material), api.MaxKeySize)
	}
	sealed, err := api.Seal(b.HPKEPublicKey, api.UploadInfo(id, version), material)
	if err != nil {
		return nil, nil, err
	}
	sig, err := api.SignStatement(signer, api.UploadStatement(client, id, version, b.HPKEPublicKey, sealed))
	if err != nil {
		return nil, nil, err
	}
	res, err := b.c.UploadKey(ctx, &api.KeyUpload{Client: client, ID: id, Version: version, Sealed: sealed, Signature: sig})
	if err != nil {
		return nil, nil, err
	}
	r, err := b.VerifyReceipt(ctx, []byte(res.Receipt))
	if err != nil {
		return nil, nil, err
	}
	ke := r.Entry.KeyUpload
	if r.Entry.Type != tlog.TypeKeyUpload || ke.ID != id || ke.Version != version || ke.Client != client || r.Index != res.LogIndex {
		return nil, nil, verr("upload receipt", "the receipt proves entry %d (%s), not the upload of %s version %d by %s at %d", r.Index, r.Entry.Type, id, version, client, res.LogIndex)
	}
	return res, r, nil
}

// DeleteKey signs and sends the deletion of version of id, and verifies
// the receipt: a key-delete entry for exactly this id, version and client.
func (b *Broker) DeleteKey(ctx context.Context, signer crypto.Signer, client, id string, version uint64) (*api.KeyDeleteResult, *Receipt, error) {
	sig, err := api.SignStatement(signer, api.DeleteStatement(client, id, version, b.HPKEPublicKey))
	if err != nil {
		return nil, nil, err
	}
	res, err := b.c.DeleteKey(ctx, id, &api.KeyDelete{Client: client, Version: version, Signature: sig})
	if err != nil {
		return nil, nil, err
	}
	r, err := b.VerifyReceipt(ctx, []byte(res.Receipt))
	if err != nil {
		return nil, nil, err
	}
	ke := r.Entry.KeyDelete
	if r.Entry.Type != tlog.TypeKeyDelete || ke.ID != id || ke.Version != version || ke.Client != client || r.Index != res.LogIndex {
		return nil, nil, verr("delete receipt", "the receipt proves entry %d (%s), not the deletion of %s version %d by %s", r.Index, r.Entry.Type, id, version, client)
	}
	return res, r, nil
}

// ReleasedKey is one key a worker obtained.
type ReleasedKey struct {
	ID       string
	Version  uint64
	Material []byte
}

// Released is the result of FetchKeys.
type Released struct {
	Keys    []ReleasedKey
	Class   string
	Receipt *Receipt
}

// FetchKeys is the worker side of a release: it generates an ephemeral
// HPKE key pair (KEM kem: api.KEMX25519 or api.KEMMLKEM768X25519), asks for
// a challenge, has issuer produce evidence binding the challenge and the
// public key, sends the release request, verifies the receipt (a release
// entry for exactly these keys, to this worker key, under the broker's
// verified manifest, consistent with the stored checkpoint), and opens
// each sealed key. The private key never leaves the process.
func (b *Broker) FetchKeys(ctx context.Context, issuer attest.Issuer, ids []string, kem uint16) (*Released, error) {
	if len(ids) == 0 {
		return nil, errors.New("no key ids")
	}
	sk, err := api.GenerateKey(kem)
	if err != nil {
		return nil, err
	}
	pub := api.MarshalPublicKey(sk.PublicKey())
	ch, err := b.c.Challenge(ctx)
	if err != nil {
		return nil, err
	}
	if len(ch.Nonce) != api.NonceSize {
		return nil, fmt.Errorf("challenge nonce is %d bytes, want %d", len(ch.Nonce), api.NonceSize)
	}
	ev, err := issuer.Issue(ctx, api.ReportData(api.WorkerBinding(ch.Nonce, pub)))
	if err != nil {
		return nil, fmt.Errorf("couldn't produce evidence: %w", err)
	}
	rel, err := b.c.Release(ctx, &api.ReleaseRequest{
		Platform: string(ev.Platform), Nonce: ch.Nonce, Evidence: ev.Data, HPKEPublicKey: pub, KeyIDs: ids,
	})
	if err != nil {
		return nil, err
	}
	r, err := b.VerifyReceipt(ctx, []byte(rel.Receipt))
	if err != nil {
		return nil, err
	}
	re := r.Entry.Release
	if r.Entry.Type != tlog.TypeRelease || r.Index != rel.LogIndex {
		return nil, verr("release receipt", "the receipt proves entry %d (%s), not the release at %d", r.Index, r.Entry.Type, rel.LogIndex)
	}
	keyDigest := sha256.Sum256(pub)
	if want := "sha256:" + hex.EncodeToString(keyDigest[:]); re.WorkerKeyDigest != want {
		return nil, verr("release receipt", "the release was logged for worker key %s, ours is %s", re.WorkerKeyDigest, want)
	}
	if re.ManifestHash != b.Manifest.Hash() {
		return nil, verr("release receipt", "the release was logged under manifest %s, the verified one is %s", re.ManifestHash, b.Manifest.Hash())
	}
	if re.WorkerClass != rel.Class {
		return nil, verr("release receipt", "the release was logged for class %q, the answer says %q", re.WorkerClass, rel.Class)
	}
	if len(rel.Keys) != len(ids) || len(re.Keys) != len(ids) {
		return nil, verr("release", "asked for %d keys, got %d, logged %d", len(ids), len(rel.Keys), len(re.Keys))
	}
	out := &Released{Class: rel.Class, Receipt: r}
	for i, k := range rel.Keys {
		if k.ID != ids[i] || re.Keys[i].ID != k.ID || re.Keys[i].Version != k.Version {
			return nil, verr("release", "key %d is %s v%d, logged %s v%d, asked for %s", i, k.ID, k.Version, re.Keys[i].ID, re.Keys[i].Version, ids[i])
		}
		m, err := api.Open(sk, api.ReleaseInfo(k.ID, k.Version, rel.LogIndex), k.Sealed)
		if err != nil {
			return nil, &VerifyError{Step: "sealed key", Err: err}
		}
		out.Keys = append(out.Keys, ReleasedKey{ID: k.ID, Version: k.Version, Material: m})
	}
	return out, nil
}
