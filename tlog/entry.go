package tlog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// MaxEntrySize is the largest encoded entry the log accepts: the largest
// length a C2SP tlog-tiles entry bundle can carry (a big-endian uint16).
const MaxEntrySize = 1<<16 - 1

// Entry types.
const (
	TypeManifest  = "manifest"
	TypeIdentity  = "identity"
	TypeKeyUpload = "key-upload"
	TypeKeyDelete = "key-delete"
	TypeRelease   = "release"
	// Lifecycle of the broker's master key (docs/operating.md).
	TypeHandover       = "handover"
	TypeRecoveryShares = "recovery-shares"
	TypeRecovery       = "recovery"
)

// Entry is one leaf of the log. Exactly the payload field that matches Type
// is set. Entries never hold key material.
type Entry struct {
	Type      string         `json:"type"`
	Time      time.Time      `json:"time"`
	Manifest  *ManifestEntry `json:"manifest,omitempty"`
	Identity  *IdentityEntry `json:"identity,omitempty"`
	KeyUpload *KeyEntry      `json:"key_upload,omitempty"`
	KeyDelete *KeyEntry      `json:"key_delete,omitempty"`
	Release   *ReleaseEntry  `json:"release,omitempty"`

	Handover       *HandoverEntry       `json:"handover,omitempty"`
	RecoveryShares *RecoverySharesEntry `json:"recovery_shares,omitempty"`
	Recovery       *RecoveryEntry       `json:"recovery,omitempty"`
}

// ManifestEntry records a manifest version. Body is the manifest's exact
// bytes; Hash is "sha256:<hex>" of Body.
type ManifestEntry struct {
	Version  uint64 `json:"version"`
	Hash     string `json:"hash"`
	Previous string `json:"previous,omitempty"`
	Body     []byte `json:"body"`
	// Signers are the fingerprints ("sha256:<hex>" of the DER
	// SubjectPublicKeyInfo) of the owner keys whose signatures admitted
	// this version. Required from version 2 on; empty for a version 1
	// trusted by the operator's decision alone (encoded as [], never null).
	Signers []string `json:"signers"`
}

// IdentityEntry records the broker's identity keys, at first boot and on
// rotation.
type IdentityEntry struct {
	NoteKey        string `json:"note_key"`
	HPKEPublicKey  []byte `json:"hpke_public_key"`
	TLSSPKISHA256  string `json:"tls_spki_sha256"`
	Platform       string `json:"platform"`
	Simulated      bool   `json:"simulated"`
	EvidenceDigest string `json:"evidence_digest"`
}

// KeyEntry records a key upload or deletion (metadata only).
type KeyEntry struct {
	ID      string `json:"id"`
	Version uint64 `json:"version"`
	Client  string `json:"client"`
	// SealedDigest is, in a key-upload entry, "sha256:<hex>" of the
	// version's sealed record in the broker's key store (the key material
	// encrypted under the key's own data key), so that the log says which
	// stored ciphertext is the live version and a record swapped in by
	// the host is refused. It reveals nothing about the key. It is empty
	// in key-delete entries, and in uploads logged before brokers recorded
	// it.
	SealedDigest string `json:"sealed_digest,omitempty"`
}

// KeyRef names one version of a key.
type KeyRef struct {
	ID      string `json:"id"`
	Version uint64 `json:"version"`
}

// ReleaseEntry records a key release to a worker.
type ReleaseEntry struct {
	Keys            []KeyRef `json:"keys"`
	WorkerClass     string   `json:"worker_class"`
	Platform        string   `json:"platform"`
	Simulated       bool     `json:"simulated"`
	Measurement     string   `json:"measurement"`
	ChipID          string   `json:"chip_id,omitempty"`
	TCB             string   `json:"tcb,omitempty"`
	EvidenceDigest  string   `json:"evidence_digest"`
	WorkerKeyDigest string   `json:"worker_key_digest"`
	ManifestHash    string   `json:"manifest_hash"`
}

// HandoverEntry records that the broker handed its master key over to a
// newcomer whose evidence matched the service reference values of the
// active manifest: the newcomer continues this log, and the broker that
// logged the entry takes no decision after it.
type HandoverEntry struct {
	// ManifestHash is the active manifest that admitted the newcomer.
	ManifestHash string `json:"manifest_hash"`
	// FromEvidenceDigest is the digest of the handing-over broker's own
	// evidence for this handover (binding the newcomer's evidence).
	FromEvidenceDigest string `json:"from_evidence_digest"`
	// The newcomer: its platform, whether its evidence is simulated, its
	// launch measurement (SNP MEASUREMENT or TDX MRTD, hex), the digest
	// of its evidence and of the HPKE key the master key was sealed to.
	Platform       string `json:"platform"`
	Simulated      bool   `json:"simulated"`
	Measurement    string `json:"measurement"`
	EvidenceDigest string `json:"evidence_digest"`
	KeyDigest      string `json:"key_digest"`
}

