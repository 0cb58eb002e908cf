package manifest_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/manifest"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

func parsePub(t testing.TB, b []byte) crypto.PublicKey {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("no PEM")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func loadKey(t testing.TB, name string) crypto.Signer {
	t.Helper()
	k, err := manifest.ParsePrivateKey(readFile(t, "keys/"+name+".key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func sigFile(t testing.TB, name string) string {
	t.Helper()
	return strings.TrimSpace(string(readFile(t, name)))
}

func TestChainGolden(t *testing.T) {
	v1 := mustParse(t, readFile(t, "chain/v1.json"))
	v2 := mustParse(t, readFile(t, "chain/v2.json"))
	v3 := mustParse(t, readFile(t, "chain/v3.json"))
	fps, err := manifest.Verify(v1, v2, []string{sigFile(t, "chain/v2.json.sig.owner1"), sigFile(t, "chain/v2.json.sig.owner3")})
	if err != nil {
		t.Fatalf("Verify(v1, v2) = %v", err)
	}
	o1, _ := manifest.FingerprintPEM(string(readFile(t, "keys/owner1.pub")))
	o3, _ := manifest.FingerprintPEM(string(readFile(t, "keys/owner3.pub")))
	if len(fps) != 2 || !(fps[0] == o1 && fps[1] == o3 || fps[0] == o3 && fps[1] == o1) {
		t.Errorf("signers = %v, want owner1 %s and owner3 %s", fps, o1, o3)
	}
	// Version 3 is signed by owner 4, whom version 2 added: valid.
	if _, err := manifest.Verify(v2, v3, []string{sigFile(t, "chain/v3.json.sig.owner2"), sigFile(t, "chain/v3.json.sig.owner4")}); err != nil {
		t.Fatalf("Verify(v2, v3) = %v", err)
	}
}

func TestVerifyErrors(t *testing.T) {
	v1b := readFile(t, "chain/v1.json")
	v1 := mustParse(t, v1b)
	v2 := mustParse(t, readFile(t, "chain/v2.json"))
	v3 := mustParse(t, readFile(t, "chain/v3.json"))
	s1 := sigFile(t, "chain/v2.json.sig.owner1")
	s3 := sigFile(t, "chain/v2.json.sig.owner3")
	owner1 := loadKey(t, "owner1")
	owner2 := loadKey(t, "owner2")
	owner4 := loadKey(t, "owner4")
	sign := func(k crypto.Signer, m *manifest.Manifest) string {
		s, err := manifest.Sign(k, m.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// Another version 2 whose previous is not v1.
	d := v2.Document()
	d.Previous = manifest.HashOf([]byte("something else"))
	v2wrong := mustParse(t, mustEncode(t, d))
	// A version 1 to test rollbacks.
	d = v1.Document()
	d.Owners.Threshold = 1
	v1other := mustParse(t, mustEncode(t, d))

	// A P1363 (raw r||s) encoding of a valid ECDSA signature.
	der, _ := base64.StdEncoding.DecodeString(s1)
	var rs struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &rs); err != nil {
		t.Fatal(err)
	}
	raw := append(rs.R.FillBytes(make([]byte, 32)), rs.S.FillBytes(make([]byte, 32))...)

	// An ECDSA-only chain (valid/snp.json has one P-256 owner).
	e1 := mustParse(t, readFile(t, "valid/snp.json"))
	d = e1.Document()
	d.Version, d.Previous = 2, e1.Hash()
	e2 := mustParse(t, mustEncode(t, d))
	e2der, _ := base64.StdEncoding.DecodeString(sign(owner1, e2))
	if _, err := asn1.Unmarshal(e2der, &rs); err != nil {
		t.Fatal(err)
	}
	e2raw := append(rs.R.FillBytes(make([]byte, 32)), rs.S.FillBytes(make([]byte, 32))...)
	if _, err := manifest.Verify(e1, e2, []string{base64.StdEncoding.EncodeToString(e2der)}); err != nil {
		t.Fatalf("Verify(e1, e2) = %v", err)
	}

	tests := []struct {
		name       string
		prev, next *manifest.Manifest
		sigs       []string
		want       error
	}{
		{"skip", v1, v3, []string{sign(owner1, v3), sign(owner2, v3)}, manifest.ErrVersionSkip},
		{"rollback", v2, v1other, []string{sign(owner1, v1other), sign(owner2, v1other)}, manifest.ErrVersionRollback},
		{"same version", v2, v2, []string{s1, s3}, manifest.ErrVersionRollback},
		{"wrong previous", v1, v2wrong, []string{sign(owner1, v2wrong), sign(owner2, v2wrong)}, manifest.ErrPreviousMismatch},
		{"too few", v1, v2, []string{s1}, manifest.ErrTooFewSignatures},
		{"none", v1, v2, nil, manifest.ErrTooFewSignatures},
		{"same signature twice", v1, v2, []string{s1, s1}, manifest.ErrDuplicateSigner},
		{"same key twice", v1, v2, []string{s1, sign(owner1, v2)}, manifest.ErrDuplicateSigner},
		{"key only next has", v1, v2, []string{s1, sign(owner4, v2)}, manifest.ErrSignerNotOwner},
		{"outsider", v1, v2, []string{s1, sign(mustECDSA(t), v2)}, manifest.ErrUnknownSigner},
		{"signature of other bytes", v1, v2, []string{s1, sign(owner2, v3)}, manifest.ErrUnknownSigner},
		{"not base64", v1, v2, []string{s1, "not base64!"}, manifest.ErrMalformedSignature},
		{"empty", v1, v2, []string{s1, ""}, manifest.ErrMalformedSignature},
		// v1 has an Ed25519 owner, for whom 64 bytes have the right form.
		{"p1363 encoding, mixed owners", v1, v2, []string{base64.StdEncoding.EncodeToString(raw), s3}, manifest.ErrUnknownSigner},
		{"p1363 encoding", e1, e2, []string{base64.StdEncoding.EncodeToString(e2raw)}, manifest.ErrMalformedSignature},
		{"der with trailing byte", v1, v2, []string{base64.StdEncoding.EncodeToString(append(der, 0)), s3}, manifest.ErrMalformedSignature},
		{"truncated", v1, v2, []string{base64.StdEncoding.EncodeToString(der[:len(der)-3]), s3}, manifest.ErrMalformedSignature},
		{"url base64", v1, v2, []string{strings.NewReplacer("+", "-", "/", "_").Replace(s1) + "-_", s3}, manifest.ErrMalformedSignature},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fps, err := manifest.Verify(tc.prev, tc.next, tc.sigs)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, %v; want %v", fps, err, tc.want)
			}
			for _, other := range []error{manifest.ErrVersionSkip, manifest.ErrVersionRollback, manifest.ErrPreviousMismatch,
				manifest.ErrTooFewSignatures, manifest.ErrDuplicateSigner, manifest.ErrSignerNotOwner,
				manifest.ErrUnknownSigner, manifest.ErrMalformedSignature} {
				if other != tc.want && errors.Is(err, other) {
					t.Errorf("error %v also matches %v", err, other)
				}
			}
		})
	}
	many := make([]string, 33)
	for i := range many {
		many[i] = s1
	}
	if _, err := manifest.Verify(v1, v2, many); err == nil || !strings.Contains(err.Error(), "33 signatures") {
		t.Errorf("Verify(33 signatures) = %v", err)
	}
	// Signatures with surrounding whitespace (files end in a newline) work.
	if _, err := manifest.Verify(v1, v2, []string{s1 + "\n", " " + s3}); err != nil {
		t.Errorf("Verify with whitespace = %v", err)
	}
}

func mustEncode(t testing.TB, d *manifest.Document) []byte {
	t.Helper()
	b, err := manifest.Encode(d)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustECDSA(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSignRoundTrip(t *testing.T) {
	body := []byte("manifest bytes")
	_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for _, k := range []crypto.Signer{mustECDSA(t), edPriv} {
		sig, err := manifest.Sign(k, body)
		if err != nil {
			t.Fatal(err)
		}
		if err := manifest.VerifyBlob(k.Public(), body, sig); err != nil {
			t.Errorf("VerifyBlob(%T) = %v", k, err)
		}
		if err := manifest.VerifyBlob(k.Public(), []byte("other"), sig); !errors.Is(err, manifest.ErrBadSignature) {
			t.Errorf("VerifyBlob(other body) = %v, want ErrBadSignature", err)
		}
	}
	if _, err := manifest.Sign(p384, body); err == nil {
		t.Error("Sign accepted a P-384 key")
	}
	if err := manifest.VerifyBlob(p384.Public(), body, "AAAA"); err == nil {
		t.Error("VerifyBlob accepted a P-384 key")
	}
}

func TestParsePrivateKey(t *testing.T) {
	k := mustECDSA(t)
	sec1, _ := x509.MarshalECPrivateKey(k)
	if _, err := manifest.ParsePrivateKey(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), nil); err != nil {
		t.Errorf("ParsePrivateKey(SEC 1) = %v", err)
	}
	if _, err := manifest.ParsePrivateKey([]byte("nothing"), nil); err == nil {
		t.Error("ParsePrivateKey(garbage) succeeded")
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(p384)
	if _, err := manifest.ParsePrivateKey(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil); err == nil {
		t.Error("ParsePrivateKey(P-384) succeeded")
	}
}

// TestOpenSSL signs manifests with the openssl binary, as owners do, and
// checks that openssl verifies what Sign produces.
func TestOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	run := func(stdin []byte, args ...string) []byte {
		t.Helper()
		cmd := exec.Command(openssl, args...)
		cmd.Dir = dir
		if stdin != nil {
			cmd.Stdin = strings.NewReader(string(stdin))
		}
		out, err := cmd.Output()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				t.Fatalf("openssl %v: %v\n%s", args, err, ee.Stderr)
			}
			t.Fatalf("openssl %v: %v", args, err)
		}
		return out
	}
	run(nil, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ec.key")
	run(nil, "genpkey", "-algorithm", "ed25519", "-out", "ed.key")
	ecPub := run(nil, "pkey", "-in", "ec.key", "-pubout")
	edPub := run(nil, "pkey", "-in", "ed.key", "-pubout")

	d := mustParse(t, readFile(t, "valid/snp.json")).Document()
	d.Owners = manifest.Owners{Threshold: 2, Keys: []string{string(ecPub), string(edPub)}}
	v1b := mustEncode(t, d)
	v1 := mustParse(t, v1b)
	d.Version, d.Previous = 2, v1.Hash()
	v2b := mustEncode(t, d)
	v2 := mustParse(t, v2b)
	if err := os.WriteFile(filepath.Join(dir, "v2.json"), v2b, 0o600); err != nil {
		t.Fatal(err)
	}

	// The commands of docs/manifest.md: openssl writes DER (ECDSA) or raw
	// (Ed25519) signature bytes, which owners base64-encode.
	ecSig := base64.StdEncoding.EncodeToString(run(v2b, "dgst", "-sha256", "-sign", "ec.key"))
	edSig := base64.StdEncoding.EncodeToString(run(nil, "pkeyutl", "-sign", "-inkey", "ed.key", "-rawin", "-in", "v2.json"))
	fps, err := manifest.Verify(v1, v2, []string{ecSig, edSig})
	if err != nil {
		t.Fatalf("Verify(openssl signatures) = %v", err)
	}
	if len(fps) != 2 {
		t.Errorf("signers = %v", fps)
	}
	// One openssl signature is below the threshold of 2.
	if _, err := manifest.Verify(v1, v2, []string{ecSig}); !errors.Is(err, manifest.ErrTooFewSignatures) {
		t.Errorf("Verify(one signature) = %v", err)
	}

	// And the other way: openssl verifies Sign's output.
	k, err := manifest.ParsePrivateKey(readFile(t, "keys/owner1.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := manifest.Sign(k, v2b)
	if err != nil {
		t.Fatal(err)
	}
	rawSig, _ := base64.StdEncoding.DecodeString(sig)
	if err := os.WriteFile(filepath.Join(dir, "sig.der"), rawSig, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "owner1.pub"), readFile(t, "keys/owner1.pub"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := run(v2b, "dgst", "-sha256", "-verify", "owner1.pub", "-signature", "sig.der"); !strings.Contains(string(out), "Verified OK") {
		t.Errorf("openssl dgst -verify: %s", out)
	}
	edKey, err := manifest.ParsePrivateKey(readFile(t, "keys/owner3.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	sig, _ = manifest.Sign(edKey, v2b)
	rawSig, _ = base64.StdEncoding.DecodeString(sig)
	if err := os.WriteFile(filepath.Join(dir, "ed.sig"), rawSig, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "owner3.pub"), readFile(t, "keys/owner3.pub"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := run(nil, "pkeyutl", "-verify", "-pubin", "-inkey", "owner3.pub", "-rawin", "-in", "v2.json", "-sigfile", "ed.sig"); !strings.Contains(string(out), "Signature Verified Successfully") {
		t.Errorf("openssl pkeyutl -verify: %s", out)
	}
}

// TestCosignKey signs with a key in the format `cosign generate-key-pair`
// writes (an "ENCRYPTED SIGSTORE PRIVATE KEY" PEM block) and verifies the
// signature as an owner signature.
func TestCosignKey(t *testing.T) {
	k := mustECDSA(t)
	pass := []byte("correct horse")
	enc, err := cryptoutils.MarshalPrivateKeyToEncryptedDER(k, func(bool) ([]byte, error) { return pass, nil })
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: string(cryptoutils.EncryptedSigstorePrivateKeyPEMType), Bytes: enc})
	if _, err := manifest.ParsePrivateKey(keyPEM, []byte("wrong")); err == nil {
		t.Error("ParsePrivateKey accepted a wrong password")
	}
	signer, err := manifest.ParsePrivateKey(keyPEM, pass)
	if err != nil {
		t.Fatalf("ParsePrivateKey(cosign key) = %v", err)
	}
	pubPEM, err := cryptoutils.MarshalPublicKeyToPEM(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	d := mustParse(t, readFile(t, "valid/snp.json")).Document()
	d.Owners.Keys = []string{string(pubPEM)}
	v1 := mustParse(t, mustEncode(t, d))
	d.Version, d.Previous = 2, v1.Hash()
	v2 := mustParse(t, mustEncode(t, d))
	sig, err := manifest.Sign(signer, v2.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := manifest.Verify(v1, v2, []string{sig}); err != nil {
		t.Errorf("Verify(cosign-key signature) = %v", err)
	}
}
