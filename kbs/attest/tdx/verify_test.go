package tdx

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tdx-guest/pcs"
	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/attest/tdx/pcscache"
)

// TestVerifyRealQuote verifies a real TDX quote v4 against the embedded
// Intel root, offline, with the Intel collateral it came with (a bundle of
// PCS responses): QE vendor, PCK chain to the Intel SGX Root CA with each
// certificate valid at realNow, QE report signature by the PCK key,
// attestation key binding, quote signature, TCB info, QE identity and
// CRLs, REPORT_DATA and the debug bit.
func TestVerifyRealQuote(t *testing.T) {
	raw := realQuote(t)
	v := mustVerifier(t, realOptions())
	c, err := v.Verify(context.Background(), tdxEvidence(raw), realReportData(t))
	if err != nil {
		t.Fatalf("Verify(real quote) = %v", err)
	}
	if c.Platform != attest.TDX || c.Simulated || c.TDX == nil || c.SNP != nil {
		t.Fatalf("claims = platform %q simulated %v, want tdx, not simulated", c.Platform, c.Simulated)
	}
	if got := hex.EncodeToString(c.Measurement); got != realMRTD {
		t.Errorf("Measurement = %s, want %s", got, realMRTD)
	}
	if !bytes.Equal(c.TDX.MRTD, c.Measurement) {
		t.Errorf("TDX.MRTD = %x, want Measurement", c.TDX.MRTD)
	}
	if c.TDX.XFAM != 0x602e7 || c.TDX.TDAttributes != 1<<28 || c.TDX.QuoteVersion != 4 {
		t.Errorf("XFAM, TDAttributes, version = %#x, %#x, %d, want 0x602e7, 0x10000000, 4", c.TDX.XFAM, c.TDX.TDAttributes, c.TDX.QuoteVersion)
	}
	if c.TDX.TCBStatus != StatusUpToDate || len(c.TDX.AdvisoryIDs) != 0 || !c.VerifiedAt.Equal(realNow) {
		t.Errorf("TCBStatus %q, advisories %v, verified at %v; want UpToDate, none, %v", c.TDX.TCBStatus, c.TDX.AdvisoryIDs, c.VerifiedAt, realNow)
	}
	if c.EvidenceDigest != tdxEvidence(raw).Digest() || c.ReportData != realReportData(t) {
		t.Errorf("EvidenceDigest or ReportData wrong")
	}
	if c.TDX.TEETCBSVN2 != nil || c.TDX.MRServiceTD != nil {
		t.Errorf("TD report 1.0 claims carry TD report 1.5 fields")
	}
	// The embedded root is the one Intel's chain in the quote ends at.
	q, err := parseRawQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := parseChain(q.PCKChain)
	if err != nil {
		t.Fatal(err)
	}
	if !chain.root.Equal(IntelRoot()) {
		t.Error("the real quote's root certificate is not IntelRoot()")
	}
}

