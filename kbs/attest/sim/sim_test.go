package sim

import (
	"context"
	"crypto/sha512"
	"os"
	"path/filepath"
	"testing"

	"github.com/kbs-dev/kbs/kbs/attest"
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
