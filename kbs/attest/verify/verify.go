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
// simulated evidence.
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
	"github.com/kbs-dev/kbs/kbs/attest/snp"
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
	// simulated evidence is rejected.
	SimRootFile string
	// Offline forbids network access: certificates and collateral come only
	// from the evidence and CacheDir, and no revocation list is fetched.
	// When false, missing certificates are fetched from the vendor and
	// revocation is checked.
	Offline bool
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
	d := &dispatcher{platforms: map[attest.Platform]pair{}}
	sub := func(name string) string {
		if opts.CacheDir == "" {
			return ""
		}
		return filepath.Join(opts.CacheDir, name)
	}
	hw, err := snp.NewVerifier(snp.Options{Now: opts.Now, CacheDir: sub("snp"), Online: !opts.Offline})
	if err != nil {
		return nil, err
	}
	p := pair{hw: hw, isSimulated: snp.IsSimulated}
	if opts.SimRootFile != "" {
		certs, err := readRoots(opts.SimRootFile)
		if err != nil {
			return nil, err
		}
		roots := snp.RootsFromCerts(certs)
		if len(roots) == 0 {
			return nil, fmt.Errorf("verify: %s holds no SNP root (ARK and ASK)", opts.SimRootFile)
		}
		// Simulated chains have no CRL and never reach the network.
		if p.sim, err = snp.NewVerifier(snp.Options{Now: opts.Now, Roots: roots}); err != nil {
			return nil, err
		}
	}
	d.platforms[attest.SNP] = p
	for _, setup := range extraPlatforms {
		pl, p, err := setup(opts, sub)
		if err != nil {
			return nil, err
		}
		d.platforms[pl] = p
	}
	return d, nil
}

// extraPlatforms set up verifiers of further platforms (TDX).
var extraPlatforms []func(opts Options, sub func(string) string) (attest.Platform, pair, error)

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