// TestVerifyRealQuoteV5 verifies real TDX quotes v5 with TD report 1.5
// bodies against the Intel collateral of their FMSPC: one whose platform
// is UpToDate, and one that no TCB level of that collateral covers.
func TestVerifyRealQuoteV5(t *testing.T) {
	now := collateralTime(v5Collateral)
	v := mustVerifier(t, Options{Now: fixed(now), CollateralDir: v5Collateral})
	raw, err := os.ReadFile(v5QuoteFile)
	if err != nil {
		t.Fatal(err)
	}
	rd, err := UnverifiedReportData(raw)
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(context.Background(), tdxEvidence(raw), rd)
	if err != nil {
		t.Fatalf("Verify(real v5 quote) = %v", err)
	}
	if c.TDX.QuoteVersion != 5 || c.TDX.TCBStatus != StatusUpToDate || c.Simulated {
		t.Errorf("claims: version %d, status %q, simulated %v; want 5, UpToDate, false", c.TDX.QuoteVersion, c.TDX.TCBStatus, c.Simulated)
	}
	if got := hex.EncodeToString(c.TDX.TEETCBSVN2); got != "0d010400000000000000000000000000" {
		t.Errorf("TEE_TCB_SVN2 = %s", got)
	}
	if !bytes.Equal(c.TDX.MRServiceTD, make([]byte, 48)) || c.TDX.XFAM != 0x602e7 {
		t.Errorf("MRSERVICETD %x, XFAM %#x", c.TDX.MRServiceTD, c.TDX.XFAM)
	}
	for i, off := range []int{0, 48 + 6 + bodyMRTD, 48 + 6 + bodyTEETCBSVN2, 48 + 6 + bodyMRServiceTD + 47} {
		_, err := v.Verify(context.Background(), tdxEvidence(flip(raw, off)), rd)
		if err == nil {
			t.Errorf("flip %d (byte %d): accepted", i, off)
		}
	}

	raw, err = os.ReadFile(v5OutdatedQuoteFile)
	if err != nil {
		t.Fatal(err)
	}
	rd, err = UnverifiedReportData(raw)
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(context.Background(), tdxEvidence(raw), rd)
	wantOnly(t, err, errCollateral)
	if !strings.Contains(err.Error(), "TCB not supported") {
		t.Errorf("error = %v, want TCB not supported", err)
	}
}

