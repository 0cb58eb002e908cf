package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/policy"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// VerifyOptions tune VerifyBroker.
type VerifyOptions struct {
	// Follow accepts a broker whose active manifest is a later version than
	// the caller's, if every version in between is in the broker's history,
	// signed by the threshold of owners of the version before it, and
	// included in the log. Without Follow any difference fails.
	Follow bool
	// KnownOrigin is the log origin the caller verified at this address
	// before ("" if none). A broker presenting another log fails with
	// ErrNewLog unless AcceptNewLog is set: a broker that lost or replaced
	// its log would otherwise start a fresh history unnoticed.
	KnownOrigin  string
	AcceptNewLog bool
}

// ErrNewLog reports a broker whose log is not the one verified before at
// its address.
var ErrNewLog = errors.New("the broker presents a different log than the one verified before at this address")

// ManifestMismatchError reports a broker whose active manifest is not the
// caller's and was not accepted through a signed chain: without
// VerifyOptions.Follow any difference, with it a version that is not later
// than the caller's (a rolled back broker, a divergent chain, or a broker
// started over from another version 1). It comes wrapped in a *VerifyError.
type ManifestMismatchError struct {
	BrokerVersion uint64
	BrokerHash    string
	MineVersion   uint64
	MineHash      string
	// Follow is VerifyOptions.Follow.
	Follow bool
}

func (e *ManifestMismatchError) Error() string {
	var why string
	switch {
	case e.BrokerVersion > e.MineVersion:
		why = "it is a later version"
	case e.BrokerVersion < e.MineVersion:
		why = "it is an older version: a later version is never replaced by an earlier one"
	default:
		why = "the same version number with other bytes: the two chains diverge"
	}
	return fmt.Sprintf("the broker's active manifest (version %d, %s) is not yours (version %d, %s): %s",
		e.BrokerVersion, e.BrokerHash, e.MineVersion, e.MineHash, why)
}

// Broker is a broker that passed VerifyBroker. Its fields are what the
// verification established.
type Broker struct {
	// Platform and Simulated describe the broker's evidence; Claims are its
	// verified claims and Service the field-by-field match against the
	// service reference values.
	Platform  attest.Platform
	Simulated bool
	Claims    *attest.Claims
	Service   *manifest.Report
	// NoteKey is the log's note verifier key and Origin its checkpoint
	// origin.
	NoteKey string
	Origin  string
	// HPKEPublicKey is the broker's attested HPKE key (wire encoding).
	HPKEPublicKey []byte
	// TLSSPKISHA256 is the attested TLS key hash (pinned over TCP).
	TLSSPKISHA256 string
	// Checkpoint is the verified checkpoint; Previous the one that was
	// stored before (nil on first use). CheckpointStored reports whether
	// Checkpoint replaced it; false when the stored one has its size (and,
	// as verified, its root).
	Checkpoint       tlog.SignedCheckpoint
	Previous         *tlog.SignedCheckpoint
	CheckpointStored bool
	// Manifest is the broker's active manifest: the caller's own, or the
	// last version of Followed.
	Manifest         *manifest.Manifest
	ManifestLogIndex uint64
	// Followed are the versions accepted through VerifyOptions.Follow,
	// oldest first, after the caller's own. Empty when the broker runs the
	// caller's manifest.
	Followed []LoggedVersion
	// Quorum is the witness policy of Manifest, which every checkpoint
	// this Broker relies on must carry (receipts included); Cosigned is
	// Checkpoint with the quorum's verified cosignatures (none when the
	// policy names no witnesses). FreshnessChecked reports whether the
	// cosignatures had to be recent (nothing stored to prove consistency
	// from: MaxCosignatureAge).
	Quorum           *tlog.Quorum
	Cosigned         *tlog.CosignedCheckpoint
	FreshnessChecked bool
	// Recovering is true when the broker waits for its recovery holders
	// (its HPKE and TLS keys are then those of the recovery only, and it
	// serves nothing but attestation, the manifest and the log);
	// HandedOver when it handed its master key over to a successor and
	// decides nothing any more.
	Recovering bool
	HandedOver bool

	c   *Client
	log *tlog.Verifier
}

