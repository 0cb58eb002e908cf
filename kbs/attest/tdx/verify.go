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
	"net/http"
	"sync"
	"time"

	"github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/pcs"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	"github.com/google/go-tdx-guest/verify"
	"github.com/google/go-tdx-guest/verify/trust"
	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/attest"
)

// Defaults of Options.
const (
	DefaultChainCacheSize = 1024
	DefaultChainCacheTTL  = time.Hour
)

// Options configure a Verifier. The zero value verifies offline against the
// Intel SGX Root CA, without collateral.
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

	// CollateralDir is the on-disk collateral cache (TCB info, QE identity,
	// PCK CRL, root CA CRL; see the package documentation for its layout).
	// Optional: without it, offline verification runs no collateral checks.
	CollateralDir string

	// Online fetches collateral from Intel PCS through Getter on every
	// uncached verification and stores it in CollateralDir; a failed fetch
	// falls back to the cache. Optional: offline (false) uses only the
	// evidence and CollateralDir, and never touches the network.
	Online bool

	// Getter fetches PCS URLs in online mode. Optional: an HTTPS client with
	// a 30 s timeout.
	Getter trust.HTTPSGetter

	// RequireCollateral rejects evidence (errCollateralUnavailable) when TCB
	// info and QE identity for its platform are not available. Optional:
	// false verifies without collateral when none is cached.
	RequireCollateral bool

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

// Verify checks a TDX quote v4 and returns its claims:
//
//   - the quote parses (a panic in the parser is an errMalformedQuote) and
//     comes from Intel's quoting enclave (QE_VENDOR_ID);
//   - the PCK chain has Intel's form, every certificate is valid at Now, and
//     it ends at a trusted root;
//   - the PCK key signed the QE report, the QE report binds the attestation
//     key, and the attestation key signed the header and TD quote body;
//   - the collateral checks, when TCB info and QE identity are available:
//     their signatures and issuer chains to the trusted root, freshness at
//     Now, FMSPC/PCEID, TDX module MRSIGNER and attributes, the TCB level of
//     the PCK certificate and TEE_TCB_SVN (only UpToDate passes), the QE
//     identity (MRSIGNER, ISVPRODID, MISCSELECT, attributes, TCB level) and,
//     when both CRLs are available, revocation of the intermediate and PCK
//     certificates;
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
	q, err := parseQuote(raw)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(q.GetHeader().GetQeVendorId(), intelQEVendorID) {
		return nil, fmt.Errorf("%w: QE_VENDOR_ID %x", errQEVendor, q.GetHeader().GetQeVendorId())
	}
	now := v.now()
	key := chainCacheKey(raw)
	entry := v.lookup(key, now)
	if entry != nil {
		if !verifyRawSignature(entry.attestKey, signedMessage(raw), q.GetSignedData().GetSignature()) {
			return nil, errQuoteSignature
		}
	} else {
		if entry, err = v.verifyCold(ctx, q, raw, now); err != nil {
			return nil, err
		}
		v.store(key, entry)
	}

	body := q.GetTdQuoteBody()
	if !bytes.Equal(body.GetReportData(), reportData[:]) {
		return nil, fmt.Errorf("%w: quote has %s, want %s", ErrReportData,
			hex.EncodeToString(body.GetReportData()), hex.EncodeToString(reportData[:]))
	}
	attrs := le64(body.GetTdAttributes())
	if attrs&tdAttributesDebug != 0 {
		return nil, fmt.Errorf("%w: TD_ATTRIBUTES %#016x", ErrDebug, attrs)
	}
	return claimsOf(q, ev, entry), nil
}

func claimsOf(q *pb.QuoteV4, ev attest.Evidence, e *chainEntry) *attest.Claims {
	b := q.GetTdQuoteBody()
	c := &attest.Claims{
		Platform:       attest.TDX,
		Simulated:      e.simulated,
		Measurement:    bytes.Clone(b.GetMrTd()),
		EvidenceDigest: ev.Digest(),
		TDX: &attest.TDXClaims{
			MRTD:          bytes.Clone(b.GetMrTd()),
			MRConfigID:    bytes.Clone(b.GetMrConfigId()),
			MROwner:       bytes.Clone(b.GetMrOwner()),
			MROwnerConfig: bytes.Clone(b.GetMrOwnerConfig()),
			XFAM:          le64(b.GetXfam()),
			TDAttributes:  le64(b.GetTdAttributes()),
			TEETCBSVN:     bytes.Clone(b.GetTeeTcbSvn()),
			MRSeam:        bytes.Clone(b.GetMrSeam()),
			MRSignerSeam:  bytes.Clone(b.GetMrSignerSeam()),
			TCBStatus:     e.tcbStatus,
		},
	}
	copy(c.ReportData[:], b.GetReportData())
	for i, r := range b.GetRtmrs() {
		c.TDX.RTMR[i] = bytes.Clone(r)
	}
	return c
}

