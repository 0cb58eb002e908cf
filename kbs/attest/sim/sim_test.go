package sim

import (
	"context"
	"crypto/sha512"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/verify"
)

func TestInitLayoutAndIssuers(t *testing.T) {
	dir := t.TempDir()
	if err := Init(dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{RootFileName, "snp/ark.pem", "snp/vcek.key", "tdx"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("Init did not create %s: %v", name, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "snp/vcek.key")); err == nil && fi.Mode().Perm() != 0o600 {
		t.Errorf("snp/vcek.key mode %v, want 0600", fi.Mode().Perm())
	}
	for _, p := range []attest.Platform{attest.SNP, attest.TDX} {
		iss, err := NewIssuer(dir, p, Options{})
		if err != nil {
			t.Fatalf("NewIssuer(%s) = %v", p, err)
		}
		ev, err := iss.Issue(context.Background(), [64]byte{1})
		if err != nil || ev.Platform != p || len(ev.Data) == 0 {
			t.Errorf("Issue(%s) = %q, %d bytes, %v", p, ev.Platform, len(ev.Data), err)
		}
	}
	if _, err := NewIssuer(dir, "sgx", Options{}); err == nil {
		t.Errorf("NewIssuer(sgx) succeeded")
	}
	if _, err := NewIssuer(dir, attest.SNP, Options{Measurement: []byte{1}}); err == nil {
		t.Errorf("NewIssuer with a 1-byte measurement succeeded")
	}
	if _, err := NewIssuer(t.TempDir(), attest.SNP, Options{}); err == nil {
		t.Errorf("NewIssuer on an empty directory succeeded")
	}
}

func TestDefaultsAreFixedLabels(t *testing.T) {
	if DefaultSNPMeasurement != sha512.Sum384([]byte("kbs sim: snp measurement")) {
		t.Errorf("DefaultSNPMeasurement changed; development manifests name it")
	}
	if DefaultTDXMRTD == DefaultSNPMeasurement || DefaultTDXRTMR[0] == DefaultTDXRTMR[1] {
		t.Errorf("default measurements collide")
	}
}

// TestDefaultClaims: the default evidence of every simulated platform,
// verified by a verifier that trusts the sim's root.pem, and refused by one
// that does not.
func TestDefaultClaims(t *testing.T) {
	dir := t.TempDir()
	if err := Init(dir); err != nil {
		t.Fatal(err)
	}
	v, err := verify.New(verify.Options{SimRootFile: RootFile(dir), Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	claims, err := DefaultClaims(context.Background(), dir, v)
	if err != nil {
		t.Fatal(err)
	}
	if len(claims) != 2 || claims[0].Platform != attest.SNP || claims[1].Platform != attest.TDX {
		t.Fatalf("DefaultClaims = %d claims", len(claims))
	}
	for _, c := range claims {
		if !c.Simulated {
			t.Errorf("%s claims not marked simulated", c.Platform)
		}
	}
	if string(claims[0].Measurement) != string(DefaultSNPMeasurement[:]) || string(claims[1].Measurement) != string(DefaultTDXMRTD[:]) {
		t.Error("default claims do not carry the default measurements")
	}
	if claims[1].TDX.TCBStatus != "UpToDate" {
		t.Errorf("TDX claims TCB status %q: the verifier did not find the sim's collateral", claims[1].TDX.TCBStatus)
	}
	strict, err := verify.New(verify.Options{Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DefaultClaims(context.Background(), dir, strict); !errors.Is(err, verify.ErrSimulatedNotTrusted) {
		t.Errorf("DefaultClaims with a verifier that trusts no sim = %v, want ErrSimulatedNotTrusted", err)
	}
}
