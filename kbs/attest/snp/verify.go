package snp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/fetch"
)

// Options configure a Verifier. The zero value verifies offline against
// AMD's embedded roots at the wall clock (clock.Now).
type Options struct {
	// Now returns the time at which certificates must be valid.
	// Optional; default clock.Now (the wall clock).
	Now func() time.Time
	// CacheDir is a directory of endorsement certificates: the VCEK of every
	// verified report is stored there (keyed by chip id and reported TCB), so
	// later evidence without a certificate table verifies offline. In online
	// mode, certificates fetched from AMD's KDS are cached there too.
	// Optional; no disk cache when empty.
	CacheDir string
	// Roots are the trusted AMD root chains. Optional; nil trusts the ARK,
	// ASK and ASVK of Milan, Genoa and Turin embedded in go-sev-guest. When
	// set, only these roots are trusted.
	Roots []Root
	// Online fetches missing certificates from AMD's KDS and checks AMD's
	// CRL. Default false: nothing leaves the machine.
	Online bool
	// Getter fetches URLs in online mode. Optional; default go-sev-guest's
	// retrying HTTPS getter.
	Getter trust.HTTPSGetter
	// Fetches bounds the fetches of online mode (kbs/attest/fetch).
	// Optional; default a gate of its own with fetch's default limits.
	Fetches *fetch.Gate
}

// Verifier verifies SNP evidence. It is safe for concurrent use.
type Verifier struct {
	now      func() time.Time
	cacheDir string
	online   bool
	getter   trust.HTTPSGetter
	roots    map[string][]*trust.AMDRootCerts
	amdARKs  []*x509.Certificate // AMD's own ARKs, to mark other roots' claims Simulated

	mu     sync.Mutex
	chains map[[32]byte]*chainEntry
}

// chainEntry remembers an endorsement certificate that chained to a trusted
// root, and the window in which that result holds.
type chainEntry struct {
	cert        *x509.Certificate
	key         abi.ReportSigner
	exts        *endorsementExtensions
	root        *trust.AMDRootCerts
	productLine string
	simulated   bool // the root is not one of AMD's
	notBefore   time.Time
	notAfter    time.Time
}

// maxChains bounds the chain cache; it is emptied when full.
const maxChains = 4096

// NewVerifier returns a Verifier for opts.
func NewVerifier(opts Options) (*Verifier, error) {
	v := &Verifier{
		now:      opts.Now,
		cacheDir: opts.CacheDir,
		online:   opts.Online,
		getter:   opts.Getter,
		roots:    map[string][]*trust.AMDRootCerts{},
		chains:   map[[32]byte]*chainEntry{},
	}
	if v.now == nil {
		v.now = clock.Now
	}
	amd, err := DefaultRoots()
	if err != nil {
		return nil, err
	}
	for _, r := range amd {
		v.amdARKs = append(v.amdARKs, r.ARK)
	}
	roots := opts.Roots
	if roots == nil {
		roots = amd
	}
	if len(roots) == 0 {
		return nil, errors.New("snp: no trusted roots")
	}
	for i, r := range roots {
		if r.ProductLine == "" || r.ARK == nil || r.ASK == nil {
			return nil, fmt.Errorf("snp: root %d: product line, ARK and ASK are required", i)
		}
		v.roots[r.ProductLine] = append(v.roots[r.ProductLine], &trust.AMDRootCerts{
			ProductLine:  r.ProductLine,
			ProductCerts: &trust.ProductCerts{Ark: r.ARK, Ask: r.ASK, Asvk: r.ASVK},
		})
	}
	if v.online {
		if v.getter == nil {
			v.getter = trust.DefaultHTTPSGetter()
		}
		gate := opts.Fetches
		if gate == nil {
			gate = fetch.NewGate(fetch.Limits{})
		}
		v.getter = &gatedGetter{gate: gate, next: v.getter}
		if v.cacheDir != "" {
			v.getter = &cachingGetter{dir: v.cacheDir, next: v.getter}
		}
	}
	return v, nil
}