// RecoverySharesEntry records the recovery shares of the broker's master
// key for the holders a manifest names: Threshold of them restore it. Each
// share is sealed (HPKE) to its holder's key, so the entry is public and
// only the holders can open their shares.
type RecoverySharesEntry struct {
	// ManifestHash is the manifest that names the holders.
	ManifestHash string        `json:"manifest_hash"`
	Threshold    int           `json:"threshold"`
	Shares       []SealedShare `json:"shares"`
}

// SealedShare is one holder's share.
type SealedShare struct {
	// Holder is the holder's name in the manifest, Fingerprint
	// "sha256:<hex>" of its public key.
	Holder      string `json:"holder"`
	Fingerprint string `json:"fingerprint"`
	// Sealed is the share, HPKE-sealed to the holder's key.
	Sealed []byte `json:"sealed"`
	// Commitment is "sha256:<hex>" of the share (with a label naming its
	// holder), by which a recovering broker and the holder tell a genuine
	// share from any other bytes.
	Commitment string `json:"commitment"`
}

// RecoveryEntry records that a broker restored its master key from the
// shares of a recovery-shares entry.
type RecoveryEntry struct {
	// SharesIndex is the index of the recovery-shares entry whose shares
	// were used, and Holders the names of the holders who took part.
	SharesIndex uint64   `json:"shares_index"`
	Holders     []string `json:"holders"`
	// ManifestHash is the manifest active at the recovery.
	ManifestHash string `json:"manifest_hash"`
	// The recovering broker's evidence, as the holders verified it.
	Platform       string `json:"platform"`
	Simulated      bool   `json:"simulated"`
	Measurement    string `json:"measurement"`
	EvidenceDigest string `json:"evidence_digest"`
}

// EncodeEntry validates e and returns its canonical JSON encoding. Time is
// encoded in UTC. The result is what DecodeEntry accepts, byte for byte.
func EncodeEntry(e *Entry) ([]byte, error) {
	if e == nil {
		return nil, errors.New("tlog: nil entry")
	}
	c := *e
	c.Time = c.Time.UTC().Round(0)
	if c.Manifest != nil && c.Manifest.Signers == nil {
		m := *c.Manifest
		m.Signers = []string{} // one encoding: [], not null
		c.Manifest = &m
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("tlog: couldn't encode entry: %w", err)
	}
	if len(b) > MaxEntrySize {
		return nil, fmt.Errorf("tlog: encoded entry is %d bytes, more than %d", len(b), MaxEntrySize)
	}
	return b, nil
}

// DecodeEntry parses an entry strictly: at most MaxEntrySize bytes, one JSON
// object, no unknown fields, no duplicate keys, no trailing data, a valid
// payload for its type, and the canonical encoding EncodeEntry produces (so
// every entry has exactly one byte representation). Typical entries take a
// fast path that yields the same entry; anything else, and every error,
// comes from the reflective decoder.
func DecodeEntry(b []byte) (*Entry, error) {
	if len(b) > MaxEntrySize {
		return nil, fmt.Errorf("tlog: entry is %d bytes, more than %d", len(b), MaxEntrySize)
	}
	if e, ok := decodeCanonical(b); ok {
		return e, nil
	}
	return decodeEntryReflect(b)
}

// decodeEntryReflect is DecodeEntry's reference decoder, built on
// encoding/json; it decides every input the fast path does not accept.
func decodeEntryReflect(b []byte) (*Entry, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var e Entry
	if err := d.Decode(&e); err != nil {
		return nil, fmt.Errorf("tlog: malformed entry: %w", err)
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, errors.New("tlog: malformed entry: trailing data after the JSON object")
	}
	if err := e.validate(); err != nil {
		return nil, err
	}
	if e.Time.Location() != time.UTC {
		return nil, errors.New("tlog: entry time is not in UTC")
	}
	// The canonical re-encoding check also rules out duplicate and
	// case-variant keys (the re-encoding has each field once, spelled one
	// way); the slower key walk runs only to name the problem.
	c, err := json.Marshal(&e)
	if err != nil || !bytes.Equal(c, b) {
		if err := checkDuplicateKeys(b); err != nil {
			return nil, fmt.Errorf("tlog: malformed entry: %w", err)
		}
		return nil, errors.New("tlog: entry is not in canonical encoding")
	}
	return &e, nil
}

