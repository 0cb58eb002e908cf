package tdx

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"strings"

	"github.com/kbs-dev/kbs/kbs/attest"
)

// IsSimulated reports whether a quote's PCK chain comes from the simulated
// Intel PKI of kbs/attest/sim: one of its certificates names a CRL
// distribution point under attest.SimTDXCRLPrefix. It parses the PEM
// certificates in the quote's certification data and verifies nothing; it
// is no reason to trust anything: it routes evidence to a Verifier of the
// simulated roots, and a Verifier whose root is Intel's rejects such
// evidence anyway.
func IsSimulated(quote []byte) bool {
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
			if strings.HasPrefix(u, attest.SimTDXCRLPrefix) {
				return true
			}
		}
	}
}
