// Package sim is the simulated TEE for development and tests: it issues
// evidence. It keeps a locally generated fake vendor hierarchy for each
// platform in one directory and issues evidence in the real formats (SNP
// reports with a certificate table, TDX v4 quotes) with any REPORT_DATA and
// chosen measurements.
//
// Layout of a sim directory:
//
//	root.pem  every simulated root certificate (SNP ARK and ASK, TDX root):
//	          the file a verifier is given to trust simulated evidence
//	snp/      the simulated AMD chain and the VCEK's private key (GenerateSNP)
//	tdx/      the simulated Intel PCK chain, signing keys and collateral
//	          (GenerateTDX; the collateral at attest.SimTDXCollateralDir)
//
// Evidence from the sim verifies under the same code as hardware evidence
// (kbs/attest/verify), and only when root.pem is passed explicitly; its
// claims then say Simulated = true. Nothing trusts a sim by default. Anyone
// who can read the directory can forge evidence under its root: it is a
// development tool, not a security boundary.
//
// This package only issues. The verifiers (kbs/attest/snp, kbs/attest/tdx,
// kbs/attest/verify) never import it: they recognize simulated evidence by
// the marks in attest (SimSNPMarker, SimTDXCRLPrefix), route it to the sim
// roots they were given, and verify it like any other. Programs that only
// verify (kbs/client, an auditor) therefore link none of it. The SNP part
// uses go-sev-guest's testing package, which registers the flags -product
// and -product_name on flag.CommandLine in any binary that imports this
// package: kbsd (for --dev) and kbsctl (for --tee sim).
package sim

import (
	"bytes"
	"context"
	"crypto/sha512"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kbs-dev/kbs/internal/atomicfile"
	"github.com/kbs-dev/kbs/kbs/attest"
)

// RootFileName is the name of the trusted-roots file in a sim directory.
const RootFileName = "root.pem"

// RootFile returns the path of dir's root.pem.
func RootFile(dir string) string { return filepath.Join(dir, RootFileName) }

// DefaultSNPMeasurement is the MEASUREMENT of simulated SNP evidence unless
// Options say otherwise: SHA-384 of a fixed label, so a development manifest
// can name it. (The TDX defaults are in tdx.go.)
var DefaultSNPMeasurement = sha512.Sum384([]byte("kbs sim: snp measurement"))

// Options choose the contents of simulated evidence. The zero value gives
// evidence of a healthy guest with the default measurements. (SNPOptions and
// TDXOptions reach every field of one platform.)
type Options struct {
	// Measurement is the SNP MEASUREMENT or TDX MRTD (48 bytes).
	// Optional; default DefaultSNPMeasurement or DefaultTDXMRTD.
	Measurement []byte
	// Debug issues evidence of a debuggable guest (SNP guest policy bit 19,
	// TDX TD_ATTRIBUTES bit 0), which every verifier must reject.
	Debug bool

	// SNP only (see SNPOptions). Optional; zero values by default.
	HostData    []byte // 32 bytes
	FamilyID    []byte // 16 bytes
	ImageID     []byte // 16 bytes
	GuestSVN    uint32
	VMPL        uint32
	GuestPolicy uint64 // 0 = DefaultSNPGuestPolicy

	// TDX only. Optional; RTMR defaults to DefaultTDXRTMR, the others to
	// zeros.
	RTMR       [4][]byte // 48 bytes each
	MRConfigID []byte    // 48 bytes
	MROwner    []byte    // 48 bytes
}

// platforms are the simulated platforms, in the order of their
// subdirectories' names.
var platforms = []struct {
	platform attest.Platform
	generate func(dir string) error
	roots    func(dir string) ([]*x509.Certificate, error)
}{
	{attest.SNP, GenerateSNP, SNPRoots},
	{attest.TDX, GenerateTDX, TDXRoots},
}

// Init creates a sim directory, or completes an existing one, keeping any
// material already there. It (re)writes root.pem from the platforms'
// roots.
func Init(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("sim: %v", err)
	}
	var pemData []byte
	for _, p := range platforms {
		sub := filepath.Join(dir, string(p.platform))
		if err := p.generate(sub); err != nil {
			return fmt.Errorf("sim: %s: %w", p.platform, err)
		}
		roots, err := p.roots(sub)
		if err != nil {
			return fmt.Errorf("sim: %s roots: %w", p.platform, err)
		}
		for _, c := range roots {
			pemData = append(pemData, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
	}
	name := RootFile(dir)
	if old, err := os.ReadFile(name); err == nil && bytes.Equal(old, pemData) {
		return nil
	}
	if err := atomicfile.WriteFile(name, pemData, 0o644); err != nil {
		return fmt.Errorf("sim: %v", err)
	}
	return nil
}

// NewIssuer returns an issuer of simulated evidence for platform p from the
// sim in dir (see Init).
func NewIssuer(dir string, p attest.Platform, o Options) (attest.Issuer, error) {
	sub := filepath.Join(dir, string(p))
	switch p {
	case attest.SNP:
		so := SNPOptions{
			Measurement: o.Measurement,
			HostData:    o.HostData,
			FamilyID:    o.FamilyID,
			ImageID:     o.ImageID,
			GuestSVN:    o.GuestSVN,
			VMPL:        o.VMPL,
			GuestPolicy: o.GuestPolicy,
		}
		if so.Measurement == nil {
			so.Measurement = DefaultSNPMeasurement[:]
		}
		if so.GuestPolicy == 0 {
			so.GuestPolicy = DefaultSNPGuestPolicy
		}
		if o.Debug {
			so.GuestPolicy |= 1 << 19
		}
		return NewSNPIssuer(sub, so)
	case attest.TDX:
		to := TDXOptions{
			MRTD:       o.Measurement,
			RTMR:       o.RTMR,
			MRConfigID: o.MRConfigID,
			MROwner:    o.MROwner,
		}
		if o.Debug {
			to.TDAttributes |= 1 // TD_ATTRIBUTES.DEBUG
		}
		return NewTDXIssuer(sub, to)
	}
	return nil, fmt.Errorf("sim: no simulated platform %q", p)
}

// DefaultClaims issues the default evidence (zero REPORT_DATA) of every
// platform the sim in dir simulates and returns its claims as v verifies
// them; v must trust the sim's root.pem. kbsd --dev pins its development
// manifest to them (manifest.PinClass).
func DefaultClaims(ctx context.Context, dir string, v attest.Verifier) ([]*attest.Claims, error) {
	var out []*attest.Claims
	for _, p := range platforms {
		iss, err := NewIssuer(dir, p.platform, Options{})
		if err != nil {
			return nil, err
		}
		var rd [attest.ReportDataSize]byte
		ev, err := iss.Issue(ctx, rd)
		if err != nil {
			return nil, err
		}
		c, err := v.Verify(ctx, ev, rd)
		if err != nil {
			return nil, fmt.Errorf("simulated %s evidence does not verify: %w", p.platform, err)
		}
		out = append(out, c)
	}
	return out, nil
}
