package api

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
)

// UploadStatement returns the bytes a client signs to authorize a key
// upload:
//
//	"kbs-key-upload-v1\n" + client + "\n" + key id + "\n" + decimal version + "\n" +
//	hex(SHA-256(broker HPKE public key)) + "\n" + hex(SHA-256(sealed)) + "\n"
//
// It binds the key id and version (a replay names a version that is already
// taken), the broker (an upload for one broker is useless at another) and
// the exact sealed bytes (nobody can swap in other key material).
func UploadStatement(client, id string, version uint64, brokerHPKEPublicKey, sealed []byte) []byte {
	bk := sha256.Sum256(brokerHPKEPublicKey)
	sd := sha256.Sum256(sealed)
	return []byte("kbs-key-upload-v1\n" + client + "\n" + id + "\n" + strconv.FormatUint(version, 10) + "\n" +
		hex.EncodeToString(bk[:]) + "\n" + hex.EncodeToString(sd[:]) + "\n")
}

// DeleteStatement returns the bytes a client signs to delete a key:
//
//	"kbs-key-delete-v1\n" + client + "\n" + key id + "\n" + decimal version + "\n" +
//	hex(SHA-256(broker HPKE public key)) + "\n"
//
// version is the key's latest version, so the statement cannot be replayed
// against a later upload of the same id.
func DeleteStatement(client, id string, version uint64, brokerHPKEPublicKey []byte) []byte {
	bk := sha256.Sum256(brokerHPKEPublicKey)
	return []byte("kbs-key-delete-v1\n" + client + "\n" + id + "\n" + strconv.FormatUint(version, 10) + "\n" +
		hex.EncodeToString(bk[:]) + "\n")
}

// SignStatement signs a statement with a client key: ECDSA P-256 over
// SHA-256 (ASN.1 DER signature) or Ed25519 (over the statement itself) —
// the same signature forms manifests use for owner signatures.
func SignStatement(key crypto.Signer, statement []byte) ([]byte, error) {
	switch pub := key.Public().(type) {
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() {
			return nil, errors.New("client ECDSA key must be on P-256")
		}
		h := sha256.Sum256(statement)
		return key.Sign(rand.Reader, h[:], crypto.SHA256)
	case ed25519.PublicKey:
		return key.Sign(rand.Reader, statement, crypto.Hash(0))
	default:
		return nil, fmt.Errorf("unsupported client key type %T (want ECDSA P-256 or Ed25519)", pub)
	}
}

// VerifyStatement checks a signature made by SignStatement.
func VerifyStatement(pub crypto.PublicKey, statement, sig []byte) error {
	switch pub := pub.(type) {
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() {
			return errors.New("client ECDSA key must be on P-256")
		}
		h := sha256.Sum256(statement)
		if !ecdsa.VerifyASN1(pub, h[:], sig) {
			return errors.New("invalid ECDSA signature")
		}
		return nil
	case ed25519.PublicKey:
		if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, statement, sig) {
			return errors.New("invalid Ed25519 signature")
		}
		return nil
	default:
		return fmt.Errorf("unsupported client key type %T (want ECDSA P-256 or Ed25519)", pub)
	}
}