// A LoggedVersion is a manifest version of a verified chain whose log
// entry is included in a verified checkpoint.
type LoggedVersion struct {
	// Manifest, Signers (the owners whose signatures admitted it) and
	// Changes (from the version before), as manifest.VerifyChain found.
	manifest.Link
	// LogIndex is the index of its manifest entry in the log.
	LogIndex uint64
}

// NewNonce returns a fresh 32-byte nonce.
func NewNonce() ([]byte, error) {
	n := make([]byte, api.NonceSize)
	if _, err := rand.Read(n); err != nil {
		return nil, err
	}
	return n, nil
}

// LogVerifier returns the client-side verifier of the log with note key
// vkey, backed by the client's checkpoint store.
func (c *Client) LogVerifier(vkey string) (*tlog.Verifier, error) {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("bad note key %q: %w", vkey, err)
	}
	if !strings.HasPrefix(v.Name(), tlog.OriginPrefix) {
		return nil, fmt.Errorf("note key name %q is not a kbs log origin (%s...)", v.Name(), tlog.OriginPrefix)
	}
	return tlog.NewVerifier(v.Name(), vkey, c.cfg.Checkpoints)
}

// VerifyBroker checks the broker against mine, the caller's own manifest
// (see the package documentation for every check), and stores the new
// checkpoint only when everything holds. Failures of verification are
// *VerifyError, *tlog.ForkError (a rolled back or forked log, carrying both
// checkpoints) or ErrNewLog; failures to reach the broker are
// *TransportError or *api.Error.
func (c *Client) VerifyBroker(ctx context.Context, mine *manifest.Manifest, opts VerifyOptions) (*Broker, error) {
	if c.cfg.Verifier == nil {
		return nil, errors.New("client: VerifyBroker needs Config.Verifier")
	}
	if mine == nil {
		return nil, errors.New("client: VerifyBroker needs the caller's manifest")
	}
	nonce, err := NewNonce()
	if err != nil {
		return nil, err
	}
	var since uint64
	if opts.KnownOrigin != "" {
		if last, ok, err := c.latest(opts.KnownOrigin); err != nil {
			return nil, err
		} else if ok {
			since = last.Size
		}
	}
	att, tlsState, err := c.Attestation(ctx, nonce, since)
	var ae *api.Error
	if errors.As(err, &ae) && ae.Code == api.CodeConflict && since > 0 {
		// The broker's log is smaller than the one we verified: fetch its
		// checkpoint anyway, to report the rollback with both checkpoints.
		since = 0
		att, tlsState, err = c.Attestation(ctx, nonce, 0)
	}
	if err != nil {
		return nil, err
	}

	// 1. The log key, and the binding of everything to the evidence.
	lv, err := c.LogVerifier(att.NoteKey)
	if err != nil {
		return nil, &VerifyError{Step: "note key", Err: err}
	}
	origin := lv.Origin()
	binding := api.BrokerBinding(nonce, att.NoteKey, att.HPKEPublicKey, att.TLSSPKISHA256, att.Checkpoint)
	ev := attest.Evidence{Platform: attest.Platform(att.Platform), Data: att.Evidence}
	claims, err := c.cfg.Verifier.Verify(ctx, ev, api.ReportData(binding))
	if err != nil {
		return nil, &VerifyError{Step: "broker evidence", Err: err}
	}
	if claims.Platform != ev.Platform {
		return nil, verr("broker evidence", "platform %q claimed, evidence is %q", att.Platform, claims.Platform)
	}
	if att.Simulated != claims.Simulated {
		return nil, verr("broker evidence", "the broker says simulated=%v, its evidence says simulated=%v", att.Simulated, claims.Simulated)
	}
	if _, err := api.ParsePublicKey(att.HPKEPublicKey); err != nil {
		return nil, &VerifyError{Step: "broker HPKE key", Err: err}
	}

	// 2. Over TCP, the answer must have come on a connection with the
	// attested TLS key; from now on every connection must use it.
	if c.IsTLS() {
		got, err := peerSPKI(tlsState)
		if err != nil {
			return nil, &VerifyError{Step: "TLS binding", Err: err}
		}
		if got != strings.ToLower(att.TLSSPKISHA256) {
			return nil, verr("TLS binding", "the connection's TLS key %s is not the attested %s", got, att.TLSSPKISHA256)
		}
		c.setPin(got)
	}

	// 3. The signed checkpoint, and the log's identity at this address.
	cp, err := lv.VerifyCheckpoint([]byte(att.Checkpoint))
	if err != nil {
		return nil, &VerifyError{Step: "checkpoint", Err: err}
	}
	if opts.KnownOrigin != "" && opts.KnownOrigin != origin && !opts.AcceptNewLog {
		return nil, fmt.Errorf("%w: verified %s before, now %s", ErrNewLog, opts.KnownOrigin, origin)
	}

	// 4. The active manifest: the caller's, or a signed chain from it.
	b := &Broker{
		Platform: claims.Platform, Simulated: claims.Simulated, Claims: claims,
		NoteKey: att.NoteKey, Origin: origin, HPKEPublicKey: att.HPKEPublicKey,
		TLSSPKISHA256: strings.ToLower(att.TLSSPKISHA256), Checkpoint: cp,
		ManifestLogIndex: att.Manifest.LogIndex, c: c, log: lv,
		Recovering: att.Recovering, HandedOver: att.HandedOver,
	}
	body := att.Manifest.Body
	if h := manifest.HashOf(body); h != att.Manifest.Hash {
		return nil, verr("manifest", "the broker's manifest hashes to %s, it says %s", h, att.Manifest.Hash)
	}
	mismatch := &ManifestMismatchError{BrokerVersion: att.Manifest.Version, BrokerHash: att.Manifest.Hash,
		MineVersion: mine.Version(), MineHash: mine.Hash(), Follow: opts.Follow}
	switch {
	case bytes.Equal(body, mine.Bytes()):
		b.Manifest = mine
	case !opts.Follow, att.Manifest.Version <= mine.Version():
		return nil, &VerifyError{Step: "manifest", Err: mismatch}
	default:
		chain, err := c.ManifestChain(ctx, cp, mine, att.Manifest.Version)
		if err != nil {
			return nil, err
		}
		b.Followed = chain[1:]
		last := chain[len(chain)-1].Manifest
		if !bytes.Equal(last.Bytes(), body) {
			return nil, verr("manifest chain", "version %d of the history (%s) is not the active manifest (%s)", last.Version(), last.Hash(), att.Manifest.Hash)
		}
		b.Manifest = last
	}
	if b.Manifest.Version() != att.Manifest.Version {
		return nil, verr("manifest", "the broker says version %d, the manifest is version %d", att.Manifest.Version, b.Manifest.Version())
	}

	// 5. The active manifest is in the log.
	proof, err := toHashes(att.Manifest.InclusionProof)
	if err != nil {
		return nil, &VerifyError{Step: "manifest inclusion", Err: err}
	}
	raw := att.Manifest.Entry
	if raw != nil {
		if err := tlog.VerifyInclusion(cp, att.Manifest.LogIndex, raw, proof); err != nil {
			return nil, &VerifyError{Step: "manifest inclusion", Err: inclusionError(cp, att.Manifest.LogIndex, "the active manifest's log entry", err)}
		}
	} else if raw, err = c.entryWithProof(ctx, cp, att.Manifest.LogIndex, proof); err != nil {
		// An older broker without the entry in the answer: read it from
		// the log's entry bundle.
		return nil, err
	}
	if err := CheckManifestEntry(raw, b.Manifest); err != nil {
		return nil, &VerifyError{Step: "manifest inclusion", Err: fmt.Errorf("log entry %d: %w", att.Manifest.LogIndex, err)}
	}

	// 5b. The checkpoint carries the quorum of the manifest's witnesses:
	// the log's head as independent witnesses saw it (fresh, when there is
	// no stored checkpoint to prove consistency from).
	if b.Quorum, err = policy.Witnesses(b.Manifest); err != nil {
		return nil, &VerifyError{Step: "witnesses", Err: err}
	}
	if b.Cosigned, b.FreshnessChecked, err = c.CheckWitnessed([]byte(att.Checkpoint), lv, b.Quorum); err != nil {
		return nil, err
	}

	// 6. The broker's evidence against the service reference values.
	b.Service = b.Manifest.MatchService(claims)
	if !b.Service.OK() {
		return nil, &VerifyError{Step: "service reference values", Err: errors.New(b.Service.Summary())}
	}
	// The vendor library's validation of the matching service values must
	// agree (defense in depth: a disagreement is a bug to report).
	if err := policy.Confirm(b.Manifest, b.Service, manifest.ServiceClass, claims); err != nil {
		return nil, &VerifyError{Step: "service reference values (library validation)", Err: err}
	}

	// 7. Consistency with the last verified checkpoint, then store: the
	// proof the answer carries when it starts at the stored size, else
	// one from the broker.
	var src tlog.ProofSource = c
	if since > 0 && att.ConsistencyProof != nil {
		p, err := toHashes(att.ConsistencyProof)
		if err != nil {
			return nil, &VerifyError{Step: "consistency proof", Err: err}
		}
		src = tlog.KnownProof{OldSize: since, NewSize: cp.Size, Proof: p, Else: c}
	}
	res, err := lv.Advance(ctx, cp.Note, src, tlog.AdvanceOptions{})
	if err != nil {
		return nil, err
	}
	b.Previous, b.CheckpointStored = res.Previous, res.Stored
	return b, nil
}

