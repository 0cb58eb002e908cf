package verify_test

import (
	"context"
	"testing"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/attest/verify"
)

// BenchmarkVerifySimSNP is what a broker runs per release on simulated SNP
// evidence, chain cache warm: routing (IsSimulated), then the SNP Verifier.
// Compare with snp's BenchmarkReportSignature, the one ECDSA P-384 check
// it cannot skip.
func BenchmarkVerifySimSNP(b *testing.B) {
	rd := [64]byte{7}
	ev := issue(b, attest.SNP, sim.Options{}, rd)
	v, err := verify.New(verify.Options{SimRootFile: sim.RootFile(simDir), Offline: true})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := v.Verify(ctx, ev, rd); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := v.Verify(ctx, ev, rd); err != nil {
			b.Fatal(err)
		}
	}
}
