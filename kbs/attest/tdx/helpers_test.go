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

// The real quote: go-tdx-guest's Sapphire Rapids sample, copied by
// testdata/tdx/gen.go. Its PCK leaf is valid from 2022-09-20 to 2029-09-20.
const (
	realQuoteFile     = "../../../testdata/tdx/quote-spr.dat"
	intelCollateral   = "../../../testdata/tdx/intel-collateral"
	realMRTD          = "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb"
	realReportDataHex = "6c62dec1b8191749a31dab490be532a35944dea47caef1f980863993d9899545eb7406a38d1eed313b987a467dacead6f0c87a6d766c66f6f29f8acb281f1113"
)

// realNow lies inside the validity of the real quote's PCK chain (which truly
// expires on 2029-09-20): tests of the real quote verify at realNow, never at
// the wall clock.
var realNow = time.Date(2025, time.January, 1, 0, 0, 0, 0, time.UTC)

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
	return Options{TrustedRoots: roots, CollateralDir: sim.TDXCollateralDir(dir), RequireCollateral: true}, nil
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