// MaxCosignatureAge is how recent the quorum's cosignatures must be on a
// checkpoint a client relies on without a stored checkpoint of the log to
// prove consistency from (first use): an old checkpoint with old, valid
// cosignatures is what a broker restored from an old copy could show. A
// broker refreshes its cosignatures every minute.
const MaxCosignatureAge = 10 * time.Minute

// CheckWitnessed checks that msg, a checkpoint note of lv's log, carries
// the cosignatures of q's quorum and, when lv has no stored checkpoint,
// that enough of them are recent (MaxCosignatureAge, by the client's
// clock); it reports whether freshness was required. A failure is a
// *VerifyError (step "witnesses") wrapping a *tlog.QuorumError that names
// the missing witnesses.
func (c *Client) CheckWitnessed(msg []byte, lv *tlog.Verifier, q *tlog.Quorum) (*tlog.CosignedCheckpoint, bool, error) {
	cc, err := q.Verify(msg, lv.Origin(), lv.NoteVerifier())
	if err != nil {
		return nil, false, &VerifyError{Step: "witnesses", Err: err}
	}
	if q.Threshold() == 0 {
		return cc, false, nil
	}
	_, stored, err := lv.Latest()
	if err != nil {
		return nil, false, err
	}
	if stored {
		return cc, false, nil
	}
	if err := q.CheckFresh(cc, c.cfg.Now(), MaxCosignatureAge); err != nil {
		return nil, false, &VerifyError{Step: "witnesses", Err: fmt.Errorf("first checkpoint of this log, so its cosignatures must be recent: %w", err)}
	}
	return cc, true, nil
}

