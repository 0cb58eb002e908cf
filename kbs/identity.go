package kbs

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hpke"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"

	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/keystore"
	"github.com/kbs-dev/kbs/tlog"
)

// identitySecret is the name of the keystore secret holding the identity.
const identitySecret = "broker-identity"

// Identity is the broker's long-lived key material: the Ed25519 key that
// signs log checkpoints, the HPKE key pair clients seal uploads to, and the
// TLS key with its self-signed certificate. It is created once and kept
// sealed in the key store, so the same keys come back after a restart.
// Clients learn and pin the public halves through the attestation binding.
type Identity struct {
	// LogID names the log; the checkpoint origin is "kbs/" + LogID.
	LogID string
	// Checkpoints signs the log's checkpoints.
	Checkpoints *tlog.CheckpointSigner
	// NoteKey is the C2SP note verifier key of the checkpoints.
	NoteKey string
	// HPKE is the broker's HPKE private key; HPKEPublicKey its public key
	// in the wire encoding of api.MarshalPublicKey.
	HPKE          hpke.PrivateKey
	HPKEPublicKey []byte
	// TLS is the TLS certificate and key; TLSSPKISHA256 the hex SHA-256 of
	// the certificate's SubjectPublicKeyInfo.
	TLS           tls.Certificate
	TLSSPKISHA256 string
}

type identityRecord struct {
	LogID   string `json:"log_id"`
	NoteKey []byte `json:"note_key"` // Ed25519 seed
	HPKE    []byte `json:"hpke"`     // api.MarshalPrivateKey
	TLSKey  []byte `json:"tls_key"`  // PKCS #8
	TLSCert []byte `json:"tls_cert"` // DER
}

// Origin returns the checkpoint origin of the log.
func (id *Identity) Origin() string { return "kbs/" + id.LogID }

// LoadIdentity returns the broker identity sealed in store, creating and
// storing a new one on first use (created is then true).
func LoadIdentity(ctx context.Context, store *keystore.Store) (id *Identity, created bool, err error) {
	raw, err := store.Secret(identitySecret)
	if errors.Is(err, keystore.ErrNotFound) {
		rec, err := newIdentityRecord()
		if err != nil {
			return nil, false, fmt.Errorf("couldn't create the broker identity: %w", err)
		}
		raw, err = json.Marshal(rec)
		if err != nil {
			return nil, false, err
		}
		if err := store.PutSecret(identitySecret, raw); err != nil {
			return nil, false, fmt.Errorf("couldn't store the broker identity: %w", err)
		}
		created = true
	} else if err != nil {
		return nil, false, fmt.Errorf("couldn't load the broker identity: %w", err)
	}
	var rec identityRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return nil, false, fmt.Errorf("corrupt broker identity: %w", err)
	}
	id, err = rec.identity()
	if err != nil {
		return nil, false, fmt.Errorf("corrupt broker identity: %w", err)
	}
	return id, created, nil
}

func newIdentityRecord() (*identityRecord, error) {
	var logID [8]byte
	if _, err := rand.Read(logID[:]); err != nil {
		return nil, err
	}
	_, noteKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	hk, err := api.GenerateKey(api.KEMX25519)
	if err != nil {
		return nil, err
	}
	hraw, err := api.MarshalPrivateKey(hk)
	if err != nil {
		return nil, err
	}
	tk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tkraw, err := x509.MarshalPKCS8PrivateKey(tk)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "kbsd " + hex.EncodeToString(logID[:])},
		NotBefore:    clock.Now().Add(-time.Hour),
		NotAfter:     clock.Now().AddDate(20, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost", "kbsd"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &tk.PublicKey, tk)
	if err != nil {
		return nil, err
	}
	return &identityRecord{
		LogID:   hex.EncodeToString(logID[:]),
		NoteKey: noteKey.Seed(),
		HPKE:    hraw,
		TLSKey:  tkraw,
		TLSCert: der,
	}, nil
}

func (rec *identityRecord) identity() (*Identity, error) {
	if len(rec.NoteKey) != ed25519.SeedSize {
		return nil, errors.New("bad checkpoint key")
	}
	id := &Identity{LogID: rec.LogID}
	signer, verifier, vkey, err := tlog.NewEd25519NoteKeys(id.Origin(), ed25519.NewKeyFromSeed(rec.NoteKey))
	if err != nil {
		return nil, err
	}
	if id.Checkpoints, err = tlog.NewCheckpointSigner(id.Origin(), signer, verifier); err != nil {
		return nil, err
	}
	id.NoteKey = vkey
	if id.HPKE, err = api.ParsePrivateKey(rec.HPKE); err != nil {
		return nil, err
	}
	id.HPKEPublicKey = api.MarshalPublicKey(id.HPKE.PublicKey())
	key, err := x509.ParsePKCS8PrivateKey(rec.TLSKey)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(rec.TLSCert)
	if err != nil {
		return nil, err
	}
	id.TLS = tls.Certificate{Certificate: [][]byte{rec.TLSCert}, PrivateKey: key, Leaf: cert}
	id.TLSSPKISHA256 = api.SPKISHA256(cert.RawSubjectPublicKeyInfo)
	return id, nil
}
