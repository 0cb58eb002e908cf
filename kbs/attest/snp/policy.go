package snp

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"github.com/kbs-dev/kbs/kbs/attest"
)

// Errors returned by Validate. Each rejection wraps exactly one of them
// (ErrDebug, from snp.go, included).
var (
	ErrPolicyInvalid   = errors.New("snp: invalid policy")
	ErrClaims          = errors.New("snp: claims are not verified SNP claims")
	ErrMeasurement     = errors.New("snp: MEASUREMENT not allowed")
	ErrHostData        = errors.New("snp: HOST_DATA not allowed")
	ErrFamilyID        = errors.New("snp: FAMILY_ID not allowed")
	ErrImageID         = errors.New("snp: IMAGE_ID not allowed")
	ErrGuestPolicy     = errors.New("snp: guest policy not allowed")
	ErrVMPL            = errors.New("snp: VMPL not allowed")
	ErrTCBBelowMinimum = errors.New("snp: TCB below the minimum")
	ErrGuestSVN        = errors.New("snp: GUEST_SVN below the minimum")
	ErrProduct         = errors.New("snp: product not allowed")
	ErrChipID          = errors.New("snp: CHIP_ID not in the allow list")
	ErrLibraryCheck    = errors.New("snp: go-sev-guest validation failed")
)

// TCB is an SEV-SNP TCB version by component (Milan/Genoa layout).
type TCB struct {
	Bootloader uint8
	TEE        uint8
	SNP        uint8
	Microcode  uint8
}

func (t TCB) parts() kds.TCBParts {
	return kds.TCBParts{BlSpl: t.Bootloader, TeeSpl: t.TEE, SnpSpl: t.SNP, UcodeSpl: t.Microcode}
}

// Policy holds the reference values evidence must match. Every field is
// required: either a value, or the matching Any… flag set to say, on
// purpose, that the field is not checked. A zero Policy is invalid, so a
// forgotten field can never pass silently.
type Policy struct {
	Measurement    []byte // 48 bytes
	AnyMeasurement bool

	HostData    []byte // 32 bytes
	AnyHostData bool

	FamilyID    []byte // 16 bytes
	AnyFamilyID bool

	ImageID    []byte // 16 bytes
	AnyImageID bool

	// Guest policy. Debug is never allowed. AllowSMT admits guests whose
	// policy allows SMT and hosts with SMT enabled; AllowMigrationAgent
	// admits guests that allow a migration agent. Any other capability bit
	// (CXL, …) is rejected; single-socket and other restrictions are
	// accepted. MinABIMajor.MinABIMinor is the lowest guest policy ABI
	// version accepted (0.0 accepts all).
	AllowSMT            bool
	AllowMigrationAgent bool
	MinABIMajor         uint8
	MinABIMinor         uint8

	VMPL    *uint32 // exact VMPL (0-3)
	AnyVMPL bool

	// MinTCB is the component-wise minimum of REPORTED_TCB (and so of
	// COMMITTED_TCB and CURRENT_TCB, which Verify keeps above it).
	// Required; an explicit zero TCB has no minimum.
	MinTCB *TCB

	// MinGuestSVN is the minimum GUEST_SVN. Required; explicit 0 has no
	// minimum.
	MinGuestSVN *uint32

	Products   []string // product lines: "Milan", "Genoa", "Turin"
	AnyProduct bool

	ChipIDs   [][]byte // 64 bytes each
	AnyChipID bool
}

