package tdx

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-tdx-guest/pcs"
	"github.com/google/go-tdx-guest/verify"
	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/attest"
)

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

func TestGenerateSimIdempotent(t *testing.T) {
	dir := newSimDir(t)
	before := readDir(t, dir)
	if len(before) != 9+4 {
		t.Errorf("sim dir holds %d files, want 9 + 4 collateral files", len(before))
	}
	if err := GenerateSim(dir); err != nil {
		t.Fatal(err)
	}
	after := readDir(t, dir)
	for p, b := range before {
		if !bytes.Equal(after[p], b) {
			t.Errorf("GenerateSim changed %s", p)
		}
	}
	for _, k := range []string{simRootKey, simCAKey, simPCKKey, simTCBSigningKey, simAttestationKey} {
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
	roots, err := SimRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{simPCKCert, simPCKKey} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	if err := GenerateSim(dir); err != nil {
		t.Fatal(err)
	}
	roots2, err := SimRoots(dir)
	if err != nil || !roots2[0].Equal(roots[0]) {
		t.Fatalf("root changed after reissuing the PCK certificate (%v)", err)
	}
	rd := reportData("reissued")
	if _, err := simVerifier(t, dir, clock.Now()).Verify(context.Background(), tdxEvidence(simQuote(t, dir, SimOptions{}, rd)), rd); err != nil {
		t.Fatal(err)
	}

	// Half of a pair, or material that does not fit, is an error and is
	// not overwritten.
	if err := os.Remove(filepath.Join(dir, simCACert)); err != nil {
		t.Fatal(err)
	}
	if err := GenerateSim(dir); err == nil {
		t.Error("GenerateSim with a CA key but no CA certificate succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, simCACert)); !os.IsNotExist(err) {
		t.Error("GenerateSim recreated the CA certificate next to an orphan key")
	}
	other := newSimDir(t)
	b, _ := os.ReadFile(filepath.Join(other, simRootCert))
	dir2 := newSimDir(t)
	if err := os.WriteFile(filepath.Join(dir2, simRootCert), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := GenerateSim(dir2); err == nil {
		t.Error("GenerateSim with a root certificate of another key succeeded")
	}
}

// TestSimQuote checks the fields of sim quotes and that go-tdx-guest on its
// own accepts them, collateral included, under the sim root.
func TestSimQuote(t *testing.T) {
	dir := newSimDir(t)
	rd := reportData("sim quote")
	raw := simQuote(t, dir, SimOptions{}, rd)
	c, err := simVerifier(t, dir, clock.Now()).Verify(context.Background(), tdxEvidence(raw), rd)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Simulated || c.TDX.TCBStatus != "UpToDate" {
		t.Errorf("claims simulated %v, TCB status %q; want true, UpToDate", c.Simulated, c.TDX.TCBStatus)
	}
	if !bytes.Equal(c.TDX.MRTD, DefaultSimMRTD[:]) || !bytes.Equal(c.TDX.RTMR[3], DefaultSimRTMR[3][:]) ||
		c.TDX.XFAM != DefaultSimXFAM || c.TDX.TDAttributes != DefaultSimTDAttributes ||
		!bytes.Equal(c.TDX.MRSeam, DefaultSimMRSeam[:]) || !bytes.Equal(c.TDX.TEETCBSVN, DefaultSimTEETCBSVN[:]) ||
		!bytes.Equal(c.TDX.MRConfigID, make([]byte, 48)) {
		t.Errorf("sim claims do not carry the defaults: %+v", c.TDX)
	}

	roots, err := SimRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	pki, err := loadSim(dir)
	if err != nil {
		t.Fatal(err)
	}
	cdir := filepath.Join(dir, SimCollateralDir)
	getter := &collateralGetter{ctx: context.Background(), dir: cdir}
	pool := mustVerifier(t, Options{TrustedRoots: roots}).roots
	opts := &verify.Options{GetCollateral: true, CheckRevocations: true, Getter: getter, Now: clock.Now(), TrustedRoots: pool}
	if err := verify.RawTdxQuote(raw, opts); err != nil {
		t.Fatalf("go-tdx-guest verify.RawTdxQuote(sim quote, sim collateral) = %v", err)
	}
	if getter.missed != nil {
		t.Fatalf("collateral request not served: %v", getter.missed)
	}
	ext, err := pcs.PckCertificateExtensions(pki.pck)
	if err != nil || ext.FMSPC != "50806f000000" || ext.TCB.PCESvn != 11 {
		t.Errorf("sim PCK extensions = %+v, %v", ext, err)
	}

	// Chosen fields and REPORT_DATA.
	mrtd := bytes.Repeat([]byte{0x42}, 48)
	rd2 := reportData("other")
	raw2 := simQuote(t, dir, SimOptions{MRTD: mrtd, XFAM: 0x2e7, TDAttributes: 1 << 28, MROwner: mrtd}, rd2)
	c2, err := simVerifier(t, dir, clock.Now()).Verify(context.Background(), tdxEvidence(raw2), rd2)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c2.Measurement, mrtd) || c2.TDX.XFAM != 0x2e7 || c2.TDX.TDAttributes != 1<<28 || !bytes.Equal(c2.TDX.MROwner, mrtd) || c2.ReportData != rd2 {
		t.Errorf("sim claims = %+v", c2.TDX)
	}

	// A TDX module of major version 1 (TEE_TCB_SVN[1] > 0) is matched
	// against the TDX module identities of the sim TCB info.
	svn := []byte{5, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	raw3 := simQuote(t, dir, SimOptions{TEETCBSVN: svn}, rd)
	c3, err := simVerifier(t, dir, clock.Now()).Verify(context.Background(), tdxEvidence(raw3), rd)
	if err != nil || c3.TDX.TCBStatus != "UpToDate" || !bytes.Equal(c3.TDX.TEETCBSVN, svn) {
		t.Errorf("TDX module 1.x quote: %v", err)
	}

	if _, err := NewSimIssuer(dir, SimOptions{MRTD: []byte{1}}); err == nil {
		t.Error("NewSimIssuer with a 1-byte MRTD succeeded")
	}
	if _, err := NewSimIssuer(t.TempDir(), SimOptions{}); err == nil {
		t.Error("NewSimIssuer on an empty directory succeeded")
	}
	if _, err := SimRoots(t.TempDir()); err == nil {
		t.Error("SimRoots on an empty directory succeeded")
	}
	iss, err := NewSimIssuer(dir, SimOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if iss.Platform() != attest.TDX {
		t.Errorf("Platform() = %q", iss.Platform())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := iss.Issue(ctx, rd); err == nil {
		t.Error("Issue with a cancelled context succeeded")
	}
}
