package tlog

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/mod/sumdb/note"

	"github.com/kbs-dev/kbs/internal/witnesskey"
)

// Witness cosignatures: C2SP tlog-cosignature, Ed25519 "cosignature/v1".
//
// A cosignature is a signed-note signature line added to a checkpoint by a
// witness. Its signature bytes are a big-endian uint64 POSIX timestamp
// followed by an Ed25519 signature over
//
//	cosignature/v1
//	time <timestamp>
//	<the checkpoint's note text>
//
// and its key ID is SHA-256(name || "\n" || 0x04 || public key)[:4]. A
// cosignature at time T states that, as of T, the largest tree the witness
// had verified as consistent for the checkpoint's origin had this root.

const (
	cosignatureSize = 8 + ed25519.SignatureSize
	cosignatureV1   = "cosignature/v1\n"
)

// MaxSignatureLines bounds the signature lines this package reads from one
// note or one add-checkpoint response. signed-note asks verifiers to accept
// at least 16.
const MaxSignatureLines = 64

// A CosignatureVerifier is a note.Verifier of Ed25519 cosignature/v1
// signatures by one witness key. It can be passed to note.Open with the
// log's own verifier.
type CosignatureVerifier struct {
	key witnesskey.Key
}

// NewCosignatureVerifier parses a witness's verifier key
// ("<name>+<key ID>+<base64(0x04 || Ed25519 public key)>"), as witnesses
// print it and manifests name it. It accepts only the canonical spelling of
// an Ed25519 cosignature/v1 key (type 0x04) whose key ID matches.
func NewCosignatureVerifier(vkey string) (*CosignatureVerifier, error) {
	k, err := witnesskey.Parse(vkey)
	if err != nil {
		return nil, fmt.Errorf("tlog: witness key: %w", err)
	}
	return &CosignatureVerifier{key: k}, nil
}

// Name implements note.Verifier: the key name of the witness.
func (v *CosignatureVerifier) Name() string { return v.key.Name }

// KeyHash implements note.Verifier.
func (v *CosignatureVerifier) KeyHash() uint32 { return v.key.Hash }

// PublicKey returns the witness's Ed25519 public key.
func (v *CosignatureVerifier) PublicKey() ed25519.PublicKey {
	return append(ed25519.PublicKey(nil), v.key.Public...)
}

// String returns the verifier key text.
func (v *CosignatureVerifier) String() string { return v.key.String() }

// Verify implements note.Verifier: sig is the timestamp and Ed25519
// signature of a cosignature of the note text msg. A timestamp above
// 2^63-1 is invalid (tlog-cosignature).
func (v *CosignatureVerifier) Verify(msg, sig []byte) bool {
	if len(sig) != cosignatureSize {
		return false
	}
	t := binary.BigEndian.Uint64(sig)
	if t > math.MaxInt64 {
		return false
	}
	return ed25519.Verify(v.key.Public, cosignedMessage(t, msg), sig[8:])
}

// cosignedMessage is the message an Ed25519 cosignature/v1 signs.
func cosignedMessage(t uint64, text []byte) []byte {
	m := make([]byte, 0, len(cosignatureV1)+len("time \n")+20+len(text))
	m = append(m, cosignatureV1...)
	m = append(m, "time "...)
	m = strconv.AppendUint(m, t, 10)
	m = append(m, '\n')
	return append(m, text...)
}

// A Cosigner makes Ed25519 cosignature/v1 signatures: it is the signing
// half of a witness, for tests and tools that need a witness key of their
// own. It implements note.Signer.
type Cosigner struct {
	key  witnesskey.Key
	priv ed25519.PrivateKey
	now  func() time.Time
}

// NewCosigner returns a cosigner named name with key priv, which
// timestamps its signatures with now (at second precision).
func NewCosigner(name string, priv ed25519.PrivateKey, now func() time.Time) (*Cosigner, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, errors.New("tlog: bad Ed25519 private key length")
	}
	if now == nil {
		return nil, errors.New("tlog: a cosigner needs a clock")
	}
	k, err := witnesskey.New(name, priv.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, fmt.Errorf("tlog: cosigner: %w", err)
	}
	return &Cosigner{key: k, priv: priv, now: now}, nil
}

// Name implements note.Signer.
func (s *Cosigner) Name() string { return s.key.Name }

// KeyHash implements note.Signer.
func (s *Cosigner) KeyHash() uint32 { return s.key.Hash }

// VerifierKey returns the cosigner's verifier key text.
func (s *Cosigner) VerifierKey() string { return s.key.String() }

// Sign implements note.Signer: a cosignature of the note text msg.
func (s *Cosigner) Sign(msg []byte) ([]byte, error) {
	t := s.now().Unix()
	if t < 0 {
		return nil, errors.New("tlog: cosigner clock is before 1970")
	}
	sig := binary.BigEndian.AppendUint64(make([]byte, 0, cosignatureSize), uint64(t))
	return append(sig, ed25519.Sign(s.priv, cosignedMessage(uint64(t), msg))...), nil
}

// CosignatureTime returns the timestamp of a cosignature/v1 signature line.
// It checks the encoding only, not the signature.
func CosignatureTime(s note.Signature) (time.Time, error) {
	raw, err := base64.StdEncoding.Strict().DecodeString(s.Base64)
	if err != nil || len(raw) != 4+cosignatureSize {
		return time.Time{}, fmt.Errorf("tlog: signature by %q is not a cosignature/v1", s.Name)
	}
	t := binary.BigEndian.Uint64(raw[4:])
	if t > math.MaxInt64 {
		return time.Time{}, fmt.Errorf("tlog: cosignature by %q has timestamp %d beyond 2^63-1", s.Name, t)
	}
	return time.Unix(int64(t), 0), nil
}

