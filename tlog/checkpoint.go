package tlog

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/mod/sumdb/note"
	sumdb "golang.org/x/mod/sumdb/tlog"
)

// OriginPrefix starts the origin line of every kbs checkpoint: the origin of
// the log with id ID is "kbs/" + ID.
const OriginPrefix = "kbs/"

// maxCheckpointSize bounds the signed notes this package parses.
const maxCheckpointSize = 16 << 10

// MaxTreeSize is the largest tree size this package parses, signs or
// serves: 2^40 entries (a log of at least 2^40 bytes). It is far below
// what the arithmetic of tree sizes can hold: golang.org/x/mod/sumdb/tlog
// loops forever on trees above 2^62 (its maxpow2 shifts past 2^63), and
// index and tile computations multiply sizes by up to 2^9. A checkpoint,
// tile path, receipt index or backend root above it is malformed, so a
// hostile log cannot make a client or auditor spin on a signed size.
const MaxTreeSize = 1 << 40

// Errors callers branch on.
var (
	// ErrOutOfRange reports an index, size or tile beyond the log's latest
	// signed checkpoint.
	ErrOutOfRange = errors.New("tlog: beyond the end of the log")
	// ErrInvalidArgument reports an argument that is wrong at any log size
	// (start after end, a tile width of 0, an oversized entry, ...).
	ErrInvalidArgument = errors.New("tlog: invalid argument")
	// ErrConflict is returned by CheckpointSigner.Sign when signing would
	// contradict the last signed checkpoint: a smaller size, another root
	// for the same size, or a tree that is not an extension of it. A
	// backend that gets it must stop appending: its storage no longer
	// matches what it has published.
	ErrConflict = errors.New("tlog: checkpoint conflicts with the last signed checkpoint")
)

// EmptyRoot is the root hash of the empty tree: SHA-256 of the empty string.
var EmptyRoot = Hash(sha256.Sum256(nil))

// CheckEntry reports whether entry can be appended to a log: it must be at
// most MaxEntrySize bytes, so that tlog-tiles entry bundles can carry it.
// (RFC 6962 allows empty entries; kbs entries are never empty.) The error
// wraps ErrInvalidArgument.
func CheckEntry(entry []byte) error {
	if len(entry) > MaxEntrySize {
		return fmt.Errorf("%w: entry is %d bytes, more than %d", ErrInvalidArgument, len(entry), MaxEntrySize)
	}
	return nil
}

// FormatCheckpoint returns the C2SP tlog-checkpoint note text (the body
// that is signed) for origin and root.
func FormatCheckpoint(origin string, r Root) []byte {
	return fmt.Appendf(nil, "%s\n%d\n%s\n", origin, r.Size, base64.StdEncoding.EncodeToString(r.Hash[:]))
}

// ParseCheckpoint parses C2SP tlog-checkpoint note text (without
// signatures). It accepts extension lines but returns them only as a count;
// kbs does not write any. It rejects a size with leading zeroes or a sign,
// a size above MaxTreeSize, a root hash that is not canonical base64 of 32
// bytes, an empty origin, and empty extension lines.
func ParseCheckpoint(text []byte) (origin string, r Root, err error) {
	if len(text) == 0 || text[len(text)-1] != '\n' {
		return "", Root{}, errors.New("tlog: malformed checkpoint: does not end in a newline")
	}
	lines := strings.Split(string(text[:len(text)-1]), "\n")
	if len(lines) < 3 {
		return "", Root{}, fmt.Errorf("tlog: malformed checkpoint: %d lines, want at least 3", len(lines))
	}
	origin = lines[0]
	if origin == "" {
		return "", Root{}, errors.New("tlog: malformed checkpoint: empty origin")
	}
	s := lines[1]
	if s == "" || (s[0] == '0' && len(s) > 1) || s[0] < '0' || s[0] > '9' {
		return "", Root{}, fmt.Errorf("tlog: malformed checkpoint: bad tree size %q", clipText(s))
	}
	r.Size, err = strconv.ParseUint(s, 10, 64)
	if err != nil {
		return "", Root{}, fmt.Errorf("tlog: malformed checkpoint: bad tree size %q", clipText(s))
	}
	if r.Size > MaxTreeSize {
		return "", Root{}, fmt.Errorf("tlog: malformed checkpoint: tree size %d is above the largest kbs accepts (%d)", r.Size, uint64(MaxTreeSize))
	}
	h, err := base64.StdEncoding.Strict().DecodeString(lines[2])
	if err != nil || len(h) != len(r.Hash) {
		return "", Root{}, fmt.Errorf("tlog: malformed checkpoint: root hash %q is not base64 of 32 bytes", clipText(lines[2]))
	}
	copy(r.Hash[:], h)
	for _, l := range lines[3:] {
		if l == "" {
			return "", Root{}, errors.New("tlog: malformed checkpoint: empty extension line")
		}
	}
	return origin, r, nil
}

