package sim

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/pcs"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	"github.com/kbs-dev/kbs/internal/atomicfile"
	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/attest"
)

// The simulated TDX TEE.
//
// GenerateTDX creates, in a directory, a fake Intel PKI with Intel's names:
// a root CA "Intel SGX Root CA", an intermediate "Intel SGX PCK Platform CA",
// a PCK leaf "Intel SGX PCK Certificate" with the SGX extensions (FMSPC,
// PCEID, TCB) go-tdx-guest reads, a "Intel SGX TCB Signing" certificate, the
// quoting enclave's attestation key, and signed collateral (TCB info, QE
// identity, PCK CRL, root CA CRL) in a collateral cache. A sim issuer makes
// v4 quotes with the fields of a Sapphire Rapids quote (header, QE report),
// the TD fields of TDXOptions, and any REPORT_DATA, signed under that PKI.
//
// The sim root is a different key than Intel's: quotes from it verify only
// with TDXRoots among the verifier's trusted roots (tdx.Options.TrustedRoots)
// and its collateral (TDXCollateralDir), and their claims carry
// Simulated = true. Verification runs the same code as for hardware quotes,
// including go-tdx-guest's collateral checks against the sim collateral. The
// sim's certificates name CRL distribution points under
// attest.SimTDXCRLPrefix, by which tdx.IsSimulated routes its quotes.

// Files of a sim directory. All names start with "tdx-", so the directory may
// hold other platforms' material too.
const (
	tdxRootCert       = "tdx-root.pem"
	tdxRootKey        = "tdx-root.key"
	tdxCACert         = "tdx-pck-ca.pem"
	tdxCAKey          = "tdx-pck-ca.key"
	tdxPCKCert        = "tdx-pck.pem"
	tdxPCKKey         = "tdx-pck.key"
	tdxTCBSigningCert = "tdx-tcb-signing.pem"
	tdxTCBSigningKey  = "tdx-tcb-signing.key"
	tdxAttestationKey = "tdx-attestation.key"
	// tdxCollateral is the collateral cache inside a sim directory
	// (attest.SimTDXCollateralDir from the sim's root.pem).
	tdxCollateral = "tdx-collateral"
)

// TDXCollateralDir returns the collateral cache of the TDX sim in dir, in
// kbs/attest/tdx/pcscache's format: what a verifier of its quotes reads as
// tdx.Options.CollateralDir.
func TDXCollateralDir(dir string) string { return filepath.Join(dir, tdxCollateral) }

// tdxRootCRLURL is the CRL distribution point of the sim root. It is never
// fetched: offline verification finds the CRL in the collateral cache.
const tdxRootCRLURL = attest.SimTDXCRLPrefix + "tdx/IntelSGXRootCA.der"

// intelQEVendorID is QE_VENDOR_ID of quotes from Intel's quoting enclave,
// which sim quotes claim to come from.
var intelQEVendorID = []byte{0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07}

// The platform the sim PCK certificate describes: the values of the PCK
// certificate in go-tdx-guest's Sapphire Rapids sample quote.
var (
	tdxFMSPC  = mustHex(TDXFMSPC)
	tdxPCEID  = []byte{0x00, 0x00}
	tdxPCESVN = 11
	tdxCPUSVN = []byte{3, 3, 2, 2, 2, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0}
	tdxPPID   = sha256First16("kbs simulated TDX PPID")
)

// TDXFMSPC is the FMSPC of the simulated TDX platform: the value of the PCK
// certificate in go-tdx-guest's Sapphire Rapids sample quote. Its TCB info
// is the sim collateral's tcbinfo-<TDXFMSPC>.json.
const TDXFMSPC = "50806f000000"

// The quoting enclave of the sim quotes: header and QE report fields of
// go-tdx-guest's Sapphire Rapids sample quote (tdx_prod_quote_SPR_E4.dat).
var (
	tdxHeaderUserData = mustHex("739c3f292a15bace1f726351a70d4b7900000000")
	tdxQECPUSVN       = mustHex("04040d0f03ff00030000000000000000")
	tdxQEAttributes   = mustHex("1500000000000000e700000000000000")
	tdxQEMREnclave    = mustHex("853e298f3b7cde28b06493d06fb2ad6f9566a97fea6d3de66236b2af1a35150f")
	tdxQEMRSigner     = mustHex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
	tdxQEProdID       = uint32(2)
	tdxQEISVSVN       = uint32(4)
	tdxQEAuthData     = func() []byte {
		b := make([]byte, 32)
		for i := range b {
			b[i] = byte(i)
		}
		return b
	}()
)

