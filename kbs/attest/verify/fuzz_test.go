package verify_test

import (
	"context"
	"os"
	"testing"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/attest/verify"
)

// FuzzDispatch feeds arbitrary bytes as SNP and TDX evidence to a verifier
// that trusts the test sim: routing (the marker scans) and verification
// must never panic, must be deterministic, and may accept only evidence
// whose claims are marked simulated and bind the expected REPORT_DATA.
func FuzzDispatch(f *testing.F) {
	rd := [64]byte{1}
	for _, p := range []attest.Platform{attest.SNP, attest.TDX} {
		iss, err := sim.NewIssuer(simDir, p, sim.Options{})
		if err != nil {
			f.Fatal(err)
		}
		ev, err := iss.Issue(context.Background(), rd)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p == attest.TDX, ev.Data)
	}
	for _, name := range []string{"../../../testdata/snp/milan-report.bin", "../../../testdata/tdx/quote-spr.dat"} {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(name[len(name)-3:] == "dat", data)
	}
	v, err := verify.New(verify.Options{Offline: true, SimRootFile: sim.RootFile(simDir)})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, isTDX bool, data []byte) {
		ev := attest.Evidence{Platform: attest.SNP, Data: data}
		if isTDX {
			ev.Platform = attest.TDX
		}
		c1, err1 := v.Verify(context.Background(), ev, rd)
		_, err2 := v.Verify(context.Background(), ev, rd)
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("non-deterministic: %v, then %v", err1, err2)
		}
		if err1 == nil && (!c1.Simulated || c1.ReportData != rd || c1.Platform != ev.Platform) {
			t.Fatalf("accepted evidence with claims %+v", c1)
		}
	})
}
