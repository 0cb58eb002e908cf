package sim

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/kbs/attest/snp"
)

// snpVerifier verifies evidence of the SNP sim in dir at a time its own
// certificates are valid.
func snpVerifier(t testing.TB, dir string) *snp.Verifier {
	t.Helper()
	certs, err := SNPRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := certs[0].NotBefore.Add(time.Hour)
	v, err := snp.NewVerifier(snp.Options{Roots: snp.RootsFromCerts(certs), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestGenerateSNP(t *testing.T) {
	if testing.Short() {
		t.Skip("generates RSA keys")
	}
	dir := t.TempDir()
	if err := GenerateSNP(dir); err != nil {
		t.Fatal(err)
	}
	rd := [64]byte{4}
	iss, err := NewSNPIssuer(dir, SNPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := iss.Issue(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	c, err := snpVerifier(t, dir).Verify(context.Background(), ev, rd)
	if err != nil {
		t.Fatalf("Verify(fresh sim evidence) = %v", err)
	}
	if !c.Simulated || c.SNP.Product != SNPProductLine || string(c.SNP.ChipID) != string(iss.ChipID()) || !snp.IsSimulated(ev.Data) {
		t.Errorf("claims of fresh sim evidence = %+v", c.SNP)
	}
	if tcb, err := SNPTCB().Encode(SNPProductLine); err != nil || c.SNP.ReportedTCB != tcb {
		t.Errorf("REPORTED_TCB %#x, want SNPTCB %#x (%v)", c.SNP.ReportedTCB, tcb, err)
	}
	// GenerateSNP keeps existing material.
	before, _ := os.ReadFile(dir + "/vcek.key")
	if err := GenerateSNP(dir); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(dir + "/vcek.key")
	if string(before) != string(after) {
		t.Errorf("GenerateSNP replaced an existing sim")
	}
	// A damaged sim is reported, not silently replaced.
	if err := os.WriteFile(dir+"/vcek.pem", []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := GenerateSNP(dir); err == nil {
		t.Errorf("GenerateSNP accepted a damaged sim")
	}
}

func TestSNPIssuerOptions(t *testing.T) {
	dir := "../../../testdata/snp/sim"
	for _, o := range []SNPOptions{
		{Measurement: []byte{1}},
		{HostData: make([]byte, 31)},
		{VMPL: 4},
		{GuestPolicy: 1}, // reserved bit 17 clear
	} {
		if _, err := NewSNPIssuer(dir, o); err == nil {
			t.Errorf("NewSNPIssuer(%+v) succeeded", o)
		}
	}
	if _, err := NewSNPIssuer(t.TempDir(), SNPOptions{}); err == nil {
		t.Error("NewSNPIssuer on an empty directory succeeded")
	}
}