// Defaults of TDXOptions. The measurements are SHA-384 of fixed labels, so
// manifests for development can name them; the rest are the values of
// go-tdx-guest's Sapphire Rapids sample quote.
var (
	DefaultTDXMRTD = sha512.Sum384([]byte("kbs simulated TDX MRTD v1"))
	DefaultTDXRTMR = [4][48]byte{
		sha512.Sum384([]byte("kbs simulated TDX RTMR0 v1")),
		sha512.Sum384([]byte("kbs simulated TDX RTMR1 v1")),
		sha512.Sum384([]byte("kbs simulated TDX RTMR2 v1")),
		sha512.Sum384([]byte("kbs simulated TDX RTMR3 v1")),
	}
	// DefaultTDXMRSeam is MRSEAM of the sample quote's TDX module.
	DefaultTDXMRSeam = [48]byte(mustHex("2fd279c16164a93dd5bf373d834328d46008c2b693af9ebb865b08b2ced320c9a89b4869a9fab60fbe9d0c5a5363c656"))
	// DefaultTDXTEETCBSVN is TEE_TCB_SVN of the sample quote.
	DefaultTDXTEETCBSVN = [16]byte{3, 0, 4}
)

// DefaultTDXXFAM is XFAM of the sample quote (x87, SSE, AVX, AVX-512, PKRU,
// AMX state enabled).
const DefaultTDXXFAM uint64 = 0x61ae7

// DefaultTDXTDAttributes is 0: no debug, no optional features.
const DefaultTDXTDAttributes uint64 = 0

// TDXOptions are the TD fields of simulated quotes. A zero field takes its
// default: DefaultTDXMRTD, DefaultTDXRTMR, 48 zero bytes for MRCONFIGID,
// MROWNER and MROWNERCONFIG, DefaultTDXXFAM, DefaultTDXTEETCBSVN,
// DefaultTDXMRSeam. TDAttributes is used as given (0 is the default; set bit
// 0 to make a debug TD, which Verify rejects).
//
// The sim collateral matches TEE_TCB_SVN values whose second byte (the TDX
// module major version) is 0 to 16.
type TDXOptions struct {
	MRTD          []byte    // 48 bytes
	RTMR          [4][]byte // 48 bytes each
	MRConfigID    []byte    // 48 bytes
	MROwner       []byte    // 48 bytes
	MROwnerConfig []byte    // 48 bytes
	XFAM          uint64
	TDAttributes  uint64
	TEETCBSVN     []byte // 16 bytes
	MRSeam        []byte // 48 bytes

	// V5 issues quotes of version 5 with a TD report 1.5 body, which adds
	// TEE_TCB_SVN2 (default: TEETCBSVN) and MRSERVICETD (default zero).
	V5          bool
	TEETCBSVN2  []byte // 16 bytes
	MRServiceTD []byte // 48 bytes
}

// td15 returns the TD report 1.5 fields of o, or nil for a v4 quote.
func (o TDXOptions) td15(body *pb.TDQuoteBody) ([]byte, error) {
	if !o.V5 {
		if o.TEETCBSVN2 != nil || o.MRServiceTD != nil {
			return nil, errors.New("tdx sim: TEETCBSVN2 and MRServiceTD need V5")
		}
		return nil, nil
	}
	svn2, svc := o.TEETCBSVN2, o.MRServiceTD
	if svn2 == nil {
		svn2 = body.TeeTcbSvn
	}
	if svc == nil {
		svc = make([]byte, abi.MrTdSize)
	}
	if len(svn2) != 16 || len(svc) != abi.MrTdSize {
		return nil, fmt.Errorf("tdx sim: TEETCBSVN2 and MRServiceTD are %d and %d bytes, want 16 and 48", len(svn2), len(svc))
	}
	return append(bytes.Clone(svn2), svc...), nil
}

