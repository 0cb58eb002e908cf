package snp

import (
	"crypto/x509"
	"fmt"
	"slices"
	"sync"

	"github.com/google/go-sev-guest/verify/trust"
)

// Root is one trusted AMD key hierarchy for a product line.
type Root struct {
	ProductLine string            // "Milan", "Genoa", "Turin"
	ARK         *x509.Certificate // self-signed root
	ASK         *x509.Certificate // signs VCEKs
	ASVK        *x509.Certificate // signs VLEKs; optional
}

// DefaultRoots returns AMD's ARK/ASK/ASVK for Milan, Genoa and Turin as
// embedded in go-sev-guest.
func DefaultRoots() ([]Root, error) {
	roots, err := defaultRoots()
	return slices.Clone(roots), err
}

var defaultRoots = sync.OnceValues(parseDefaultRoots)

func parseDefaultRoots() ([]Root, error) {
	bundles := []struct {
		line       string
		vcek, vlek []byte
	}{
		{"Milan", trust.AskArkMilanVcekBytes, trust.AskArkMilanVlekBytes},
		{"Genoa", trust.AskArkGenoaVcekBytes, trust.AskArkGenoaVlekBytes},
		{"Turin", trust.AskArkTurinVcekBytes, trust.AskArkTurinVlekBytes},
	}
	var out []Root
	for _, b := range bundles {
		var c, l trust.ProductCerts
		if err := c.FromKDSCertBytes(b.vcek); err != nil {
			return nil, fmt.Errorf("snp: embedded %s roots: %v", b.line, err)
		}
		r := Root{ProductLine: b.line, ARK: c.Ark, ASK: c.Ask}
		// A VLEK bundle that does not parse (go-sev-guest v0.15.0's Turin one
		// has trailing bytes) only means no VLEK support for that line.
		if err := l.FromKDSCertBytes(b.vlek); err == nil && l.Ark != nil && l.Asvk != nil && l.Ark.Equal(c.Ark) {
			r.ASVK = l.Asvk
		}
		out = append(out, r)
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