// latest returns the stored checkpoint of origin, if any.
func (c *Client) latest(origin string) (tlog.SignedCheckpoint, bool, error) {
	var raw []byte
	err := c.cfg.Checkpoints.Update(origin, func(old []byte) ([]byte, error) {
		raw = bytes.Clone(old)
		return nil, nil
	})
	if err != nil || raw == nil {
		return tlog.SignedCheckpoint{}, false, err
	}
	_, r, err := tlog.ParseCheckpoint(checkpointText(raw))
	if err != nil {
		return tlog.SignedCheckpoint{}, false, fmt.Errorf("client: stored checkpoint of %s: %w", origin, err)
	}
	return tlog.SignedCheckpoint{Origin: origin, Root: r, Note: raw}, true, nil
}

// checkpointText returns the signed text of a note (before the blank line).
func checkpointText(n []byte) []byte {
	if i := bytes.Index(n, []byte("\n\n")); i >= 0 {
		return n[:i+1]
	}
	return n
}

// ManifestChain fetches the broker's manifest history and verifies it as
// one chain (manifest.VerifyChain) from anchor up to version to, and checks
// that the log entry of every version in it is included in the verified
// checkpoint cp and records exactly that version (an inclusion proof from
// the broker and the entry from its bundle, both checked against cp's
// root). It returns the versions from anchor to to, oldest first.
//
// anchor is the version the caller trusts: its own copy of the manifest,
// which the history must hold byte for byte at its version. A nil anchor
// starts at version 1, accepted as the broker's operator configured it
// (with its own owners' signatures checked when it carries any): use it to
// list a history, not to decide what to trust. to is the last version to
// verify; 0 means the latest.
//
// Failures of verification are *VerifyError (step "manifest chain");
// failures to reach the broker are *TransportError or *api.Error.
func (c *Client) ManifestChain(ctx context.Context, cp tlog.SignedCheckpoint, anchor *manifest.Manifest, to uint64) ([]LoggedVersion, error) {
	hist, err := c.ManifestHistory(ctx)
	if err != nil {
		return nil, err
	}
	return c.manifestChain(ctx, cp, anchor, to, hist.Manifests)
}