// Check reports whether p is complete and well formed.
func (p *Policy) Check() error {
	var errs []error
	bytesField := func(name string, v []byte, anyv bool, size int) {
		switch {
		case anyv && v != nil:
			errs = append(errs, fmt.Errorf("%s: both a value and Any%s", name, name))
		case !anyv && v == nil:
			errs = append(errs, fmt.Errorf("%s: neither a value nor Any%s", name, name))
		case v != nil && len(v) != size:
			errs = append(errs, fmt.Errorf("%s: %d bytes, want %d", name, len(v), size))
		}
	}
	bytesField("Measurement", p.Measurement, p.AnyMeasurement, abi.MeasurementSize)
	bytesField("HostData", p.HostData, p.AnyHostData, abi.HostDataSize)
	bytesField("FamilyID", p.FamilyID, p.AnyFamilyID, abi.FamilyIDSize)
	bytesField("ImageID", p.ImageID, p.AnyImageID, abi.ImageIDSize)
	switch {
	case p.AnyVMPL && p.VMPL != nil:
		errs = append(errs, errors.New("policy field VMPL: both a value and AnyVMPL"))
	case !p.AnyVMPL && p.VMPL == nil:
		errs = append(errs, errors.New("policy field VMPL: neither a value nor AnyVMPL"))
	case p.VMPL != nil && *p.VMPL > 3:
		errs = append(errs, fmt.Errorf("VMPL: %d, want 0-3", *p.VMPL))
	}
	if p.MinTCB == nil {
		errs = append(errs, errors.New("MinTCB: not set"))
	} else if _, err := kds.ComposeTCBParts(p.MinTCB.parts()); err != nil {
		errs = append(errs, fmt.Errorf("MinTCB: %v", err))
	}
	if p.MinGuestSVN == nil {
		errs = append(errs, errors.New("MinGuestSVN: not set"))
	}
	switch {
	case p.AnyProduct && p.Products != nil:
		errs = append(errs, errors.New("policy field Products: both a list and AnyProduct"))
	case !p.AnyProduct && len(p.Products) == 0:
		errs = append(errs, errors.New("policy field Products: neither a list nor AnyProduct"))
	}
	switch {
	case p.AnyChipID && p.ChipIDs != nil:
		errs = append(errs, errors.New("ChipIDs: both a list and AnyChipID"))
	case !p.AnyChipID && len(p.ChipIDs) == 0:
		errs = append(errs, errors.New("ChipIDs: neither a list nor AnyChipID"))
	}
	for i, id := range p.ChipIDs {
		if len(id) != abi.ChipIDSize {
			errs = append(errs, fmt.Errorf("ChipIDs[%d]: %d bytes, want %d", i, len(id), abi.ChipIDSize))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrPolicyInvalid, errors.Join(errs...))
	}
	return nil
}

// Validate checks claims returned by Verifier.Verify against p. It runs its
// own explicit check of every field first (so each mismatch has its own
// error), then go-sev-guest's validate.SnpAttestation with every option set
// from p, as a second, independent implementation of the same rules.
func Validate(c *attest.Claims, p Policy) error {
	if err := p.Check(); err != nil {
		return err
	}
	if c == nil || c.Platform != attest.SNP || c.SNP == nil || len(c.SNP.Report) != ReportSize || len(c.SNP.EndorsementKey) == 0 {
		return fmt.Errorf("%w: need claims from snp.Verifier.Verify", ErrClaims)
	}
	r, err := abi.ReportToProto(c.SNP.Report)
	if err != nil {
		return fmt.Errorf("%w: report: %v", ErrClaims, err)
	}
	der := c.SNP.EndorsementKey
	if err := parsedCerts.check(der); err != nil {
		return fmt.Errorf("%w: endorsement certificate: %v", ErrClaims, err)
	}
	if err := checkPolicy(r, c.SNP.Product, p); err != nil {
		return err
	}
	att := &spb.Attestation{Report: r, CertificateChain: &spb.CertificateChain{Extras: map[string][]byte{}}}
	if c.SNP.SignerKey == "vlek" {
		att.CertificateChain.VlekCert = der
	} else {
		att.CertificateChain.VcekCert = der
	}
	if err := validate.SnpAttestation(att, libraryOptions(r, p)); err != nil {
		return fmt.Errorf("%w: %v", ErrLibraryCheck, err)
	}
	return nil
}

