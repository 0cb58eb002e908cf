package manifest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"sort"
	"strings"

	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
)

// Errors of Verify, VerifyChain and VerifyBlob; test with errors.Is.
var (
	// ErrVersionSkip: the new version is more than one above the previous.
	ErrVersionSkip = errors.New("manifest version skips ahead")
	// ErrVersionRollback: the new version is not above the previous.
	ErrVersionRollback = errors.New("manifest version does not advance")
	// ErrPreviousMismatch: "previous" is not the hash of the previous version.
	ErrPreviousMismatch = errors.New("manifest previous hash does not match")
	// ErrTooFewSignatures: fewer valid signatures than the owners' threshold.
	ErrTooFewSignatures = errors.New("too few owner signatures")
	// ErrDuplicateSigner: two signatures by the same owner key.
	ErrDuplicateSigner = errors.New("owner key signed more than once")
	// ErrSignerNotOwner: a signature by a key that only the new version lists.
	ErrSignerNotOwner = errors.New("signature by a key that is not an owner of the previous version")
	// ErrUnknownSigner: a well-formed signature that no owner key verifies.
	ErrUnknownSigner = errors.New("signature verifies under no owner key")
	// ErrMalformedSignature: not base64, not DER, or the wrong size.
	ErrMalformedSignature = errors.New("malformed signature")
	// ErrBadSignature: a well-formed signature that does not verify (VerifyBlob).
	ErrBadSignature = errors.New("invalid signature")
	// ErrUntrusted: a chain does not start at the version the caller
	// trusts (VerifyChain's anchor).
	ErrUntrusted = errors.New("manifest is not the trusted one")
)

// pubKey is a parsed owner or client key.
type pubKey struct {
	key         crypto.PublicKey
	verifier    signature.Verifier
	fingerprint string
}

// parsePublicKeyPEM parses one PEM "PUBLIC KEY" block (PKIX), ECDSA P-256 or
// Ed25519, with nothing but whitespace around it.
func parsePublicKeyPEM(s string) (*pubKey, error) {
	if !strings.HasPrefix(s, "-----BEGIN ") {
		return nil, errors.New("want exactly one PEM \"PUBLIC KEY\" block and nothing else")
	}
	block, rest := pem.Decode([]byte(s))
	if block == nil {
		return nil, errors.New("want a PEM \"PUBLIC KEY\" block")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("want exactly one PEM \"PUBLIC KEY\" block and nothing else")
	}
	if block.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("want a PEM \"PUBLIC KEY\" block, got %q", clip(block.Type))
	}
	if len(block.Headers) != 0 {
		return nil, errors.New("PEM headers are not allowed")
	}
	pub, err := cryptoutils.UnmarshalPEMToPublicKey([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("couldn't parse public key: %v", err)
	}
	return newPubKey(pub)
}

func newPubKey(pub crypto.PublicKey) (*pubKey, error) {
	var v signature.Verifier
	var err error
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("ECDSA key on %s: only P-256 is accepted", k.Curve.Params().Name)
		}
		v, err = signature.LoadECDSAVerifier(k, crypto.SHA256)
	case ed25519.PublicKey:
		v, err = signature.LoadED25519Verifier(k)
	default:
		return nil, fmt.Errorf("unsupported key type %T: want ECDSA P-256 or Ed25519", pub)
	}
	if err != nil {
		return nil, fmt.Errorf("couldn't load key: %v", err)
	}
	fp, err := Fingerprint(pub)
	if err != nil {
		return nil, err
	}
	return &pubKey{key: pub, verifier: v, fingerprint: fp}, nil
}