// TestVerifyFailsClosed: TDX verification never runs with less collateral.
// Without a bundle, with an empty one, and with each piece of a real one
// taken out, the real quote is refused; Intel's sample collateral of 2023
// is evaluated and rejects go-tdx-guest's Sapphire Rapids quote.
func TestVerifyFailsClosed(t *testing.T) {
	raw := realQuote(t)
	rd := realReportData(t)
	for _, tc := range []struct {
		name string
		dir  string
	}{{"no bundle", ""}, {"empty bundle", t.TempDir()}, {"missing directory", filepath.Join(t.TempDir(), "nope")}} {
		v := mustVerifier(t, Options{Now: fixed(realNow), CollateralDir: tc.dir})
		_, err := v.Verify(context.Background(), tdxEvidence(raw), rd)
		wantOnly(t, err, errCollateralUnavailable)
	}
	ents, err := os.ReadDir(realCollateral)
	if err != nil {
		t.Fatal(err)
	}
	for _, leave := range ents {
		switch leave.Name() {
		case "pck_crl_issuer_chain.pem":
			continue // optional: the quote carries that chain
		case "tcb_info_issuer_chain.pem":
			continue // the same chain as qe_identity_issuer_chain.pem: one serves both
		}
		t.Run("without "+leave.Name(), func(t *testing.T) {
			dir := t.TempDir()
			for _, e := range ents {
				if e.Name() != leave.Name() && !(leave.Name() == "qe_identity_issuer_chain.pem" && e.Name() == "tcb_info_issuer_chain.pem") {
					copyFile(t, filepath.Join(realCollateral, e.Name()), filepath.Join(dir, e.Name()))
				}
			}
			v := mustVerifier(t, Options{Now: fixed(realNow), CollateralDir: dir})
			_, err := v.Verify(context.Background(), tdxEvidence(raw), rd)
			if !errors.Is(err, errCollateralUnavailable) && !errors.Is(err, errCollateral) {
				t.Fatalf("Verify without %s = %v, want a collateral refusal", leave.Name(), err)
			}
		})
	}
	t.Run("collateral expired", func(t *testing.T) {
		v := mustVerifier(t, Options{Now: fixed(realNow.AddDate(0, 2, 0)), CollateralDir: realCollateral})
		_, err := v.Verify(context.Background(), tdxEvidence(raw), rd)
		wantOnly(t, err, errCollateral)
	})
	t.Run("Intel sample collateral, SPR quote", func(t *testing.T) {
		spr, err := os.ReadFile(sprQuoteFile)
		if err != nil {
			t.Fatal(err)
		}
		srd, err := UnverifiedReportData(spr)
		if err != nil {
			t.Fatal(err)
		}
		v := mustVerifier(t, Options{Now: fixed(collateralTime(intelCollateral)), CollateralDir: intelCollateral})
		_, err = v.Verify(context.Background(), tdxEvidence(spr), srd)
		wantOnly(t, err, errCollateral)
		if !strings.Contains(err.Error(), "TCB not supported") {
			t.Errorf("error = %v, want TCB not supported", err)
		}
	})
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Offsets in the real quote (and in sim quotes, which share its layout up
// to the PCK chain).
const (
	headerEnd         = 48
	bodyEnd           = headerEnd + bodyTD10Size
	signatureOff      = bodyEnd + 4
	signatureEnd      = signatureOff + 64
	attestationKeyEnd = signatureEnd + 64
	tdAttributesOff   = headerEnd + bodyTDAttributes
	qeReportOff       = attestationKeyEnd + 6
	qeSigOff          = qeReportOff + 384
	qeAuthOff         = qeSigOff + 64 + 2
	mrtdOff           = headerEnd + 0x88
	qeVendorOff       = 12
	attestKeyOff      = signatureEnd
)

func flip(raw []byte, off int) []byte {
	b := bytes.Clone(raw)
	b[off] ^= 1
	return b
}

// TestVerifyRealQuoteNegative mutates the real quote or the verifier, one
// change per row, and checks that each is rejected with its own error.
func TestVerifyRealQuoteNegative(t *testing.T) {
	raw := realQuote(t)
	rd := realReportData(t)
	simRoots, err := sim.TDXRoots(newSimDir(t))
	if err != nil {
		t.Fatal(err)
	}
	wrongRD := rd
	wrongRD[63] ^= 1
	for _, tc := range []struct {
		name  string
		ev    attest.Evidence
		rd    [attest.ReportDataSize]byte
		opts  Options
		want  error
		which string // certificateError.Cert
	}{
		{name: "REPORT_DATA", ev: tdxEvidence(raw), rd: wrongRD, want: ErrReportData},
		{name: "flipped signature byte", ev: tdxEvidence(flip(raw, signatureOff+7)), rd: rd, want: errQuoteSignature},
		{name: "MRTD byte", ev: tdxEvidence(flip(raw, mrtdOff)), rd: rd, want: errQuoteSignature},
		{name: "TD debug bit set after signing", ev: tdxEvidence(flip(raw, tdAttributesOff)), rd: rd, want: errQuoteSignature},
		{name: "rogue root", ev: tdxEvidence(raw), rd: rd, opts: Options{TrustedRoots: simRoots}, want: errUntrustedRoot},
		{name: "expired certificate", ev: tdxEvidence(raw), rd: rd, opts: Options{Now: fixed(time.Date(2032, 6, 1, 0, 0, 0, 0, time.UTC))}, want: errCertExpired, which: "PCK leaf"},
		{name: "certificate not yet valid", ev: tdxEvidence(raw), rd: rd, opts: Options{Now: fixed(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC))}, want: errCertNotYetValid, which: "PCK leaf"},
		{name: "QE report signature", ev: tdxEvidence(flip(raw, qeSigOff+3)), rd: rd, want: errQEReportSignature},
		{name: "QE report ISVSVN", ev: tdxEvidence(flip(raw, qeReportOff+0x102)), rd: rd, want: errQEReportSignature},
		{name: "QE auth data", ev: tdxEvidence(flip(raw, qeAuthOff)), rd: rd, want: errAttestationKeyBinding},
		{name: "attestation key", ev: tdxEvidence(flip(raw, attestKeyOff+5)), rd: rd, want: errAttestationKeyBinding},
		{name: "QE vendor", ev: tdxEvidence(flip(raw, qeVendorOff)), rd: rd, want: errQEVendor},
		{name: "truncated", ev: tdxEvidence(raw[:900]), rd: rd, want: errMalformedQuote},
		{name: "oversized", ev: tdxEvidence(append(bytes.Clone(raw), make([]byte, MaxQuoteSize)...)), rd: rd, want: errMalformedQuote},
		{name: "quote version 3", ev: tdxEvidence(flip(raw, 0)), rd: rd, want: errMalformedQuote},
		{name: "SNP platform", ev: attest.Evidence{Platform: attest.SNP, Data: raw}, rd: rd, want: errNotTDX},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.opts.Now == nil {
				tc.opts.Now = fixed(realNow)
			}
			tc.opts.CollateralDir = realCollateral
			v := mustVerifier(t, tc.opts)
			c, err := v.Verify(context.Background(), tc.ev, tc.rd)
			if c != nil {
				t.Errorf("Verify returned claims with error %v", err)
			}
			wantOnly(t, err, tc.want)
			if tc.which != "" {
				var ce *certificateError
				if !errors.As(err, &ce) || ce.Cert != tc.which {
					t.Errorf("error = %v, want a certificateError for the %s", err, tc.which)
				}
			}
		})
	}
}