func (o TDXOptions) body() (*pb.TDQuoteBody, error) {
	pick := func(name string, v []byte, def []byte) ([]byte, error) {
		if v == nil {
			return bytes.Clone(def), nil
		}
		if len(v) != len(def) {
			return nil, fmt.Errorf("tdx sim: TDXOptions.%s is %d bytes, want %d", name, len(v), len(def))
		}
		return bytes.Clone(v), nil
	}
	zero := make([]byte, abi.MrTdSize)
	b := &pb.TDQuoteBody{
		MrSignerSeam:   make([]byte, abi.MrTdSize),
		SeamAttributes: make([]byte, 8),
		TdAttributes:   binary.LittleEndian.AppendUint64(nil, o.TDAttributes),
		Rtmrs:          make([][]byte, 4),
	}
	xfam := o.XFAM
	if xfam == 0 {
		xfam = DefaultTDXXFAM
	}
	b.Xfam = binary.LittleEndian.AppendUint64(nil, xfam)
	var err error
	for _, f := range []struct {
		name   string
		dst    *[]byte
		v, def []byte
	}{
		{"MRTD", &b.MrTd, o.MRTD, DefaultTDXMRTD[:]},
		{"MRConfigID", &b.MrConfigId, o.MRConfigID, zero},
		{"MROwner", &b.MrOwner, o.MROwner, zero},
		{"MROwnerConfig", &b.MrOwnerConfig, o.MROwnerConfig, zero},
		{"TEETCBSVN", &b.TeeTcbSvn, o.TEETCBSVN, DefaultTDXTEETCBSVN[:]},
		{"MRSeam", &b.MrSeam, o.MRSeam, DefaultTDXMRSeam[:]},
		{"RTMR[0]", &b.Rtmrs[0], o.RTMR[0], DefaultTDXRTMR[0][:]},
		{"RTMR[1]", &b.Rtmrs[1], o.RTMR[1], DefaultTDXRTMR[1][:]},
		{"RTMR[2]", &b.Rtmrs[2], o.RTMR[2], DefaultTDXRTMR[2][:]},
		{"RTMR[3]", &b.Rtmrs[3], o.RTMR[3], DefaultTDXRTMR[3][:]},
	} {
		if *f.dst, err = pick(f.name, f.v, f.def); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// TDXRoots returns the root certificate of the sim PKI in dir, to pass as
// Options.TrustedRoots.
func TDXRoots(dir string) ([]*x509.Certificate, error) {
	c, err := readTDXCert(filepath.Join(dir, tdxRootCert))
	if err != nil {
		return nil, fmt.Errorf("tdx sim: root (run GenerateTDX first): %w", err)
	}
	return []*x509.Certificate{c}, nil
}

// tdxPKI is the loaded material of a sim directory.
type tdxPKI struct {
	root, ca, pck, tcbSigning             *x509.Certificate
	rootKey, caKey, pckKey, tcbSigningKey *ecdsa.PrivateKey
	attestationKey                        *ecdsa.PrivateKey
}

// GenerateTDX creates the sim PKI in dir (mode 0700), keeping whatever
// material already exists there: it is idempotent, and a broker restarted on
// the same directory keeps its roots. Missing certificates are issued under
// the existing parents; material that does not fit together is an error,
// never overwritten. The collateral cache is (re)issued when it is missing,
// does not verify, or expires within 30 days.
//
// The files (PEM; keys PKCS#8, mode 0600):
//
//	tdx-root.pem, tdx-root.key            "Intel SGX Root CA" (self-signed, 25 years)
//	tdx-pck-ca.pem, tdx-pck-ca.key        "Intel SGX PCK Platform CA" (20 years)
//	tdx-pck.pem, tdx-pck.key              "Intel SGX PCK Certificate" with SGX extensions (10 years)
//	tdx-tcb-signing.pem, tdx-tcb-signing.key  "Intel SGX TCB Signing" (10 years)
//	tdx-attestation.key                   the quoting enclave's attestation key
//	tdx-collateral/                       TCB info, QE identity, PCK CRL, root CRL (1 year)
//
// The CRL distribution points of the sim root, CA and TCB signing
// certificates start with https://kbs-sim.invalid/, which tells sim quotes
// apart at a glance; it is never a reason to trust them.
func GenerateTDX(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tdx sim: dir: %w", err)
	}
	now := clock.Now().UTC().Truncate(time.Second)
	start := now.Add(-time.Hour)
	rootName := intelName("Intel SGX Root CA")

	root, rootKey, err := loadOrIssue(dir, tdxRootCert, tdxRootKey, nil, nil, &x509.Certificate{
		Subject: rootName, Issuer: rootName,
		NotBefore: start, NotAfter: start.AddDate(25, 0, 0),
		IsCA: true, BasicConstraintsValid: true, MaxPathLen: 1,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		CRLDistributionPoints: []string{tdxRootCRLURL},
	})
	if err != nil {
		return err
	}
	ca, caKey, err := loadOrIssue(dir, tdxCACert, tdxCAKey, root, rootKey, &x509.Certificate{
		Subject:   intelName("Intel SGX PCK Platform CA"),
		NotBefore: start, NotAfter: start.AddDate(20, 0, 0),
		IsCA: true, BasicConstraintsValid: true, MaxPathLen: 0, MaxPathLenZero: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		CRLDistributionPoints: []string{tdxRootCRLURL},
	})
	if err != nil {
		return err
	}
	sgxExt, err := tdxSGXExtension()
	if err != nil {
		return err
	}
	if _, _, err := loadOrIssue(dir, tdxPCKCert, tdxPCKKey, ca, caKey, &x509.Certificate{
		Subject:   intelName("Intel SGX PCK Certificate"),
		NotBefore: start, NotAfter: start.AddDate(10, 0, 0),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
		CRLDistributionPoints: []string{pcs.PckCrlURL("platform")},
		ExtraExtensions:       []pkix.Extension{{Id: pcs.OidSgxExtension, Value: sgxExt}},
	}); err != nil {
		return err
	}
	if _, _, err := loadOrIssue(dir, tdxTCBSigningCert, tdxTCBSigningKey, root, rootKey, &x509.Certificate{
		Subject:   intelName("Intel SGX TCB Signing"),
		NotBefore: start, NotAfter: start.AddDate(10, 0, 0),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
		CRLDistributionPoints: []string{tdxRootCRLURL},
	}); err != nil {
		return err
	}
	if _, err := loadOrCreateKey(filepath.Join(dir, tdxAttestationKey)); err != nil {
		return err
	}
	pki, err := loadTDX(dir)
	if err != nil {
		return err
	}
	// Collateral: keep it while it verifies 30 days from now.
	if checkTDXCollateral(dir, pki, now.AddDate(0, 0, 30)) == nil {
		return nil
	}
	// Issued a minute ago, so that a verifier whose clock was read just
	// before GenerateTDX finds it current.
	if err := writeTDXCollateral(dir, pki, now.Add(-time.Minute).Truncate(time.Second), TDXLevel{}); err != nil {
		return err
	}
	if err := checkTDXCollateral(dir, pki, now); err != nil {
		return fmt.Errorf("tdx sim: freshly generated sim collateral does not verify: %w", err)
	}
	return nil
}

func intelName(cn string) pkix.Name {
	return pkix.Name{
		CommonName:   cn,
		Organization: []string{"Intel Corporation"},
		Locality:     []string{"Santa Clara"},
		Province:     []string{"CA"},
		Country:      []string{"US"},
	}
}

// loadOrIssue loads certFile/keyFile from dir, checking that they belong
// together and to parent, or issues them from tmpl when both are missing
// (parent nil: self-signed).
func loadOrIssue(dir, certFile, keyFile string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, tmpl *x509.Certificate) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPath, keyPath := filepath.Join(dir, certFile), filepath.Join(dir, keyFile)
	_, certErr := os.Stat(certPath)
	_, keyErr := os.Stat(keyPath)
	switch {
	case certErr == nil && keyErr == nil:
		cert, err := readTDXCert(certPath)
		if err != nil {
			return nil, nil, fmt.Errorf("tdx sim: %s: %w", certFile, err)
		}
		key, err := readTDXKey(keyPath)
		if err != nil {
			return nil, nil, fmt.Errorf("tdx sim: %s: %w", keyFile, err)
		}
		if !key.PublicKey.Equal(cert.PublicKey) {
			return nil, nil, fmt.Errorf("tdx sim: %s does not hold the key of %s", keyFile, certFile)
		}
		issuer := parent
		if issuer == nil {
			issuer = cert
		}
		if err := cert.CheckSignatureFrom(issuer); err != nil {
			return nil, nil, fmt.Errorf("tdx sim: %s is not signed by its parent: %w", certFile, err)
		}
		return cert, key, nil
	case !errors.Is(certErr, os.ErrNotExist) || !errors.Is(keyErr, os.ErrNotExist):
		return nil, nil, fmt.Errorf("tdx sim: %s and %s: only one of them exists (%v, %v); remove the other to regenerate", certFile, keyFile, certErr, keyErr)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber, err = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl.SignatureAlgorithm = x509.ECDSAWithSHA256
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	ski := sha256.Sum256(spki)
	tmpl.SubjectKeyId = ski[:20]
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, fmt.Errorf("tdx sim: issuing %s: %w", certFile, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	if err := writeTDXKey(keyPath, key); err != nil {
		return nil, nil, err
	}
	if err := atomicfile.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

func loadOrCreateKey(path string) (*ecdsa.PrivateKey, error) {
	key, err := readTDXKey(path)
	if err == nil {
		return key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tdx sim: %s: %w", filepath.Base(path), err)
	}
	if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, err
	}
	return key, writeTDXKey(path, key)
}

func readTDXCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

func readTDXKey(path string) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PEM PKCS#8 private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, errors.New("not an ECDSA P-256 key")
	}
	return ek, nil
}

func writeTDXKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func loadTDX(dir string) (*tdxPKI, error) {
	p := &tdxPKI{}
	var err error
	for _, c := range []struct {
		file string
		dst  **x509.Certificate
	}{{tdxRootCert, &p.root}, {tdxCACert, &p.ca}, {tdxPCKCert, &p.pck}, {tdxTCBSigningCert, &p.tcbSigning}} {
		if *c.dst, err = readTDXCert(filepath.Join(dir, c.file)); err != nil {
			return nil, fmt.Errorf("tdx sim: %s (run GenerateTDX first): %w", c.file, err)
		}
	}
	for _, k := range []struct {
		file string
		dst  **ecdsa.PrivateKey
	}{{tdxRootKey, &p.rootKey}, {tdxCAKey, &p.caKey}, {tdxPCKKey, &p.pckKey}, {tdxTCBSigningKey, &p.tcbSigningKey}, {tdxAttestationKey, &p.attestationKey}} {
		if *k.dst, err = readTDXKey(filepath.Join(dir, k.file)); err != nil {
			return nil, fmt.Errorf("tdx sim: %s (run GenerateTDX first): %w", k.file, err)
		}
	}
	if !p.pckKey.PublicKey.Equal(p.pck.PublicKey) {
		return nil, errors.New("tdx sim: PCK key does not match the PCK certificate")
	}
	return p, nil
}