// verifyCold runs every check but REPORT_DATA and debug: first our own, which
// give precise errors, then go-tdx-guest's verify.TdxQuote with a fresh
// Options (the library writes into it), which repeats them and adds the
// collateral checks.
func (v *Verifier) verifyCold(ctx context.Context, q *pb.QuoteV4, raw []byte, now time.Time) (_ *chainEntry, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: panic while verifying: %v", errMalformedQuote, r)
		}
	}()
	chain, err := parseChain(q)
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
	e.simulated = true
	for _, ch := range chains {
		if bytes.Equal(ch[len(ch)-1].RawSubjectPublicKeyInfo, intelRoot.RawSubjectPublicKeyInfo) {
			e.simulated = false
		}
	}

	sd := q.GetSignedData()
	qeRep, err := qeReportBytes(q)
	if err != nil {
		return nil, fmt.Errorf("%w: QE report: %v", errMalformedQuote, err)
	}
	qeSig, err := abi.SignatureToDER(sd.GetCertificationData().GetQeReportCertificationData().GetQeReportSignature())
	if err != nil {
		return nil, fmt.Errorf("%w: QE report signature: %v", errMalformedQuote, err)
	}
	if err := chain.leaf.CheckSignature(x509.ECDSAWithSHA256, qeRep, qeSig); err != nil {
		return nil, fmt.Errorf("%w: %v", errQEReportSignature, err)
	}
	if !attestationKeyBound(q) {
		return nil, errAttestationKeyBinding
	}
	if e.attestKey, err = p256Key(sd.GetEcdsaAttestationKey()); err != nil {
		return nil, fmt.Errorf("%w: %v", errQuoteSignature, err)
	}
	if !verifyRawSignature(e.attestKey, signedMessage(raw), sd.GetSignature()) {
		return nil, errQuoteSignature
	}

	// Collateral, through go-tdx-guest.
	exts, err := pcs.PckCertificateExtensions(chain.leaf)
	if err != nil {
		return nil, fmt.Errorf("%w: PCK SGX extensions: %v", errCertChain, err)
	}
	ca := "platform"
	if chain.leaf.Issuer.CommonName == "Intel SGX PCK Processor CA" {
		ca = "processor"
	}
	getter := &collateralGetter{ctx: ctx, dir: v.opts.CollateralDir}
	var plan collateralPlan
	if v.opts.Online {
		getter.online = v.getter
		plan = collateralPlan{tcbAndQE: true, crls: true}
	} else {
		plan = planOffline(v.opts.CollateralDir, exts.FMSPC, ca)
	}
	if !plan.tcbAndQE && v.opts.RequireCollateral {
		return nil, fmt.Errorf("%w: no TCB info for FMSPC %s or no QE identity in %q", errCollateralUnavailable, exts.FMSPC, v.opts.CollateralDir)
	}
	err = v.libVerify(q, plan, getter, now)
	if err != nil && getter.missed != nil {
		if v.opts.RequireCollateral {
			return nil, fmt.Errorf("%w: %v", errCollateralUnavailable, getter.missed)
		}
		plan = collateralPlan{}
		err = v.libVerify(q, plan, nil, now)
	}
	if err != nil {
		if plan.tcbAndQE && v.libVerify(q, collateralPlan{}, nil, now) == nil {
			return nil, fmt.Errorf("%w: %v", errCollateral, err)
		}
		return nil, fmt.Errorf("%w: go-tdx-guest: %v", errCertChain, err)
	}
	if plan.tcbAndQE {
		// verify.TdxQuote accepts only the UpToDate TCB level.
		e.tcbStatus = string(pcs.TcbComponentStatusUpToDate)
		if !getter.until.IsZero() && getter.until.Before(e.notAfter) {
			e.notAfter = getter.until
		}
	}
	return e, nil
}

// libVerify runs verify.TdxQuote with a fresh Options, turning a panic into
// an error.
func (v *Verifier) libVerify(q *pb.QuoteV4, plan collateralPlan, getter *collateralGetter, now time.Time) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic in verify.TdxQuote: %v", r)
		}
	}()
	opts := &verify.Options{
		GetCollateral:    plan.tcbAndQE,
		CheckRevocations: plan.crls,
		Now:              now,
		TrustedRoots:     v.roots, // never nil: nil makes the library log to stdout
	}
	if getter != nil {
		opts.Getter = getter
	} else {
		opts.Getter = noGetter{}
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