// TestSimNegativeMatrix issues sim quotes and rejects each mutation with its
// own error, through Verify or Validate. (The rows that change a reference
// value moved with the policy checks to kbs/policy: TestTDXSimFields.)
func TestSimNegativeMatrix(t *testing.T) {
	dir := newSimDir(t)
	now := clock.Now()
	rd := reportData("kbs-release-v1 test")
	otherRoots, err := sim.TDXRoots(newSimDir(t))
	if err != nil {
		t.Fatal(err)
	}
	good := simQuote(t, dir, sim.TDXOptions{}, rd)
	if c, err := simVerifier(t, dir, now).Verify(context.Background(), tdxEvidence(good), rd); err != nil {
		t.Fatalf("Verify(sim quote) = %v", err)
	} else if err := Validate(c, simOptions(rd)); err != nil {
		t.Fatalf("Validate(sim quote, sim options) = %v", err)
	}

	wrongRD := rd
	wrongRD[0] ^= 0xff
	for _, tc := range []struct {
		name   string
		sim    sim.TDXOptions
		mutate func([]byte) []byte
		rd     *[attest.ReportDataSize]byte
		opts   func(*Options)
		want   error
	}{
		{name: "TDX debug attribute", sim: sim.TDXOptions{TDAttributes: 1}, want: ErrDebug},
		{name: "REPORT_DATA", rd: &wrongRD, want: ErrReportData},
		{name: "flipped signature byte", mutate: func(b []byte) []byte { return flip(b, signatureOff+40) }, want: errQuoteSignature},
		{name: "flipped MRTD byte", mutate: func(b []byte) []byte { return flip(b, mrtdOff+1) }, want: errQuoteSignature},
		{name: "rogue root: Intel", opts: func(o *Options) { o.TrustedRoots = nil }, want: errUntrustedRoot},
		{name: "rogue root: other sim", opts: func(o *Options) { o.TrustedRoots = otherRoots }, want: errUntrustedRoot},
		{name: "expired certificate", opts: func(o *Options) { o.Now = fixed(now.AddDate(11, 0, 0)) }, want: errCertExpired},
		{name: "collateral expired", opts: func(o *Options) { o.Now = fixed(now.AddDate(1, 1, 0)) }, want: errCollateral},
		{name: "collateral missing", opts: func(o *Options) { o.CollateralDir = t.TempDir() }, want: errCollateralUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := simQuote(t, dir, tc.sim, rd)
			if tc.mutate != nil {
				raw = tc.mutate(raw)
			}
			opts, err := simVerifierOptions(dir)
			if err != nil {
				t.Fatal(err)
			}
			opts.Now = fixed(now)
			if tc.opts != nil {
				tc.opts(&opts)
			}
			want := rd
			if tc.rd != nil {
				want = *tc.rd
			}
			c, err := mustVerifier(t, opts).Verify(context.Background(), tdxEvidence(raw), want)
			if err == nil {
				err = Validate(c, simOptions(want))
			}
			wantOnly(t, err, tc.want)
		})
	}
}