// tdxSGXExtension encodes the SGX extension of the sim PCK certificate
// (OID 1.2.840.113741.1.13.1): PPID, TCB (16 component SVNs, PCESVN,
// CPUSVN), PCEID, FMSPC and SGX type, as Intel's PCK certificates carry it.
func tdxSGXExtension() ([]byte, error) {
	type octetAttr struct {
		Type  asn1.ObjectIdentifier
		Value []byte
	}
	type intAttr struct {
		Type  asn1.ObjectIdentifier
		Value int
	}
	type enumAttr struct {
		Type  asn1.ObjectIdentifier
		Value asn1.Enumerated
	}
	type seqAttr struct {
		Type  asn1.ObjectIdentifier
		Value []asn1.RawValue
	}
	raw := func(v any) (asn1.RawValue, error) {
		b, err := asn1.Marshal(v)
		return asn1.RawValue{FullBytes: b}, err
	}
	var tcb []asn1.RawValue
	for i := 0; i < 16; i++ {
		r, err := raw(intAttr{append(asn1.ObjectIdentifier{}, append(pcs.OidTCB, i+1)...), int(tdxCPUSVN[i])})
		if err != nil {
			return nil, err
		}
		tcb = append(tcb, r)
	}
	r, err := raw(intAttr{pcs.OidPCESvn, tdxPCESVN})
	if err != nil {
		return nil, err
	}
	tcb = append(tcb, r)
	if r, err = raw(octetAttr{pcs.OidCPUSvn, tdxCPUSVN}); err != nil {
		return nil, err
	}
	tcb = append(tcb, r)

	var ext []asn1.RawValue
	for _, v := range []any{
		octetAttr{pcs.OidPPID, tdxPPID},
		seqAttr{pcs.OidTCB, tcb},
		octetAttr{pcs.OidPCEID, tdxPCEID},
		octetAttr{pcs.OidFMSPC, tdxFMSPC},
		enumAttr{asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 5}, 1}, // SGX type: Scalable
	} {
		r, err := raw(v)
		if err != nil {
			return nil, err
		}
		ext = append(ext, r)
	}
	return asn1.Marshal(ext)
}

