package tdx

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tdx-guest/validate"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
)

// The real quote: a TDX quote v4 of a platform of FMSPC b0c06f000000, with
// the Intel collateral (TCB info, QE identity, CRLs) it was verified with,
// as a bundle of PCS responses (testdata/README.md says where both come
// from). Its PCK leaf is valid from 2025-02-06 to 2032-02-06; the
// collateral from 2025-06-19 to 2025-07-19.
const (
	realQuoteFile     = "../../../testdata/tdx/quote-v4-b0c06f.dat"
	realCollateral    = "../../../testdata/tdx/collateral-b0c06f"
	realMRTD          = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
	realReportDataHex = "9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9eca3efdbb481601c163cf52493d6e44aed55d51ec39b7e518fadb92c2b523f20"

	// go-tdx-guest's Sapphire Rapids quote and Intel's sample collateral of
	// 2023, which lists no TCB level that platform reaches.
	sprQuoteFile    = "../../../testdata/tdx/quote-spr.dat"
	intelCollateral = "../../../testdata/tdx/intel-collateral"

	// Real v5 quotes with TD report 1.5 bodies (FMSPC 90c06f000000), and
	// the Intel collateral of 2026-02-18 for that FMSPC.
	v5QuoteFile         = "../../../testdata/tdx/quote-v5-td15-90c06f.dat"
	v5OutdatedQuoteFile = "../../../testdata/tdx/quote-v5-td15-90c06f-outdated.dat"
	v5Collateral        = "../../../testdata/tdx/collateral-90c06f"
)

// realNow is derived from the real collateral: an hour after the last of
// its pieces was issued, when all of them and the PCK chain are valid.
// Tests of the real quote verify at realNow, never at the wall clock.
var realNow = collateralTime(realCollateral)

// collateralTime returns an hour after the newest piece of the bundle in
// dir was issued.
func collateralTime(dir string) time.Time {
	c, err := LoadCollateral(dir)
	if err != nil {
		panic(err)
	}
	return c.Issued().Add(time.Hour)
}

// realOptions verify the real quote at realNow with its collateral.
func realOptions() Options { return Options{Now: fixed(realNow), CollateralDir: realCollateral} }

func fixed(t time.Time) func() time.Time { return func() time.Time { return t } }

func realQuote(t testing.TB) []byte {
	t.Helper()
	raw, err := os.ReadFile(realQuoteFile)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func realReportData(t testing.TB) [attest.ReportDataSize]byte {
	t.Helper()
	var rd [attest.ReportDataSize]byte
	b, err := hex.DecodeString(realReportDataHex)
	if err != nil {
		t.Fatal(err)
	}
	copy(rd[:], b)
	return rd
}

func tdxEvidence(raw []byte) attest.Evidence { return attest.Evidence{Platform: attest.TDX, Data: raw} }

func mustVerifier(t testing.TB, opts Options) *Verifier {
	t.Helper()
	v, err := NewVerifier(opts)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// newSimDir generates a sim PKI in a fresh directory.
func newSimDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "sim")
	if err := sim.GenerateTDX(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// simVerifierOptions are the options that verify quotes of the TDX sim in
// dir: its root as the only trusted root, offline, with its collateral
// cache, and collateral required.
func simVerifierOptions(dir string) (Options, error) {
	roots, err := sim.TDXRoots(dir)
	if err != nil {
		return Options{}, err
	}
	return Options{TrustedRoots: roots, CollateralDir: sim.TDXCollateralDir(dir)}, nil
}

func simVerifier(t testing.TB, dir string, now time.Time) *Verifier {
	t.Helper()
	opts, err := simVerifierOptions(dir)
	if err != nil {
		t.Fatal(err)
	}
	opts.Now = fixed(now)
	return mustVerifier(t, opts)
}

func simQuote(t testing.TB, dir string, opts sim.TDXOptions, rd [attest.ReportDataSize]byte) []byte {
	t.Helper()
	iss, err := sim.NewTDXIssuer(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := iss.Issue(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Platform != attest.TDX {
		t.Fatalf("sim evidence platform = %q, want tdx", ev.Platform)
	}
	return ev.Data
}

func reportData(label string) [attest.ReportDataSize]byte {
	var rd [attest.ReportDataSize]byte
	copy(rd[:], label)
	return rd
}

// allErrs are the sentinels of Verify and Validate; a rejection must match
// exactly one of them.
var allErrs = []error{
	errNotTDX, errMalformedQuote, errQEVendor, errCertChain, errCertExpired, errCertNotYetValid,
	errUntrustedRoot, errQEReportSignature, errAttestationKeyBinding, errQuoteSignature,
	errCollateralUnavailable, errCollateral, ErrReportData, ErrDebug, errClaims,
}

// wantOnly fails unless err matches want and no other sentinel.
func wantOnly(t testing.TB, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("error = %v, want %v", err, want)
	}
	for _, other := range allErrs {
		if other != want && errors.Is(err, other) {
			t.Fatalf("error %v matches %v too, want only %v", err, other, want)
		}
	}
}

// simOptions are go-tdx-guest validation options that the default sim
// quote binding rd satisfies, every field pinned (what kbs/policy builds
// from a manifest pinned to that quote).
func simOptions(rd [attest.ReportDataSize]byte) *validate.Options {
	zero := make([]byte, 48)
	return &validate.Options{TdQuoteBodyOptions: validate.TdQuoteBodyOptions{
		MrTd:             sim.DefaultTDXMRTD[:],
		Rtmrs:            [][]byte{sim.DefaultTDXRTMR[0][:], sim.DefaultTDXRTMR[1][:], sim.DefaultTDXRTMR[2][:], sim.DefaultTDXRTMR[3][:]},
		MrConfigID:       zero,
		MrOwner:          zero,
		MrOwnerConfig:    zero,
		Xfam:             binary.LittleEndian.AppendUint64(nil, sim.DefaultTDXXFAM),
		TdAttributes:     binary.LittleEndian.AppendUint64(nil, sim.DefaultTDXTDAttributes),
		MinimumTeeTcbSvn: sim.DefaultTDXTEETCBSVN[:],
		MrSeam:           sim.DefaultTDXMRSeam[:],
		ReportData:       rd[:],
	}}
}