// TestSimCollateralChecks tampers with the sim collateral cache.
func TestSimCollateralChecks(t *testing.T) {
	rd := reportData("collateral")
	now := clock.Now()

	t.Run("revoked PCK certificate", func(t *testing.T) {
		dir := newSimDir(t)
		if err := sim.RevokeTDXPCK(dir, now.Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
		_, err := simVerifier(t, dir, now).Verify(context.Background(), tdxEvidence(simQuote(t, dir, sim.TDXOptions{}, rd)), rd)
		wantOnly(t, err, errCollateral)
	})

	t.Run("TCB info signature", func(t *testing.T) {
		dir := newSimDir(t)
		cdir := sim.TDXCollateralDir(dir)
		r, err := readCached(cdir, pcs.TcbInfoURL(sim.TDXFMSPC))
		if err != nil {
			t.Fatal(err)
		}
		r.Body = bytes.Replace(r.Body, []byte(`"tcbEvaluationDataNumber":1`), []byte(`"tcbEvaluationDataNumber":2`), 1)
		if err := pcscache.Write(cdir, r); err != nil {
			t.Fatal(err)
		}
		_, err = simVerifier(t, dir, now).Verify(context.Background(), tdxEvidence(simQuote(t, dir, sim.TDXOptions{}, rd)), rd)
		wantOnly(t, err, errCollateral)
		// GenerateSim notices and reissues the collateral.
		if err := sim.GenerateTDX(dir); err != nil {
			t.Fatal(err)
		}
		if _, err := simVerifier(t, dir, now).Verify(context.Background(), tdxEvidence(simQuote(t, dir, sim.TDXOptions{}, rd)), rd); err != nil {
			t.Fatalf("after GenerateSim: %v", err)
		}
	})
}

// TestChainCache checks that a warm verification reuses the chain result
// but still checks the quote signature, REPORT_DATA and certificate expiry.
func TestChainCache(t *testing.T) {
	dir := newSimDir(t)
	now := clock.Now()
	clock := now
	opts, err := simVerifierOptions(dir)
	if err != nil {
		t.Fatal(err)
	}
	opts.Now = func() time.Time { return clock }
	v := mustVerifier(t, opts)
	ctx := context.Background()
	rd1, rd2 := reportData("one"), reportData("two")
	q1 := simQuote(t, dir, sim.TDXOptions{}, rd1)
	q2 := simQuote(t, dir, sim.TDXOptions{MRTD: bytes.Repeat([]byte{7}, 48)}, rd2)
	if _, err := v.Verify(ctx, tdxEvidence(q1), rd1); err != nil {
		t.Fatal(err)
	}
	if len(v.cache) != 1 {
		t.Fatalf("cache has %d entries after one verification, want 1", len(v.cache))
	}
	first := v.cache[keyOf(t, q1)]
	c, err := v.Verify(ctx, tdxEvidence(q2), rd2)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.cache) != 1 || v.cache[keyOf(t, q2)] != first {
		t.Fatalf("second quote of the same TD platform did not hit the cache")
	}
	if !c.Simulated || c.TDX.TCBStatus != "UpToDate" || !bytes.Equal(c.Measurement, bytes.Repeat([]byte{7}, 48)) {
		t.Errorf("warm claims = simulated %v, TCB %q, MRTD %x", c.Simulated, c.TDX.TCBStatus, c.Measurement)
	}
	_, err = v.Verify(ctx, tdxEvidence(flip(q2, signatureOff)), rd2)
	wantOnly(t, err, errQuoteSignature)
	_, err = v.Verify(ctx, tdxEvidence(q2), rd1)
	wantOnly(t, err, ErrReportData)

	// After the TTL the chain is verified again.
	clock = now.Add(DefaultChainCacheTTL + time.Minute)
	if _, err := v.Verify(ctx, tdxEvidence(q1), rd1); err != nil {
		t.Fatal(err)
	}
	if v.cache[keyOf(t, q1)] == first {
		t.Errorf("cache entry not renewed after the TTL")
	}
	// Past the PCK certificate's expiry the cache is not used.
	v.ttl = 100 * 365 * 24 * time.Hour
	clock = now.AddDate(11, 0, 0)
	_, err = v.Verify(ctx, tdxEvidence(q1), rd1)
	wantOnly(t, err, errCertExpired)

	t.Run("disabled", func(t *testing.T) {
		opts.ChainCacheSize = -1
		opts.Now = fixed(now)
		v := mustVerifier(t, opts)
		if _, err := v.Verify(ctx, tdxEvidence(q1), rd1); err != nil {
			t.Fatal(err)
		}
		if len(v.cache) != 0 {
			t.Errorf("disabled cache holds %d entries", len(v.cache))
		}
	})
	t.Run("bounded", func(t *testing.T) {
		v := mustVerifier(t, Options{Now: fixed(now), TrustedRoots: opts.TrustedRoots, ChainCacheSize: 1, CollateralDir: opts.CollateralDir})
		module1 := []byte{5, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
		for _, q := range [][]byte{q1, simQuote(t, dir, sim.TDXOptions{TEETCBSVN: module1}, rd1), q1} {
			if _, err := v.Verify(ctx, tdxEvidence(q), rd1); err != nil {
				t.Fatal(err)
			}
			if len(v.cache) != 1 || len(v.order) != 1 {
				t.Fatalf("cache holds %d entries (%d in order), want 1", len(v.cache), len(v.order))
			}
		}
	})
}

// TestVerifyConcurrent shares one Verifier between goroutines (run with
// -race): verify.Options is built per call.
func TestVerifyConcurrent(t *testing.T) {
	dir := newSimDir(t)
	v := simVerifier(t, dir, clock.Now())
	v.cacheSize = -1 // every call runs the library
	iss, err := sim.NewTDXIssuer(dir, sim.TDXOptions{})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 8)
	for g := 0; g < 8; g++ {
		go func() {
			var err error
			for i := 0; i < 5 && err == nil; i++ {
				rd := reportData(string(rune('a'+g)) + string(rune('0'+i)))
				var ev attest.Evidence
				if ev, err = iss.Issue(context.Background(), rd); err == nil {
					_, err = v.Verify(context.Background(), ev, rd)
				}
			}
			errc <- err
		}()
	}
	for g := 0; g < 8; g++ {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
}

// fakePCS serves collateral from a map and counts requests.
type fakePCS struct {
	responses map[string]*pcscache.Response
	fail      bool
	gets      int
}

func (f *fakePCS) Get(u string) (map[string][]string, []byte, error) {
	f.gets++
	if f.fail {
		return nil, nil, errors.New("network down")
	}
	r, ok := f.responses[u]
	if !ok {
		return nil, nil, errors.New("404 " + u)
	}
	return r.Header, r.Body, nil
}

// TestOnline fetches collateral through a Getter, stores it in the cache,
// and falls back to the cache when fetching fails.
func TestOnline(t *testing.T) {
	dir := newSimDir(t)
	now := clock.Now()
	rd := reportData("online")
	raw := simQuote(t, dir, sim.TDXOptions{}, rd)
	roots, err := sim.TDXRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	pcsFake := &fakePCS{responses: map[string]*pcscache.Response{}}
	simPKIDir := sim.TDXCollateralDir(dir)
	for _, u := range []string{pcs.TcbInfoURL(sim.TDXFMSPC), pcs.QeIdentityURL(), pcs.PckCrlURL("platform"), roots[0].CRLDistributionPoints[0]} {
		r, err := readCached(simPKIDir, u)
		if err != nil {
			t.Fatal(err)
		}
		pcsFake.responses[u] = r
	}
	cache := t.TempDir()
	opts := Options{Now: fixed(now), TrustedRoots: roots, Online: true, Getter: pcsFake, CollateralDir: cache}
	c, err := mustVerifier(t, opts).Verify(context.Background(), tdxEvidence(raw), rd)
	if err != nil {
		t.Fatal(err)
	}
	if c.TDX.TCBStatus != "UpToDate" || pcsFake.gets != 4 {
		t.Errorf("TCBStatus %q after %d fetches, want UpToDate after 4", c.TDX.TCBStatus, pcsFake.gets)
	}
	if c, err := LoadCollateral(cache); err != nil || c.tcbInfoFor(sim.TDXFMSPC) == nil || c.QEIdentity == nil || c.PCKCRL["platform"] == nil || c.RootCRL == nil {
		t.Errorf("online verification did not fill the cache: %v", err)
	}

	pcsFake.fail = true
	if _, err := mustVerifier(t, opts).Verify(context.Background(), tdxEvidence(raw), rd); err != nil {
		t.Errorf("fetch failure with a warm disk cache: %v", err)
	}
	opts.CollateralDir = t.TempDir()
	_, err = mustVerifier(t, opts).Verify(context.Background(), tdxEvidence(raw), rd)
	wantOnly(t, err, errCollateralUnavailable)
}

func TestNewVerifierOptions(t *testing.T) {
	if _, err := NewVerifier(Options{TrustedRoots: []*x509.Certificate{}}); err == nil {
		t.Error("NewVerifier with an empty, non-nil root list succeeded")
	}
	if _, err := NewVerifier(Options{TrustedRoots: []*x509.Certificate{nil}}); err == nil {
		t.Error("NewVerifier with a nil root succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	v := mustVerifier(t, realOptions())
	if _, err := v.Verify(ctx, tdxEvidence(realQuote(t)), realReportData(t)); !errors.Is(err, context.Canceled) {
		t.Errorf("Verify with a cancelled context = %v, want context.Canceled", err)
	}
	if !IntelRoot().Equal(intelRoot) || IntelRoot().Subject.CommonName != "Intel SGX Root CA" {
		t.Error("IntelRoot is not the Intel SGX Root CA")
	}
}

// TestChainForm: the PCK chain must be three PEM certificates with Intel's
// names, each issued by the next.
func TestChainForm(t *testing.T) {
	q, err := parseRawQuote(realQuote(t))
	if err != nil {
		t.Fatal(err)
	}
	chain, err := parseChain(q.PCKChain)
	if err != nil {
		t.Fatal(err)
	}
	if err := chain.checkNames(); err != nil {
		t.Fatalf("checkNames(real chain) = %v", err)
	}
	for _, edit := range []func(c *pckChain){
		func(c *pckChain) { c.leaf.Subject.CommonName = "Intel SGX PCK Certificate " },
		func(c *pckChain) { c.intermediate.Subject.CommonName = "Intel SGX PCK Processor CA" },
		func(c *pckChain) { c.root.Subject.CommonName = "Rogue Root CA" },
		func(c *pckChain) { c.leaf.SignatureAlgorithm = x509.ECDSAWithSHA384 },
		func(c *pckChain) { c.intermediate, c.root = c.root, c.intermediate },
	} {
		c, _ := parseChain(q.PCKChain)
		edit(c)
		wantOnly(t, c.checkNames(), errCertChain)
	}
	full := q.PCKChain
	for _, bad := range [][]byte{full[:len(full)/2], append(bytes.Clone(full), "junk"...), []byte("not PEM")} {
		_, err := parseChain(bad)
		wantOnly(t, err, errCertChain)
	}
}

// keyOf returns the chain cache key of a raw quote.
func keyOf(t testing.TB, raw []byte) [32]byte {
	t.Helper()
	q, err := parseRawQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	return chainCacheKey(q, raw)
}
