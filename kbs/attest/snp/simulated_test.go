package snp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
)

// testSim returns the committed sim fixture (see testdata/snp/gen.go). Its
// root is valid from 2026-11-27 to 2051-11-26; tests verify its evidence at
// simNow, derived from the root itself, never at the wall clock.
func testSim(t testing.TB) string {
	t.Helper()
	return "../../../testdata/snp/sim"
}

// simNow is a time at which the certificates of the sim in dir are valid,
// taken from the material itself (a day after its root's NotBefore), so that
// a test passes on any date and under `make test-future`.
func simNow(t testing.TB, dir string) time.Time {
	t.Helper()
	certs, err := sim.SNPRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0].NotBefore.Add(24 * time.Hour)
}

// simVerifier verifies evidence of the sim in dir at a time its own
// certificates are valid.
func simVerifier(t testing.TB, dir string) *Verifier {
	t.Helper()
	certs, err := sim.SNPRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := simNow(t, dir)
	v, err := NewVerifier(Options{Roots: RootsFromCerts(certs), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func issue(t testing.TB, dir string, opts sim.SNPOptions, rd [64]byte) attest.Evidence {
	t.Helper()
	iss, err := sim.NewSNPIssuer(dir, opts)
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
	ev := issue(t, dir, sim.SNPOptions{}, rd)
	if !IsSimulated(ev.Data) {
		t.Errorf("IsSimulated(sim evidence) = false")
	}
	c, err := simVerifier(t, dir).Verify(context.Background(), ev, rd)
	if err != nil {
		t.Fatalf("Verify(sim evidence) = %v", err)
	}
	if !c.Simulated || c.SNP.Product != "Milan" || c.ReportData != rd || c.SNP.SignerKey != "vcek" {
		t.Errorf("claims = %+v", c.SNP)
	}
}

func TestIsSimulatedHardware(t *testing.T) {
	if IsSimulated(milanEvidence(t, true).Data) {
		t.Errorf("IsSimulated(real Milan evidence) = true")
	}
	if IsSimulated(milanEvidence(t, false).Data) || IsSimulated(nil) {
		t.Errorf("IsSimulated(no table) = true")
	}
}

// TestIsSimulatedMarkerPlace checks that only the subject's pseudonym
// attribute counts, and that the remembered answer for a certificate is the
// computed one.
func TestIsSimulatedMarkerPlace(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: attest.SimSNPMarker}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := ParseEvidence(issue(t, testSim(t), sim.SNPOptions{}, [64]byte{}).Data)
	if err != nil {
		t.Fatal(err)
	}
	simulated := ev.Marshal()
	ev.Certs = []abi.CertTableEntry{{GUID: vcekGUID, RawCert: der}}
	markerInCN := ev.Marshal()
	for i := range 2 { // the second round answers from the cache
		if !IsSimulated(simulated) {
			t.Errorf("round %d: IsSimulated(sim evidence) = false", i)
		}
		if IsSimulated(markerInCN) {
			t.Errorf("round %d: IsSimulated(marker in the common name) = true", i)
		}
	}
}
