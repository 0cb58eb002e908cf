package tdx

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/pcs"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	"github.com/google/go-tdx-guest/verify"
	"github.com/google/go-tdx-guest/verify/trust"
	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/fetch"
	"github.com/kbs-dev/kbs/kbs/attest/tdx/pcscache"
)

// Defaults of Options.
const (
	DefaultChainCacheSize = 1024
	DefaultChainCacheTTL  = time.Hour
)

// Options configure a Verifier. The zero value verifies offline against the
// Intel SGX Root CA, and refuses every quote: offline verification needs
// collateral (CollateralDir).
type Options struct {
	// Now returns the time at which certificates and collateral must be
	// valid. Optional; default clock.Now (the wall clock). Tests fix it to verify captured quotes
	// after their certificates expire.
	Now func() time.Time

	// TrustedRoots are the roots a PCK chain must end at. Optional: nil
	// means the Intel SGX Root CA (IntelRoot). Claims of evidence whose
	// chain does not end at the Intel root carry Simulated = true; pass the
	// simulated TEE's roots (sim.TDXRoots) here, and only here, to accept it.
	TrustedRoots []*x509.Certificate

	// CollateralDir is a collateral bundle (see Collateral and
	// LoadCollateral: Intel PCS responses as served, kbs's cache files, or
	// QVL-style collateral JSON). Offline, it is the only source of
	// collateral, read again on every cold verification; online, fetched
	// responses are stored in it and it is the fallback when a fetch fails.
	// Without it, offline verification refuses every quote.
	CollateralDir string

	// Online fetches collateral from Intel PCS through Getter on every
	// cold verification and stores it in CollateralDir; a failed fetch
	// falls back to CollateralDir. Optional: offline (false) never touches
	// the network.
	Online bool

	// Getter fetches PCS URLs in online mode. Optional: an HTTPS client with
	// a 30 s timeout.
	Getter trust.HTTPSGetter

	// Fetches bounds the fetches of online mode (kbs/attest/fetch).
	// Optional; default a gate of its own with fetch's default limits.
	Fetches *fetch.Gate

	// ChainCacheSize bounds the number of verified PCK chains kept in
	// memory. Optional: DefaultChainCacheSize; negative disables the cache.
	ChainCacheSize int

	// ChainCacheTTL is how long a verified chain and its collateral result
	// are reused before they are checked again. Optional:
	// DefaultChainCacheTTL. An entry is never used outside the validity of
	// its certificates and collateral.
	ChainCacheTTL time.Duration
}

// Verifier verifies TDX quotes. It implements attest.Verifier and is safe
// for concurrent use.
type Verifier struct {
	opts      Options
	roots     *x509.CertPool
	getter    trust.HTTPSGetter
	fetches   *fetch.Gate
	cacheSize int
	ttl       time.Duration

	mu    sync.Mutex
	cache map[[32]byte]*chainEntry
	order [][32]byte // insertion order, for eviction
}

var _ attest.Verifier = (*Verifier)(nil)

// chainEntry is the result of a cold verification that holds for every quote
// with the same chain cache key (see chainCacheKey).
type chainEntry struct {
	attestKey  *ecdsa.PublicKey
	simulated  bool
	tcbStatus  string
	advisories []string
	notBefore  time.Time // latest NotBefore of the chain
	notAfter   time.Time // earliest expiry of certificates and collateral
	verifiedAt time.Time
}

// NewVerifier returns a Verifier with opts.
func NewVerifier(opts Options) (*Verifier, error) {
	v := &Verifier{opts: opts, roots: x509.NewCertPool(), cache: map[[32]byte]*chainEntry{}}
	roots := opts.TrustedRoots
	if roots == nil {
		roots = []*x509.Certificate{intelRoot}
	}
	if len(roots) == 0 {
		return nil, errors.New("tdx: TrustedRoots is empty (nil means the Intel root)")
	}
	for i, r := range roots {
		if r == nil {
			return nil, fmt.Errorf("tdx: TrustedRoots[%d] is nil", i)
		}
		v.roots.AddCert(r)
	}
	v.getter = opts.Getter
	if opts.Online && v.getter == nil {
		v.getter = httpGetter{client: &http.Client{Timeout: 30 * time.Second}}
	}
	v.fetches = opts.Fetches
	if opts.Online && v.fetches == nil {
		v.fetches = fetch.NewGate(fetch.Limits{})
	}
	v.cacheSize = opts.ChainCacheSize
	if v.cacheSize == 0 {
		v.cacheSize = DefaultChainCacheSize
	}
	v.ttl = opts.ChainCacheTTL
	if v.ttl <= 0 {
		v.ttl = DefaultChainCacheTTL
	}
	return v, nil
}

