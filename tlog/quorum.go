package tlog

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/kbs-dev/kbs/internal/witnesskey"
)

// A Witness is one witness of a log: a party that cosigns a checkpoint
// only if it is consistent with the last one it cosigned for that log
// (C2SP tlog-witness).
type Witness struct {
	// Name labels the witness in policies, errors and metrics (the
	// manifest's witness name). It is not the key name.
	Name string
	// Key verifies the witness's cosignatures.
	Key *CosignatureVerifier
	// URL is the witness's tlog-witness submission prefix: checkpoints are
	// POSTed to URL + "/add-checkpoint". Only a log submitting checkpoints
	// needs it; clients that check cosignatures don't.
	URL string
}

// NewWitness returns the witness named name with verifier key vkey (see
// NewCosignatureVerifier) and submission prefix rawURL, which must be an
// absolute http or https URL without query, fragment or credentials, or
// empty.
func NewWitness(name, vkey, rawURL string) (Witness, error) {
	if name == "" || strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return Witness{}, fmt.Errorf("tlog: bad witness name %q", name)
	}
	k, err := NewCosignatureVerifier(vkey)
	if err != nil {
		return Witness{}, fmt.Errorf("tlog: witness %q: %w", name, err)
	}
	if rawURL != "" {
		if err := CheckWitnessURL(rawURL); err != nil {
			return Witness{}, fmt.Errorf("tlog: witness %q: %w", name, err)
		}
	}
	return Witness{Name: name, Key: k, URL: strings.TrimSuffix(rawURL, "/")}, nil
}

// CheckWitnessURL reports whether u can be a witness's submission prefix:
// an absolute http or https URL with a host, and no query, fragment or
// user information.
func CheckWitnessURL(u string) error { return witnesskey.CheckURL(u) }

func (w Witness) String() string {
	return fmt.Sprintf("%q (%s)", w.Name, w.Key.Name())
}

// A Quorum is a set of witnesses and how many of them must cosign a
// checkpoint before anyone relies on it. The zero Quorum (no witnesses,
// threshold 0) requires nothing: it is a policy that names no witnesses.
type Quorum struct {
	witnesses []Witness
	threshold int
}

// MaxWitnesses bounds the witnesses of a quorum.
const MaxWitnesses = 16

// NewQuorum returns the quorum of threshold out of witnesses. The
// threshold must be 1..len(witnesses), or 0 with no witnesses. Witnesses
// must have distinct names and distinct public keys (cosignature/v1 does
// not sign the key name, so one key under two names would count twice),
// and distinct key names and IDs.
func NewQuorum(threshold int, witnesses ...Witness) (*Quorum, error) {
	if len(witnesses) > MaxWitnesses {
		return nil, fmt.Errorf("tlog: %d witnesses, at most %d", len(witnesses), MaxWitnesses)
	}
	if len(witnesses) == 0 && threshold == 0 {
		return &Quorum{}, nil
	}
	if threshold < 1 || threshold > len(witnesses) {
		return nil, fmt.Errorf("tlog: witness threshold %d is not in 1..%d", threshold, len(witnesses))
	}
	names := map[string]bool{}
	keys := map[string]string{}
	ids := map[nameHash]string{}
	for _, w := range witnesses {
		if w.Key == nil {
			return nil, fmt.Errorf("tlog: witness %q has no key", w.Name)
		}
		if names[w.Name] {
			return nil, fmt.Errorf("tlog: two witnesses named %q", w.Name)
		}
		names[w.Name] = true
		if other, dup := keys[string(w.Key.key.Public)]; dup {
			return nil, fmt.Errorf("tlog: witnesses %q and %q have the same public key", other, w.Name)
		}
		keys[string(w.Key.key.Public)] = w.Name
		id := nameHash{w.Key.Name(), w.Key.KeyHash()}
		if other, dup := ids[id]; dup {
			return nil, fmt.Errorf("tlog: witnesses %q and %q have the same key name and ID", other, w.Name)
		}
		ids[id] = w.Name
	}
	return &Quorum{witnesses: append([]Witness(nil), witnesses...), threshold: threshold}, nil
}

// Threshold returns how many witnesses must cosign.
func (q *Quorum) Threshold() int { return q.threshold }

// Witnesses returns the quorum's witnesses, in order.
func (q *Quorum) Witnesses() []Witness { return append([]Witness(nil), q.witnesses...) }

// A Cosignature is a verified cosignature of a checkpoint.
type Cosignature struct {
	// Witness is the Name of the witness that made it.
	Witness string
	// Time is its timestamp: as of Time, the witness had verified no
	// larger tree of the log.
	Time time.Time
	// Signature is its signature line.
	Signature note.Signature
}

// A CosignedCheckpoint is a checkpoint verified against a quorum.
type CosignedCheckpoint struct {
	SignedCheckpoint
	// Cosignatures are the valid cosignatures by the quorum's witnesses,
	// in the quorum's order. There are at least Threshold of them.
	Cosignatures []Cosignature
}