// TDXIssuer issues sim quotes. The certification data (QE report, its
// signature, the PCK chain) is the same for every quote; only the TD quote
// body and the quote signature change.
type TDXIssuer struct {
	attestationKey *ecdsa.PrivateKey
	header         *pb.Header
	body           *pb.TDQuoteBody
	td15           []byte // TEE_TCB_SVN2 || MRSERVICETD of a v5 quote; nil for v4
	signedData     *pb.Ecdsa256BitQuoteV4AuthData
	signedDataSize uint32
}

// NewTDXIssuer returns an issuer of TDX quotes signed under the sim PKI in
// dir (see GenerateTDX), with the TD fields of opts and any REPORT_DATA.
func NewTDXIssuer(dir string, opts TDXOptions) (*TDXIssuer, error) {
	pki, err := loadTDX(dir)
	if err != nil {
		return nil, err
	}
	return newTDXIssuer(pki, opts)
}

func newTDXIssuer(pki *tdxPKI, opts TDXOptions) (*TDXIssuer, error) {
	body, err := opts.body()
	if err != nil {
		return nil, err
	}
	td15, err := opts.td15(body)
	if err != nil {
		return nil, err
	}
	pub, err := pki.attestationKey.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		return nil, err
	}
	attKey := pub[1:]
	rd := sha256.Sum256(append(bytes.Clone(attKey), tdxQEAuthData...))
	qeReport := &pb.EnclaveReport{
		CpuSvn:     tdxQECPUSVN,
		MiscSelect: 0,
		Reserved1:  make([]byte, 28),
		Attributes: tdxQEAttributes,
		MrEnclave:  tdxQEMREnclave,
		Reserved2:  make([]byte, 32),
		MrSigner:   tdxQEMRSigner,
		Reserved3:  make([]byte, 96),
		IsvProdId:  tdxQEProdID,
		IsvSvn:     tdxQEISVSVN,
		Reserved4:  make([]byte, 60),
		ReportData: append(rd[:], make([]byte, 32)...),
	}
	qeRaw, err := abi.EnclaveReportToAbiBytes(qeReport)
	if err != nil {
		return nil, err
	}
	qeSig, err := rawSign(pki.pckKey, qeRaw)
	if err != nil {
		return nil, err
	}
	var chain []byte
	for _, c := range []*x509.Certificate{pki.pck, pki.ca, pki.root} {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	certDataSize := uint32(len(qeRaw) + 64 + 2 + len(tdxQEAuthData) + 6 + len(chain))
	s := &TDXIssuer{
		attestationKey: pki.attestationKey,
		header: &pb.Header{
			Version:            abi.QuoteVersion,
			AttestationKeyType: abi.AttestationKeyType,
			TeeType:            abi.TeeTDX,
			QeSvn:              []byte{0, 0},
			PceSvn:             []byte{0, 0},
			QeVendorId:         intelQEVendorID,
			UserData:           tdxHeaderUserData,
		},
		body: body,
		td15: td15,
		signedData: &pb.Ecdsa256BitQuoteV4AuthData{
			Signature:           make([]byte, 64),
			EcdsaAttestationKey: attKey,
			CertificationData: &pb.CertificationData{
				CertificateDataType: 6,
				Size:                certDataSize,
				QeReportCertificationData: &pb.QEReportCertificationData{
					QeReport:          qeReport,
					QeReportSignature: qeSig,
					QeAuthData:        &pb.QeAuthData{ParsedDataSize: uint32(len(tdxQEAuthData)), Data: tdxQEAuthData},
					PckCertificateChainData: &pb.PCKCertificateChainData{
						CertificateDataType: 5,
						Size:                uint32(len(chain)),
						PckCertChain:        chain,
					},
				},
			},
		},
		signedDataSize: 64 + 64 + 6 + certDataSize,
	}
	return s, nil
}