func checkPolicy(r *spb.Report, product string, p Policy) error {
	gp, err := abi.ParseSnpPolicy(r.GetPolicy())
	if err != nil {
		return fmt.Errorf("%w: %v", ErrGuestPolicy, err)
	}
	if gp.Debug {
		return fmt.Errorf("%w: guest policy 0x%x has DEBUG set", ErrDebug, r.GetPolicy())
	}
	field := func(sentinel error, name string, got, want []byte, anyv bool) error {
		if anyv || bytes.Equal(got, want) {
			return nil
		}
		return fmt.Errorf("%w: %s is %s, want %s", sentinel, name, hex.EncodeToString(got), hex.EncodeToString(want))
	}
	if err := field(ErrMeasurement, "MEASUREMENT", r.GetMeasurement(), p.Measurement, p.AnyMeasurement); err != nil {
		return err
	}
	if err := field(ErrHostData, "HOST_DATA", r.GetHostData(), p.HostData, p.AnyHostData); err != nil {
		return err
	}
	if err := field(ErrFamilyID, "FAMILY_ID", r.GetFamilyId(), p.FamilyID, p.AnyFamilyID); err != nil {
		return err
	}
	if err := field(ErrImageID, "IMAGE_ID", r.GetImageId(), p.ImageID, p.AnyImageID); err != nil {
		return err
	}
	switch {
	case gp.SMT && !p.AllowSMT:
		return fmt.Errorf("%w: guest policy 0x%x allows SMT", ErrGuestPolicy, r.GetPolicy())
	case gp.MigrateMA && !p.AllowMigrationAgent:
		return fmt.Errorf("%w: guest policy 0x%x allows a migration agent", ErrGuestPolicy, r.GetPolicy())
	case gp.CXLAllowed:
		return fmt.Errorf("%w: guest policy 0x%x allows CXL", ErrGuestPolicy, r.GetPolicy())
	case uint16(gp.ABIMajor)<<8|uint16(gp.ABIMinor) < uint16(p.MinABIMajor)<<8|uint16(p.MinABIMinor):
		return fmt.Errorf("%w: guest policy ABI %d.%d below %d.%d", ErrGuestPolicy, gp.ABIMajor, gp.ABIMinor, p.MinABIMajor, p.MinABIMinor)
	}
	if info, err := abi.ParseSnpPlatformInfo(r.GetPlatformInfo()); err != nil {
		return fmt.Errorf("%w: PLATFORM_INFO 0x%x: %v", ErrGuestPolicy, r.GetPlatformInfo(), err)
	} else if info.SMTEnabled && !p.AllowSMT {
		return fmt.Errorf("%w: host has SMT enabled (PLATFORM_INFO 0x%x)", ErrGuestPolicy, r.GetPlatformInfo())
	}
	if !p.AnyVMPL && r.GetVmpl() != *p.VMPL {
		return fmt.Errorf("%w: VMPL is %d, want %d", ErrVMPL, r.GetVmpl(), *p.VMPL)
	}
	min := p.MinTCB.parts()
	for _, t := range []struct {
		name string
		v    uint64
	}{{"REPORTED_TCB", r.GetReportedTcb()}, {"COMMITTED_TCB", r.GetCommittedTcb()}, {"CURRENT_TCB", r.GetCurrentTcb()}} {
		got := kds.DecomposeTCBVersion(kds.TCBVersion(t.v))
		if !kds.TCBPartsLE(min, got) {
			return fmt.Errorf("%w: %s is bootloader %d, TEE %d, SNP %d, microcode %d; want at least %d, %d, %d, %d",
				ErrTCBBelowMinimum, t.name, got.BlSpl, got.TeeSpl, got.SnpSpl, got.UcodeSpl,
				min.BlSpl, min.TeeSpl, min.SnpSpl, min.UcodeSpl)
		}
	}
	if r.GetGuestSvn() < *p.MinGuestSVN {
		return fmt.Errorf("%w: GUEST_SVN is %d, want at least %d", ErrGuestSVN, r.GetGuestSvn(), *p.MinGuestSVN)
	}
	if !p.AnyProduct && !slices.Contains(p.Products, product) {
		return fmt.Errorf("%w: product %q, want one of %q", ErrProduct, product, p.Products)
	}
	if !p.AnyChipID && !slices.ContainsFunc(p.ChipIDs, func(id []byte) bool { return bytes.Equal(id, r.GetChipId()) }) {
		return fmt.Errorf("%w: CHIP_ID %s…", ErrChipID, hex.EncodeToString(r.GetChipId()[:8]))
	}
	return nil
}

