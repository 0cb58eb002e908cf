package snp

import (
	"errors"
	"fmt"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"github.com/kbs-dev/kbs/kbs/attest"
)

// Validate has go-sev-guest's validate.SnpAttestation confirm claims that
// Verifier.Verify returned against opts. kbs/policy builds opts from the
// manifest's reference values (go-sev-guest checks no field whose option is
// nil or zero, so the builder sets each one the manifest means); the
// manifest's own comparison (manifest.Match) has decided before, and
// Validate is the library's second opinion.
//
// It re-reads the signed report and the endorsement certificate the claims
// carry (Report, EndorsementKey), so it accepts only claims from Verify. The
// signature, the chain, the debug bit and the REPORT_DATA binding are
// Verify's job; opts repeats the last two.
func Validate(c *attest.Claims, opts *validate.Options) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("snp: go-sev-guest validation panicked: %v", r)
		}
	}()
	if opts == nil {
		return errors.New("snp: no validation options")
	}
	if c == nil || c.Platform != attest.SNP || c.SNP == nil || len(c.SNP.Report) != ReportSize || len(c.SNP.EndorsementKey) == 0 {
		return fmt.Errorf("%w: need claims from snp.Verifier.Verify", errClaims)
	}
	r, err := abi.ReportToProto(c.SNP.Report)
	if err != nil {
		return fmt.Errorf("%w: report: %v", errClaims, err)
	}
	chain := &spb.CertificateChain{Extras: map[string][]byte{}}
	if c.SNP.SignerKey == signerName(abi.VlekReportSigner) {
		chain.VlekCert = c.SNP.EndorsementKey
	} else {
		chain.VcekCert = c.SNP.EndorsementKey
	}
	if err := validate.SnpAttestation(&spb.Attestation{Report: r, CertificateChain: chain}, opts); err != nil {
		return fmt.Errorf("snp: go-sev-guest validation: %w", err)
	}
	return nil
}
