// Package verify is the one entry point for checking attestation evidence:
// it dispatches on Evidence.Platform to the SNP and TDX verifiers, and
// decides which roots each may trust.
//
// Hardware evidence is checked against the vendors' roots embedded in
// go-sev-guest and go-tdx-guest. Simulated evidence (kbs/attest/sim) is
// accepted only when Options.SimRootFile names the sim's root.pem; it is then
// checked by the same code with the sim roots as the only roots, and its
// claims carry Simulated = true. Without a sim root file, evidence from a
// simulated chain is rejected with ErrSimulatedNotTrusted. A sim root never
// verifies hardware-shaped evidence and a vendor root never verifies
// simulated evidence: snp.IsSimulated and tdx.IsSimulated route each piece
// of evidence by the marks the sim puts in its certificates, and the
// verifier it is routed to still checks it against its own roots only.
//
// This package and the verifiers it wires never import the simulator: a
// program that verifies evidence cannot issue simulated evidence.
package verify

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/fetch"
	"github.com/kbs-dev/kbs/kbs/attest/snp"
	"github.com/kbs-dev/kbs/kbs/attest/tdx"
)

// ErrSimulatedNotTrusted is returned for simulated evidence when no sim root
// was configured.
var ErrSimulatedNotTrusted = errors.New("evidence chains to a simulated root; not trusted")

// ErrUnknownPlatform is returned for evidence of a platform this build does
// not verify.
var ErrUnknownPlatform = errors.New("unknown attestation platform")

// Options configure New.
type Options struct {
	// Now returns the time at which certificates and collateral must be
	// valid. Optional; default clock.Now (the wall clock).
	Now func() time.Time
	// CacheDir caches endorsement certificates and collateral (in
	// subdirectories snp/ and tdx/). Optional; no disk cache when empty.
	CacheDir string
	// SimRootFile is a simulated TEE's root.pem. Optional; empty means
	// simulated evidence is rejected. The sim's TDX collateral is read from
	// attest.SimTDXCollateralDir next to it.
	SimRootFile string
	// Offline forbids network access: certificates and collateral come only
	// from the evidence, Collateral and CacheDir, and no revocation list is
	// fetched. When false, missing certificates and TDX collateral are
	// fetched from the vendor and revocation is checked.
	Offline bool
	// Collateral is a collateral bundle directory: for TDX, Intel PCS's
	// responses as served (tdx.LoadCollateral names the files). Offline,
	// TDX evidence verifies only with it (or with collateral an earlier
	// online verification left in CacheDir): collateral is never skipped.
	// Optional; when set it wins over CacheDir.
	Collateral string
	// Fetches bounds the vendor fetches of both platforms together, online
	// (kbs/attest/fetch). Optional; default one gate with fetch's default
	// limits.
	Fetches *fetch.Gate
}

// pair is a platform's verifier for hardware evidence and, when a sim root
// is configured, for simulated evidence.
type pair struct {
	hw, sim     attest.Verifier
	isSimulated func([]byte) bool
}

type dispatcher struct {
	platforms map[attest.Platform]pair
}

// New returns a Verifier for every supported platform.
func New(opts Options) (attest.Verifier, error) {
	var simRoots []*x509.Certificate
	if opts.SimRootFile != "" {
		var err error
		if simRoots, err = readRoots(opts.SimRootFile); err != nil {
			return nil, err
		}
	}
	if opts.Fetches == nil && !opts.Offline {
		opts.Fetches = fetch.NewGate(fetch.Limits{})
	}
	snpPair, err := newSNP(opts, simRoots)
	if err != nil {
		return nil, err
	}
	tdxPair, err := newTDX(opts, simRoots)
	if err != nil {
		return nil, err
	}
	return &dispatcher{platforms: map[attest.Platform]pair{attest.SNP: snpPair, attest.TDX: tdxPair}}, nil
}

// cacheDir returns the platform's subdirectory of the cache, if any.
func (o Options) cacheDir(p attest.Platform) string {
	if o.CacheDir == "" {
		return ""
	}
	return filepath.Join(o.CacheDir, string(p))
}