// Verify checks SNP evidence as described in the package documentation and
// returns its claims. reportData is the expected REPORT_DATA.
func (v *Verifier) Verify(ctx context.Context, ev attest.Evidence, reportData [attest.ReportDataSize]byte) (c *attest.Claims, err error) {
	defer func() {
		if r := recover(); r != nil {
			c, err = nil, fmt.Errorf("%w: verifier panic: %v", errMalformed, r)
		}
	}()
	if ev.Platform != attest.SNP {
		return nil, fmt.Errorf("%w: platform %q, want %q", errMalformed, ev.Platform, attest.SNP)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	parsed, err := ParseEvidence(ev.Data)
	if err != nil {
		return nil, err
	}
	entry, err := v.authenticate(ctx, parsed)
	if err != nil {
		return nil, err
	}
	r := parsed.Proto
	if err := checkAgainstCert(r, entry); err != nil {
		return nil, err
	}
	if err := checkTCBOrder(r); err != nil {
		return nil, err
	}
	pol, err := abi.ParseSnpPolicy(r.GetPolicy())
	if err != nil {
		return nil, fmt.Errorf("%w: guest policy: %v", errMalformed, err)
	}
	if pol.Debug {
		return nil, fmt.Errorf("%w: guest policy 0x%x has DEBUG (bit 19) set", ErrDebug, r.GetPolicy())
	}
	if !bytes.Equal(r.GetReportData(), reportData[:]) {
		return nil, fmt.Errorf("%w: report has %s…, want %s…", ErrReportData,
			hex.EncodeToString(r.GetReportData()[:8]), hex.EncodeToString(reportData[:8]))
	}
	return claimsOf(ev, parsed, entry), nil
}

// authenticate checks the report's signature and its endorsement
// certificate's chain, using the chain cache when it can.
func (v *Verifier) authenticate(ctx context.Context, ev *Evidence) (*chainEntry, error) {
	key, err := ev.signer()
	if err != nil {
		return nil, err
	}
	der, err := v.endorsementCert(ctx, ev, key)
	if err != nil {
		return nil, err
	}
	now := v.now()
	id := sha256.Sum256(der)
	v.mu.Lock()
	entry := v.chains[id]
	v.mu.Unlock()
	if entry != nil && entry.key == key && !now.Before(entry.notBefore) && !now.After(entry.notAfter) {
		if err := verify.SnpReportSignature(ev.Report, entry.cert); err != nil {
			return nil, fmt.Errorf("%w: %v", errSignature, err)
		}
		if err := v.checkRevocation(ctx, entry, now); err != nil {
			return nil, err
		}
		return entry, nil
	}

	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v certificate: %v", errMalformed, key, err)
	}
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return nil, fmt.Errorf("%w: %v certificate valid %s to %s, now is %s", errCertificateExpired,
			key, cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	// The signature under the (not yet trusted) certificate first, so that a
	// damaged report and an untrusted key give different errors.
	if err := verify.SnpReportSignature(ev.Report, cert); err != nil {
		return nil, fmt.Errorf("%w: %v", errSignature, err)
	}
	productLine := productLineOf(ev.Proto, cert, key)
	exts, err := parseEndorsementExtensions(cert, key, productLine)
	if err != nil {
		return nil, fmt.Errorf("%w: %s %v certificate extensions: %v", errChain, productLine, key, err)
	}
	if libraryReadsVCEKs(productLine) {
		chain := &spb.CertificateChain{Extras: map[string][]byte{}}
		if key == abi.VlekReportSigner {
			chain.VlekCert = der
		} else {
			chain.VcekCert = der
		}
		opts := &verify.Options{
			CheckRevocations:    false, // done below against the root that matched
			DisableCertFetching: true,  // the certificate is already in hand
			Getter:              v.getter,
			Now:                 now,
			TrustedRoots:        v.roots,
		}
		if err := verify.SnpAttestationContext(ctx, &spb.Attestation{Report: ev.Proto, CertificateChain: chain}, opts); err != nil {
			if rerr := v.rootsExpired(productLine, now); rerr != nil {
				return nil, fmt.Errorf("%w: %v", rerr, err)
			}
			return nil, fmt.Errorf("%w: %v", errChain, err)
		}
	} else if want := intermediateName(productLine, key); cert.Issuer.CommonName != want {
		// go-sev-guest v0.15.0 cannot read this product line's
		// certificates: the chain is checked by matchRoot below alone.
		return nil, fmt.Errorf("%w: %v certificate issued by %q, want %q", errChain, key, cert.Issuer.CommonName, want)
	}
	root := v.matchRoot(productLine, key, cert, now)
	if root == nil {
		if err := v.rootsExpired(productLine, now); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: no %s root verifies the %v certificate", errChain, productLine, key)
	}
	entry = &chainEntry{cert: cert, key: key, exts: exts, root: root, productLine: productLine,
		simulated: !slices.ContainsFunc(v.amdARKs, root.ProductCerts.Ark.Equal),
		notBefore: cert.NotBefore, notAfter: cert.NotAfter}
	for _, c := range []*x509.Certificate{root.ProductCerts.Ark, root.ProductCerts.Ask, root.ProductCerts.Asvk} {
		if c == nil {
			continue
		}
		if c.NotBefore.After(entry.notBefore) {
			entry.notBefore = c.NotBefore
		}
		if c.NotAfter.Before(entry.notAfter) {
			entry.notAfter = c.NotAfter
		}
	}
	if err := v.checkRevocation(ctx, entry, now); err != nil {
		return nil, err
	}
	v.mu.Lock()
	if len(v.chains) >= maxChains {
		clear(v.chains)
	}
	v.chains[id] = entry
	v.mu.Unlock()
	if key == abi.VcekReportSigner {
		v.storeCert(ev.Proto, der)
	}
	return entry, nil
}

// matchRoot returns the root of productLine that verifies cert.
func (v *Verifier) matchRoot(productLine string, key abi.ReportSigner, cert *x509.Certificate, now time.Time) *trust.AMDRootCerts {
	for _, r := range v.roots[productLine] {
		opts := r.X509Options(now, key)
		if opts == nil {
			continue
		}
		if _, err := cert.Verify(*opts); err == nil {
			return r
		}
	}
	return nil
}

func (v *Verifier) checkRevocation(ctx context.Context, e *chainEntry, now time.Time) error {
	if !v.online {
		return nil
	}
	opts := &verify.Options{Getter: v.getter, Now: now}
	if err := verify.VcekNotRevokedContext(ctx, e.root, e.cert, opts); err != nil {
		return fmt.Errorf("%w: %v", errRevoked, err)
	}
	return nil
}

// endorsementCert returns the DER of the certificate of the key that signed
// the report: from the certificate table, else the disk cache, else (online)
// AMD's KDS.
func (v *Verifier) endorsementCert(ctx context.Context, ev *Evidence, key abi.ReportSigner) ([]byte, error) {
	guid := vcekGUID
	if key == abi.VlekReportSigner {
		guid = vlekGUID
	}
	if der := ev.cert(guid); len(der) > 0 {
		return der, nil
	}
	if key == abi.VlekReportSigner {
		return nil, fmt.Errorf("%w: VLEK-signed report without a VLEK in its certificate table", errNoCertificate)
	}
	if v.cacheDir != "" {
		if der, err := os.ReadFile(filepath.Join(v.cacheDir, vcekFileName(ev.Proto))); err == nil {
			return der, nil
		}
	}
	if !v.online {
		return nil, fmt.Errorf("%w: offline, and no VCEK cached for chip %s… at TCB 0x%016x", errNoCertificate,
			hex.EncodeToString(ev.Proto.GetChipId()[:8]), ev.Proto.GetReportedTcb())
	}
	att, err := verify.GetAttestationFromReportContext(ctx, ev.Proto, &verify.Options{Getter: v.getter, Now: v.now()})
	if err != nil || len(att.GetCertificateChain().GetVcekCert()) == 0 {
		return nil, fmt.Errorf("%w: fetching the VCEK from AMD KDS: %v", errNoCertificate, err)
	}
	return att.GetCertificateChain().GetVcekCert(), nil
}

// productLineOf names the product line of the chip that made the report:
// from the CPUID fields of v3+ reports, else from the certificate's
// productName extension.
func productLineOf(r *spb.Report, cert *x509.Certificate, key abi.ReportSigner) string {
	if fms := r.GetCpuid1EaxFms(); fms != 0 {
		return kds.ProductLineFromFms(fms)
	}
	for _, e := range cert.Extensions {
		if !e.Id.Equal(kds.OidProductName1) {
			continue
		}
		var name string
		if _, err := asn1.UnmarshalWithParams(e.Value, &name, "ia5"); err != nil {
			return ""
		}
		if p, err := kds.ParseProductName(name, key); err == nil {
			return kds.ProductLine(p)
		}
	}
	return ""
}

// libraryReadsVCEKs reports whether go-sev-guest v0.15.0 can read the
// certificates of a product line: Milan and Genoa, not Turin (see kds.go).
func libraryReadsVCEKs(productLine string) bool {
	return productLine == "Milan" || productLine == "Genoa"
}

// intermediateName is the common name of the AMD key that signs a product
// line's VCEKs (ASK) or VLEKs (ASVK).
func intermediateName(productLine string, key abi.ReportSigner) string {
	if key == abi.VlekReportSigner {
		return "SEV-VLEK-" + productLine
	}
	return "SEV-" + productLine
}

// rootsExpired returns an error naming a root certificate of productLine
// that is not valid at now, or nil.
func (v *Verifier) rootsExpired(productLine string, now time.Time) error {
	for _, r := range v.roots[productLine] {
		for _, c := range []*x509.Certificate{r.ProductCerts.Ark, r.ProductCerts.Ask, r.ProductCerts.Asvk} {
			if c != nil && (now.Before(c.NotBefore) || now.After(c.NotAfter)) {
				return fmt.Errorf("%w: %s root certificate %q valid %s to %s", errCertificateExpired,
					productLine, c.Subject.CommonName, c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
			}
		}
	}
	return nil
}

// checkAgainstCert checks that the report's reported TCB is the TCB its
// certificate was issued for, and that a VCEK-signed report names the chip
// the VCEK belongs to.
func checkAgainstCert(r *spb.Report, e *chainEntry) error {
	if e.exts.TCB != r.GetReportedTcb() {
		return fmt.Errorf("%w: REPORTED_TCB 0x%016x, %v certificate issued for TCB 0x%016x", errCertMismatch,
			r.GetReportedTcb(), e.key, e.exts.TCB)
	}
	if e.key == abi.VcekReportSigner && !allZero(r.GetChipId()) && !chipIDMatches(r.GetChipId(), e.exts.HWID) {
		return fmt.Errorf("%w: CHIP_ID %s… is not the VCEK's hwID %s…", errCertMismatch,
			hex.EncodeToString(r.GetChipId()[:8]), hex.EncodeToString(e.exts.HWID[:min(8, len(e.exts.HWID))]))
	}
	return nil
}

// checkTCBOrder enforces reported ≤ committed ≤ current, component-wise.
func checkTCBOrder(r *spb.Report) error {
	reported := kds.DecomposeTCBVersion(kds.TCBVersion(r.GetReportedTcb()))
	committed := kds.DecomposeTCBVersion(kds.TCBVersion(r.GetCommittedTcb()))
	current := kds.DecomposeTCBVersion(kds.TCBVersion(r.GetCurrentTcb()))
	if !kds.TCBPartsLE(reported, committed) {
		return fmt.Errorf("%w: REPORTED_TCB 0x%016x above COMMITTED_TCB 0x%016x", errTCBInconsistent, r.GetReportedTcb(), r.GetCommittedTcb())
	}
	if !kds.TCBPartsLE(committed, current) {
		return fmt.Errorf("%w: COMMITTED_TCB 0x%016x above CURRENT_TCB 0x%016x", errTCBInconsistent, r.GetCommittedTcb(), r.GetCurrentTcb())
	}
	return nil
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func claimsOf(ev attest.Evidence, p *Evidence, e *chainEntry) *attest.Claims {
	r := p.Proto
	c := &attest.Claims{
		Platform:       attest.SNP,
		Simulated:      e.simulated,
		Measurement:    bytes.Clone(r.GetMeasurement()),
		EvidenceDigest: ev.Digest(),
		SNP: &attest.SNPClaims{
			Version:         r.GetVersion(),
			GuestSVN:        r.GetGuestSvn(),
			Policy:          r.GetPolicy(),
			FamilyID:        bytes.Clone(r.GetFamilyId()),
			ImageID:         bytes.Clone(r.GetImageId()),
			VMPL:            r.GetVmpl(),
			CurrentTCB:      r.GetCurrentTcb(),
			ReportedTCB:     r.GetReportedTcb(),
			CommittedTCB:    r.GetCommittedTcb(),
			LaunchTCB:       r.GetLaunchTcb(),
			HostData:        bytes.Clone(r.GetHostData()),
			IDKeyDigest:     bytes.Clone(r.GetIdKeyDigest()),
			AuthorKeyDigest: bytes.Clone(r.GetAuthorKeyDigest()),
			ReportID:        bytes.Clone(r.GetReportId()),
			ChipID:          bytes.Clone(r.GetChipId()),
			Product:         e.productLine,
			SignerKey:       signerName(e.key),
			PlatformInfo:    r.GetPlatformInfo(),
			Report:          bytes.Clone(p.Report),
			EndorsementKey:  bytes.Clone(e.cert.Raw),
		},
	}
	copy(c.ReportData[:], r.GetReportData())
	return c
}

func signerName(k abi.ReportSigner) string {
	if k == abi.VlekReportSigner {
		return "vlek"
	}
	return "vcek"
}