// OpenCheckpoint verifies a signed checkpoint note: it must carry a valid
// signature by v (other signatures, such as witness cosignatures, are
// ignored), its origin must be origin, and its text must parse. Errors
// from note.Open (*note.UnverifiedNoteError, *note.InvalidSignatureError)
// are wrapped.
func OpenCheckpoint(msg []byte, origin string, v note.Verifier) (SignedCheckpoint, error) {
	if len(msg) > maxCheckpointSize {
		return SignedCheckpoint{}, fmt.Errorf("tlog: checkpoint is %d bytes, more than %d", len(msg), maxCheckpointSize)
	}
	if v == nil {
		return SignedCheckpoint{}, errors.New("tlog: no checkpoint verifier")
	}
	n, err := note.Open(msg, note.VerifierList(v))
	if err != nil {
		return SignedCheckpoint{}, fmt.Errorf("tlog: couldn't verify checkpoint: %w", err)
	}
	signed := false
	for _, s := range n.Sigs {
		// note.Open decodes signatures leniently: reject base64 with
		// non-zero padding bits, so one signed checkpoint has one text.
		if _, err := base64.StdEncoding.Strict().DecodeString(s.Base64); err != nil {
			return SignedCheckpoint{}, fmt.Errorf("tlog: checkpoint signature by %q is not canonical base64", s.Name)
		}
		if s.Name == v.Name() && s.Hash == v.KeyHash() {
			signed = true
		}
	}
	if !signed {
		return SignedCheckpoint{}, errors.New("tlog: checkpoint is not signed by the log key")
	}
	o, r, err := ParseCheckpoint([]byte(n.Text))
	if err != nil {
		return SignedCheckpoint{}, err
	}
	if o != origin {
		return SignedCheckpoint{}, fmt.Errorf("tlog: checkpoint origin is %q, want %q", o, origin)
	}
	return SignedCheckpoint{Origin: o, Root: r, Note: bytes.Clone(msg)}, nil
}

// NewEd25519NoteKeys returns a signed-note signer and verifier for the
// Ed25519 key priv under name (for a log, its origin), and the verifier key
// string ("<name>+<hash>+<base64 key>") that clients configure.
func NewEd25519NoteKeys(name string, priv ed25519.PrivateKey) (note.Signer, note.Verifier, string, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, nil, "", errors.New("tlog: bad Ed25519 private key length")
	}
	pub := priv.Public().(ed25519.PublicKey)
	vkey, err := note.NewEd25519VerifierKey(name, pub)
	if err != nil {
		return nil, nil, "", fmt.Errorf("tlog: couldn't make note key: %w", err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, nil, "", fmt.Errorf("tlog: couldn't make note key: %w", err)
	}
	var hash [4]byte
	binary.BigEndian.PutUint32(hash[:], v.KeyHash())
	skey := fmt.Sprintf("PRIVATE+KEY+%s+%x+%s", name, hash, base64.StdEncoding.EncodeToString(append([]byte{1}, priv.Seed()...)))
	s, err := note.NewSigner(skey)
	if err != nil {
		return nil, nil, "", fmt.Errorf("tlog: couldn't make note key: %w", err)
	}
	return s, v, vkey, nil
}

// A CheckpointSigner signs a log's checkpoints and refuses to sign one that
// contradicts the log's last signed checkpoint. It is shared by all
// backends: a backend persists the last SignedCheckpoint atomically with
// its tree and passes it back on each Sign, together with a consistency
// proof from it, so the refusal holds across restarts.
//
// A CheckpointSigner is safe for concurrent use.
type CheckpointSigner struct {
	origin string
	signer note.Signer
	v      note.Verifier

	mu       sync.Mutex
	verified []byte // last note known to be signed by this signer
}