// newSNP sets up SNP verification: AMD's roots, and the sim's ARK and ASK
// when simRoots holds them.
func newSNP(opts Options, simRoots []*x509.Certificate) (pair, error) {
	hw, err := snp.NewVerifier(snp.Options{Now: opts.Now, CacheDir: opts.cacheDir(attest.SNP), Online: !opts.Offline, Fetches: opts.Fetches})
	if err != nil {
		return pair{}, err
	}
	p := pair{hw: hw, isSimulated: snp.IsSimulated}
	if opts.SimRootFile == "" {
		return p, nil
	}
	roots := snp.RootsFromCerts(simRoots)
	if len(roots) == 0 {
		return pair{}, fmt.Errorf("verify: %s holds no SNP root (ARK and ASK)", opts.SimRootFile)
	}
	// Simulated chains have no CRL and never reach the network.
	if p.sim, err = snp.NewVerifier(snp.Options{Now: opts.Now, Roots: roots}); err != nil {
		return pair{}, err
	}
	return p, nil
}

// newTDX sets up TDX verification: Intel's root with the collateral the
// options allow, and the sim's root with its own collateral when simRoots
// holds one.
func newTDX(opts Options, simRoots []*x509.Certificate) (pair, error) {
	dir := opts.cacheDir(attest.TDX)
	if opts.Collateral != "" {
		dir = opts.Collateral
	}
	hw, err := tdx.NewVerifier(tdx.Options{
		Now:           opts.Now,
		CollateralDir: dir,
		Online:        !opts.Offline,
		Fetches:       opts.Fetches,
	})
	if err != nil {
		return pair{}, err
	}
	p := pair{hw: hw, isSimulated: tdx.IsSimulated}
	roots := tdx.RootsFromCerts(simRoots)
	if len(roots) == 0 {
		// No sim root file, or one without TDX roots: simulated TDX stays
		// untrusted.
		return p, nil
	}
	so := tdx.Options{Now: opts.Now, TrustedRoots: roots}
	if dir := filepath.Join(filepath.Dir(opts.SimRootFile), attest.SimTDXCollateralDir); isDir(dir) {
		so.CollateralDir = dir
	}
	if p.sim, err = tdx.NewVerifier(so); err != nil {
		return pair{}, err
	}
	return p, nil
}

func isDir(name string) bool {
	fi, err := os.Stat(name)
	return err == nil && fi.IsDir()
}

// Verify checks ev with the verifier of its platform.
func (d *dispatcher) Verify(ctx context.Context, ev attest.Evidence, reportData [attest.ReportDataSize]byte) (*attest.Claims, error) {
	p, ok := d.platforms[ev.Platform]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownPlatform, ev.Platform)
	}
	if !p.isSimulated(ev.Data) {
		return p.hw.Verify(ctx, ev, reportData)
	}
	if p.sim == nil {
		return nil, fmt.Errorf("%s: %w (pass the sim's root.pem to accept simulated evidence)", ev.Platform, ErrSimulatedNotTrusted)
	}
	c, err := p.sim.Verify(ctx, ev, reportData)
	if err != nil {
		return nil, fmt.Errorf("simulated %s evidence: %w", ev.Platform, err)
	}
	c.Simulated = true
	return c, nil
}

// UnverifiedReportData returns the REPORT_DATA of evidence without verifying
// anything (snp.UnverifiedReportData, tdx.UnverifiedReportData): for tools
// that verify evidence whose binding they do not know, and must then say
// so.
func UnverifiedReportData(ev attest.Evidence) ([attest.ReportDataSize]byte, error) {
	switch ev.Platform {
	case attest.SNP:
		return snp.UnverifiedReportData(ev.Data)
	case attest.TDX:
		return tdx.UnverifiedReportData(ev.Data)
	}
	return [attest.ReportDataSize]byte{}, fmt.Errorf("%w: %q", ErrUnknownPlatform, ev.Platform)
}

// readRoots parses a file of PEM certificates (a sim root.pem).
func readRoots(file string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("verify: %v", err)
	}
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("verify: %s: unexpected PEM block %q", file, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("verify: %s: %v", file, err)
		}
		out = append(out, c)
	}
	if len(bytes.TrimSpace(data)) != 0 {
		return nil, fmt.Errorf("verify: %s: trailing data after the certificates", file)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("verify: %s: no certificates", file)
	}
	return out, nil
}
