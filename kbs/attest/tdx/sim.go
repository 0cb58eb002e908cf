package tdx

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
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
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
// GenerateSim creates, in a directory, a fake Intel PKI with Intel's names:
// a root CA "Intel SGX Root CA", an intermediate "Intel SGX PCK Platform CA",
// a PCK leaf "Intel SGX PCK Certificate" with the SGX extensions (FMSPC,
// PCEID, TCB) go-tdx-guest reads, a "Intel SGX TCB Signing" certificate, the
// quoting enclave's attestation key, and signed collateral (TCB info, QE
// identity, PCK CRL, root CA CRL) in a collateral cache. A sim issuer makes
// v4 quotes with the fields of a Sapphire Rapids quote (header, QE report),
// the TD fields of SimOptions, and any REPORT_DATA, signed under that PKI.
//
// The sim root is a different key than Intel's: quotes from it verify only
// with SimRoots among Options.TrustedRoots, and their claims carry
// Simulated = true. Verification runs the same code as for hardware quotes,
// including go-tdx-guest's collateral checks against the sim collateral.

// Files of a sim directory. All names start with "tdx-", so the directory may
// hold other platforms' material too.
const (
	simRootCert       = "tdx-root.pem"
	simRootKey        = "tdx-root.key"
	simCACert         = "tdx-pck-ca.pem"
	simCAKey          = "tdx-pck-ca.key"
	simPCKCert        = "tdx-pck.pem"
	simPCKKey         = "tdx-pck.key"
	simTCBSigningCert = "tdx-tcb-signing.pem"
	simTCBSigningKey  = "tdx-tcb-signing.key"
	simAttestationKey = "tdx-attestation.key"
	// SimCollateralDir is the collateral cache inside a sim directory.
	SimCollateralDir = "tdx-collateral"
)

// simRootCRLURL is the CRL distribution point of the sim root. It is never
// fetched: offline verification finds the CRL in the collateral cache.
const simRootCRLURL = "https://kbs-sim.invalid/tdx/IntelSGXRootCA.der"

// The platform the sim PCK certificate describes: the values of the PCK
// certificate in go-tdx-guest's Sapphire Rapids sample quote.
var (
	simFMSPC  = []byte{0x50, 0x80, 0x6f, 0x00, 0x00, 0x00}
	simPCEID  = []byte{0x00, 0x00}
	simPCESVN = 11
	simCPUSVN = []byte{3, 3, 2, 2, 2, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0}
	simPPID   = sha256First16("kbs simulated TDX PPID")
)

// The quoting enclave of the sim quotes: header and QE report fields of
// go-tdx-guest's Sapphire Rapids sample quote (tdx_prod_quote_SPR_E4.dat).
var (
	simHeaderUserData = mustHex("739c3f292a15bace1f726351a70d4b7900000000")
	simQECPUSVN       = mustHex("04040d0f03ff00030000000000000000")
	simQEAttributes   = mustHex("1500000000000000e700000000000000")
	simQEMREnclave    = mustHex("853e298f3b7cde28b06493d06fb2ad6f9566a97fea6d3de66236b2af1a35150f")
	simQEMRSigner     = mustHex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
	simQEProdID       = uint32(2)
	simQEISVSVN       = uint32(4)
	simQEAuthData     = func() []byte {
		b := make([]byte, 32)
		for i := range b {
			b[i] = byte(i)
		}
		return b
	}()
)

// Defaults of SimOptions. The measurements are SHA-384 of fixed labels, so
// manifests for development can name them; the rest are the values of
// go-tdx-guest's Sapphire Rapids sample quote.
var (
	DefaultSimMRTD = sha512.Sum384([]byte("kbs simulated TDX MRTD v1"))
	DefaultSimRTMR = [4][48]byte{
		sha512.Sum384([]byte("kbs simulated TDX RTMR0 v1")),
		sha512.Sum384([]byte("kbs simulated TDX RTMR1 v1")),
		sha512.Sum384([]byte("kbs simulated TDX RTMR2 v1")),
		sha512.Sum384([]byte("kbs simulated TDX RTMR3 v1")),
	}
	// DefaultSimMRSeam is MRSEAM of the sample quote's TDX module.
	DefaultSimMRSeam = [48]byte(mustHex("2fd279c16164a93dd5bf373d834328d46008c2b693af9ebb865b08b2ced320c9a89b4869a9fab60fbe9d0c5a5363c656"))
	// DefaultSimTEETCBSVN is TEE_TCB_SVN of the sample quote.
	DefaultSimTEETCBSVN = [16]byte{3, 0, 4}
)

