//go:build ignore

// gen.go writes the simulated-TEE fixtures of this package's tests:
// testdata/sim (the sim the tests issue from and trust) and
// testdata/rogue-sim (a second, untrusted one), and
// testdata/sim-evidence.bin (evidence from testdata/sim binding
// REPORT_DATA {1, 0, …}, a fuzzing seed). Run from this directory:
//
//	rm -rf testdata/sim testdata/rogue-sim && go run gen.go
//
// The keys are test-only material; they are committed so that tests need not
// generate RSA keys.
package main

import (
	"context"
	"log"
	"os"

	"github.com/kbs-dev/kbs/kbs/attest/snp"
)

func main() {
	for _, dir := range []string{"testdata/sim", "testdata/rogue-sim"} {
		if err := snp.GenerateSim(dir); err != nil {
			log.Fatal(err)
		}
	}
	iss, err := snp.NewSimIssuer("testdata/sim", snp.SimOptions{})
	if err != nil {
		log.Fatal(err)
	}
	ev, err := iss.Issue(context.Background(), [64]byte{1})
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile("testdata/sim-evidence.bin", ev.Data, 0o644); err != nil {
		log.Fatal(err)
	}
}
