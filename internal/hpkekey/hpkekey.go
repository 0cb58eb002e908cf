// Package hpkekey holds what package kbs/api and package manifest must agree
// on about an HPKE public key: its wire encoding (the KEM id as a
// big-endian uint16, then the KEM's serialized public key, RFC 9180
// SerializePublicKey) and the KEMs kbs accepts. kbs/api seals keys to such
// keys; the manifest names recovery holders by them; both use this one
// parser.
package hpkekey

import (
	"crypto/ecdh"
	"crypto/hpke"
	"encoding/binary"
	"errors"
	"fmt"
)

// KEM identifiers kbs accepts (RFC 9180 and draft-ietf-hpke-pq).
const (
	KEMX25519         uint16 = 0x0020 // DHKEM(X25519, HKDF-SHA256): the default
	KEMMLKEM768X25519 uint16 = 0x647a // MLKEM768-X25519 (X-Wing): post-quantum hybrid
)

// KEM returns the HPKE KEM for id, or an error for KEMs kbs does not accept.
func KEM(id uint16) (hpke.KEM, error) {
	switch id {
	case KEMX25519:
		return hpke.DHKEM(ecdh.X25519()), nil
	case KEMMLKEM768X25519:
		return hpke.MLKEM768X25519(), nil
	default:
		return nil, fmt.Errorf("unsupported HPKE KEM 0x%04x (want 0x%04x X25519 or 0x%04x MLKEM768-X25519)", id, KEMX25519, KEMMLKEM768X25519)
	}
}

// Marshal encodes an HPKE public key: KEM id, then the serialized key.
func Marshal(pk hpke.PublicKey) []byte {
	b := binary.BigEndian.AppendUint16(nil, pk.KEM().ID())
	return append(b, pk.Bytes()...)
}

// Parse decodes the encoding of Marshal. It accepts only KEMX25519 and
// KEMMLKEM768X25519 and rejects keys of the wrong length.
func Parse(b []byte) (hpke.PublicKey, error) {
	if len(b) < 2 {
		return nil, errors.New("HPKE public key too short")
	}
	k, err := KEM(binary.BigEndian.Uint16(b))
	if err != nil {
		return nil, err
	}
	pk, err := k.NewPublicKey(b[2:])
	if err != nil {
		return nil, fmt.Errorf("invalid HPKE public key: %w", err)
	}
	return pk, nil
}
