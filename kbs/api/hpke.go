package api

import (
	"crypto/hpke"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/kbs-dev/kbs/internal/hpkekey"
)

// HPKE KEM identifiers kbs accepts (RFC 9180 and draft-ietf-hpke-pq). The
// KDF is always HKDF-SHA256 and the AEAD always AES-256-GCM.
const (
	KEMX25519         = hpkekey.KEMX25519         // DHKEM(X25519, HKDF-SHA256): the default
	KEMMLKEM768X25519 = hpkekey.KEMMLKEM768X25519 // MLKEM768-X25519 (X-Wing): post-quantum hybrid
)

// GenerateKey returns a new HPKE key pair for the KEM kemID (KEMX25519 or
// KEMMLKEM768X25519).
func GenerateKey(kemID uint16) (hpke.PrivateKey, error) {
	k, err := hpkekey.KEM(kemID)
	if err != nil {
		return nil, err
	}
	return k.GenerateKey()
}

// MarshalPublicKey encodes an HPKE public key for the wire: the KEM id as a
// big-endian uint16, then the KEM's serialized public key (RFC 9180
// SerializePublicKey). This is the encoding in hpke_public_key fields and
// in the binding strings, so evidence binds the suite as well as the key.
func MarshalPublicKey(pk hpke.PublicKey) []byte { return hpkekey.Marshal(pk) }

// ParsePublicKey decodes the encoding of MarshalPublicKey. It accepts only
// KEMX25519 and KEMMLKEM768X25519 and rejects keys of the wrong length.
func ParsePublicKey(b []byte) (hpke.PublicKey, error) { return hpkekey.Parse(b) }

// MarshalPrivateKey encodes an HPKE private key like MarshalPublicKey: KEM
// id, then RFC 9180 SerializePrivateKey. It is for storage inside sealed
// state, never for the wire.
func MarshalPrivateKey(sk hpke.PrivateKey) ([]byte, error) {
	raw, err := sk.Bytes()
	if err != nil {
		return nil, err
	}
	b := binary.BigEndian.AppendUint16(nil, sk.KEM().ID())
	return append(b, raw...), nil
}

// ParsePrivateKey decodes the encoding of MarshalPrivateKey.
func ParsePrivateKey(b []byte) (hpke.PrivateKey, error) {
	if len(b) < 2 {
		return nil, errors.New("HPKE private key too short")
	}
	k, err := hpkekey.KEM(binary.BigEndian.Uint16(b))
	if err != nil {
		return nil, err
	}
	sk, err := k.NewPrivateKey(b[2:])
	if err != nil {
		return nil, fmt.Errorf("invalid HPKE private key: %w", err)
	}
	return sk, nil
}

// Purposes of HPKE sealing, bound into Info.
const (
	PurposeUpload  = "upload"  // client -> broker, POST /v1/keys
	PurposeRelease = "release" // broker -> worker, POST /v1/release
)

// Info is what the HPKE info parameter binds: why a key was sealed, which
// key and version it is, and the log index of the entry that recorded it. A
// sealed key opened under any other Info fails, so a sealed blob cannot be
// passed off as another key, another version or another release.
type Info struct {
	Purpose string
	KeyID   string
	Version uint64
	// LogIndex is the index of the release entry for PurposeRelease. Uploads
	// are sealed before their entry exists, so for PurposeUpload it is
	// absent (HasLogIndex false).
	LogIndex    uint64
	HasLogIndex bool
}

// UploadInfo is the Info of a key upload.
func UploadInfo(id string, version uint64) Info {
	return Info{Purpose: PurposeUpload, KeyID: id, Version: version}
}

// ReleaseInfo is the Info of a key released in the release entry at
// logIndex.
func ReleaseInfo(id string, version, logIndex uint64) Info {
	return Info{Purpose: PurposeRelease, KeyID: id, Version: version, LogIndex: logIndex, HasLogIndex: true}
}

// Bytes returns the HPKE info string:
//
//	"kbs-hpke-v1\n" + purpose + "\n" + key id + "\n" + decimal version + "\n" +
//	decimal log index, or "-" when there is none
//
// Purpose and key id never contain a newline (key ids are checked by
// ValidKeyID), so the encoding is unambiguous.
func (in Info) Bytes() []byte {
	li := "-"
	if in.HasLogIndex {
		li = strconv.FormatUint(in.LogIndex, 10)
	}
	return []byte("kbs-hpke-v1\n" + in.Purpose + "\n" + in.KeyID + "\n" +
		strconv.FormatUint(in.Version, 10) + "\n" + li)
}

func (in Info) check() error {
	switch in.Purpose {
	case PurposeUpload, PurposeRelease, PurposeHandover, PurposeRecoveryShare:
	default:
		return fmt.Errorf("unknown HPKE purpose %q", in.Purpose)
	}
	if strings.ContainsRune(in.KeyID, '\n') {
		return errors.New("key id contains a newline")
	}
	return ValidKeyID(in.KeyID)
}

// Seal encrypts plaintext to the wire-encoded HPKE public key pub
// (MarshalPublicKey) with HKDF-SHA256 and AES-256-GCM, under info. The
// result is the encapsulated key followed by the ciphertext (RFC 9180
// single-shot Seal).
func Seal(pub []byte, info Info, plaintext []byte) ([]byte, error) {
	pk, err := ParsePublicKey(pub)
	if err != nil {
		return nil, err
	}
	return SealTo(pk, info, plaintext)
}

// SealTo is Seal with a parsed public key.
func SealTo(pk hpke.PublicKey, info Info, plaintext []byte) ([]byte, error) {
	if err := info.check(); err != nil {
		return nil, err
	}
	return hpke.Seal(pk, hpke.HKDFSHA256(), hpke.AES256GCM(), info.Bytes(), plaintext)
}

// Open decrypts the output of Seal with sk under info. It fails if the
// ciphertext was sealed to another key or under another Info.
func Open(sk hpke.PrivateKey, info Info, sealed []byte) ([]byte, error) {
	if err := info.check(); err != nil {
		return nil, err
	}
	pt, err := hpke.Open(sk, hpke.HKDFSHA256(), hpke.AES256GCM(), info.Bytes(), sealed)
	if err != nil {
		return nil, fmt.Errorf("couldn't open sealed key %s v%d: %w", info.KeyID, info.Version, err)
	}
	return pt, nil
}
