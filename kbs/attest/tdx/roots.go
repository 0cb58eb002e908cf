package tdx

import (
	"crypto/x509"
	_ "embed"
	"encoding/pem"
)

// intelRootPEM is the Intel SGX Root CA certificate, the same one
// go-tdx-guest embeds (verify/trusted_root.pem).
//
//go:embed intel_sgx_root_ca.pem
var intelRootPEM []byte

var intelRoot = func() *x509.Certificate {
	blk, _ := pem.Decode(intelRootPEM)
	if blk == nil {
		panic("tdx: embedded Intel SGX Root CA is not PEM")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		panic("tdx: embedded Intel SGX Root CA: " + err.Error())
	}
	return c
}()

// IntelRoot returns the Intel SGX Root CA certificate that Verify trusts
// when Options.TrustedRoots is nil.
func IntelRoot() *x509.Certificate { return intelRoot }

// RootsFromCerts picks the simulated Intel roots out of certs: every
// self-signed "Intel SGX Root CA" that is not Intel's own. Other
// certificates are ignored. It is how a file of simulated roots
// (sim/root.pem) becomes Options.TrustedRoots.
func RootsFromCerts(certs []*x509.Certificate) []*x509.Certificate {
	var roots []*x509.Certificate
	for _, c := range certs {
		if c.Subject.CommonName == "Intel SGX Root CA" && !c.Equal(intelRoot) && c.CheckSignatureFrom(c) == nil {
			roots = append(roots, c)
		}
	}
	return roots
}
