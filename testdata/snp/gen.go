//go:build ignore

// gen.go writes the SEV-SNP fixtures of kbs/attest/snp's tests into
// testdata/snp:
//
//	milan-report.bin, milan-vcek.der  go-sev-guest's real Milan report and its
//	                                  VCEK (verify/testdata), copied
//	sim/                              a simulated AMD chain the tests trust
//	rogue-sim/                        a second one they do not
//	sim-evidence.bin                  evidence from sim/ binding REPORT_DATA
//	                                  {1, 0, …}, a fuzzing seed
//
// Run from the repository root:
//
//	rm -rf testdata/snp/sim testdata/snp/rogue-sim && go run ./testdata/snp/gen.go
//
// The sim keys are test-only material, committed so that tests need not
// generate RSA keys.
package main

import (
	"context"
	"log"
	"os"

	"github.com/google/go-sev-guest/verify/testdata"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
)

const dir = "testdata/snp/"

func main() {
	for name, data := range map[string][]byte{"milan-report.bin": testdata.AttestationBytes, "milan-vcek.der": testdata.VcekBytes} {
		if err := os.WriteFile(dir+name, data, 0o644); err != nil {
			log.Fatal(err)
		}
	}
	for _, d := range []string{dir + "sim", dir + "rogue-sim"} {
		if err := sim.GenerateSNP(d); err != nil {
			log.Fatal(err)
		}
	}
	iss, err := sim.NewSNPIssuer(dir+"sim", sim.SNPOptions{})
	if err != nil {
		log.Fatal(err)
	}
	ev, err := iss.Issue(context.Background(), [64]byte{1})
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(dir+"sim-evidence.bin", ev.Data, 0o644); err != nil {
		log.Fatal(err)
	}
}
