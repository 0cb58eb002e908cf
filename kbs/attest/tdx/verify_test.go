package tdx

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/google/go-tdx-guest/pcs"
	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/attest/tdx/pcscache"
)

// TestVerifyRealQuoteOffline verifies go-tdx-guest's real Sapphire Rapids
// quote against the embedded Intel root, offline and without collateral:
// QE vendor, PCK chain to the Intel SGX Root CA with each certificate valid
// at realNow, QE report signature by the PCK key, attestation key binding,
// quote signature, REPORT_DATA and the debug bit. No TCB level is evaluated
// (TCBStatus is empty).
func TestVerifyRealQuoteOffline(t *testing.T) {
	raw := realQuote(t)
	v := mustVerifier(t, Options{Now: fixed(realNow)})
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
	if c.TDX.XFAM != 0x61ae7 || c.TDX.TDAttributes != 1<<30 {
		t.Errorf("XFAM, TDAttributes = %#x, %#x, want 0x61ae7, 0x40000000", c.TDX.XFAM, c.TDX.TDAttributes)
	}
	if c.TDX.TCBStatus != "" {
		t.Errorf("TCBStatus = %q without collateral, want empty", c.TDX.TCBStatus)
	}
	if c.EvidenceDigest != tdxEvidence(raw).Digest() || c.ReportData != realReportData(t) {
		t.Errorf("EvidenceDigest or ReportData wrong")
	}
	if got := hex.EncodeToString(c.TDX.MRSeam); got != hex.EncodeToString(sim.DefaultTDXMRSeam[:]) {
		t.Errorf("MRSeam = %s", got)
	}
	// The embedded root is the one Intel's chain in the quote ends at.
	q, err := parseQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := parseChain(q)
	if err != nil {
		t.Fatal(err)
	}
	if !chain.root.Equal(IntelRoot()) {
		t.Error("the real quote's root certificate is not IntelRoot()")
	}
}

// TestVerifyRealQuoteIntelCollateral runs the collateral checks on the real
// quote with Intel's sample TCB info, QE identity and CRLs. The sample TCB
// info (June 2023) lists no TCB level the sample platform reaches, so
// go-tdx-guest rejects it: proof that the cached collateral is evaluated.
func TestVerifyRealQuoteIntelCollateral(t *testing.T) {
	raw := realQuote(t)
	collateralTime := time.Date(2023, time.July, 1, 0, 0, 0, 0, time.UTC)
	if p := planOffline(intelCollateral, "50806f000000", "platform"); !p.tcbAndQE || !p.crls {
		t.Fatalf("planOffline(intel-collateral) = %+v, want TCB info, QE identity and CRLs", p)
	}
	for _, tc := range []struct {
		name string
		now  time.Time
		want string
	}{
		{"TCB level", collateralTime, "no matching TCB level"},
		{"collateral expired", realNow, "tcbInfo has expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := mustVerifier(t, Options{Now: fixed(tc.now), CollateralDir: intelCollateral, RequireCollateral: true})
			_, err := v.Verify(context.Background(), tdxEvidence(raw), realReportData(t))
			wantOnly(t, err, errCollateral)
			if !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
				t.Errorf("error = %v, want it to say %q", err, tc.want)
			}
		})
	}
	t.Run("required but missing", func(t *testing.T) {
		v := mustVerifier(t, Options{Now: fixed(realNow), CollateralDir: t.TempDir(), RequireCollateral: true})
		_, err := v.Verify(context.Background(), tdxEvidence(raw), realReportData(t))
		wantOnly(t, err, errCollateralUnavailable)
	})
}

// Offsets in the real quote (and in sim quotes, which share its layout up
// to the PCK chain).
const (
	qeReportOff  = attestationKeyEnd + 6
	qeSigOff     = qeReportOff + 384
	qeAuthOff    = qeSigOff + 64 + 2
	mrtdOff      = headerEnd + 0x88
	qeVendorOff  = 12
	attestKeyOff = signatureEnd
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
		{name: "expired certificate", ev: tdxEvidence(raw), rd: rd, opts: Options{Now: fixed(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))}, want: errCertExpired, which: "PCK leaf"},
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
	first := v.cache[chainCacheKey(q1)]
	c, err := v.Verify(ctx, tdxEvidence(q2), rd2)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.cache) != 1 || v.cache[chainCacheKey(q2)] != first {
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
	if v.cache[chainCacheKey(q1)] == first {
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
		dir2 := newSimDir(t)
		roots2, _ := sim.TDXRoots(dir2)
		roots1, _ := sim.TDXRoots(dir)
		v := mustVerifier(t, Options{Now: fixed(now), TrustedRoots: append(roots1, roots2...), ChainCacheSize: 1})
		for _, q := range [][]byte{q1, simQuote(t, dir2, sim.TDXOptions{}, rd1), q1} {
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
	opts := Options{Now: fixed(now), TrustedRoots: roots, Online: true, Getter: pcsFake, CollateralDir: cache, RequireCollateral: true}
	c, err := mustVerifier(t, opts).Verify(context.Background(), tdxEvidence(raw), rd)
	if err != nil {
		t.Fatal(err)
	}
	if c.TDX.TCBStatus != "UpToDate" || pcsFake.gets != 4 {
		t.Errorf("TCBStatus %q after %d fetches, want UpToDate after 4", c.TDX.TCBStatus, pcsFake.gets)
	}
	if p := planOffline(cache, sim.TDXFMSPC, "platform"); !p.tcbAndQE || !p.crls {
		t.Errorf("online verification did not fill the cache: %+v", p)
	}

	pcsFake.fail = true
	if _, err := mustVerifier(t, opts).Verify(context.Background(), tdxEvidence(raw), rd); err != nil {
		t.Errorf("fetch failure with a warm disk cache: %v", err)
	}
	opts.CollateralDir = t.TempDir()
	_, err = mustVerifier(t, opts).Verify(context.Background(), tdxEvidence(raw), rd)
	wantOnly(t, err, errCollateralUnavailable)
	opts.RequireCollateral = false
	c, err = mustVerifier(t, opts).Verify(context.Background(), tdxEvidence(raw), rd)
	if err != nil || c.TDX.TCBStatus != "" {
		t.Errorf("optional collateral unavailable: claims TCB %q, error %v; want empty status, nil", c.TDX.TCBStatus, err)
	}
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
	v := mustVerifier(t, Options{Now: fixed(realNow)})
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
	q, err := parseQuote(realQuote(t))
	if err != nil {
		t.Fatal(err)
	}
	chain, err := parseChain(q)
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
		c, _ := parseChain(q)
		edit(c)
		wantOnly(t, c.checkNames(), errCertChain)
	}
	pcd := q.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetPckCertificateChainData()
	full := pcd.PckCertChain
	for _, bad := range [][]byte{full[:len(full)/2], append(bytes.Clone(full), "junk"...), []byte("not PEM")} {
		pcd.PckCertChain = bad
		_, err := parseChain(q)
		wantOnly(t, err, errCertChain)
	}
}
