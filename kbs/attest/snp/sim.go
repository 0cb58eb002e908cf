package snp

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sevtest "github.com/google/go-sev-guest/testing"
	"github.com/google/uuid"
	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/attest"
)

// The simulated TEE. GenerateSim makes a fake AMD hierarchy (ARK → ASK →
// VCEK, with AMD's names and extensions, but fresh keys) in a directory, and
// NewSimIssuer signs SNP reports with its VCEK. Verifying them runs the same
// Verifier with the sim ARK/ASK as the only roots (see SimRoots). The sim
// VCEK's subject carries SimMarker: IsSimulated
// uses it to route evidence, never to trust it.

// SimMarker is the pseudonym attribute in the subject of every simulated
// VCEK.
const SimMarker = "kbs simulated TEE 5a4d3e77-a00c-4aae-a916-58117dfc77b4"

// Files in a sim directory.
const (
	simARKFile  = "ark.pem"
	simASKFile  = "ask.pem"
	simVCEKFile = "vcek.pem"
	simKeyFile  = "vcek.key"
)

// The simulated chip: a Milan B0 with a plausible TCB.
var (
	simTCB         = kds.TCBParts{BlSpl: 4, TeeSpl: 0, SnpSpl: 22, UcodeSpl: 213}
	simProductName = "Milan-B0"
	simFMS         = abi.FmsToCpuid1Eax(0x19, 0x01, 0x00)
)

// SimTCB returns the TCB of the simulated chip.
func SimTCB() attest.SNPTCB {
	return attest.SNPTCB{Bootloader: simTCB.BlSpl, TEE: simTCB.TeeSpl, SNP: simTCB.SnpSpl, Microcode: simTCB.UcodeSpl}
}

// SimProductLine is the product line of the simulated chip.
const SimProductLine = "Milan"

// DefaultSimGuestPolicy is the guest policy of simulated reports unless
// SimOptions say otherwise: ABI 0.0, SMT allowed, bit 17 (reserved, must be
// one) set, debug off.
const DefaultSimGuestPolicy = 0x30000

// certifyMu serializes go-sev-guest's certificate builder, which signs with a
// shared, unsynchronized random source.
var certifyMu sync.Mutex

// GenerateSim creates the simulated AMD hierarchy in dir unless it already
// holds one, in which case it leaves it untouched. Only the VCEK's private
// key is kept; the ARK and ASK keys are discarded after signing.
func GenerateSim(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, simKeyFile)); err == nil {
		_, _, err := loadSim(dir)
		return err
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	ark, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		return err
	}
	ask, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		return err
	}
	vcek, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return err
	}
	return generateSim(dir, ark, ask, vcek)
}

// generateSim writes a sim hierarchy with the given keys to dir.
func generateSim(dir string, ark, ask *rsa.PrivateKey, vcek *ecdsa.PrivateKey) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var hwid [abi.ChipIDSize]byte
	if _, err := rand.Read(hwid[:]); err != nil {
		return err
	}
	vcekSerial := randomSerial()
	vcekSubject := simSubject(vcekSerial)
	now := clock.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	b := &sevtest.AmdSignerBuilder{
		// The ASVK is unused; the builder insists on one.
		Keys:             &sevtest.AmdKeys{Ark: ark, Ask: ask, Asvk: ask, Vcek: vcek},
		ProductName:      simProductName,
		ArkCreationTime:  now,
		AskCreationTime:  now,
		AsvkCreationTime: now,
		VcekCreationTime: now,
		HWID:             hwid,
		VcekCustom: sevtest.CertOverride{
			Subject:    &vcekSubject,
			Extensions: sevtest.CustomExtensions(simTCB, hwid[:], "", simProductName),
		},
		ArkCustom: sevtest.CertOverride{SerialNumber: randomSerial()},
		AskCustom: sevtest.CertOverride{SerialNumber: randomSerial()},
	}
	certifyMu.Lock()
	signer, err := b.TestOnlyCertChain()
	certifyMu.Unlock()
	if err != nil {
		return fmt.Errorf("snp sim: building the certificate chain: %v", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(vcek)
	if err != nil {
		return err
	}
	// Certificates first, the key last: its presence marks a complete sim.
	for _, f := range []struct {
		name, typ string
		der       []byte
		perm      os.FileMode
	}{
		{simARKFile, "CERTIFICATE", signer.Ark.Raw, 0o644},
		{simASKFile, "CERTIFICATE", signer.Ask.Raw, 0o644},
		{simVCEKFile, "CERTIFICATE", signer.Vcek.Raw, 0o644},
		{simKeyFile, "PRIVATE KEY", keyDER, 0o600},
	} {
		data := pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der})
		if err := writeFileAtomic(filepath.Join(dir, f.name), data, f.perm); err != nil {
			return err
		}
	}
	_, _, err = loadSim(dir)
	return err
}