// A QuorumError reports a checkpoint without enough cosignatures. It
// names the witnesses that did not cosign, and, when the checkpoint was
// just submitted to them, why.
type QuorumError struct {
	Origin    string
	Size      uint64
	Threshold int
	// Cosigned and Missing name the witnesses that did and did not cosign.
	Cosigned, Missing []string
	// Reasons holds, for witnesses in Missing that were asked, why they
	// did not cosign (a *WitnessError). Nil when only a note was checked.
	Reasons map[string]error
}

func (e *QuorumError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "tlog: checkpoint of %s at size %d has cosignatures from %d of the %d witnesses required", e.Origin, e.Size, len(e.Cosigned), e.Threshold)
	b.WriteString("; missing: ")
	for i, m := range e.Missing {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", m)
		if r := e.Reasons[m]; r != nil {
			fmt.Fprintf(&b, " (%v)", r)
		}
	}
	return b.String()
}

// Verify checks that msg is a checkpoint of the log origin signed by logV
// (see OpenCheckpoint) and cosigned by at least the quorum's threshold of
// its witnesses. Signatures by other keys are ignored; a signature line
// that claims a quorum witness's key but does not verify rejects the whole
// note (signed-note: a known key's bad signature makes the note
// malformed). Too few cosignatures are reported as a *QuorumError naming
// the missing witnesses.
//
// Verify does not judge cosignature timestamps: callers that need a fresh
// checkpoint compare CosignedCheckpoint.Cosignatures[i].Time with their
// own clock.
func (q *Quorum) Verify(msg []byte, origin string, logV note.Verifier) (*CosignedCheckpoint, error) {
	cp, err := OpenCheckpoint(msg, origin, logV)
	if err != nil {
		return nil, err
	}
	out := &CosignedCheckpoint{SignedCheckpoint: cp}
	if len(q.witnesses) == 0 {
		return out, nil
	}
	vs := make([]note.Verifier, len(q.witnesses))
	byID := map[nameHash]int{}
	for i, w := range q.witnesses {
		vs[i] = w.Key
		byID[nameHash{w.Key.Name(), w.Key.KeyHash()}] = i
	}
	n, err := note.Open(msg, note.VerifierList(vs...))
	var unverified *note.UnverifiedNoteError
	var invalid *note.InvalidSignatureError
	switch {
	case errors.As(err, &unverified):
		n = unverified.Note
	case errors.As(err, &invalid):
		w := q.witnesses[byID[nameHash{invalid.Name, invalid.Hash}]]
		return nil, fmt.Errorf("tlog: checkpoint carries an invalid cosignature for witness %s", w)
	case err != nil:
		return nil, fmt.Errorf("tlog: couldn't check cosignatures: %w", err)
	}
	got := make([]*Cosignature, len(q.witnesses))
	for _, s := range n.Sigs {
		i := byID[nameHash{s.Name, s.Hash}]
		t, err := CosignatureTime(s)
		if err != nil {
			return nil, err
		}
		got[i] = &Cosignature{Witness: q.witnesses[i].Name, Time: t, Signature: s}
	}
	var missing []string
	var cosigned []string
	for i, c := range got {
		if c == nil {
			missing = append(missing, q.witnesses[i].Name)
			continue
		}
		cosigned = append(cosigned, c.Witness)
		out.Cosignatures = append(out.Cosignatures, *c)
	}
	if len(out.Cosignatures) < q.threshold {
		return nil, &QuorumError{Origin: cp.Origin, Size: cp.Size, Threshold: q.threshold, Cosigned: cosigned, Missing: missing}
	}
	return out, nil
}

// CheckFresh reports whether at least the quorum's threshold of c's
// cosignatures were made within maxAge of now, in either direction (a
// witness's clock may be ahead of ours). It is the check a client with no
// earlier checkpoint of the log applies: an old checkpoint with old, valid
// cosignatures is what a broker restored from an old copy would serve,
// and only a recent cosignature shows that the witness has seen nothing
// larger since. A *QuorumError names the witnesses whose cosignature is
// missing or stale, with the age of the stale ones as the reason. c must
// come from q.Verify.
func (q *Quorum) CheckFresh(c *CosignedCheckpoint, now time.Time, maxAge time.Duration) error {
	if len(q.witnesses) == 0 {
		return nil
	}
	byName := map[string]Cosignature{}
	for _, cs := range c.Cosignatures {
		byName[cs.Witness] = cs
	}
	e := &QuorumError{Origin: c.Origin, Size: c.Size, Threshold: q.threshold, Reasons: map[string]error{}}
	for _, w := range q.witnesses {
		cs, ok := byName[w.Name]
		if !ok {
			e.Missing = append(e.Missing, w.Name)
			continue
		}
		age := now.Sub(cs.Time)
		if age > maxAge || age < -maxAge {
			e.Missing = append(e.Missing, w.Name)
			e.Reasons[w.Name] = fmt.Errorf("its cosignature is from %s, %s from now (at most %s allowed)", cs.Time.UTC().Format(time.RFC3339), age.Round(time.Second), maxAge)
			continue
		}
		e.Cosigned = append(e.Cosigned, w.Name)
	}
	if len(e.Cosigned) < q.threshold {
		return e
	}
	return nil
}