func (v *Verifier) now() time.Time {
	if v.opts.Now != nil {
		return v.opts.Now()
	}
	return clock.Now()
}

// Verify checks a TDX quote, v4 or v5, and returns its claims:
//
//   - the quote parses and comes from Intel's quoting enclave
//     (QE_VENDOR_ID);
//   - the PCK chain has Intel's form, every certificate is valid at Now, and
//     it ends at a trusted root;
//   - the PCK key signed the QE report, the QE report binds the attestation
//     key, and the attestation key signed the header and TD quote body;
//   - the collateral, always (errCollateralUnavailable when a piece is
//     missing): TCB info for the PCK certificate's FMSPC and the TD QE
//     identity, signed under the chain's root and current at Now; the PCK
//     and root CA CRLs, which must not revoke the PCK, its CA or the TCB
//     signing certificate; FMSPC, PCEID, TDX module signer and attributes,
//     the QE's MRSIGNER, ISVPRODID, MISCSELECT and attributes; the TCB
//     level of the platform, the TDX module and the QE. A Revoked level is
//     refused; any other status is passed on in the claims (TCBStatus,
//     AdvisoryIDs) for the manifest to judge;
//   - for v4 quotes, go-tdx-guest's verify.TdxQuote agrees: on the chain
//     and signatures always, and on the collateral when the status is
//     UpToDate (the only status it accepts);
//   - REPORT_DATA equals reportData;
//   - TD_ATTRIBUTES.DEBUG is clear.
//
// Everything but the quote signature, REPORT_DATA and the debug bit is
// cached per chain (Options.ChainCacheTTL), so a warm verification costs one
// ECDSA verification. Reference values are compared by manifest.Match and
// confirmed by Validate.
func (v *Verifier) Verify(ctx context.Context, ev attest.Evidence, reportData [attest.ReportDataSize]byte) (*attest.Claims, error) {
	if ev.Platform != attest.TDX {
		return nil, fmt.Errorf("%w: platform %q", errNotTDX, ev.Platform)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	raw := ev.Data
	q, err := parseRawQuote(raw)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(q.Header[12:28], intelQEVendorID) {
		return nil, fmt.Errorf("%w: QE_VENDOR_ID %x", errQEVendor, q.Header[12:28])
	}
	now := v.now()
	key := chainCacheKey(q, raw)
	entry := v.lookup(key, now)
	if entry != nil {
		if !verifyRawSignature(entry.attestKey, q.Signed, q.Signature) {
			return nil, errQuoteSignature
		}
	} else {
		if entry, err = v.verifyCold(ctx, q, raw, now); err != nil {
			return nil, err
		}
		v.store(key, entry)
	}

	if rd := q.field(bodyReportData, attest.ReportDataSize); !bytes.Equal(rd, reportData[:]) {
		return nil, fmt.Errorf("%w: quote has %s, want %s", ErrReportData,
			hex.EncodeToString(rd), hex.EncodeToString(reportData[:]))
	}
	if attrs := le64(q.field(bodyTDAttributes, 8)); attrs&tdAttributesDebug != 0 {
		return nil, fmt.Errorf("%w: TD_ATTRIBUTES %#016x", ErrDebug, attrs)
	}
	return claimsOf(q, ev, entry, now), nil
}

func claimsOf(q *rawQuote, ev attest.Evidence, e *chainEntry, now time.Time) *attest.Claims {
	f := func(off, n int) []byte { return bytes.Clone(q.field(off, n)) }
	c := &attest.Claims{
		Platform:       attest.TDX,
		Simulated:      e.simulated,
		Measurement:    f(bodyMRTD, measurementSize),
		EvidenceDigest: ev.Digest(),
		VerifiedAt:     now,
		TDX: &attest.TDXClaims{
			QuoteVersion:  q.Version,
			MRTD:          f(bodyMRTD, measurementSize),
			MRConfigID:    f(bodyMRConfigID, measurementSize),
			MROwner:       f(bodyMROwner, measurementSize),
			MROwnerConfig: f(bodyMROwnerConfig, measurementSize),
			XFAM:          le64(q.field(bodyXFAM, 8)),
			TDAttributes:  le64(q.field(bodyTDAttributes, 8)),
			TEETCBSVN:     f(bodyTEETCBSVN, teeTCBSVNSize),
			MRSeam:        f(bodyMRSeam, measurementSize),
			MRSignerSeam:  f(bodyMRSignerSeam, measurementSize),
			TCBStatus:     e.tcbStatus,
			AdvisoryIDs:   slices.Clone(e.advisories),
		},
	}
	if q.BodyType == bodyTD15 {
		c.TDX.TEETCBSVN2 = f(bodyTEETCBSVN2, teeTCBSVNSize)
		c.TDX.MRServiceTD = f(bodyMRServiceTD, mrServiceTDSize)
	}
	copy(c.ReportData[:], q.field(bodyReportData, attest.ReportDataSize))
	for i := range c.TDX.RTMR {
		c.TDX.RTMR[i] = f(bodyRTMR0+i*measurementSize, measurementSize)
	}
	return c
}

// verifyCold runs every check but REPORT_DATA and debug: our own, which
// give precise errors and judge the collateral, then (v4) go-tdx-guest's
// verify.TdxQuote with a fresh Options (the library writes into it), which
// must agree.
func (v *Verifier) verifyCold(ctx context.Context, q *rawQuote, raw []byte, now time.Time) (_ *chainEntry, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: panic while verifying: %v", errMalformedQuote, r)
		}
	}()
	chain, err := parseChain(q.PCKChain)
	if err != nil {
		return nil, err
	}
	if err := chain.checkNames(); err != nil {
		return nil, err
	}
	e := &chainEntry{verifiedAt: now}
	for _, c := range []struct {
		name string
		cert *x509.Certificate
	}{{"root CA", chain.root}, {"intermediate CA", chain.intermediate}, {"PCK leaf", chain.leaf}} {
		if now.Before(c.cert.NotBefore) {
			return nil, &certificateError{Cert: c.name, Err: errCertNotYetValid, Msg: "valid from " + c.cert.NotBefore.UTC().Format(time.RFC3339)}
		}
		if now.After(c.cert.NotAfter) {
			return nil, &certificateError{Cert: c.name, Err: errCertExpired, Msg: "expired " + c.cert.NotAfter.UTC().Format(time.RFC3339)}
		}
		if e.notBefore.Before(c.cert.NotBefore) {
			e.notBefore = c.cert.NotBefore
		}
		if e.notAfter.IsZero() || c.cert.NotAfter.Before(e.notAfter) {
			e.notAfter = c.cert.NotAfter
		}
	}
	inter := x509.NewCertPool()
	inter.AddCert(chain.intermediate)
	chains, err := chain.leaf.Verify(x509.VerifyOptions{
		Roots:         v.roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		var ua x509.UnknownAuthorityError
		if errors.As(err, &ua) {
			return nil, fmt.Errorf("%w: %v", errUntrustedRoot, err)
		}
		return nil, fmt.Errorf("%w: %v", errCertChain, err)
	}
	// From here on the root is the trusted one the chain verified to.
	chain.root = chains[0][len(chains[0])-1]
	e.simulated = !bytes.Equal(chain.root.RawSubjectPublicKeyInfo, intelRoot.RawSubjectPublicKeyInfo)

	qeSig, err := abi.SignatureToDER(q.QEReportSig)
	if err != nil {
		return nil, fmt.Errorf("%w: QE report signature: %v", errMalformedQuote, err)
	}
	if err := chain.leaf.CheckSignature(x509.ECDSAWithSHA256, q.QEReport, qeSig); err != nil {
		return nil, fmt.Errorf("%w: %v", errQEReportSignature, err)
	}
	if !attestationKeyBound(q) {
		return nil, errAttestationKeyBinding
	}
	if e.attestKey, err = p256Key(q.AttestKey); err != nil {
		return nil, fmt.Errorf("%w: %v", errQuoteSignature, err)
	}
	if !verifyRawSignature(e.attestKey, q.Signed, q.Signature) {
		return nil, errQuoteSignature
	}

	// Collateral: always.
	exts, ca, err := pckExtensions(chain)
	if err != nil {
		return nil, err
	}
	col, err := v.collateral(ctx, exts.FMSPC, ca, chain.root)
	if err != nil {
		return nil, err
	}
	verdict, err := col.evaluate(chain, exts, ca, q.tcb(), now)
	if err != nil {
		return nil, err
	}
	e.tcbStatus, e.advisories = verdict.status, verdict.advisories
	if verdict.notAfter.Before(e.notAfter) {
		e.notAfter = verdict.notAfter
	}

	// go-tdx-guest's second opinion, where it can give one.
	if q.Version == quoteV4 {
		pq, err := parseQuote(raw)
		if err != nil {
			return nil, err
		}
		// The library accepts only UpToDate, and (v0.3.1) compares the
		// FMSPC case-sensitively while Intel writes the TCB info's in upper
		// case: elsewhere it confirms the chain and signatures only.
		withCollateral := verdict.status == StatusUpToDate && verdict.fmspc == exts.FMSPC
		getter := &bundleGetter{c: col, fmspc: exts.FMSPC, ca: ca, pckChain: chain}
		if err := v.libVerify(pq, withCollateral, getter, now); err != nil {
			return nil, fmt.Errorf("%w: go-tdx-guest rejects what kbs's checks accept: %v", errCollateral, err)
		}
	}
	return e, nil
}