// libraryOptions translates p into go-sev-guest validate.Options, setting
// every field (nil means "not checked" there, so a nil here is a deliberate
// Any… of p or a field that is no policy value).
func libraryOptions(r *spb.Report, p Policy) *validate.Options {
	opt := func(b []byte, anyv bool) []byte {
		if anyv {
			return nil
		}
		return b
	}
	var vmpl *int
	if !p.AnyVMPL {
		v := int(*p.VMPL)
		vmpl = &v
	}
	var chip []byte
	if !p.AnyChipID {
		chip = r.GetChipId() // checkPolicy found it in p.ChipIDs
	}
	return &validate.Options{
		GuestPolicy: abi.SnpPolicy{
			ABIMajor:  p.MinABIMajor,
			ABIMinor:  p.MinABIMinor,
			SMT:       p.AllowSMT,
			MigrateMA: p.AllowMigrationAgent,
			Debug:     false,
		},
		MinimumGuestSvn: *p.MinGuestSVN,
		ReportData:      r.GetReportData(), // Verify compared it with the binding
		HostData:        opt(p.HostData, p.AnyHostData),
		ImageID:         opt(p.ImageID, p.AnyImageID),
		FamilyID:        opt(p.FamilyID, p.AnyFamilyID),
		ReportID:        nil, // names one VM instance; no policy value
		ReportIDMA:      nil, // likewise, for the migration agent
		Measurement:     opt(p.Measurement, p.AnyMeasurement),
		ChipID:          chip,
		MinimumBuild:    0, // firmware build/API versions are covered by the TCB minimum
		MinimumVersion:  0,
		MinimumTCB:      p.MinTCB.parts(),
		// LAUNCH_TCB may legitimately be below the minimum after a live
		// firmware update; the running TCB is what MinTCB bounds.
		MinimumLaunchTCB: kds.TCBParts{},
		// Committed may trail current (reported ≤ committed ≤ current).
		PermitProvisionalFirmware:      true,
		PlatformInfo:                   &abi.SnpPlatformInfo{SMTEnabled: p.AllowSMT, TSMEEnabled: true},
		RequireAuthorKey:               false, // ID blocks are not part of kbs policies
		VMPL:                           vmpl,
		RequireIDBlock:                 false,
		TrustedAuthorKeys:              nil,
		TrustedAuthorKeyHashes:         nil,
		TrustedIDKeys:                  nil,
		TrustedIDKeyHashes:             nil,
		CertTableOptions:               nil,
		MinimumLaunchMitigationVector:  0,
		MinimumCurrentMitigationVector: 0,
	}
}

// parsedCerts remembers, by the SHA-256 of their DER, the endorsement
// certificates x509.ParseCertificate accepted (a pure function of those
// bytes), so that Validate, which runs on every release, parses a given
// VCEK once instead of on every call; the library's validation parses it
// again anyway. Bounded; emptied when full.
var parsedCerts = &parsedCache{m: map[[32]byte]struct{}{}}

const maxParsedCache = 1024

type parsedCache struct {
	mu sync.Mutex
	m  map[[32]byte]struct{}
}

// check returns nil if der is a certificate x509.ParseCertificate accepts,
// and its error otherwise.
func (c *parsedCache) check(der []byte) error {
	id := sha256.Sum256(der)
	c.mu.Lock()
	_, ok := c.m[id]
	c.mu.Unlock()
	if ok {
		return nil
	}
	if _, err := x509.ParseCertificate(der); err != nil {
		return err
	}
	c.mu.Lock()
	if len(c.m) >= maxParsedCache {
		clear(c.m)
	}
	c.m[id] = struct{}{}
	c.mu.Unlock()
	return nil
}
