package sim

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
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

	"github.com/kbs-dev/kbs/internal/atomicfile"
	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/attest"
)

// The simulated SEV-SNP chip. GenerateSNP makes a fake AMD hierarchy
// (ARK → ASK → VCEK, with AMD's names and extensions, but fresh keys) in a
// directory, and an SNPIssuer signs reports with its VCEK, followed by a
// certificate table holding the chain. The VCEK's subject carries
// attest.SimSNPMarker, by which snp.IsSimulated routes such evidence to a
// verifier of the sim's ARK and ASK (SNPRoots).

// Files of a simulated AMD hierarchy.
const (
	snpARKFile  = "ark.pem"
	snpASKFile  = "ask.pem"
	snpVCEKFile = "vcek.pem"
	snpKeyFile  = "vcek.key"
)

// The simulated chip: a Milan B0 with a plausible TCB.
var (
	snpTCB         = kds.TCBParts{BlSpl: 4, TeeSpl: 0, SnpSpl: 22, UcodeSpl: 213}
	snpProductName = "Milan-B0"
	snpFMS         = abi.FmsToCpuid1Eax(0x19, 0x01, 0x00)
)

// The simulated Turin chip (GenerateSNPTurin): AMD family 1Ah model 2,
// an 8-byte hardware id, and a TCB with an FMC level.
var (
	snpTurinTCB = attest.SNPTCB{FMC: 2, Bootloader: 4, TEE: 1, SNP: 7, Microcode: 0x50}
	snpTurinFMS = abi.FmsToCpuid1Eax(0x1A, 0x02, 0x01)
)

// SNPTurinTCB returns the TCB of the simulated Turin chip.
func SNPTurinTCB() attest.SNPTCB { return snpTurinTCB }

// SNPTCB returns the TCB of the simulated chip.
func SNPTCB() attest.SNPTCB {
	return attest.SNPTCB{Bootloader: snpTCB.BlSpl, TEE: snpTCB.TeeSpl, SNP: snpTCB.SnpSpl, Microcode: snpTCB.UcodeSpl}
}

// SNPProductLine is the product line of the simulated chip.
const SNPProductLine = "Milan"

// DefaultSNPGuestPolicy is the guest policy of simulated reports unless
// SNPOptions say otherwise: ABI 0.0, SMT allowed, bit 17 (reserved, must be
// one) set, debug off.
const DefaultSNPGuestPolicy = 0x30000

// certifyMu serializes go-sev-guest's certificate builder, which signs with a
// shared, unsynchronized random source.
var certifyMu sync.Mutex

// GenerateSNP creates the simulated AMD hierarchy in dir unless it already
// holds one, in which case it leaves it untouched (and fails if it is
// damaged). Only the VCEK's private key is kept; the ARK and ASK keys are
// discarded after signing.
func GenerateSNP(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, snpKeyFile)); err == nil {
		_, _, err := loadSNP(dir)
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
	return GenerateSNPWithKeys(dir, ark, ask, vcek)
}

// GenerateSNPWithKeys writes a simulated AMD hierarchy with the given keys
// to dir, replacing any there. Tests use it to keep the ARK's key and sign
// CRLs with it; GenerateSNP draws fresh keys.
func GenerateSNPWithKeys(dir string, ark, ask *rsa.PrivateKey, vcek *ecdsa.PrivateKey) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var hwid [abi.ChipIDSize]byte
	if _, err := rand.Read(hwid[:]); err != nil {
		return err
	}
	vcekSerial := randomSerial()
	vcekSubject := snpVCEKSubject(vcekSerial)
	now := clock.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	b := &sevtest.AmdSignerBuilder{
		// The ASVK is unused; the builder insists on one.
		Keys:             &sevtest.AmdKeys{Ark: ark, Ask: ask, Asvk: ask, Vcek: vcek},
		ProductName:      snpProductName,
		ArkCreationTime:  now,
		AskCreationTime:  now,
		AsvkCreationTime: now,
		VcekCreationTime: now,
		HWID:             hwid,
		VcekCustom: sevtest.CertOverride{
			Subject:    &vcekSubject,
			Extensions: sevtest.CustomExtensions(snpTCB, hwid[:], "", snpProductName),
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
	return writeSNP(dir, signer.Ark, signer.Ask, signer.Vcek, vcek)
}

// writeSNP writes a sim hierarchy: certificates first, the key last (its
// presence marks a complete sim), then reads it back.
func writeSNP(dir string, ark, ask, vcekCert *x509.Certificate, vcek *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(vcek)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name, typ string
		der       []byte
		perm      os.FileMode
	}{
		{snpARKFile, "CERTIFICATE", ark.Raw, 0o644},
		{snpASKFile, "CERTIFICATE", ask.Raw, 0o644},
		{snpVCEKFile, "CERTIFICATE", vcekCert.Raw, 0o644},
		{snpKeyFile, "PRIVATE KEY", keyDER, 0o600},
	} {
		data := pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der})
		if err := atomicfile.WriteFile(filepath.Join(dir, f.name), data, f.perm); err != nil {
			return err
		}
	}
	_, _, err = loadSNP(dir)
	return err
}