// collateral returns the collateral for a platform: fetched (online, stored
// in CollateralDir, falling back to it) or from the bundle in
// CollateralDir.
func (v *Verifier) collateral(ctx context.Context, fmspc, ca string, root *x509.Certificate) (*Collateral, error) {
	if v.opts.Online {
		g := &collateralGetter{ctx: ctx, dir: v.opts.CollateralDir, online: v.getter, gate: v.fetches}
		var rs []*pcscache.Response
		urls := append([]string{pcs.TcbInfoURL(fmspc), pcs.QeIdentityURL(), pcs.PckCrlURL(ca)}, root.CRLDistributionPoints...)
		for i, u := range urls {
			r, err := g.get(u)
			if err != nil {
				if i >= 3 && i < len(urls)-1 {
					continue // another distribution point of the root CRL
				}
				return nil, fmt.Errorf("%w: %v", errCollateralUnavailable, err)
			}
			rs = append(rs, r)
			if i >= 3 {
				break
			}
		}
		c, err := collateralFromResponses(rs)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errCollateral, err)
		}
		return c, nil
	}
	if v.opts.CollateralDir == "" {
		return nil, fmt.Errorf("%w: offline, and no collateral bundle (--collateral DIR with Intel PCS's TCB info, QE identity and CRLs)", errCollateralUnavailable)
	}
	c, err := LoadCollateral(v.opts.CollateralDir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %v", errCollateralUnavailable, err)
		}
		return nil, fmt.Errorf("%w: %v", errCollateral, err)
	}
	return c, nil
}

