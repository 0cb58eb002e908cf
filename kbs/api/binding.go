package api

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Binding-string prefixes. They separate the broker's own attestation from
// worker release evidence, so evidence made for one is never accepted as
// the other.
const (
	brokerBindingPrefix = "kbs-attestation-v1\n"
	workerBindingPrefix = "kbs-release-v1\n"
)

// BrokerBinding returns the string whose SHA-512 is the REPORT_DATA of the
// broker's evidence in an Attestation:
//
//	"kbs-attestation-v1\n" + hex(nonce) + "\n" + noteKey + "\n" +
//	base64(hpkePublicKey) + "\n" + tlsSPKISHA256 (hex) + "\n" + checkpoint
//
// noteKey is the C2SP note verifier key, hpkePublicKey is in the encoding
// of MarshalPublicKey, and checkpoint is the complete signed note text.
func BrokerBinding(nonce []byte, noteKey string, hpkePublicKey []byte, tlsSPKISHA256 string, checkpoint string) string {
	var b strings.Builder
	b.WriteString(brokerBindingPrefix)
	b.WriteString(hex.EncodeToString(nonce))
	b.WriteByte('\n')
	b.WriteString(noteKey)
	b.WriteByte('\n')
	b.WriteString(base64.StdEncoding.EncodeToString(hpkePublicKey))
	b.WriteByte('\n')
	b.WriteString(tlsSPKISHA256)
	b.WriteByte('\n')
	b.WriteString(checkpoint)
	return b.String()
}

// WorkerBinding returns the string whose SHA-512 is the REPORT_DATA of a
// worker's release evidence:
//
//	"kbs-release-v1\n" + hex(nonce) + "\n" + base64(hpkePublicKey)
//
// hpkePublicKey is in the encoding of MarshalPublicKey (KEM id first), so
// the evidence binds the sealing suite as well as the key.
func WorkerBinding(nonce []byte, hpkePublicKey []byte) string {
	return workerBindingPrefix + hex.EncodeToString(nonce) + "\n" +
		base64.StdEncoding.EncodeToString(hpkePublicKey)
}

// ReportData returns SHA-512 of binding: the 64 bytes that go into the
// REPORT_DATA field of an SNP report or a TDX quote.
func ReportData(binding string) [64]byte {
	return sha512.Sum512([]byte(binding))
}

// SPKISHA256 returns the hex SHA-256 of a DER SubjectPublicKeyInfo, as in
// Attestation.TLSSPKISHA256.
func SPKISHA256(spkiDER []byte) string {
	sum := sha256.Sum256(spkiDER)
	return hex.EncodeToString(sum[:])
}

// ParseNonce decodes a hex nonce as given in the nonce query parameter of
// GET /v1/attestation. It must be between 16 and 64 bytes; NonceSize (32)
// is recommended.
func ParseNonce(s string) ([]byte, error) {
	if s == "" {
		return nil, errors.New("missing nonce")
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("nonce is not hex: %w", err)
	}
	if len(b) < 16 || len(b) > 64 {
		return nil, fmt.Errorf("nonce is %d bytes, want 16 to 64", len(b))
	}
	return b, nil
}

// MaxKeyIDLen is the longest key id accepted.
const MaxKeyIDLen = 256

// ValidKeyID reports whether id is a well-formed key id: 1 to 256 bytes of
// ASCII letters, digits and "._-", in one or more segments separated by
// single "/"; no segment is empty, "." or "..". Key ids appear in URLs,
// log entries, binding strings and file names, so the alphabet is small.
func ValidKeyID(id string) error {
	if id == "" {
		return errors.New("empty key id")
	}
	if len(id) > MaxKeyIDLen {
		return fmt.Errorf("key id is %d bytes, longer than %d", len(id), MaxKeyIDLen)
	}
	for _, seg := range strings.Split(id, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("key id %q has an empty, \".\" or \"..\" segment", id)
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
				c == '.' || c == '_' || c == '-'
			if !ok {
				return fmt.Errorf("key id %q has a character outside [A-Za-z0-9._-/]", strconv.Quote(id))
			}
		}
	}
	return nil
}