// DefaultSimXFAM is XFAM of the sample quote (x87, SSE, AVX, AVX-512, PKRU,
// AMX state enabled).
const DefaultSimXFAM uint64 = 0x61ae7

// DefaultSimTDAttributes is 0: no debug, no optional features.
const DefaultSimTDAttributes uint64 = 0

// SimOptions are the TD fields of simulated quotes. A zero field takes its
// default: DefaultSimMRTD, DefaultSimRTMR, 48 zero bytes for MRCONFIGID,
// MROWNER and MROWNERCONFIG, DefaultSimXFAM, DefaultSimTEETCBSVN,
// DefaultSimMRSeam. TDAttributes is used as given (0 is the default; set bit
// 0 to make a debug TD, which Verify rejects).
//
// The sim collateral matches TEE_TCB_SVN values whose second byte (the TDX
// module major version) is 0 to 16.
type SimOptions struct {
	MRTD          []byte    // 48 bytes
	RTMR          [4][]byte // 48 bytes each
	MRConfigID    []byte    // 48 bytes
	MROwner       []byte    // 48 bytes
	MROwnerConfig []byte    // 48 bytes
	XFAM          uint64
	TDAttributes  uint64
	TEETCBSVN     []byte // 16 bytes
	MRSeam        []byte // 48 bytes
}

