package snp

import (
	"context"
	"os"
	"sync"
	"testing"

	"github.com/kbs-dev/kbs/kbs/attest"
)

var (
	simOnce sync.Once
	simDir  string
	simErr  error
)

// testSim returns a sim directory shared by the package's tests (RSA key
// generation is slow).
func testSim(t testing.TB) string {
	t.Helper()
	simOnce.Do(func() {
		simDir, simErr = os.MkdirTemp("", "snp-sim-")
		if simErr == nil {
			simErr = GenerateSim(simDir)
		}
	})
	if simErr != nil {
		t.Fatal(simErr)
	}
	return simDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if simDir != "" {
		os.RemoveAll(simDir)
	}
	os.Exit(code)
}

func simVerifier(t testing.TB, dir string) *Verifier {
	t.Helper()
	certs, err := SimRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(Options{Roots: RootsFromCerts(certs)})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func issue(t testing.TB, dir string, opts SimOptions, rd [64]byte) attest.Evidence {
	t.Helper()
	iss, err := NewSimIssuer(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := iss.Issue(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestSimRoundTrip(t *testing.T) {
	dir := testSim(t)
	rd := [64]byte{1, 2, 3}
	ev := issue(t, dir, SimOptions{}, rd)
	if !IsSimulated(ev.Data) {
		t.Errorf("IsSimulated(sim evidence) = false")
	}
	c, err := simVerifier(t, dir).Verify(context.Background(), ev, rd)
	if err != nil {
		t.Fatalf("Verify(sim evidence) = %v", err)
	}
	if c.SNP.Product != "Milan" || c.ReportData != rd || c.SNP.SignerKey != "vcek" {
		t.Errorf("claims = %+v", c.SNP)
	}
	// GenerateSim keeps existing material.
	before, _ := os.ReadFile(dir + "/vcek.key")
	if err := GenerateSim(dir); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(dir + "/vcek.key")
	if string(before) != string(after) {
		t.Errorf("GenerateSim replaced an existing sim")
	}
}