// libVerify runs verify.TdxQuote with a fresh Options, turning a panic into
// an error: with the collateral from getter when withCollateral, else on
// the chain and signatures alone.
func (v *Verifier) libVerify(q *pb.QuoteV4, withCollateral bool, getter trust.HTTPSGetter, now time.Time) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic in verify.TdxQuote: %v", r)
		}
	}()
	opts := &verify.Options{
		GetCollateral:    withCollateral,
		CheckRevocations: withCollateral,
		Now:              now,
		TrustedRoots:     v.roots, // never nil: nil makes the library log to stdout
		Getter:           noGetter{},
	}
	if withCollateral {
		opts.Getter = getter
	}
	return verify.TdxQuote(q, opts)
}

// noGetter refuses every fetch: collateral was not requested.
type noGetter struct{}

func (noGetter) Get(u string) (map[string][]string, []byte, error) {
	return nil, nil, fmt.Errorf("collateral not requested: %s", u)
}

func (v *Verifier) lookup(key [32]byte, now time.Time) *chainEntry {
	if v.cacheSize < 0 {
		return nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	e := v.cache[key]
	if e == nil || now.Before(e.notBefore) || now.After(e.notAfter) ||
		!now.Before(e.verifiedAt.Add(v.ttl)) || now.Before(e.verifiedAt.Add(-v.ttl)) {
		return nil
	}
	return e
}

func (v *Verifier) store(key [32]byte, e *chainEntry) {
	if v.cacheSize < 0 {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.cache[key]; !ok {
		for len(v.order) >= v.cacheSize {
			delete(v.cache, v.order[0])
			v.order = v.order[1:]
		}
		v.order = append(v.order, key)
	}
	v.cache[key] = e
}