// Fingerprint returns "sha256:" and the hex SHA-256 of the DER PKIX
// (SubjectPublicKeyInfo) encoding of pub. Owner and client keys are named by
// their fingerprints in the log and in errors.
func Fingerprint(pub crypto.PublicKey) (string, error) {
	der, err := cryptoutils.MarshalPublicKeyToDER(pub)
	if err != nil {
		return "", fmt.Errorf("couldn't encode public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// FingerprintPEM returns the fingerprint of a PEM PKIX public key, which must
// be ECDSA P-256 or Ed25519.
func FingerprintPEM(pemKey string) (string, error) {
	k, err := parsePublicKeyPEM(pemKey)
	if err != nil {
		return "", fmt.Errorf("manifest: %w", err)
	}
	return k.fingerprint, nil
}

// decodeSignature decodes a base64 signature, ignoring surrounding
// whitespace (signature files end in a newline).
func decodeSignature(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	sig, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: not standard base64", ErrMalformedSignature)
	}
	if len(sig) == 0 || len(sig) > 512 {
		return nil, fmt.Errorf("%w: %d bytes", ErrMalformedSignature, len(sig))
	}
	return sig, nil
}

// checkForm rejects a signature that cannot be one by k: ECDSA signatures
// must be strict ASN.1 DER (a SEQUENCE of two INTEGERs and nothing after
// it), Ed25519 signatures 64 bytes.
func (k *pubKey) checkForm(sig []byte) error {
	switch k.key.(type) {
	case *ecdsa.PublicKey:
		var rs struct{ R, S *big.Int }
		rest, err := asn1.Unmarshal(sig, &rs)
		if err != nil || len(rest) != 0 {
			return fmt.Errorf("%w: an ECDSA signature must be ASN.1 DER", ErrMalformedSignature)
		}
	case ed25519.PublicKey:
		if len(sig) != ed25519.SignatureSize {
			return fmt.Errorf("%w: an Ed25519 signature has %d bytes, got %d", ErrMalformedSignature, ed25519.SignatureSize, len(sig))
		}
	}
	return nil
}

// verify checks sig over body under k, rejecting malformed signatures with
// ErrMalformedSignature and wrong ones with ErrBadSignature.
func (k *pubKey) verify(body, sig []byte) error {
	if err := k.checkForm(sig); err != nil {
		return err
	}
	if err := k.verifier.VerifySignature(bytes.NewReader(sig), bytes.NewReader(body)); err != nil {
		return fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	return nil
}

// VerifyBlob verifies a detached signature (base64 DER ECDSA P-256/SHA-256
// or Ed25519, as made by Sign, `openssl dgst -sha256 -sign` or `cosign
// sign-blob`) over body under pub. Errors wrap ErrMalformedSignature or
// ErrBadSignature.
func VerifyBlob(pub crypto.PublicKey, body []byte, sigB64 string) error {
	k, err := newPubKey(pub)
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	sig, err := decodeSignature(sigB64)
	if err != nil {
		return err
	}
	return k.verify(body, sig)
}

// Verify checks that next is a valid successor of prev: next.version is
// prev.version+1, next.previous is prev's hash (Follows), and sigs (base64
// detached signatures over next's exact bytes) hold valid signatures of at
// least prev's threshold of distinct owner keys of prev. Every signature
// must be well formed and verify under an owner key of prev, and no key may
// sign twice; and next keeps stating a witness policy if prev states one
// (CheckWitnessesKept). It returns the fingerprints of the signing keys,
// sorted. This is one link of a chain; VerifyChain verifies a whole chain,
// so the broker, clients and auditors all refuse a chain that silently
// drops its witness policy.
//
// Errors wrap ErrVersionSkip, ErrVersionRollback, ErrPreviousMismatch,
// ErrMalformedSignature, ErrSignerNotOwner, ErrUnknownSigner,
// ErrDuplicateSigner or ErrTooFewSignatures, or are a *FieldError naming
// "witnesses".
func Verify(prev, next *Manifest, sigs []string) ([]string, error) {
	if prev == nil || next == nil {
		return nil, errors.New("manifest: Verify needs both versions")
	}
	if err := Follows(prev, next); err != nil {
		return nil, err
	}
	if err := CheckWitnessesKept(prev, next); err != nil {
		return nil, err
	}
	return signers(prev, next, sigs)
}

// Follows checks that next is the version after prev: next.version is
// prev.version+1 and next.previous is prev's hash. It checks no
// signatures (Verify does). Errors wrap ErrVersionRollback,
// ErrVersionSkip or ErrPreviousMismatch.
func Follows(prev, next *Manifest) error {
	switch pv, nv := prev.doc.Version, next.doc.Version; {
	case nv <= pv:
		return fmt.Errorf("%w: version %d after version %d", ErrVersionRollback, nv, pv)
	case nv != pv+1:
		return fmt.Errorf("%w: version %d after version %d, want %d", ErrVersionSkip, nv, pv, pv+1)
	}
	if next.doc.Previous != prev.hash {
		return fmt.Errorf("%w: version %d names previous %s, version %d is %s",
			ErrPreviousMismatch, next.doc.Version, next.doc.Previous, prev.doc.Version, prev.hash)
	}
	return nil
}

// signers checks sigs over m's bytes against the owners of owners (m's
// predecessor, or m itself for a self-signed version 1) and returns the
// sorted fingerprints of the distinct signing owners, at least owners'
// threshold of them.
func signers(owners, m *Manifest, sigs []string) ([]string, error) {
	if len(sigs) > maxOwners {
		return nil, fmt.Errorf("manifest: %d signatures, more than the %d owners a manifest may have", len(sigs), maxOwners)
	}
	found := map[string]int{}
	for i, s := range sigs {
		sig, err := decodeSignature(s)
		if err != nil {
			return nil, fmt.Errorf("signature %d: %w", i, err)
		}
		var by *pubKey
		for _, k := range owners.owners {
			if k.verify(m.raw, sig) == nil {
				by = k
				break
			}
		}
		if by == nil {
			if !wellFormed(owners.owners, sig) && !wellFormed(m.owners, sig) {
				return nil, fmt.Errorf("signature %d: %w: neither ASN.1 DER ECDSA nor a 64-byte Ed25519 signature", i, ErrMalformedSignature)
			}
			if owners != m {
				for _, k := range m.owners {
					if k.verify(m.raw, sig) == nil {
						return nil, fmt.Errorf("signature %d: %w: key %s is introduced by version %d",
							i, ErrSignerNotOwner, k.fingerprint, m.doc.Version)
					}
				}
			}
			return nil, fmt.Errorf("signature %d: %w of version %d", i, ErrUnknownSigner, owners.doc.Version)
		}
		if j, dup := found[by.fingerprint]; dup {
			return nil, fmt.Errorf("signatures %d and %d: %w: %s", j, i, ErrDuplicateSigner, by.fingerprint)
		}
		found[by.fingerprint] = i
	}
	if len(found) < owners.doc.Owners.Threshold {
		return nil, fmt.Errorf("%w: %d valid of %d required by version %d",
			ErrTooFewSignatures, len(found), owners.doc.Owners.Threshold, owners.doc.Version)
	}
	fps := make([]string, 0, len(found))
	for fp := range found {
		fps = append(fps, fp)
	}
	sort.Strings(fps)
	return fps, nil
}

// wellFormed reports whether sig has the form of a signature by any of keys.
func wellFormed(keys []*pubKey, sig []byte) bool {
	for _, k := range keys {
		if k.checkForm(sig) == nil {
			return true
		}
	}
	return false
}

// ParsePrivateKey parses a PEM private key for signing: unencrypted PKCS#8
// ("PRIVATE KEY", as `openssl genpkey` writes), SEC 1 ("EC PRIVATE KEY"), or
// a cosign key ("ENCRYPTED SIGSTORE PRIVATE KEY" / "ENCRYPTED COSIGN PRIVATE
// KEY") with its password. The key must be ECDSA P-256 or Ed25519.
func ParsePrivateKey(pemBytes, password []byte) (crypto.Signer, error) {
	var pf cryptoutils.PassFunc
	if password != nil {
		pf = func(bool) ([]byte, error) { return password, nil }
	}
	priv, err := cryptoutils.UnmarshalPEMToPrivateKey(pemBytes, pf)
	if err != nil {
		return nil, fmt.Errorf("manifest: couldn't parse private key: %w", err)
	}
	switch k := priv.(type) {
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("manifest: ECDSA key on %s: only P-256 is accepted", k.Curve.Params().Name)
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("manifest: unsupported private key type %T: want ECDSA P-256 or Ed25519", priv)
}

// Sign returns the base64 detached signature of body under key: ASN.1 DER
// ECDSA over SHA-256 for P-256 keys (what `openssl dgst -sha256 -sign` and
// `cosign sign-blob --key` produce), or a pure Ed25519 signature.
func Sign(key crypto.Signer, body []byte) (string, error) {
	var s signature.Signer
	var err error
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return "", fmt.Errorf("manifest: ECDSA key on %s: only P-256 is accepted", k.Curve.Params().Name)
		}
		s, err = signature.LoadECDSASigner(k, crypto.SHA256)
	case ed25519.PrivateKey:
		s, err = signature.LoadED25519Signer(k)
	default:
		return "", fmt.Errorf("manifest: unsupported signing key type %T: want ECDSA P-256 or Ed25519", key)
	}
	if err != nil {
		return "", fmt.Errorf("manifest: couldn't load signing key: %w", err)
	}
	sig, err := s.SignMessage(bytes.NewReader(body))
	if err != nil {
		return "", fmt.Errorf("manifest: couldn't sign: %w", err)
	}
	return base64.StdEncoding.EncodeToString(sig), nil
}
