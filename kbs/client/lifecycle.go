package client

import (
	"context"
	"crypto/hpke"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/policy"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// Handover is what a newcomer received from a verified broker that handed
// its master key over to it (Broker.Handover).
type Handover struct {
	// Master is the master key; the caller clears it when done.
	Master []byte
	// Receipt is the verified receipt of the handover entry; its
	// checkpoint is the tree the snapshot must hold exactly.
	Receipt *Receipt
	// From are the verified claims of the handing-over broker's evidence
	// for this handover.
	From *attest.Claims
}

// Handover asks the verified broker b to hand its master key over to this
// process, a newcomer broker whose evidence issuer produces, and writes the
// broker's database snapshot to snapshot. The newcomer's evidence binds a
// fresh single-use nonce, a fresh HPKE key (MLKEM768-X25519) and the log's
// note key; the broker logs the handover before it answers.
//
// It checks, before anything is returned: the receipt of the handover
// entry (signature, inclusion, consistency with the checkpoint b was
// verified at, which it advances), that the entry names this newcomer's
// evidence and key and b's active manifest; the handing-over broker's own
// evidence for this handover (binding the nonce, the newcomer's evidence
// digest and b's attested keys, matching the manifest's service reference
// values, its digest the one the entry names); and that the master key
// opens under the newcomer's key for that entry. What the snapshot holds
// is the caller's to check against the receipt's checkpoint (kbsd does:
// the log it holds must be exactly that tree).
func (b *Broker) Handover(ctx context.Context, issuer attest.Issuer, snapshot io.Writer) (*Handover, error) {
	c := b.c
	sk, err := api.GenerateKey(api.KEMMLKEM768X25519)
	if err != nil {
		return nil, err
	}
	pub := api.MarshalPublicKey(sk.PublicKey())
	var ch api.Challenge
	if _, err := c.do(ctx, c.pinned, http.MethodPost, api.PathHandoverChallenge, nil, &ch); err != nil {
		return nil, err
	}
	ev, err := issuer.Issue(ctx, api.ReportData(api.HandoverBinding(ch.Nonce, pub, b.NoteKey)))
	if err != nil {
		return nil, fmt.Errorf("couldn't obtain this broker's own evidence: %w", err)
	}
	var ans api.Handover
	req := &api.HandoverRequest{Platform: string(ev.Platform), Nonce: ch.Nonce, Evidence: ev.Data, HPKEPublicKey: pub}
	if _, err := c.do(ctx, c.pinned, http.MethodPost, api.PathHandover, req, &ans); err != nil {
		return nil, err
	}
	h, err := b.checkHandover(ctx, &ans, ch.Nonce, ev, pub, sk)
	if err != nil {
		return nil, err
	}
	if err := c.snapshot(ctx, ans.SnapshotToken, snapshot); err != nil {
		clear(h.Master)
		return nil, err
	}
	return h, nil
}

func (b *Broker) checkHandover(ctx context.Context, ans *api.Handover, nonce []byte, ev attest.Evidence, pub []byte, sk hpke.PrivateKey) (*Handover, error) {
	r, err := b.VerifyReceipt(ctx, []byte(ans.Receipt))
	if err != nil {
		return nil, err
	}
	e := r.Entry
	myDigest := "sha256:" + hex.EncodeToString(sha256Sum(ev.Data))
	keyDigest := "sha256:" + hex.EncodeToString(sha256Sum(pub))
	switch {
	case r.Index != ans.LogIndex:
		return nil, verr("handover entry", "the receipt is for entry %d, the answer says %d", r.Index, ans.LogIndex)
	case e.Type != tlog.TypeHandover:
		return nil, verr("handover entry", "entry %d is a %s entry", r.Index, e.Type)
	case e.Handover.EvidenceDigest != myDigest || e.Handover.KeyDigest != keyDigest:
		return nil, verr("handover entry", "entry %d names another newcomer (evidence %s, key %s)", r.Index, e.Handover.EvidenceDigest, e.Handover.KeyDigest)
	case e.Handover.ManifestHash != b.Manifest.Hash():
		return nil, verr("handover entry", "entry %d names manifest %s, the broker was verified under %s", r.Index, e.Handover.ManifestHash, b.Manifest.Hash())
	}
	// Mutual: the broker that answered is an attested broker of this
	// manifest, and its evidence is for this handover.
	from := attest.Evidence{Platform: attest.Platform(ans.Platform), Data: ans.Evidence}
	rd := api.ReportData(api.HandoverFromBinding(nonce, myDigest, b.NoteKey, b.HPKEPublicKey, b.TLSSPKISHA256))
	claims, err := b.c.cfg.Verifier.Verify(ctx, from, rd)
	if err != nil {
		return nil, &VerifyError{Step: "handing-over broker's evidence", Err: err}
	}
	if d := "sha256:" + hex.EncodeToString(claims.EvidenceDigest[:]); d != e.Handover.FromEvidenceDigest {
		return nil, verr("handing-over broker's evidence", "its digest %s is not the one entry %d names (%s)", d, r.Index, e.Handover.FromEvidenceDigest)
	}
	rep := b.Manifest.MatchService(claims)
	if !rep.OK() {
		return nil, &VerifyError{Step: "handing-over broker's evidence", Err: errors.New(rep.Summary())}
	}
	if err := policy.Confirm(b.Manifest, rep, manifest.ServiceClass, claims); err != nil {
		return nil, &VerifyError{Step: "handing-over broker's evidence (library validation)", Err: err}
	}
	master, err := api.Open(sk, api.HandoverInfo(r.Index), ans.SealedMaster)
	if err != nil {
		return nil, &VerifyError{Step: "master key", Err: err}
	}
	if len(master) != 32 {
		clear(master)
		return nil, verr("master key", "%d bytes, want 32", len(master))
	}
	return &Handover{Master: master, Receipt: r, From: claims}, nil
}

func sha256Sum(b []byte) []byte {
	d := sha256.Sum256(b)
	return d[:]
}

// snapshot copies the database snapshot a handover's token authorizes to w.
func (c *Client) snapshot(ctx context.Context, token []byte, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+api.PathHandoverSnapshot+"?token="+hex.EncodeToString(token), nil)
	if err != nil {
		return err
	}
	// No overall timeout: a database takes as long as it takes.
	hc := *c.pinned
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err != nil {
		return &TransportError{Addr: c.cfg.Addr, Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return &NotBrokerError{Addr: c.cfg.Addr, Method: http.MethodGet, Path: api.PathHandoverSnapshot, Status: resp.StatusCode}
	}
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return &TransportError{Addr: c.cfg.Addr, Err: fmt.Errorf("the snapshot was cut short: %w", err)}
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return &TransportError{Addr: c.cfg.Addr, Err: fmt.Errorf("the snapshot was cut short: %d of %d bytes", n, resp.ContentLength)}
	}
	return nil
}