// GenerateSNPTurin writes a simulated AMD Turin hierarchy to dir (the same
// files as GenerateSNP): ARK-Turin, SEV-Turin and a VCEK in Turin's form
// (KDS struct version 1, an fmcSPL extension, an 8-byte hardware id), which
// go-sev-guest v0.15.0 cannot read and kbs/attest/snp can. NewSNPIssuer on
// dir then issues Turin reports. It replaces any hierarchy in dir.
func GenerateSNPTurin(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
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
	hwid := make([]byte, 8)
	if _, err := rand.Read(hwid); err != nil {
		return err
	}
	var hwid64 [abi.ChipIDSize]byte
	copy(hwid64[:], hwid)
	integer := func(v uint8) []byte { b, _ := asn1.Marshal(int(v)); return b }
	oid := func(arc ...int) asn1.ObjectIdentifier {
		return append(asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1}, arc...)
	}
	name, _ := asn1.MarshalWithParams("Turin", "ia5")
	t := snpTurinTCB
	exts := []pkix.Extension{
		{Id: oid(1), Value: integer(1)},
		{Id: oid(2), Value: name},
		{Id: oid(3, 9), Value: integer(t.FMC)},
		{Id: oid(3, 1), Value: integer(t.Bootloader)},
		{Id: oid(3, 2), Value: integer(t.TEE)},
		{Id: oid(3, 3), Value: integer(t.SNP)},
		{Id: oid(3, 5), Value: integer(0)},
		{Id: oid(3, 6), Value: integer(0)},
		{Id: oid(3, 7), Value: integer(0)},
		{Id: oid(3, 8), Value: integer(t.Microcode)},
		{Id: oid(4), Value: hwid}, // raw bytes, as AMD writes them
	}
	vcekSerial := randomSerial()
	vcekSubject := snpVCEKSubject(vcekSerial)
	now := clock.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	b := &sevtest.AmdSignerBuilder{
		Keys:             &sevtest.AmdKeys{Ark: ark, Ask: ask, Asvk: ask, Vcek: vcek},
		ProductName:      "Turin",
		ArkCreationTime:  now,
		AskCreationTime:  now,
		AsvkCreationTime: now,
		VcekCreationTime: now,
		HWID:             hwid64,
		VcekCustom:       sevtest.CertOverride{Subject: &vcekSubject, Extensions: exts},
		ArkCustom:        sevtest.CertOverride{SerialNumber: randomSerial()},
		AskCustom:        sevtest.CertOverride{SerialNumber: randomSerial()},
	}
	certifyMu.Lock()
	signer, err := b.TestOnlyCertChain()
	certifyMu.Unlock()
	if err != nil {
		return fmt.Errorf("snp sim: building the Turin certificate chain: %v", err)
	}
	return writeSNP(dir, signer.Ark, signer.Ask, signer.Vcek, vcek)
}

// turinChip returns the hardware id and TCB of a simulated Turin VCEK, or
// ok false for another product line's.
func turinChip(vcek *x509.Certificate) (hwid []byte, tcb uint64, ok bool, err error) {
	if vcek.Issuer.CommonName != "SEV-Turin" {
		return nil, 0, false, nil
	}
	for _, e := range vcek.Extensions {
		if e.Id.Equal(asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 4}) && len(e.Value) == 8 {
			hwid = bytes.Clone(e.Value)
		}
	}
	if hwid == nil {
		return nil, 0, true, errors.New("snp sim: Turin VCEK without an 8-byte hardware id")
	}
	tcb, err = snpTurinTCB.Encode("Turin")
	return hwid, tcb, true, err
}

func randomSerial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 63))
	return n.Add(n, big.NewInt(1))
}

// snpVCEKSubject is the subject of a simulated VCEK: AMD's, plus a pseudonym
// attribute (2.5.4.65) holding attest.SimSNPMarker. (A VCEK may carry no
// extension besides AMD's, so the mark lives in the name.)
func snpVCEKSubject(serial *big.Int) pkix.Name {
	return pkix.Name{
		Organization:       []string{"Advanced Micro Devices"},
		Country:            []string{"US"},
		OrganizationalUnit: []string{"Engineering"},
		Locality:           []string{"Santa Clara"},
		Province:           []string{"CA"},
		SerialNumber:       fmt.Sprintf("%x", serial),
		CommonName:         "SEV-VCEK",
		ExtraNames:         []pkix.AttributeTypeAndValue{{Type: asn1.ObjectIdentifier{2, 5, 4, 65}, Value: attest.SimSNPMarker}},
	}
}

