package verify

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/tdx"
)

func init() {
	extraPlatforms = append(extraPlatforms, setupTDX)
}

// simTDXCRLPrefix starts the CRL distribution point of every certificate of
// the simulated Intel PKI (kbs/attest/tdx). It routes quotes to the sim
// verifier; it is never a reason to trust them.
const simTDXCRLPrefix = "https://kbs-sim.invalid/"

func setupTDX(opts Options, sub func(string) string) (attest.Platform, pair, error) {
	hw, err := tdx.NewVerifier(tdx.Options{
		Now:           opts.Now,
		CollateralDir: sub("tdx"),
		Online:        !opts.Offline,
		// Online, collateral must be there; offline, it is checked when
		// cached.
		RequireCollateral: !opts.Offline,
	})
	if err != nil {
		return "", pair{}, err
	}
	p := pair{hw: hw, isSimulated: isSimulatedTDX}
	if opts.SimRootFile == "" {
		return attest.TDX, p, nil
	}
	certs, err := readRoots(opts.SimRootFile)
	if err != nil {
		return "", pair{}, err
	}
	var roots []*x509.Certificate
	for _, c := range certs {
		if c.Subject.CommonName == "Intel SGX Root CA" && !c.Equal(tdx.IntelRoot()) && c.CheckSignatureFrom(c) == nil {
			roots = append(roots, c)
		}
	}
	if len(roots) == 0 {
		// A sim root file without TDX roots: simulated TDX stays untrusted.
		return attest.TDX, p, nil
	}
	so := tdx.Options{Now: opts.Now, TrustedRoots: roots}
	// The sim keeps its collateral next to its root.pem.
	if dir := filepath.Join(filepath.Dir(opts.SimRootFile), string(attest.TDX), tdx.SimCollateralDir); isDir(dir) {
		so.CollateralDir = dir
		so.RequireCollateral = true
	}
	if p.sim, err = tdx.NewVerifier(so); err != nil {
		return "", pair{}, err
	}
	return attest.TDX, p, nil
}

func isDir(name string) bool {
	fi, err := os.Stat(name)
	return err == nil && fi.IsDir()
}

// isSimulatedTDX reports whether a quote's embedded PCK chain comes from the
// simulated Intel PKI. It parses the PEM certificates in the quote's
// certification data and verifies nothing.
func isSimulatedTDX(quote []byte) bool {
	data := quote
	for {
		i := bytes.Index(data, []byte("-----BEGIN CERTIFICATE-----"))
		if i < 0 {
			return false
		}
		block, rest := pem.Decode(data[i:])
		if block == nil {
			data = data[i+1:]
			continue
		}
		data = rest
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			continue
		}
		for _, u := range c.CRLDistributionPoints {
			if strings.HasPrefix(u, simTDXCRLPrefix) {
				return true
			}
		}
	}
}