// SplitNote splits a signed note into its text (ending in a newline) and
// its signatures, strictly: valid UTF-8 without control characters other
// than newline, the text separated from the signatures by the last empty
// line, and every signature line as ParseSignatureLines requires. It checks
// no signature.
func SplitNote(msg []byte) (text []byte, sigs []note.Signature, err error) {
	if len(msg) > maxCheckpointSize {
		return nil, nil, fmt.Errorf("tlog: note is %d bytes, more than %d", len(msg), maxCheckpointSize)
	}
	i := bytes.LastIndex(msg, []byte("\n\n"))
	if i < 0 {
		return nil, nil, errors.New("tlog: malformed note: no signatures")
	}
	if err := checkNoteChars(msg[:i+1]); err != nil {
		return nil, nil, err
	}
	sigs, err = ParseSignatureLines(msg[i+2:])
	if err != nil {
		return nil, nil, err
	}
	return msg[:i+1], sigs, nil
}

func checkNoteChars(b []byte) error {
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		if r == utf8.RuneError && size == 1 {
			return errors.New("tlog: malformed note: invalid UTF-8")
		}
		if r < 0x20 && r != '\n' {
			return fmt.Errorf("tlog: malformed note: control character %U", r)
		}
		b = b[size:]
	}
	return nil
}

// ParseSignatureLines parses one or more signed-note signature lines,
// such as the body of a tlog-witness add-checkpoint response: each line is
// "— <key name> <base64 of a 4-byte key ID and the signature>" and ends in
// a newline. It is strict: canonical base64, valid key names, at most
// MaxSignatureLines lines, and no line twice for the same key. It checks no
// signature; see note.Open and Quorum.Verify.
func ParseSignatureLines(b []byte) ([]note.Signature, error) {
	if len(b) == 0 {
		return nil, errors.New("tlog: no signature lines")
	}
	if b[len(b)-1] != '\n' {
		return nil, errors.New("tlog: malformed signature line: no final newline")
	}
	if err := checkNoteChars(b); err != nil {
		return nil, err
	}
	var sigs []note.Signature
	seen := map[nameHash]bool{}
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		line := string(b[:i])
		b = b[i+1:]
		if len(sigs) == MaxSignatureLines {
			return nil, fmt.Errorf("tlog: more than %d signature lines", MaxSignatureLines)
		}
		rest, ok := strings.CutPrefix(line, "— ")
		if !ok {
			return nil, fmt.Errorf("tlog: malformed signature line %d: does not start with \"— \"", len(sigs)+1)
		}
		name, b64, ok := strings.Cut(rest, " ")
		if !ok || !witnesskey.ValidName(name) {
			return nil, fmt.Errorf("tlog: malformed signature line %d: bad key name", len(sigs)+1)
		}
		raw, err := base64.StdEncoding.Strict().DecodeString(b64)
		if err != nil || len(raw) < 5 {
			return nil, fmt.Errorf("tlog: malformed signature line %d: signature is not canonical base64 of a key ID and a signature", len(sigs)+1)
		}
		s := note.Signature{Name: name, Hash: binary.BigEndian.Uint32(raw), Base64: b64}
		if seen[nameHash{s.Name, s.Hash}] {
			return nil, fmt.Errorf("tlog: two signature lines by key %s+%08x", s.Name, s.Hash)
		}
		seen[nameHash{s.Name, s.Hash}] = true
		sigs = append(sigs, s)
	}
	return sigs, nil
}

type nameHash struct {
	name string
	hash uint32
}

// FormatSignatureLines returns the signature lines of sigs, in order.
func FormatSignatureLines(sigs []note.Signature) []byte {
	var b bytes.Buffer
	for _, s := range sigs {
		b.WriteString("— " + s.Name + " " + s.Base64 + "\n")
	}
	return b.Bytes()
}

// MergeSignatures returns the signed note msg with the signatures sigs
// added, as one note with several signature lines (c2sp.org/signed-note):
// msg's text, its signature lines in their order except those by a key
// (name and key ID) that sigs also holds, then sigs in their order. A new
// signature by a key replaces the old one, as note.Sign does, so a fresher
// cosignature replaces a stale one. MergeSignatures checks no signature:
// verify what it returns (Quorum.Verify), or merge only signatures
// verified against msg's text, as WitnessClient returns them.
func MergeSignatures(msg []byte, sigs ...note.Signature) ([]byte, error) {
	text, old, err := SplitNote(msg)
	if err != nil {
		return nil, err
	}
	replaced := map[nameHash]bool{}
	for _, s := range sigs {
		if replaced[nameHash{s.Name, s.Hash}] {
			return nil, fmt.Errorf("tlog: two new signatures by key %s+%08x", s.Name, s.Hash)
		}
		replaced[nameHash{s.Name, s.Hash}] = true
	}
	all := make([]note.Signature, 0, len(old)+len(sigs))
	for _, s := range old {
		if !replaced[nameHash{s.Name, s.Hash}] {
			all = append(all, s)
		}
	}
	all = append(all, sigs...)
	if len(all) > MaxSignatureLines {
		return nil, fmt.Errorf("tlog: more than %d signatures", MaxSignatureLines)
	}
	out := append(bytes.Clone(text), '\n')
	out = append(out, FormatSignatureLines(all)...)
	// Check what we built, so that a bad signature line in sigs is caught
	// here rather than by a client.
	if _, _, err := SplitNote(out); err != nil {
		return nil, err
	}
	return out, nil
}