// WitnessPolicyAt returns the manifest version active in the tree of the
// verified checkpoint cp (the newest of the broker's history whose entry
// cp contains), verified as ManifestChain verifies it from anchor (nil:
// from version 1, when the log's key is what the caller trusts, as an
// auditor's), with its witness policy as a quorum: the cosignatures a
// checkpoint of that tree must carry.
func (c *Client) WitnessPolicyAt(ctx context.Context, cp tlog.SignedCheckpoint, anchor *manifest.Manifest) (*tlog.Quorum, *manifest.Manifest, error) {
	hist, err := c.ManifestHistory(ctx)
	if err != nil {
		return nil, nil, err
	}
	var to uint64
	for _, v := range hist.Manifests {
		if v.LogIndex < cp.Size {
			to = v.Version
		}
	}
	if to == 0 {
		return nil, nil, verr("manifest chain", "the checkpoint of size %d holds no manifest version of the broker's history", cp.Size)
	}
	if anchor != nil && anchor.Version() > to {
		return nil, nil, verr("manifest chain", "your manifest is version %d, the checkpoint of size %d holds the log up to version %d", anchor.Version(), cp.Size, to)
	}
	chain, err := c.manifestChain(ctx, cp, anchor, to, hist.Manifests)
	if err != nil {
		return nil, nil, err
	}
	m := chain[len(chain)-1].Manifest
	q, err := policy.Witnesses(m)
	if err != nil {
		return nil, nil, &VerifyError{Step: "witnesses", Err: err}
	}
	return q, m, nil
}