// RecoveryStatus returns the recovering broker's status (GET /v1/recovery).
func (c *Client) RecoveryStatus(ctx context.Context) (*api.RecoveryStatus, error) {
	var st api.RecoveryStatus
	_, err := c.do(ctx, c.pinned, http.MethodGet, api.PathRecovery, nil, &st)
	return &st, err
}

// HolderKey is a recovery holder's private key with its name.
type HolderKey struct {
	Name string
	Key  hpke.PrivateKey
}

// Recover sends holder's recovery share to the verified, recovering broker
// b (kbsctl recover). b must have passed VerifyBroker with the holder's
// manifest and be recovering (its attestation said so). It reads the
// recovery-shares entry the broker waits on from the log (checked against
// the verified checkpoint), checks that the holder is in it under its own
// key and that the entry's manifest is one of the verified chain, opens
// the share, checks it against the entry's commitment, and seals it again
// to the broker's attested HPKE key, bound to that entry. Nothing leaves
// before all of this holds.
func (b *Broker) Recover(ctx context.Context, holder HolderKey) (*api.RecoveryShareResult, error) {
	if !b.Recovering {
		return nil, verr("recovery", "the broker is not recovering: it holds its master key")
	}
	st, err := b.c.RecoveryStatus(ctx)
	if err != nil {
		return nil, err
	}
	raw, err := b.c.Entry(ctx, b.Checkpoint, st.SharesIndex)
	if err != nil {
		return nil, err
	}
	e, err := tlog.DecodeEntry(raw)
	if err != nil {
		return nil, &VerifyError{Step: "recovery shares", Err: err}
	}
	if e.Type != tlog.TypeRecoveryShares {
		return nil, verr("recovery shares", "log entry %d is a %s entry", st.SharesIndex, e.Type)
	}
	pub := api.MarshalPublicKey(holder.Key.PublicKey())
	fp := "sha256:" + hex.EncodeToString(sha256Sum(pub))
	var mine *tlog.SealedShare
	for i := range e.RecoveryShares.Shares {
		if s := &e.RecoveryShares.Shares[i]; s.Holder == holder.Name {
			mine = s
		}
	}
	if mine == nil {
		return nil, verr("recovery shares", "entry %d holds no share for holder %q", st.SharesIndex, holder.Name)
	}
	if mine.Fingerprint != fp {
		return nil, verr("recovery shares", "entry %d seals %q's share to key %s, yours is %s", st.SharesIndex, holder.Name, mine.Fingerprint, fp)
	}
	version, ok := b.manifestVersion(e.RecoveryShares.ManifestHash)
	if !ok {
		// Shares made under a version before the caller's: find it in
		// the whole history, which must hold the caller's version too.
		chain, err := b.c.ManifestChain(ctx, b.Checkpoint, nil, b.Manifest.Version())
		if err != nil {
			return nil, err
		}
		if last := chain[len(chain)-1].Manifest; last.Hash() == b.Manifest.Hash() {
			for _, v := range chain {
				if v.Manifest.Hash() == e.RecoveryShares.ManifestHash {
					version, ok = v.Manifest.Version(), true
				}
			}
		}
	}
	if !ok {
		return nil, verr("recovery shares", "entry %d names manifest %s, which is not in the chain you verified", st.SharesIndex, e.RecoveryShares.ManifestHash)
	}
	share, err := api.Open(holder.Key, api.ShareInfo(holder.Name, version), mine.Sealed)
	if err != nil {
		return nil, &VerifyError{Step: "recovery share", Err: err}
	}
	defer clear(share)
	if api.ShareCommitment(holder.Name, share) != mine.Commitment {
		return nil, verr("recovery share", "the share does not match its commitment in entry %d", st.SharesIndex)
	}
	sealed, err := api.Seal(b.HPKEPublicKey, api.ShareReturnInfo(holder.Name, st.SharesIndex), share)
	if err != nil {
		return nil, err
	}
	var ans api.RecoveryShareResult
	if _, err := b.c.do(ctx, b.c.pinned, http.MethodPost, api.PathRecoveryShare, &api.RecoveryShare{Holder: holder.Name, Sealed: sealed}, &ans); err != nil {
		return nil, err
	}
	return &ans, nil
}

// manifestVersion returns the version of the manifest with hash h among
// the ones this verification established (the active one, and those
// followed), if it is one of them.
func (b *Broker) manifestVersion(h string) (uint64, bool) {
	if b.Manifest.Hash() == h {
		return b.Manifest.Version(), true
	}
	for _, v := range b.Followed {
		if v.Manifest.Hash() == h {
			return v.Manifest.Version(), true
		}
	}
	return 0, false
}