// checkDuplicateKeys walks the JSON value in b and rejects any object with
// two keys that encoding/json would treat as the same field (it matches
// names case-insensitively).
func checkDuplicateKeys(b []byte) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var walk func(depth int) error
	walk = func(depth int) error {
		if depth > 32 {
			return errors.New("JSON nested too deeply")
		}
		t, err := d.Token()
		if err != nil {
			return err
		}
		switch t {
		case json.Delim('{'):
			seen := map[string]bool{}
			for d.More() {
				k, err := d.Token()
				if err != nil {
					return err
				}
				ks, _ := k.(string)
				fk := strings.ToLower(ks)
				if seen[fk] {
					return fmt.Errorf("duplicate key %q", ks)
				}
				seen[fk] = true
				if err := walk(depth + 1); err != nil {
					return err
				}
			}
			_, err = d.Token()
			return err
		case json.Delim('['):
			for d.More() {
				if err := walk(depth + 1); err != nil {
					return err
				}
			}
			_, err = d.Token()
			return err
		}
		return nil
	}
	return walk(0)
}

func (e *Entry) validate() error {
	if e.Time.IsZero() {
		return errors.New("tlog: entry has no time")
	}
	if y := e.Time.Year(); y < 2000 || y > 9999 {
		return fmt.Errorf("tlog: entry time %v out of range", e.Time)
	}
	n := 0
	for _, set := range []bool{e.Manifest != nil, e.Identity != nil, e.KeyUpload != nil, e.KeyDelete != nil, e.Release != nil,
		e.Handover != nil, e.RecoveryShares != nil, e.Recovery != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("tlog: entry of type %q must have exactly one payload, has %d", e.Type, n)
	}
	var err error
	switch e.Type {
	case TypeManifest:
		if e.Manifest == nil {
			return errors.New("tlog: manifest entry without manifest payload")
		}
		err = e.Manifest.validate()
	case TypeIdentity:
		if e.Identity == nil {
			return errors.New("tlog: identity entry without identity payload")
		}
		err = e.Identity.validate()
	case TypeKeyUpload:
		if e.KeyUpload == nil {
			return errors.New("tlog: key-upload entry without key_upload payload")
		}
		err = e.KeyUpload.validate()
	case TypeKeyDelete:
		if e.KeyDelete == nil {
			return errors.New("tlog: key-delete entry without key_delete payload")
		}
		err = e.KeyDelete.validate()
		if err == nil && e.KeyDelete.SealedDigest != "" {
			err = errors.New("a deletion has no sealed_digest")
		}
	case TypeRelease:
		if e.Release == nil {
			return errors.New("tlog: release entry without release payload")
		}
		err = e.Release.validate()
	case TypeHandover:
		if e.Handover == nil {
			return errors.New("tlog: handover entry without handover payload")
		}
		err = e.Handover.validate()
	case TypeRecoveryShares:
		if e.RecoveryShares == nil {
			return errors.New("tlog: recovery-shares entry without recovery_shares payload")
		}
		err = e.RecoveryShares.validate()
	case TypeRecovery:
		if e.Recovery == nil {
			return errors.New("tlog: recovery entry without recovery payload")
		}
		err = e.Recovery.validate()
	default:
		return fmt.Errorf("tlog: unknown entry type %q", e.Type)
	}
	if err != nil {
		return fmt.Errorf("tlog: invalid %s entry: %w", e.Type, err)
	}
	return nil
}

// checkDigest reports whether s is "sha256:" followed by 64 lowercase hex
// digits.
func checkDigest(field, s string) error {
	h, ok := strings.CutPrefix(s, "sha256:")
	if !ok || !isLowerHex(h, 64) {
		return fmt.Errorf("%s %q is not sha256:<64 lowercase hex digits>", field, s)
	}
	return nil
}

// isLowerHex reports whether s is n lowercase hex digits.
func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func checkPlatform(p string) error {
	if p != "snp" && p != "tdx" {
		return fmt.Errorf("platform %q is not snp or tdx", p)
	}
	return nil
}

func (m *ManifestEntry) validate() error {
	if m.Version == 0 {
		return errors.New("version must be at least 1")
	}
	if err := checkDigest("hash", m.Hash); err != nil {
		return err
	}
	if m.Version == 1 && m.Previous != "" {
		return errors.New("version 1 must not have a previous hash")
	}
	if m.Version > 1 {
		if err := checkDigest("previous", m.Previous); err != nil {
			return err
		}
	}
	if len(m.Body) == 0 {
		return errors.New("empty manifest body")
	}
	if m.Signers == nil {
		return errors.New("signers: null, want a list")
	}
	if len(m.Signers) == 0 && m.Version > 1 {
		// Version 1 may be admitted by the operator's decision alone
		// (kbsd --manifest) and then names no signers.
		return errors.New("no signers")
	}
	for _, s := range m.Signers {
		if err := checkDigest("signer", s); err != nil {
			return err
		}
	}
	return nil
}