func (c *Client) manifestChain(ctx context.Context, cp tlog.SignedCheckpoint, anchor *manifest.Manifest, to uint64, h []api.Manifest) ([]LoggedVersion, error) {
	if len(h) == 0 {
		return nil, verr("manifest chain", "the broker has no manifest history")
	}
	for i, v := range h {
		if v.Version != uint64(i+1) {
			return nil, verr("manifest chain", "history entry %d is version %d, want version %d", i, v.Version, i+1)
		}
		if hh := manifest.HashOf(v.Body); v.Hash != hh {
			return nil, verr("manifest chain", "history version %d says hash %s, its body hashes to %s", v.Version, v.Hash, hh)
		}
	}
	from, latest := uint64(1), uint64(len(h))
	if anchor != nil {
		from = anchor.Version()
	}
	if to == 0 {
		to = latest
	}
	switch {
	case from > latest:
		return nil, verr("manifest chain", "your manifest (version %d, %s) is not in the broker's history, which ends at version %d", from, anchor.Hash(), latest)
	case to > latest:
		return nil, verr("manifest chain", "version %d is missing from the broker's history, which ends at version %d", latest+1, latest)
	case to < from:
		return nil, fmt.Errorf("client: ManifestChain from version %d to version %d", from, to)
	}
	sel := h[from-1 : to]
	vs := make([]manifest.SignedVersion, len(sel))
	for i, v := range sel {
		vs[i] = manifest.SignedVersion{Body: v.Body, Signatures: v.Signatures}
	}
	chain, err := manifest.VerifyChain(anchor, vs)
	if err != nil {
		return nil, &VerifyError{Step: "manifest chain", Err: err}
	}
	out := make([]LoggedVersion, len(sel))
	for i, l := range chain.Links() {
		idx := sel[i].LogIndex
		if err := c.CheckManifestLogged(ctx, cp, idx, l.Manifest); err != nil {
			var ve *VerifyError
			if errors.As(err, &ve) {
				ve.Step = "manifest chain"
			}
			return nil, err
		}
		out[i] = LoggedVersion{Link: l, LogIndex: idx}
	}
	return out, nil
}

// CheckManifestLogged checks that the log entry at index is included in
// the verified checkpoint cp (Entry: an inclusion proof from the broker
// checked against cp's root) and records exactly manifest m. A mismatch
// is a *VerifyError (step "manifest entry").
func (c *Client) CheckManifestLogged(ctx context.Context, cp tlog.SignedCheckpoint, index uint64, m *manifest.Manifest) error {
	_, err := c.ManifestReceipt(ctx, cp, index, m)
	return err
}

// ManifestReceipt is CheckManifestLogged returning what it checked as a
// receipt: the C2SP tlog-proof of the manifest entry at index in cp's tree,
// with the entry as its extra data, like the receipts the broker returns for
// uploads, deletions and releases. It proves to anyone with the log's key
// that the version was logged (kbsctl receipt verify).
func (c *Client) ManifestReceipt(ctx context.Context, cp tlog.SignedCheckpoint, index uint64, m *manifest.Manifest) (*Receipt, error) {
	p, err := c.InclusionProof(ctx, index, cp.Size)
	if err != nil {
		return nil, err
	}
	raw, err := c.entryWithProof(ctx, cp, index, p)
	if err != nil {
		return nil, err
	}
	if err := CheckManifestEntry(raw, m); err != nil {
		return nil, &VerifyError{Step: "manifest entry", Err: fmt.Errorf("version %d at log index %d: %w", m.Version(), index, err)}
	}
	e, err := tlog.DecodeEntry(raw)
	if err != nil {
		return nil, &VerifyError{Step: "manifest entry", Err: err}
	}
	text := (&tlog.Receipt{Index: index, Proof: p, Checkpoint: cp.Note, Extra: raw}).Marshal()
	return &Receipt{VerifiedReceipt: &tlog.VerifiedReceipt{Index: index, Entry: raw, Checkpoint: cp}, Entry: e, Raw: text}, nil
}

// CheckManifestEntry checks that raw is the log entry recording m.
func CheckManifestEntry(raw []byte, m *manifest.Manifest) error {
	e, err := tlog.DecodeEntry(raw)
	if err != nil {
		return err
	}
	if e.Type != tlog.TypeManifest {
		return fmt.Errorf("entry is a %s entry, not a manifest entry", e.Type)
	}
	me := e.Manifest
	if me.Version != m.Version() || me.Hash != m.Hash() || !bytes.Equal(me.Body, m.Bytes()) {
		return fmt.Errorf("entry records version %d (%s), not version %d (%s)", me.Version, me.Hash, m.Version(), m.Hash())
	}
	return nil
}