func randomSerial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 63))
	return n.Add(n, big.NewInt(1))
}

// simSubject is the subject of a simulated VCEK: AMD's, plus a pseudonym
// attribute (2.5.4.65) holding SimMarker. (A VCEK may carry no extension
// besides AMD's, so the mark lives in the name.)
func simSubject(serial *big.Int) pkix.Name {
	return pkix.Name{
		Organization:       []string{"Advanced Micro Devices"},
		Country:            []string{"US"},
		OrganizationalUnit: []string{"Engineering"},
		Locality:           []string{"Santa Clara"},
		Province:           []string{"CA"},
		SerialNumber:       fmt.Sprintf("%x", serial),
		CommonName:         "SEV-VCEK",
		ExtraNames:         []pkix.AttributeTypeAndValue{{Type: oidPseudonym, Value: SimMarker}},
	}
}

var oidPseudonym = asn1.ObjectIdentifier{2, 5, 4, 65}

// SimRoots returns the simulated ARK and ASK of the sim in dir.
func SimRoots(dir string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, name := range []string{simARKFile, simASKFile} {
		c, err := readCertFile(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// RootsFromCerts picks AMD-shaped key hierarchies out of certs: each
// self-signed "ARK-<line>" with the "SEV-<line>" (ASK) and "SEV-VLEK-<line>"
// (ASVK) certificates it signed. Other certificates are ignored. It is how a
// file of simulated roots (sim/root.pem) becomes Options.Roots.
func RootsFromCerts(certs []*x509.Certificate) []Root {
	var out []Root
	for _, ark := range certs {
		if ark.CheckSignatureFrom(ark) != nil || len(ark.Subject.CommonName) < 5 || ark.Subject.CommonName[:4] != "ARK-" {
			continue
		}
		line := ark.Subject.CommonName[4:]
		r := Root{ProductLine: line, ARK: ark}
		for _, c := range certs {
			if c.CheckSignatureFrom(ark) != nil || c == ark {
				continue
			}
			switch c.Subject.CommonName {
			case "SEV-" + line:
				r.ASK = c
			case "SEV-VLEK-" + line:
				r.ASVK = c
			}
		}
		if r.ASK != nil {
			out = append(out, r)
		}
	}
	return out
}

// IsSimulated reports whether SNP evidence carries a simulated VCEK or VLEK
// (one whose subject holds SimMarker). It verifies nothing: a Verifier whose roots are
// AMD's rejects such evidence anyway.
//
// It runs on every piece of evidence a broker routes, so the answer for a
// certificate is remembered by the SHA-256 of its DER (a pure function of
// those bytes): only the first evidence with a given certificate pays for
// parsing it.
func IsSimulated(data []byte) bool {
	ev, err := ParseEvidence(data)
	if err != nil {
		return false
	}
	for _, guid := range []uuid.UUID{vcekGUID, vlekGUID} {
		der := ev.cert(guid)
		// Cheap pre-filter: hardware certificates never contain the marker.
		if der != nil && bytes.Contains(der, []byte(SimMarker)) && simMarked.get(der) {
			return true
		}
	}
	return false
}

// simMarked caches whether a certificate's subject holds SimMarker.
var simMarked = &markerCache{m: map[[32]byte]bool{}}

// maxMarkerCache bounds the marker cache; it is emptied when full.
const maxMarkerCache = 1024

type markerCache struct {
	mu sync.Mutex
	m  map[[32]byte]bool
}

func (c *markerCache) get(der []byte) bool {
	id := sha256.Sum256(der)
	c.mu.Lock()
	marked, ok := c.m[id]
	c.mu.Unlock()
	if ok {
		return marked
	}
	marked = hasSimMarker(der)
	c.mu.Lock()
	if len(c.m) >= maxMarkerCache {
		clear(c.m)
	}
	c.m[id] = marked
	c.mu.Unlock()
	return marked
}

// hasSimMarker parses der and reports whether its subject holds SimMarker.
func hasSimMarker(der []byte) bool {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return false
	}
	for _, n := range c.Subject.Names {
		if n.Type.Equal(oidPseudonym) && n.Value == SimMarker {
			return true
		}
	}
	return false
}

// SimOptions choose the fields of simulated reports. Zero values give a
// debug-off, VMPL 0 report with all-zero measurement, host data, family and
// image id, guest SVN 0 and DefaultSimGuestPolicy.
type SimOptions struct {
	Measurement []byte // 48 bytes
	HostData    []byte // 32 bytes
	FamilyID    []byte // 16 bytes
	ImageID     []byte // 16 bytes
	GuestSVN    uint32
	VMPL        uint32
	// GuestPolicy is the report's guest policy; 0 means
	// DefaultSimGuestPolicy. Set bit 19 for a debug guest.
	GuestPolicy uint64
	// PlatformInfo is the report's PLATFORM_INFO (bit 0: SMT enabled).
	PlatformInfo uint64
}

// SimIssuer signs SNP reports with a simulated VCEK.
type SimIssuer struct {
	key   *ecdsa.PrivateKey
	vcek  *x509.Certificate
	table []byte
	hwid  []byte
	tcb   uint64
	opts  SimOptions
	// mutate, when set (tests only), edits each report before signing.
	mutate func(*spb.Report)
}

// NewSimIssuer returns an issuer of simulated SNP evidence for the sim in
// dir (see GenerateSim).
func NewSimIssuer(dir string, opts SimOptions) (*SimIssuer, error) {
	for _, f := range []struct {
		name string
		v    []byte
		size int
	}{
		{"Measurement", opts.Measurement, abi.MeasurementSize},
		{"HostData", opts.HostData, abi.HostDataSize},
		{"FamilyID", opts.FamilyID, abi.FamilyIDSize},
		{"ImageID", opts.ImageID, abi.ImageIDSize},
	} {
		if f.v != nil && len(f.v) != f.size {
			return nil, fmt.Errorf("snp sim: %s is %d bytes, want %d", f.name, len(f.v), f.size)
		}
	}
	if opts.VMPL > 3 {
		return nil, fmt.Errorf("snp sim: VMPL %d, want 0-3", opts.VMPL)
	}
	if opts.GuestPolicy == 0 {
		opts.GuestPolicy = DefaultSimGuestPolicy
	}
	if _, err := abi.ParseSnpPolicy(opts.GuestPolicy); err != nil {
		return nil, fmt.Errorf("snp sim: guest policy: %v", err)
	}
	key, chain, err := loadSim(dir)
	if err != nil {
		return nil, err
	}
	vcek := chain[2]
	exts, err := kds.VcekCertificateExtensions(vcek)
	if err != nil {
		return nil, fmt.Errorf("snp sim: VCEK extensions: %v", err)
	}
	table := &abi.CertTable{Entries: []abi.CertTableEntry{
		{GUID: uuid.MustParse(abi.ArkGUID), RawCert: chain[0].Raw},
		{GUID: uuid.MustParse(abi.AskGUID), RawCert: chain[1].Raw},
		{GUID: uuid.MustParse(abi.VcekGUID), RawCert: vcek.Raw},
	}}
	return &SimIssuer{key: key, vcek: vcek, table: table.Marshal(), hwid: exts.HWID,
		tcb: uint64(exts.TCBVersion), opts: opts}, nil
}

// Platform returns attest.SNP.
func (s *SimIssuer) Platform() attest.Platform { return attest.SNP }

// Issue returns a simulated report binding reportData, followed by the
// certificate table holding the sim ARK, ASK and VCEK.
func (s *SimIssuer) Issue(_ context.Context, reportData [attest.ReportDataSize]byte) (attest.Evidence, error) {
	zero := func(b []byte, n int) []byte {
		if b == nil {
			return make([]byte, n)
		}
		return bytes.Clone(b)
	}
	reportID := make([]byte, abi.ReportIDSize)
	if _, err := rand.Read(reportID); err != nil {
		return attest.Evidence{}, err
	}
	r := &spb.Report{
		Version:         abi.ReportVersion3,
		GuestSvn:        s.opts.GuestSVN,
		Policy:          s.opts.GuestPolicy,
		FamilyId:        zero(s.opts.FamilyID, abi.FamilyIDSize),
		ImageId:         zero(s.opts.ImageID, abi.ImageIDSize),
		Vmpl:            s.opts.VMPL,
		SignatureAlgo:   abi.SignEcdsaP384Sha384,
		CurrentTcb:      s.tcb,
		PlatformInfo:    s.opts.PlatformInfo,
		SignerInfo:      abi.ComposeSignerInfo(abi.SignerInfo{SigningKey: abi.VcekReportSigner}),
		ReportData:      bytes.Clone(reportData[:]),
		Measurement:     zero(s.opts.Measurement, abi.MeasurementSize),
		HostData:        zero(s.opts.HostData, abi.HostDataSize),
		IdKeyDigest:     make([]byte, abi.IDKeyDigestSize),
		AuthorKeyDigest: make([]byte, abi.AuthorKeyDigestSize),
		ReportId:        reportID,
		ReportIdMa:      bytes.Repeat([]byte{0xff}, abi.ReportIDMASize),
		ReportedTcb:     s.tcb,
		Cpuid1EaxFms:    simFMS,
		ChipId:          bytes.Clone(s.hwid),
		CommittedTcb:    s.tcb,
		CurrentBuild:    21,
		CurrentMinor:    55,
		CurrentMajor:    1,
		CommittedBuild:  21,
		CommittedMinor:  55,
		CommittedMajor:  1,
		LaunchTcb:       s.tcb,
		Signature:       make([]byte, abi.SignatureSize),
	}
	if s.mutate != nil {
		s.mutate(r)
	}
	raw, err := abi.ReportToAbiBytes(r)
	if err != nil {
		return attest.Evidence{}, fmt.Errorf("snp sim: %v", err)
	}
	digest := sha512.Sum384(abi.SignedComponent(raw))
	rs, ss, err := ecdsa.Sign(rand.Reader, s.key, digest[:])
	if err != nil {
		return attest.Evidence{}, err
	}
	if err := abi.SetSignature(rs, ss, raw); err != nil {
		return attest.Evidence{}, fmt.Errorf("snp sim: %v", err)
	}
	return attest.Evidence{Platform: attest.SNP, Data: append(raw, s.table...)}, nil
}

// loadSim reads the VCEK key and the ARK, ASK, VCEK certificates of a sim.
func loadSim(dir string) (*ecdsa.PrivateKey, []*x509.Certificate, error) {
	var chain []*x509.Certificate
	for _, name := range []string{simARKFile, simASKFile, simVCEKFile} {
		c, err := readCertFile(filepath.Join(dir, name))
		if err != nil {
			return nil, nil, err
		}
		chain = append(chain, c)
	}
	data, err := os.ReadFile(filepath.Join(dir, simKeyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("snp sim: %v", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, nil, fmt.Errorf("snp sim: %s: no PRIVATE KEY block", simKeyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("snp sim: %s: %v", simKeyFile, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P384() {
		return nil, nil, fmt.Errorf("snp sim: %s: not an ECDSA P-384 key", simKeyFile)
	}
	if !key.PublicKey.Equal(chain[2].PublicKey) {
		return nil, nil, fmt.Errorf("snp sim: %s does not match %s", simKeyFile, simVCEKFile)
	}
	return key, chain, nil
}

func readCertFile(name string) (*x509.Certificate, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("snp sim: %v", err)
	}
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("snp sim: %s: want one CERTIFICATE block", name)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("snp sim: %s: %v", name, err)
	}
	return c, nil
}