// Platform returns attest.TDX.
func (s *TDXIssuer) Platform() attest.Platform { return attest.TDX }

// Issue returns a quote binding reportData: v4, or v5 with a TD report 1.5
// body (TDXOptions.V5).
func (s *TDXIssuer) Issue(ctx context.Context, reportData [attest.ReportDataSize]byte) (attest.Evidence, error) {
	if err := ctx.Err(); err != nil {
		return attest.Evidence{}, err
	}
	b := s.body
	body := &pb.TDQuoteBody{
		TeeTcbSvn: b.TeeTcbSvn, MrSeam: b.MrSeam, MrSignerSeam: b.MrSignerSeam, SeamAttributes: b.SeamAttributes,
		TdAttributes: b.TdAttributes, Xfam: b.Xfam, MrTd: b.MrTd, MrConfigId: b.MrConfigId, MrOwner: b.MrOwner,
		MrOwnerConfig: b.MrOwnerConfig, Rtmrs: b.Rtmrs, ReportData: reportData[:],
	}
	// The attestation key signs the header and the TD quote body.
	header, err := abi.HeaderToAbiBytes(s.header)
	if err != nil {
		return attest.Evidence{}, fmt.Errorf("tdx sim: header: %w", err)
	}
	bodyRaw, err := abi.TdQuoteBodyToAbiBytes(body)
	if err != nil {
		return attest.Evidence{}, fmt.Errorf("tdx sim: TD quote body: %w", err)
	}
	sig, err := rawSign(s.attestationKey, append(header, bodyRaw...))
	if err != nil {
		return attest.Evidence{}, err
	}
	raw, err := abi.QuoteToAbiBytes(&pb.QuoteV4{
		Header:         s.header,
		TdQuoteBody:    body,
		SignedDataSize: s.signedDataSize,
		SignedData: &pb.Ecdsa256BitQuoteV4AuthData{
			Signature:           sig,
			EcdsaAttestationKey: s.signedData.GetEcdsaAttestationKey(),
			CertificationData:   s.signedData.GetCertificationData(),
		},
	})
	if err != nil {
		return attest.Evidence{}, fmt.Errorf("tdx sim: quote: %w", err)
	}
	if s.td15 != nil {
		if raw, err = s.v5(raw, header, bodyRaw); err != nil {
			return attest.Evidence{}, err
		}
	}
	return attest.Evidence{Platform: attest.TDX, Data: raw}, nil
}

// v5 turns the v4 quote raw into a v5 quote with a TD report 1.5 body
// (Intel TDX DCAP quote format v5): version 5 in the header, the body
// descriptor (type 3, 648 bytes) before the body, TEE_TCB_SVN2 and
// MRSERVICETD after it, and the attestation key's signature over all of
// that. The signed data after the signature is the v4 quote's.
func (s *TDXIssuer) v5(raw, header, bodyRaw []byte) ([]byte, error) {
	const v4BodyEnd = 48 + 584
	h := bytes.Clone(header)
	binary.LittleEndian.PutUint16(h, 5)
	signed := append(h, 3, 0)
	signed = binary.LittleEndian.AppendUint32(signed, uint32(len(bodyRaw)+len(s.td15)))
	signed = append(append(signed, bodyRaw...), s.td15...)
	sig, err := rawSign(s.attestationKey, signed)
	if err != nil {
		return nil, err
	}
	out := append(bytes.Clone(signed), raw[v4BodyEnd:v4BodyEnd+4]...) // signed data size
	out = append(out, sig...)
	return append(out, raw[v4BodyEnd+4+64:]...), nil
}

// rawSign signs SHA-256(msg) deterministically (RFC 6979), so that the QE
// report of an issuer is the same across restarts, as on hardware, and
// returns r || s, 32 bytes each.
func rawSign(key *ecdsa.PrivateKey, msg []byte) ([]byte, error) {
	h := sha256.Sum256(msg)
	der, err := key.Sign(nil, h[:], crypto.SHA256)
	if err != nil {
		return nil, err
	}
	var sig struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(der, &sig); err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("tdx sim: decoding signature: %v", err)
	}
	out := make([]byte, 64)
	sig.R.FillBytes(out[:32])
	sig.S.FillBytes(out[32:])
	return out, nil
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func sha256First16(label string) []byte {
	h := sha256.Sum256([]byte(label))
	return h[:16]
}
