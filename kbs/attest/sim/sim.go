// Package sim is the simulated TEE for development and tests. It keeps a
// locally generated fake vendor hierarchy for each platform in one
// directory and issues evidence in the real formats (SNP reports with a
// certificate table, TDX v4 quotes) with any REPORT_DATA and chosen
// measurements.
//
// Layout of a sim directory:
//
//	root.pem  every simulated root certificate (SNP ARK and ASK, TDX root):
//	          the file a verifier is given to trust simulated evidence
//	snp/      the simulated AMD chain and the VCEK's private key
//	tdx/      the simulated Intel PCK chain and signing keys
//
// Evidence from the sim verifies under the same code as hardware evidence
// (kbs/attest/verify), and only when root.pem is passed explicitly; its
// claims then say Simulated = true. Nothing trusts a sim by default. Anyone
// who can read the directory can forge evidence under its root: it is a
// development tool, not a security boundary.
//
// The SNP part uses go-sev-guest's testing package, which registers the
// flags -product and -product_name on flag.CommandLine in any binary that
// imports this package.
package sim

import (
	"bytes"
	"crypto/sha512"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/kbs-dev/kbs/internal/atomicfile"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/snp"
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
// evidence of a healthy guest with the default measurements.
type Options struct {
	// Measurement is the SNP MEASUREMENT or TDX MRTD (48 bytes).
	// Optional; default DefaultSNPMeasurement or DefaultTDXMRTD.
	Measurement []byte
	// Debug issues evidence of a debuggable guest (SNP guest policy bit 19,
	// TDX TD_ATTRIBUTES bit 0), which every verifier must reject.
	Debug bool

	// SNP only (see snp.SimOptions). Optional; zero values by default.
	HostData    []byte // 32 bytes
	FamilyID    []byte // 16 bytes
	ImageID     []byte // 16 bytes
	GuestSVN    uint32
	VMPL        uint32
	GuestPolicy uint64 // 0 = snp.DefaultSimGuestPolicy

	// TDX only. Optional; RTMR defaults to DefaultTDXRTMR, the others to
	// zeros.
	RTMR       [4][]byte // 48 bytes each
	MRConfigID []byte    // 48 bytes
	MROwner    []byte    // 48 bytes
}

// platform is one simulated platform's part of a sim directory.
type platform struct {
	generate func(dir string) error
	roots    func(dir string) ([]*x509.Certificate, error)
	issuer   func(dir string, o Options) (attest.Issuer, error)
}

// platforms are the simulated platforms, keyed by subdirectory name.
var platforms = map[attest.Platform]platform{
	attest.SNP: {
		generate: snp.GenerateSim,
		roots:    snp.SimRoots,
		issuer:   snpIssuer,
	},
}

// Init creates a sim directory, or completes an existing one, keeping any
// material already there. It (re)writes root.pem from the platforms'
// roots.
func Init(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("sim: %v", err)
	}
	var pemData []byte
	for _, p := range sortedPlatforms() {
		sub := filepath.Join(dir, string(p))
		if err := platforms[p].generate(sub); err != nil {
			return fmt.Errorf("sim: %s: %w", p, err)
		}
		roots, err := platforms[p].roots(sub)
		if err != nil {
			return fmt.Errorf("sim: %s roots: %w", p, err)
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

func sortedPlatforms() []attest.Platform {
	var ps []attest.Platform
	for p := range platforms {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return ps
}

// NewIssuer returns an issuer of simulated evidence for platform p from the
// sim in dir (see Init).
func NewIssuer(dir string, p attest.Platform, opts Options) (attest.Issuer, error) {
	pl, ok := platforms[p]
	if !ok {
		return nil, fmt.Errorf("sim: no simulated platform %q", p)
	}
	return pl.issuer(filepath.Join(dir, string(p)), opts)
}

func snpIssuer(dir string, o Options) (attest.Issuer, error) {
	so := snp.SimOptions{
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
		so.GuestPolicy = snp.DefaultSimGuestPolicy
	}
	if o.Debug {
		so.GuestPolicy |= 1 << 19
	}
	return snp.NewSimIssuer(dir, so)
}
