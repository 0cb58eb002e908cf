package tdx

import (
	"bytes"
	"context"
	"crypto/x509"
	"testing"

	"github.com/google/go-tdx-guest/pcs"
	"github.com/google/go-tdx-guest/verify"
	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
)

// TestSimQuote checks the fields of sim quotes and that go-tdx-guest on its
// own accepts them, collateral included, under the sim root.
func TestSimQuote(t *testing.T) {
	dir := newSimDir(t)
	rd := reportData("sim quote")
	raw := simQuote(t, dir, sim.TDXOptions{}, rd)
	c, err := simVerifier(t, dir, clock.Now()).Verify(context.Background(), tdxEvidence(raw), rd)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Simulated || c.TDX.TCBStatus != "UpToDate" {
		t.Errorf("claims simulated %v, TCB status %q; want true, UpToDate", c.Simulated, c.TDX.TCBStatus)
	}
	if !bytes.Equal(c.TDX.MRTD, sim.DefaultTDXMRTD[:]) || !bytes.Equal(c.TDX.RTMR[3], sim.DefaultTDXRTMR[3][:]) ||
		c.TDX.XFAM != sim.DefaultTDXXFAM || c.TDX.TDAttributes != sim.DefaultTDXTDAttributes ||
		!bytes.Equal(c.TDX.MRSeam, sim.DefaultTDXMRSeam[:]) || !bytes.Equal(c.TDX.TEETCBSVN, sim.DefaultTDXTEETCBSVN[:]) ||
		!bytes.Equal(c.TDX.MRConfigID, make([]byte, 48)) {
		t.Errorf("sim claims do not carry the defaults: %+v", c.TDX)
	}

	roots, err := sim.TDXRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	q, err := parseRawQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := parseChain(q.PCKChain)
	if err != nil {
		t.Fatal(err)
	}
	col, err := LoadCollateral(sim.TDXCollateralDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	chain.root = roots[0]
	getter := &bundleGetter{c: col, fmspc: sim.TDXFMSPC, ca: "platform", pckChain: chain}
	pool := mustVerifier(t, Options{TrustedRoots: roots}).roots
	opts := &verify.Options{GetCollateral: true, CheckRevocations: true, Getter: getter, Now: clock.Now(), TrustedRoots: pool}
	if err := verify.RawTdxQuote(raw, opts); err != nil {
		t.Fatalf("go-tdx-guest verify.RawTdxQuote(sim quote, sim collateral) = %v", err)
	}
	ext, err := pcs.PckCertificateExtensions(chain.leaf)
	if err != nil || ext.FMSPC != sim.TDXFMSPC || ext.TCB.PCESvn != 11 {
		t.Errorf("sim PCK extensions = %+v, %v", ext, err)
	}

	// Chosen fields and REPORT_DATA.
	mrtd := bytes.Repeat([]byte{0x42}, 48)
	rd2 := reportData("other")
	raw2 := simQuote(t, dir, sim.TDXOptions{MRTD: mrtd, XFAM: 0x2e7, TDAttributes: 1 << 28, MROwner: mrtd}, rd2)
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
	raw3 := simQuote(t, dir, sim.TDXOptions{TEETCBSVN: svn}, rd)
	c3, err := simVerifier(t, dir, clock.Now()).Verify(context.Background(), tdxEvidence(raw3), rd)
	if err != nil || c3.TDX.TCBStatus != "UpToDate" || !bytes.Equal(c3.TDX.TEETCBSVN, svn) {
		t.Errorf("TDX module 1.x quote: %v", err)
	}

	if _, err := sim.NewTDXIssuer(dir, sim.TDXOptions{MRTD: []byte{1}}); err == nil {
		t.Error("NewSimIssuer with a 1-byte MRTD succeeded")
	}
	if _, err := sim.NewTDXIssuer(t.TempDir(), sim.TDXOptions{}); err == nil {
		t.Error("NewSimIssuer on an empty directory succeeded")
	}
	if _, err := sim.TDXRoots(t.TempDir()); err == nil {
		t.Error("SimRoots on an empty directory succeeded")
	}
	iss, err := sim.NewTDXIssuer(dir, sim.TDXOptions{})
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

// TestIsSimulated: the sim's quotes are recognized by their PCK chain,
// Intel's are not, and garbage is not.
func TestIsSimulated(t *testing.T) {
	dir := newSimDir(t)
	if !IsSimulated(simQuote(t, dir, sim.TDXOptions{}, reportData("routed"))) {
		t.Error("IsSimulated(sim quote) = false")
	}
	if IsSimulated(realQuote(t)) {
		t.Error("IsSimulated(Intel quote) = true")
	}
	if IsSimulated(nil) || IsSimulated([]byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")) {
		t.Error("IsSimulated(garbage) = true")
	}
}

// TestRootsFromCerts picks the self-signed simulated roots out of a root
// file's certificates, never Intel's root or another certificate.
func TestRootsFromCerts(t *testing.T) {
	simRoots, err := sim.TDXRoots(newSimDir(t))
	if err != nil {
		t.Fatal(err)
	}
	q, err := parseRawQuote(realQuote(t))
	if err != nil {
		t.Fatal(err)
	}
	chain, err := parseChain(q.PCKChain)
	if err != nil {
		t.Fatal(err)
	}
	got := RootsFromCerts([]*x509.Certificate{IntelRoot(), chain.intermediate, chain.leaf, simRoots[0]})
	if len(got) != 1 || !got[0].Equal(simRoots[0]) {
		t.Errorf("RootsFromCerts = %d certificates, want the sim root only", len(got))
	}
}