// NewCheckpointSigner returns a signer for the log with the given origin.
// The signer's key name must be the origin, and v must be its verifier.
func NewCheckpointSigner(origin string, s note.Signer, v note.Verifier) (*CheckpointSigner, error) {
	if origin == "" || strings.ContainsAny(origin, "\n") {
		return nil, fmt.Errorf("tlog: bad origin %q", origin)
	}
	if s == nil || v == nil {
		return nil, errors.New("tlog: nil note signer or verifier")
	}
	if s.Name() != origin || v.Name() != origin || s.KeyHash() != v.KeyHash() {
		return nil, fmt.Errorf("tlog: note key %q does not match origin %q", s.Name(), origin)
	}
	return &CheckpointSigner{origin: origin, signer: s, v: v}, nil
}

// Origin returns the origin line of the checkpoints the signer signs.
func (s *CheckpointSigner) Origin() string { return s.origin }

// Verifier returns the note verifier of the signer's key.
func (s *CheckpointSigner) Verifier() note.Verifier { return s.v }

// Sign signs a checkpoint for next. last is the log's last signed
// checkpoint (nil for a new log), and proof is the RFC 6962 consistency
// proof from last to next. Sign returns an error wrapping ErrConflict if
// next is smaller than last, has another root at the same size, or the
// proof does not show that next extends last; an error wrapping
// ErrInvalidArgument if next is above MaxTreeSize (the log is full); and an
// error if last is not a checkpoint of this log signed by this key.
func (s *CheckpointSigner) Sign(last *SignedCheckpoint, next Root, proof []Hash) (SignedCheckpoint, error) {
	if next.Size > MaxTreeSize {
		return SignedCheckpoint{}, fmt.Errorf("%w: tree size %d is above the largest kbs signs (%d)", ErrInvalidArgument, next.Size, uint64(MaxTreeSize))
	}
	if next.Size == 0 && next.Hash != EmptyRoot {
		return SignedCheckpoint{}, fmt.Errorf("%w: empty tree with root %x", ErrConflict, next.Hash[:])
	}
	if last != nil {
		if err := s.checkLast(last); err != nil {
			return SignedCheckpoint{}, err
		}
		switch {
		case next.Size < last.Size:
			return SignedCheckpoint{}, fmt.Errorf("%w: size %d is smaller than the signed size %d", ErrConflict, next.Size, last.Size)
		case next.Size == last.Size:
			if next.Hash != last.Hash {
				return SignedCheckpoint{}, fmt.Errorf("%w: another root for the signed size %d", ErrConflict, next.Size)
			}
		case last.Size > 0:
			if err := sumdb.CheckTree(proof, int64(next.Size), next.Hash, int64(last.Size), last.Hash); err != nil {
				return SignedCheckpoint{}, fmt.Errorf("%w: size %d does not extend the signed size %d: %v", ErrConflict, next.Size, last.Size, err)
			}
		}
	}
	msg, err := note.Sign(&note.Note{Text: string(FormatCheckpoint(s.origin, next))}, s.signer)
	if err != nil {
		return SignedCheckpoint{}, fmt.Errorf("tlog: couldn't sign checkpoint: %w", err)
	}
	s.mu.Lock()
	s.verified = msg
	s.mu.Unlock()
	return SignedCheckpoint{Origin: s.origin, Root: next, Note: msg}, nil
}

// checkLast verifies that last is a checkpoint this signer signed, and that
// its fields match its note.
func (s *CheckpointSigner) checkLast(last *SignedCheckpoint) error {
	s.mu.Lock()
	known := bytes.Equal(last.Note, s.verified)
	s.mu.Unlock()
	var cp SignedCheckpoint
	if known {
		_, r, err := ParseCheckpoint(last.Note[:bytes.Index(last.Note, []byte("\n\n"))+1])
		if err != nil {
			return err
		}
		cp = SignedCheckpoint{Origin: s.origin, Root: r}
	} else {
		var err error
		cp, err = OpenCheckpoint(last.Note, s.origin, s.v)
		if err != nil {
			return fmt.Errorf("tlog: last signed checkpoint: %w", err)
		}
		s.mu.Lock()
		s.verified = bytes.Clone(last.Note)
		s.mu.Unlock()
	}
	if cp.Origin != last.Origin || cp.Root != last.Root {
		return errors.New("tlog: last signed checkpoint does not match its note")
	}
	return nil
}

// clipText shortens text quoted in an error to 64 bytes: a malformed
// checkpoint may be up to 16 KiB of a hostile server's choice.
func clipText(s string) string {
	if len(s) <= 64 {
		return s
	}
	return s[:64] + "…"
}