func (i *IdentityEntry) validate() error {
	if i.NoteKey == "" {
		return errors.New("empty note_key")
	}
	if len(i.HPKEPublicKey) == 0 {
		return errors.New("empty hpke_public_key")
	}
	if !isLowerHex(i.TLSSPKISHA256, 64) {
		return fmt.Errorf("tls_spki_sha256 %q is not 64 lowercase hex digits", i.TLSSPKISHA256)
	}
	if err := checkPlatform(i.Platform); err != nil {
		return err
	}
	return checkDigest("evidence_digest", i.EvidenceDigest)
}

func (k *KeyEntry) validate() error {
	if k.ID == "" {
		return errors.New("empty key id")
	}
	if k.Version == 0 {
		return errors.New("key version must be at least 1")
	}
	if k.Client == "" {
		return errors.New("empty client")
	}
	if k.SealedDigest != "" {
		return checkDigest("sealed_digest", k.SealedDigest)
	}
	return nil
}

func (r *ReleaseEntry) validate() error {
	if len(r.Keys) == 0 {
		return errors.New("no keys")
	}
	for _, k := range r.Keys {
		if k.ID == "" {
			return errors.New("empty key id")
		}
		if k.Version == 0 {
			return fmt.Errorf("key %q: version must be at least 1", k.ID)
		}
	}
	if r.WorkerClass == "" {
		return errors.New("empty worker_class")
	}
	if err := checkPlatform(r.Platform); err != nil {
		return err
	}
	if r.Measurement == "" {
		return errors.New("empty measurement")
	}
	if err := checkDigest("evidence_digest", r.EvidenceDigest); err != nil {
		return err
	}
	if err := checkDigest("worker_key_digest", r.WorkerKeyDigest); err != nil {
		return err
	}
	return checkDigest("manifest_hash", r.ManifestHash)
}

func (h *HandoverEntry) validate() error {
	if err := checkDigest("manifest_hash", h.ManifestHash); err != nil {
		return err
	}
	if err := checkDigest("from_evidence_digest", h.FromEvidenceDigest); err != nil {
		return err
	}
	if err := checkPlatform(h.Platform); err != nil {
		return err
	}
	if h.Measurement == "" {
		return errors.New("empty measurement")
	}
	if err := checkDigest("evidence_digest", h.EvidenceDigest); err != nil {
		return err
	}
	return checkDigest("key_digest", h.KeyDigest)
}

// MaxShares bounds the shares of a recovery-shares entry (the manifest's
// limit on recovery holders).
const MaxShares = 16

func (r *RecoverySharesEntry) validate() error {
	if err := checkDigest("manifest_hash", r.ManifestHash); err != nil {
		return err
	}
	if len(r.Shares) == 0 || len(r.Shares) > MaxShares {
		return fmt.Errorf("%d shares, want 1 to %d", len(r.Shares), MaxShares)
	}
	if r.Threshold < 1 || r.Threshold > len(r.Shares) {
		return fmt.Errorf("threshold %d of %d shares", r.Threshold, len(r.Shares))
	}
	seen := map[string]bool{}
	for _, s := range r.Shares {
		if s.Holder == "" || seen[s.Holder] {
			return fmt.Errorf("holder %q empty or named twice", s.Holder)
		}
		seen[s.Holder] = true
		if err := checkDigest("fingerprint", s.Fingerprint); err != nil {
			return err
		}
		if len(s.Sealed) == 0 {
			return fmt.Errorf("holder %q: empty sealed share", s.Holder)
		}
		if err := checkDigest("commitment", s.Commitment); err != nil {
			return err
		}
	}
	return nil
}

func (r *RecoveryEntry) validate() error {
	if len(r.Holders) == 0 || len(r.Holders) > MaxShares {
		return fmt.Errorf("%d holders, want 1 to %d", len(r.Holders), MaxShares)
	}
	seen := map[string]bool{}
	for _, h := range r.Holders {
		if h == "" || seen[h] {
			return fmt.Errorf("holder %q empty or named twice", h)
		}
		seen[h] = true
	}
	if err := checkDigest("manifest_hash", r.ManifestHash); err != nil {
		return err
	}
	if err := checkPlatform(r.Platform); err != nil {
		return err
	}
	if r.Measurement == "" {
		return errors.New("empty measurement")
	}
	return checkDigest("evidence_digest", r.EvidenceDigest)
}