func (o SimOptions) body() (*pb.TDQuoteBody, error) {
	pick := func(name string, v []byte, def []byte) ([]byte, error) {
		if v == nil {
			return bytes.Clone(def), nil
		}
		if len(v) != len(def) {
			return nil, fmt.Errorf("tdx: SimOptions.%s is %d bytes, want %d", name, len(v), len(def))
		}
		return bytes.Clone(v), nil
	}
	zero := make([]byte, measurementSize)
	b := &pb.TDQuoteBody{
		MrSignerSeam:   make([]byte, measurementSize),
		SeamAttributes: make([]byte, 8),
		TdAttributes:   binary.LittleEndian.AppendUint64(nil, o.TDAttributes),
		Rtmrs:          make([][]byte, 4),
	}
	xfam := o.XFAM
	if xfam == 0 {
		xfam = DefaultSimXFAM
	}
	b.Xfam = binary.LittleEndian.AppendUint64(nil, xfam)
	var err error
	for _, f := range []struct {
		name   string
		dst    *[]byte
		v, def []byte
	}{
		{"MRTD", &b.MrTd, o.MRTD, DefaultSimMRTD[:]},
		{"MRConfigID", &b.MrConfigId, o.MRConfigID, zero},
		{"MROwner", &b.MrOwner, o.MROwner, zero},
		{"MROwnerConfig", &b.MrOwnerConfig, o.MROwnerConfig, zero},
		{"TEETCBSVN", &b.TeeTcbSvn, o.TEETCBSVN, DefaultSimTEETCBSVN[:]},
		{"MRSeam", &b.MrSeam, o.MRSeam, DefaultSimMRSeam[:]},
		{"RTMR[0]", &b.Rtmrs[0], o.RTMR[0], DefaultSimRTMR[0][:]},
		{"RTMR[1]", &b.Rtmrs[1], o.RTMR[1], DefaultSimRTMR[1][:]},
		{"RTMR[2]", &b.Rtmrs[2], o.RTMR[2], DefaultSimRTMR[2][:]},
		{"RTMR[3]", &b.Rtmrs[3], o.RTMR[3], DefaultSimRTMR[3][:]},
	} {
		if *f.dst, err = pick(f.name, f.v, f.def); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// SimRoots returns the root certificate of the sim PKI in dir, to pass as
// Options.TrustedRoots.
func SimRoots(dir string) ([]*x509.Certificate, error) {
	c, err := readCert(filepath.Join(dir, simRootCert))
	if err != nil {
		return nil, fmt.Errorf("tdx: sim root (run GenerateSim first): %w", err)
	}
	return []*x509.Certificate{c}, nil
}

// SimVerifierOptions returns Options that verify quotes of the sim PKI in
// dir: its root as the only trusted root, offline, with its collateral
// cache, and collateral required.
func SimVerifierOptions(dir string) (Options, error) {
	roots, err := SimRoots(dir)
	if err != nil {
		return Options{}, err
	}
	return Options{
		TrustedRoots:      roots,
		CollateralDir:     filepath.Join(dir, SimCollateralDir),
		RequireCollateral: true,
	}, nil
}

// simPKI is the loaded material of a sim directory.
type simPKI struct {
	root, ca, pck, tcbSigning             *x509.Certificate
	rootKey, caKey, pckKey, tcbSigningKey *ecdsa.PrivateKey
	attestationKey                        *ecdsa.PrivateKey
}

// GenerateSim creates the sim PKI in dir (mode 0700), keeping whatever
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
func GenerateSim(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tdx: sim dir: %w", err)
	}
	now := clock.Now().UTC().Truncate(time.Second)
	start := now.Add(-time.Hour)
	rootName := intelName("Intel SGX Root CA")

	root, rootKey, err := loadOrIssue(dir, simRootCert, simRootKey, nil, nil, &x509.Certificate{
		Subject: rootName, Issuer: rootName,
		NotBefore: start, NotAfter: start.AddDate(25, 0, 0),
		IsCA: true, BasicConstraintsValid: true, MaxPathLen: 1,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		CRLDistributionPoints: []string{simRootCRLURL},
	})
	if err != nil {
		return err
	}
	ca, caKey, err := loadOrIssue(dir, simCACert, simCAKey, root, rootKey, &x509.Certificate{
		Subject:   intelName("Intel SGX PCK Platform CA"),
		NotBefore: start, NotAfter: start.AddDate(20, 0, 0),
		IsCA: true, BasicConstraintsValid: true, MaxPathLen: 0, MaxPathLenZero: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		CRLDistributionPoints: []string{simRootCRLURL},
	})
	if err != nil {
		return err
	}
	sgxExt, err := simSGXExtension()
	if err != nil {
		return err
	}
	if _, _, err := loadOrIssue(dir, simPCKCert, simPCKKey, ca, caKey, &x509.Certificate{
		Subject:   intelName("Intel SGX PCK Certificate"),
		NotBefore: start, NotAfter: start.AddDate(10, 0, 0),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
		CRLDistributionPoints: []string{pcs.PckCrlURL("platform")},
		ExtraExtensions:       []pkix.Extension{{Id: pcs.OidSgxExtension, Value: sgxExt}},
	}); err != nil {
		return err
	}
	if _, _, err := loadOrIssue(dir, simTCBSigningCert, simTCBSigningKey, root, rootKey, &x509.Certificate{
		Subject:   intelName("Intel SGX TCB Signing"),
		NotBefore: start, NotAfter: start.AddDate(10, 0, 0),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
		CRLDistributionPoints: []string{simRootCRLURL},
	}); err != nil {
		return err
	}
	if _, err := loadOrCreateKey(filepath.Join(dir, simAttestationKey)); err != nil {
		return err
	}
	pki, err := loadSim(dir)
	if err != nil {
		return err
	}
	// Collateral: keep it while it verifies 30 days from now.
	if checkSimCollateral(dir, pki, now.AddDate(0, 0, 30)) == nil {
		return nil
	}
	if err := writeSimCollateral(dir, pki, now); err != nil {
		return err
	}
	if err := checkSimCollateral(dir, pki, now); err != nil {
		return fmt.Errorf("tdx: freshly generated sim collateral does not verify: %w", err)
	}
	return nil
}

// checkSimCollateral verifies a sim quote with the sim collateral at t.
func checkSimCollateral(dir string, pki *simPKI, t time.Time) error {
	opts, err := SimVerifierOptions(dir)
	if err != nil {
		return err
	}
	opts.Now = func() time.Time { return t }
	v, err := NewVerifier(opts)
	if err != nil {
		return err
	}
	iss, err := newSimIssuer(pki, SimOptions{})
	if err != nil {
		return err
	}
	var rd [attest.ReportDataSize]byte
	ev, err := iss.Issue(context.Background(), rd)
	if err != nil {
		return err
	}
	_, err = v.Verify(context.Background(), ev, rd)
	return err
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
		cert, err := readCert(certPath)
		if err != nil {
			return nil, nil, fmt.Errorf("tdx: sim %s: %w", certFile, err)
		}
		key, err := readKey(keyPath)
		if err != nil {
			return nil, nil, fmt.Errorf("tdx: sim %s: %w", keyFile, err)
		}
		if !key.PublicKey.Equal(cert.PublicKey) {
			return nil, nil, fmt.Errorf("tdx: sim %s does not hold the key of %s", keyFile, certFile)
		}
		issuer := parent
		if issuer == nil {
			issuer = cert
		}
		if err := cert.CheckSignatureFrom(issuer); err != nil {
			return nil, nil, fmt.Errorf("tdx: sim %s is not signed by its parent: %w", certFile, err)
		}
		return cert, key, nil
	case !errors.Is(certErr, os.ErrNotExist) || !errors.Is(keyErr, os.ErrNotExist):
		return nil, nil, fmt.Errorf("tdx: sim %s and %s: only one of them exists (%v, %v); remove the other to regenerate", certFile, keyFile, certErr, keyErr)
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
		return nil, nil, fmt.Errorf("tdx: issuing sim %s: %w", certFile, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	if err := writeKey(keyPath, key); err != nil {
		return nil, nil, err
	}
	if err := atomicfile.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

func loadOrCreateKey(path string) (*ecdsa.PrivateKey, error) {
	key, err := readKey(path)
	if err == nil {
		return key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tdx: sim %s: %w", filepath.Base(path), err)
	}
	if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, err
	}
	return key, writeKey(path, key)
}

func readCert(path string) (*x509.Certificate, error) {
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

func readKey(path string) (*ecdsa.PrivateKey, error) {
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

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func loadSim(dir string) (*simPKI, error) {
	p := &simPKI{}
	var err error
	for _, c := range []struct {
		file string
		dst  **x509.Certificate
	}{{simRootCert, &p.root}, {simCACert, &p.ca}, {simPCKCert, &p.pck}, {simTCBSigningCert, &p.tcbSigning}} {
		if *c.dst, err = readCert(filepath.Join(dir, c.file)); err != nil {
			return nil, fmt.Errorf("tdx: sim %s (run GenerateSim first): %w", c.file, err)
		}
	}
	for _, k := range []struct {
		file string
		dst  **ecdsa.PrivateKey
	}{{simRootKey, &p.rootKey}, {simCAKey, &p.caKey}, {simPCKKey, &p.pckKey}, {simTCBSigningKey, &p.tcbSigningKey}, {simAttestationKey, &p.attestationKey}} {
		if *k.dst, err = readKey(filepath.Join(dir, k.file)); err != nil {
			return nil, fmt.Errorf("tdx: sim %s (run GenerateSim first): %w", k.file, err)
		}
	}
	if !p.pckKey.PublicKey.Equal(p.pck.PublicKey) {
		return nil, errors.New("tdx: sim PCK key does not match the PCK certificate")
	}
	return p, nil
}

// simSGXExtension encodes the SGX extension of the sim PCK certificate
// (OID 1.2.840.113741.1.13.1): PPID, TCB (16 component SVNs, PCESVN,
// CPUSVN), PCEID, FMSPC and SGX type, as Intel's PCK certificates carry it.
func simSGXExtension() ([]byte, error) {
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
		r, err := raw(intAttr{append(asn1.ObjectIdentifier{}, append(pcs.OidTCB, i+1)...), int(simCPUSVN[i])})
		if err != nil {
			return nil, err
		}
		tcb = append(tcb, r)
	}
	r, err := raw(intAttr{pcs.OidPCESvn, simPCESVN})
	if err != nil {
		return nil, err
	}
	tcb = append(tcb, r)
	if r, err = raw(octetAttr{pcs.OidCPUSvn, simCPUSVN}); err != nil {
		return nil, err
	}
	tcb = append(tcb, r)

	var ext []asn1.RawValue
	for _, v := range []any{
		octetAttr{pcs.OidPPID, simPPID},
		seqAttr{pcs.OidTCB, tcb},
		octetAttr{pcs.OidPCEID, simPCEID},
		octetAttr{pcs.OidFMSPC, simFMSPC},
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

// simIssuer issues sim quotes. The certification data (QE report, its
// signature, the PCK chain) is the same for every quote; only the TD quote
// body and the quote signature change.
type simIssuer struct {
	attestationKey *ecdsa.PrivateKey
	header         *pb.Header
	body           *pb.TDQuoteBody
	signedData     *pb.Ecdsa256BitQuoteV4AuthData
	signedDataSize uint32
}

// NewSimIssuer returns an issuer of TDX quotes signed under the sim PKI in
// dir (see GenerateSim), with the TD fields of opts and any REPORT_DATA.
func NewSimIssuer(dir string, opts SimOptions) (attest.Issuer, error) {
	pki, err := loadSim(dir)
	if err != nil {
		return nil, err
	}
	return newSimIssuer(pki, opts)
}

func newSimIssuer(pki *simPKI, opts SimOptions) (*simIssuer, error) {
	body, err := opts.body()
	if err != nil {
		return nil, err
	}
	pub, err := pki.attestationKey.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		return nil, err
	}
	attKey := pub[1:]
	rd := sha256.Sum256(append(bytes.Clone(attKey), simQEAuthData...))
	qeReport := &pb.EnclaveReport{
		CpuSvn:     simQECPUSVN,
		MiscSelect: 0,
		Reserved1:  make([]byte, 28),
		Attributes: simQEAttributes,
		MrEnclave:  simQEMREnclave,
		Reserved2:  make([]byte, 32),
		MrSigner:   simQEMRSigner,
		Reserved3:  make([]byte, 96),
		IsvProdId:  simQEProdID,
		IsvSvn:     simQEISVSVN,
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
	certDataSize := uint32(len(qeRaw) + 64 + 2 + len(simQEAuthData) + 6 + len(chain))
	s := &simIssuer{
		attestationKey: pki.attestationKey,
		header: &pb.Header{
			Version:            abi.QuoteVersion,
			AttestationKeyType: abi.AttestationKeyType,
			TeeType:            abi.TeeTDX,
			QeSvn:              []byte{0, 0},
			PceSvn:             []byte{0, 0},
			QeVendorId:         intelQEVendorID,
			UserData:           simHeaderUserData,
		},
		body: body,
		signedData: &pb.Ecdsa256BitQuoteV4AuthData{
			Signature:           make([]byte, 64),
			EcdsaAttestationKey: attKey,
			CertificationData: &pb.CertificationData{
				CertificateDataType: 6,
				Size:                certDataSize,
				QeReportCertificationData: &pb.QEReportCertificationData{
					QeReport:          qeReport,
					QeReportSignature: qeSig,
					QeAuthData:        &pb.QeAuthData{ParsedDataSize: uint32(len(simQEAuthData)), Data: simQEAuthData},
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

func (s *simIssuer) Platform() attest.Platform { return attest.TDX }

// Issue returns a v4 quote binding reportData.
func (s *simIssuer) Issue(ctx context.Context, reportData [attest.ReportDataSize]byte) (attest.Evidence, error) {
	if err := ctx.Err(); err != nil {
		return attest.Evidence{}, err
	}
	b := s.body
	body := &pb.TDQuoteBody{
		TeeTcbSvn: b.TeeTcbSvn, MrSeam: b.MrSeam, MrSignerSeam: b.MrSignerSeam, SeamAttributes: b.SeamAttributes,
		TdAttributes: b.TdAttributes, Xfam: b.Xfam, MrTd: b.MrTd, MrConfigId: b.MrConfigId, MrOwner: b.MrOwner,
		MrOwnerConfig: b.MrOwnerConfig, Rtmrs: b.Rtmrs, ReportData: reportData[:],
	}
	q := &pb.QuoteV4{
		Header:         s.header,
		TdQuoteBody:    body,
		SignedDataSize: s.signedDataSize,
		SignedData:     s.signedData,
	}
	raw, err := abi.QuoteToAbiBytes(q)
	if err != nil {
		return attest.Evidence{}, fmt.Errorf("tdx: sim quote: %w", err)
	}
	sig, err := rawSign(s.attestationKey, signedMessage(raw))
	if err != nil {
		return attest.Evidence{}, err
	}
	copy(raw[signatureOff:signatureEnd], sig)
	return attest.Evidence{Platform: attest.TDX, Data: raw}, nil
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
		return nil, fmt.Errorf("tdx: decoding signature: %v", err)
	}
	out := make([]byte, 64)
	sig.R.FillBytes(out[:32])
	sig.S.FillBytes(out[32:])
	return out, nil
}

// Sim collateral: TCB info and QE identity in Intel PCS's JSON form, signed
// by the sim TCB signing key; PCK and root CA CRLs (empty) signed by the sim
// CAs; stored in the collateral cache exactly as PCS responses would be.

type simTCBComponent struct {
	SVN byte `json:"svn"`
}

type simTCB struct {
	SGX    []simTCBComponent `json:"sgxtcbcomponents,omitempty"`
	PCESVN *int              `json:"pcesvn,omitempty"`
	TDX    []simTCBComponent `json:"tdxtcbcomponents,omitempty"`
	ISVSVN *uint32           `json:"isvsvn,omitempty"`
}

type simTCBLevel struct {
	TCB       simTCB `json:"tcb"`
	TCBDate   string `json:"tcbDate"`
	TCBStatus string `json:"tcbStatus"`
}

type simTDXModule struct {
	ID             string        `json:"id,omitempty"`
	MRSigner       string        `json:"mrsigner"`
	Attributes     string        `json:"attributes"`
	AttributesMask string        `json:"attributesMask"`
	TCBLevels      []simTCBLevel `json:"tcbLevels,omitempty"`
}

type simTCBInfo struct {
	ID                      string         `json:"id"`
	Version                 int            `json:"version"`
	IssueDate               time.Time      `json:"issueDate"`
	NextUpdate              time.Time      `json:"nextUpdate"`
	FMSPC                   string         `json:"fmspc"`
	PCEID                   string         `json:"pceId"`
	TCBType                 int            `json:"tcbType"`
	TCBEvaluationDataNumber int            `json:"tcbEvaluationDataNumber"`
	TDXModule               simTDXModule   `json:"tdxModule"`
	TDXModuleIdentities     []simTDXModule `json:"tdxModuleIdentities"`
	TCBLevels               []simTCBLevel  `json:"tcbLevels"`
}

type simQEIdentity struct {
	ID                      string        `json:"id"`
	Version                 int           `json:"version"`
	IssueDate               time.Time     `json:"issueDate"`
	NextUpdate              time.Time     `json:"nextUpdate"`
	TCBEvaluationDataNumber int           `json:"tcbEvaluationDataNumber"`
	MiscSelect              string        `json:"miscselect"`
	MiscSelectMask          string        `json:"miscselectMask"`
	Attributes              string        `json:"attributes"`
	AttributesMask          string        `json:"attributesMask"`
	MRSigner                string        `json:"mrsigner"`
	ISVProdID               uint32        `json:"isvprodid"`
	TCBLevels               []simTCBLevel `json:"tcbLevels"`
}

// writeSimCollateral issues collateral valid for a year from now.
func writeSimCollateral(dir string, pki *simPKI, now time.Time) error {
	next := now.AddDate(1, 0, 0)
	date := now.Format(time.RFC3339)
	zeros := make([]simTCBComponent, 16)
	pcesvn := 0
	isvZero := uint32(0)
	var identities []simTDXModule
	for v := 1; v <= 16; v++ {
		identities = append(identities, simTDXModule{
			ID:             fmt.Sprintf("TDX_%02x", v),
			MRSigner:       hex.EncodeToString(make([]byte, measurementSize)),
			Attributes:     "0000000000000000",
			AttributesMask: "FFFFFFFFFFFFFFFF",
			TCBLevels:      []simTCBLevel{{TCB: simTCB{ISVSVN: &isvZero}, TCBDate: date, TCBStatus: "UpToDate"}},
		})
	}
	tcbInfo := simTCBInfo{
		ID: "TDX", Version: 3, IssueDate: now, NextUpdate: next,
		FMSPC: hex.EncodeToString(simFMSPC), PCEID: hex.EncodeToString(simPCEID),
		TCBEvaluationDataNumber: 1,
		TDXModule: simTDXModule{
			MRSigner:       hex.EncodeToString(make([]byte, measurementSize)),
			Attributes:     "0000000000000000",
			AttributesMask: "FFFFFFFFFFFFFFFF",
		},
		TDXModuleIdentities: identities,
		TCBLevels: []simTCBLevel{{
			TCB:       simTCB{SGX: zeros, PCESVN: &pcesvn, TDX: zeros},
			TCBDate:   date,
			TCBStatus: "UpToDate",
		}},
	}
	qeISVSVN := simQEISVSVN
	qeIdentity := simQEIdentity{
		ID: "TD_QE", Version: 2, IssueDate: now, NextUpdate: next, TCBEvaluationDataNumber: 1,
		MiscSelect: "00000000", MiscSelectMask: "FFFFFFFF",
		Attributes:     "11000000000000000000000000000000",
		AttributesMask: "FBFFFFFFFFFFFFFF0000000000000000",
		MRSigner:       hex.EncodeToString(simQEMRSigner),
		ISVProdID:      simQEProdID,
		TCBLevels:      []simTCBLevel{{TCB: simTCB{ISVSVN: &qeISVSVN}, TCBDate: date, TCBStatus: "UpToDate"}},
	}
	pemOf := func(cs ...*x509.Certificate) string {
		var b []byte
		for _, c := range cs {
			b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		return url.QueryEscape(string(b))
	}
	signed := func(field string, v any) ([]byte, error) {
		inner, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		sig, err := rawSign(pki.tcbSigningKey, inner)
		if err != nil {
			return nil, err
		}
		return fmt.Appendf(nil, `{%q:%s,"signature":%q}`, field, inner, hex.EncodeToString(sig)), nil
	}
	tcbBody, err := signed("tcbInfo", tcbInfo)
	if err != nil {
		return err
	}
	qeBody, err := signed("enclaveIdentity", qeIdentity)
	if err != nil {
		return err
	}
	crl := func(issuer *x509.Certificate, key *ecdsa.PrivateKey) ([]byte, error) {
		return x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
			Number: big.NewInt(now.Unix()), ThisUpdate: now, NextUpdate: next,
		}, issuer, key)
	}
	rootCRL, err := crl(pki.root, pki.rootKey)
	if err != nil {
		return err
	}
	pckCRL, err := crl(pki.ca, pki.caKey)
	if err != nil {
		return err
	}
	cdir := filepath.Join(dir, SimCollateralDir)
	for _, r := range []*cachedResponse{
		{URL: pcs.TcbInfoURL(tcbInfo.FMSPC), Header: map[string][]string{"Tcb-Info-Issuer-Chain": {pemOf(pki.tcbSigning, pki.root)}}, Body: tcbBody},
		{URL: pcs.QeIdentityURL(), Header: map[string][]string{"Sgx-Enclave-Identity-Issuer-Chain": {pemOf(pki.tcbSigning, pki.root)}}, Body: qeBody},
		{URL: pcs.PckCrlURL("platform"), Header: map[string][]string{"Sgx-Pck-Crl-Issuer-Chain": {pemOf(pki.ca, pki.root)}}, Body: pckCRL},
		{URL: simRootCRLURL, Body: rootCRL},
	} {
		r.Fetched = now
		if err := writeCached(cdir, r); err != nil {
			return fmt.Errorf("tdx: writing sim collateral: %w", err)
		}
	}
	return nil
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
