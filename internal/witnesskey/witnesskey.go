// Package witnesskey holds what package tlog and package manifest must
// agree on about a witness: its C2SP signed-note verifier key ("vkey",
// c2sp.org/signed-note) for Ed25519 cosignatures (signature type 0x04,
// timestamped cosignature/v1, c2sp.org/tlog-cosignature), and its
// tlog-witness submission URL.
//
// Package tlog verifies cosignatures with these keys and package manifest
// validates the witnesses that owners name; both use this one parser, so
// they agree on what a witness key is. The parser is strict: a key has
// exactly one accepted spelling (lowercase hex key ID, canonical base64),
// and its key ID must be the one the spec derives from its name and public
// key.
package witnesskey

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Signature type identifier bytes (c2sp.org/signed-note).
const (
	// TypeEd25519 is a plain Ed25519 note signature (a log's checkpoint key).
	TypeEd25519 = 0x01
	// TypeCosignatureV1 is a timestamped Ed25519 checkpoint cosignature.
	TypeCosignatureV1 = 0x04
	// TypeMLDSA44 is a timestamped ML-DSA-44 (sub)tree cosignature, which
	// kbs does not support yet.
	TypeMLDSA44 = 0x06
)

// MaxNameLen bounds key names; the specs set no limit, kbs does.
const MaxNameLen = 256

// Key is a parsed Ed25519 cosignature/v1 verifier key.
type Key struct {
	// Name is the key name, as it appears in signature lines.
	Name string
	// Hash is the key ID: SHA-256(name || "\n" || 0x04 || public key)[:4].
	Hash uint32
	// Public is the 32-byte Ed25519 public key.
	Public ed25519.PublicKey
}

// String returns the verifier key text: "<name>+<hex key ID>+<base64(0x04
// || public key)>".
func (k Key) String() string {
	return fmt.Sprintf("%s+%08x+%s", k.Name, k.Hash, base64.StdEncoding.EncodeToString(append([]byte{TypeCosignatureV1}, k.Public...)))
}

// KeyHash returns the signed-note key ID of a key of the given type:
// the first four bytes, big-endian, of SHA-256(name || "\n" || typ || key).
func KeyHash(name string, typ byte, key []byte) uint32 {
	h := sha256.New()
	h.Write([]byte(name))
	h.Write([]byte{'\n', typ})
	h.Write(key)
	return binary.BigEndian.Uint32(h.Sum(nil))
}

// ValidName reports whether name can name a note key: non-empty, at most
// MaxNameLen bytes of UTF-8, without Unicode spaces, '+' or control
// characters.
func ValidName(name string) bool {
	if name == "" || len(name) > MaxNameLen || !utf8.ValidString(name) {
		return false
	}
	for _, r := range name {
		if unicode.IsSpace(r) || r == '+' || unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// New returns the cosignature/v1 key of name and pub.
func New(name string, pub ed25519.PublicKey) (Key, error) {
	if !ValidName(name) {
		return Key{}, fmt.Errorf("invalid key name %q", name)
	}
	if len(pub) != ed25519.PublicKeySize {
		return Key{}, fmt.Errorf("Ed25519 public key is %d bytes, want %d", len(pub), ed25519.PublicKeySize)
	}
	pub = append(ed25519.PublicKey(nil), pub...)
	return Key{Name: name, Hash: KeyHash(name, TypeCosignatureV1, pub), Public: pub}, nil
}

// Parse parses an Ed25519 cosignature/v1 verifier key. It rejects other
// signature types with an error that names the type (a plain Ed25519 note
// key, 0x01, is a log key, not a witness key; ML-DSA-44, 0x06, is not
// supported yet), a key ID that does not match the name and key, and any
// spelling other than the canonical one.
func Parse(vkey string) (Key, error) {
	name, rest, ok1 := strings.Cut(vkey, "+")
	hash16, key64, ok2 := strings.Cut(rest, "+")
	if !ok1 || !ok2 {
		return Key{}, errors.New(`malformed verifier key: want "<name>+<key ID>+<key>"`)
	}
	if !ValidName(name) {
		return Key{}, fmt.Errorf("malformed verifier key: invalid key name %q", name)
	}
	if len(hash16) != 8 || strings.ToLower(hash16) != hash16 {
		return Key{}, fmt.Errorf("malformed verifier key: key ID %q is not 8 lowercase hex digits", hash16)
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(key64)
	if err != nil || len(raw) == 0 {
		return Key{}, errors.New("malformed verifier key: key is not base64")
	}
	switch raw[0] {
	case TypeCosignatureV1:
	case TypeEd25519:
		return Key{}, errors.New("verifier key has type 0x01 (a plain Ed25519 note key, as logs use): a witness key has type 0x04 (Ed25519 cosignature/v1)")
	case TypeMLDSA44:
		return Key{}, errors.New("verifier key has type 0x06 (ML-DSA-44 cosignature): not supported yet, use an Ed25519 cosignature/v1 key (type 0x04)")
	default:
		return Key{}, fmt.Errorf("verifier key has type 0x%02x: want 0x04 (Ed25519 cosignature/v1)", raw[0])
	}
	if len(raw) != 1+ed25519.PublicKeySize {
		return Key{}, fmt.Errorf("malformed verifier key: %d key bytes, want %d", len(raw)-1, ed25519.PublicKeySize)
	}
	k, err := New(name, raw[1:])
	if err != nil {
		return Key{}, err
	}
	if got := fmt.Sprintf("%08x", k.Hash); got != hash16 {
		return Key{}, fmt.Errorf("malformed verifier key: key ID %s does not match the name and key (want %s)", hash16, got)
	}
	return k, nil
}

// CheckURL reports whether u can be a witness's submission prefix: an
// absolute http or https URL with a host, and no query, fragment or user
// information.
func CheckURL(u string) error {
	p, err := url.Parse(u)
	switch {
	case err != nil:
		return fmt.Errorf("bad witness URL %q: %v", u, err)
	case p.Scheme != "http" && p.Scheme != "https":
		return fmt.Errorf("bad witness URL %q: want an http or https URL", u)
	case p.Host == "" || p.Opaque != "":
		return fmt.Errorf("bad witness URL %q: no host", u)
	case p.User != nil || p.RawQuery != "" || p.ForceQuery || p.Fragment != "" || strings.Contains(u, "#"):
		return fmt.Errorf("bad witness URL %q: no credentials, query or fragment allowed", u)
	}
	return nil
}
