package verify_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/uuid"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/attest/snp"
	"github.com/kbs-dev/kbs/kbs/attest/tdx"
	"github.com/kbs-dev/kbs/kbs/attest/verify"
)

var simDir string

func TestMain(m *testing.M) {
	var err error
	simDir, err = os.MkdirTemp("", "verify-sim-")
	if err != nil {
		panic(err)
	}
	if err := sim.Init(simDir); err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(simDir)
	os.Exit(code)
}

func issue(t testing.TB, p attest.Platform, o sim.Options, rd [64]byte) attest.Evidence {
	t.Helper()
	iss, err := sim.NewIssuer(simDir, p, o)
	if err != nil {
		t.Fatal(err)
	}
	if iss.Platform() != p {
		t.Fatalf("Platform() = %q, want %q", iss.Platform(), p)
	}
	ev, err := iss.Issue(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestSimulatedSNP(t *testing.T) {
	rd := [64]byte{9, 9, 9}
	ev := issue(t, attest.SNP, sim.Options{}, rd)

	strict, err := verify.New(verify.Options{Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := strict.Verify(context.Background(), ev, rd); !errors.Is(err, verify.ErrSimulatedNotTrusted) {
		t.Errorf("Verify without sim root = %v, want ErrSimulatedNotTrusted", err)
	}

	v, err := verify.New(verify.Options{Offline: true, SimRootFile: sim.RootFile(simDir)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(context.Background(), ev, rd)
	if err != nil {
		t.Fatalf("Verify with sim root = %v", err)
	}
	if !c.Simulated || c.Platform != attest.SNP || string(c.Measurement) != string(sim.DefaultSNPMeasurement[:]) {
		t.Errorf("claims: Simulated=%v Platform=%q Measurement=%x", c.Simulated, c.Platform, c.Measurement)
	}
	if _, err := v.Verify(context.Background(), ev, [64]byte{1}); !errors.Is(err, snp.ErrReportData) {
		t.Errorf("Verify with wrong binding = %v, want ErrReportData", err)
	}
	dbg := issue(t, attest.SNP, sim.Options{Debug: true}, rd)
	if _, err := v.Verify(context.Background(), dbg, rd); !errors.Is(err, snp.ErrDebug) {
		t.Errorf("Verify(debug) = %v, want ErrDebug", err)
	}
	if _, err := v.Verify(context.Background(), attest.Evidence{Platform: "sgx", Data: ev.Data}, rd); !errors.Is(err, verify.ErrUnknownPlatform) {
		t.Errorf("Verify(sgx) = %v, want ErrUnknownPlatform", err)
	}
}

// TestUnverifiedReportData reads REPORT_DATA from evidence of each platform
// without verifying it, and refuses what does not parse.
func TestUnverifiedReportData(t *testing.T) {
	for _, p := range []attest.Platform{attest.SNP, attest.TDX} {
		rd := [64]byte{byte(len(p)), 'r', 'd'}
		ev := issue(t, p, sim.Options{}, rd)
		if got, err := verify.UnverifiedReportData(ev); err != nil || got != rd {
			t.Errorf("UnverifiedReportData(%s) = %x, %v; want %x", p, got, err, rd)
		}
		if _, err := verify.UnverifiedReportData(attest.Evidence{Platform: p, Data: ev.Data[:100]}); err == nil {
			t.Errorf("UnverifiedReportData(truncated %s) succeeded", p)
		}
	}
	if _, err := verify.UnverifiedReportData(attest.Evidence{Platform: "sgx", Data: []byte{1}}); !errors.Is(err, verify.ErrUnknownPlatform) {
		t.Errorf("UnverifiedReportData(sgx) = %v, want ErrUnknownPlatform", err)
	}
}

func TestInitIdempotent(t *testing.T) {
	before, err := os.ReadFile(sim.RootFile(simDir))
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Init(simDir); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(sim.RootFile(simDir))
	if string(before) != string(after) {
		t.Errorf("Init changed root.pem of an existing sim")
	}
}

func TestBadSimRootFile(t *testing.T) {
	if _, err := verify.New(verify.Options{SimRootFile: "/nonexistent/root.pem"}); err == nil {
		t.Errorf("New with a missing sim root file succeeded")
	}
}

func TestSimulatedTDX(t *testing.T) {
	rd := [64]byte{7, 7}
	ev := issue(t, attest.TDX, sim.Options{}, rd)

	strict, err := verify.New(verify.Options{Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := strict.Verify(context.Background(), ev, rd); !errors.Is(err, verify.ErrSimulatedNotTrusted) {
		t.Errorf("Verify without sim root = %v, want ErrSimulatedNotTrusted", err)
	}
	v, err := verify.New(verify.Options{Offline: true, SimRootFile: sim.RootFile(simDir)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(context.Background(), ev, rd)
	if err != nil {
		t.Fatalf("Verify with sim root = %v", err)
	}
	if !c.Simulated || c.Platform != attest.TDX || string(c.Measurement) != string(sim.DefaultTDXMRTD[:]) ||
		string(c.TDX.RTMR[2]) != string(sim.DefaultTDXRTMR[2][:]) {
		t.Errorf("claims: Simulated=%v Platform=%q MRTD=%x", c.Simulated, c.Platform, c.Measurement)
	}
	if _, err := v.Verify(context.Background(), ev, [64]byte{1}); !errors.Is(err, tdx.ErrReportData) {
		t.Errorf("Verify with wrong binding = %v, want tdx.ErrReportData", err)
	}
	dbg := issue(t, attest.TDX, sim.Options{Debug: true}, rd)
	if _, err := v.Verify(context.Background(), dbg, rd); !errors.Is(err, tdx.ErrDebug) {
		t.Errorf("Verify(debug TD) = %v, want tdx.ErrDebug", err)
	}
	m := make([]byte, 48)
	m[0] = 1
	other := issue(t, attest.TDX, sim.Options{Measurement: m}, rd)
	if c, err := v.Verify(context.Background(), other, rd); err != nil || string(c.Measurement) != string(m) {
		t.Errorf("Verify(chosen MRTD) = %v, %x", err, c.Measurement)
	}
}

// TestHardwareEvidenceNotRoutedToSim checks that real evidence goes to the
// vendor verifiers even when a sim root is configured.
func TestHardwareEvidenceNotRoutedToSim(t *testing.T) {
	report, err := os.ReadFile("../../../testdata/snp/milan-report.bin")
	if err != nil {
		t.Fatal(err)
	}
	vcek, err := os.ReadFile("../../../testdata/snp/milan-vcek.der")
	if err != nil {
		t.Fatal(err)
	}
	table := &abi.CertTable{Entries: []abi.CertTableEntry{{GUID: uuid.MustParse(abi.VcekGUID), RawCert: vcek}}}
	ev := attest.Evidence{Platform: attest.SNP, Data: append(report, table.Marshal()...)}
	now := time.Date(2023, 6, 1, 0, 0, 0, 0, time.UTC)
	v, err := verify.New(verify.Options{Offline: true, SimRootFile: sim.RootFile(simDir), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	// The sample is from a debug guest: ErrDebug means the AMD chain and the
	// signature passed.
	if _, err := v.Verify(context.Background(), ev, [64]byte{1, 2, 3, 4, 5}); !errors.Is(err, snp.ErrDebug) {
		t.Errorf("Verify(real Milan) = %v, want snp.ErrDebug", err)
	}
	quote, err := os.ReadFile("../../../testdata/tdx/quote-spr.dat")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), attest.Evidence{Platform: attest.TDX, Data: quote}, [64]byte{}); errors.Is(err, verify.ErrSimulatedNotTrusted) || err == nil {
		t.Errorf("Verify(real SPR quote, wrong binding) = %v, want a hardware-path rejection", err)
	}
}
