package sim

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/tdx"
	"github.com/kbs-dev/kbs/kbs/attest/tdx/pcscache"
)

// newTDXDir generates a TDX sim in a fresh directory.
func newTDXDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tdx")
	if err := GenerateTDX(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// verifyTDX issues a default quote of the TDX sim in dir and verifies it,
// collateral required, at now.
func verifyTDX(t testing.TB, dir string, now time.Time) (*attest.Claims, error) {
	t.Helper()
	roots, err := TDXRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := tdx.NewVerifier(tdx.Options{Now: func() time.Time { return now }, TrustedRoots: roots,
		CollateralDir: TDXCollateralDir(dir)})
	if err != nil {
		t.Fatal(err)
	}
	iss, err := NewTDXIssuer(dir, TDXOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rd := [64]byte{'t', 'd', 'x'}
	ev, err := iss.Issue(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	return v.Verify(context.Background(), ev, rd)
}

func readDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		files[p] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func TestGenerateTDXIdempotent(t *testing.T) {
	dir := newTDXDir(t)
	before := readDir(t, dir)
	if len(before) != 9+4 {
		t.Errorf("sim dir holds %d files, want 9 + 4 collateral files", len(before))
	}
	if err := GenerateTDX(dir); err != nil {
		t.Fatal(err)
	}
	after := readDir(t, dir)
	for p, b := range before {
		if !bytes.Equal(after[p], b) {
			t.Errorf("GenerateTDX changed %s", p)
		}
	}
	for _, k := range []string{tdxRootKey, tdxCAKey, tdxPCKKey, tdxTCBSigningKey, tdxAttestationKey} {
		fi, err := os.Stat(filepath.Join(dir, k))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", k, fi.Mode().Perm())
		}
	}

	// A lost PCK certificate and key are reissued under the kept CA; quotes
	// still verify under the same root.
	roots, err := TDXRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{tdxPCKCert, tdxPCKKey} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	if err := GenerateTDX(dir); err != nil {
		t.Fatal(err)
	}
	roots2, err := TDXRoots(dir)
	if err != nil || !roots2[0].Equal(roots[0]) {
		t.Fatalf("root changed after reissuing the PCK certificate (%v)", err)
	}
	if _, err := verifyTDX(t, dir, clock.Now()); err != nil {
		t.Fatal(err)
	}

	// Half of a pair, or material that does not fit, is an error and is
	// not overwritten.
	if err := os.Remove(filepath.Join(dir, tdxCACert)); err != nil {
		t.Fatal(err)
	}
	if err := GenerateTDX(dir); err == nil {
		t.Error("GenerateTDX with a CA key but no CA certificate succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, tdxCACert)); !os.IsNotExist(err) {
		t.Error("GenerateTDX recreated the CA certificate next to an orphan key")
	}
	other := newTDXDir(t)
	b, _ := os.ReadFile(filepath.Join(other, tdxRootCert))
	dir2 := newTDXDir(t)
	if err := os.WriteFile(filepath.Join(dir2, tdxRootCert), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := GenerateTDX(dir2); err == nil {
		t.Error("GenerateTDX with a root certificate of another key succeeded")
	}
}

// TestTDXCollateralRenewed: GenerateTDX keeps collateral that verifies under
// the sim's keys for 30 more days, and reissues collateral that is damaged,
// signed by other keys, or about to expire; what it issues verifies with
// go-tdx-guest's collateral checks.
func TestTDXCollateralRenewed(t *testing.T) {
	now := clock.Now()
	dir := newTDXDir(t)
	c, err := verifyTDX(t, dir, now)
	if err != nil || c.TDX.TCBStatus != "UpToDate" {
		t.Fatalf("fresh sim: TCB status %v, %v", c, err)
	}
	pki, err := loadTDX(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkTDXCollateral(dir, pki, now.AddDate(0, 0, 30)); err != nil {
		t.Fatalf("fresh collateral does not last 30 days: %v", err)
	}
	if err := checkTDXCollateral(dir, pki, now.AddDate(1, 0, 0)); err == nil {
		t.Error("collateral is still good a year from now")
	}
	files := tdxCollateralFiles(pki)
	otherDir := newTDXDir(t)
	for i, f := range files {
		// Another sim's file in its place does not pass the check.
		foreign, err := os.ReadFile(filepath.Join(TDXCollateralDir(otherDir), pcscache.FileName(f.url)))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(TDXCollateralDir(dir), pcscache.FileName(f.url)), foreign, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := checkTDXCollateral(dir, pki, now); err == nil {
			t.Errorf("file %d (%s) of another sim passes the check", i, f.url)
		}
		if err := GenerateTDX(dir); err != nil {
			t.Fatal(err)
		}
		if err := checkTDXCollateral(dir, pki, now); err != nil {
			t.Errorf("after GenerateTDX: %v", err)
		}
		if _, err := verifyTDX(t, dir, now); err != nil {
			t.Errorf("after reissuing file %d: %v", i, err)
		}
	}
}

// TestTDXCollateralLayout: the sim keeps its collateral where a verifier
// given its root.pem looks for it.
func TestTDXCollateralLayout(t *testing.T) {
	if got := TDXCollateralDir(string(attest.TDX)); got != filepath.FromSlash(attest.SimTDXCollateralDir) {
		t.Errorf("TDXCollateralDir(%q) = %q, want attest.SimTDXCollateralDir %q", attest.TDX, got, attest.SimTDXCollateralDir)
	}
}