// SNPRoots returns the simulated ARK and ASK of the sim in dir: the roots a
// verifier must be given to accept its evidence.
func SNPRoots(dir string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, name := range []string{snpARKFile, snpASKFile} {
		c, err := readSNPCert(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// SNPOptions choose the fields of simulated reports. Zero values give a
// debug-off, VMPL 0 report with all-zero measurement, host data, family and
// image id, guest SVN 0 and DefaultSNPGuestPolicy.
type SNPOptions struct {
	Measurement []byte // 48 bytes
	HostData    []byte // 32 bytes
	FamilyID    []byte // 16 bytes
	ImageID     []byte // 16 bytes
	GuestSVN    uint32
	VMPL        uint32
	// GuestPolicy is the report's guest policy; 0 means
	// DefaultSNPGuestPolicy. Set bit 19 for a debug guest.
	GuestPolicy uint64
	// PlatformInfo is the report's PLATFORM_INFO (bit 0: SMT enabled).
	PlatformInfo uint64
	// Edit, when set, changes each report after the fields above are set
	// and before it is signed: tests use it to forge reports that
	// contradict their certificate or themselves. Optional.
	Edit func(*spb.Report)
}

// SNPIssuer signs SNP reports with a simulated VCEK.
type SNPIssuer struct {
	key   *ecdsa.PrivateKey
	table []byte
	hwid  []byte // CHIP_ID
	tcb   uint64
	fms   uint32 // CPUID_1_EAX: the product line
	opts  SNPOptions
}

// NewSNPIssuer returns an issuer of simulated SNP evidence for the sim in
// dir (see GenerateSNP).
func NewSNPIssuer(dir string, opts SNPOptions) (*SNPIssuer, error) {
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
		opts.GuestPolicy = DefaultSNPGuestPolicy
	}
	if _, err := abi.ParseSnpPolicy(opts.GuestPolicy); err != nil {
		return nil, fmt.Errorf("snp sim: guest policy: %v", err)
	}
	key, chain, err := loadSNP(dir)
	if err != nil {
		return nil, err
	}
	vcek := chain[2]
	fms := snpFMS
	hwid, tcb, turin, err := turinChip(vcek)
	switch {
	case err != nil:
		return nil, err
	case turin:
		fms = snpTurinFMS
	default:
		exts, err := kds.VcekCertificateExtensions(vcek)
		if err != nil {
			return nil, fmt.Errorf("snp sim: VCEK extensions: %v", err)
		}
		hwid, tcb = exts.HWID, uint64(exts.TCBVersion)
	}
	table := &abi.CertTable{Entries: []abi.CertTableEntry{
		{GUID: uuid.MustParse(abi.ArkGUID), RawCert: chain[0].Raw},
		{GUID: uuid.MustParse(abi.AskGUID), RawCert: chain[1].Raw},
		{GUID: uuid.MustParse(abi.VcekGUID), RawCert: vcek.Raw},
	}}
	chipID := make([]byte, abi.ChipIDSize) // Turin: the 8-byte id, then zeros
	copy(chipID, hwid)
	return &SNPIssuer{key: key, table: table.Marshal(), hwid: chipID, tcb: tcb, fms: fms, opts: opts}, nil
}

// Platform returns attest.SNP.
func (s *SNPIssuer) Platform() attest.Platform { return attest.SNP }

// ChipID returns the CHIP_ID of the simulated chip (its VCEK's hardware id).
func (s *SNPIssuer) ChipID() []byte { return bytes.Clone(s.hwid) }

// Issue returns a simulated report binding reportData, followed by the
// certificate table holding the sim ARK, ASK and VCEK.
func (s *SNPIssuer) Issue(_ context.Context, reportData [attest.ReportDataSize]byte) (attest.Evidence, error) {
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
		Cpuid1EaxFms:    s.fms,
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
	if s.opts.Edit != nil {
		s.opts.Edit(r)
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

// loadSNP reads the VCEK key and the ARK, ASK, VCEK certificates of a sim.
func loadSNP(dir string) (*ecdsa.PrivateKey, []*x509.Certificate, error) {
	var chain []*x509.Certificate
	for _, name := range []string{snpARKFile, snpASKFile, snpVCEKFile} {
		c, err := readSNPCert(filepath.Join(dir, name))
		if err != nil {
			return nil, nil, err
		}
		chain = append(chain, c)
	}
	data, err := os.ReadFile(filepath.Join(dir, snpKeyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("snp sim: %v", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, nil, fmt.Errorf("snp sim: %s: no PRIVATE KEY block", snpKeyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("snp sim: %s: %v", snpKeyFile, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P384() {
		return nil, nil, fmt.Errorf("snp sim: %s: not an ECDSA P-384 key", snpKeyFile)
	}
	if !key.PublicKey.Equal(chain[2].PublicKey) {
		return nil, nil, fmt.Errorf("snp sim: %s does not match %s", snpKeyFile, snpVCEKFile)
	}
	return key, chain, nil
}

func readSNPCert(name string) (*x509.Certificate, error) {
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
