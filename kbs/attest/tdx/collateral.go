package tdx

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/google/go-tdx-guest/pcs"
	"github.com/google/go-tdx-guest/verify/trust"

	"github.com/kbs-dev/kbs/internal/atomicfile"
	"github.com/kbs-dev/kbs/internal/clock"
)

// The collateral cache is a directory of JSON files, one per Intel PCS
// response, named after what they hold:
//
//	tcbinfo-<fmspc>.json   TDX TCB info for one platform family (FMSPC)
//	qeidentity.json        TDX QE identity
//	pckcrl-<ca>.json       PCK CRL of the "platform" or "processor" CA
//	crl-<sha256(url)[:16]>.json  any other CRL (the root CA CRL, fetched
//	                       from the root certificate's distribution point)
//
// Each file holds {"url", "header", "body" (base64), "fetched"}: the PCS
// response exactly as received, so that go-tdx-guest verifies the signed
// bodies and issuer chains itself. Files are written atomically. Nothing in
// the cache is trusted: every response is verified against the trusted roots
// on use.

// cachedResponse is one cached PCS response.
type cachedResponse struct {
	URL     string              `json:"url"`
	Header  map[string][]string `json:"header,omitempty"`
	Body    []byte              `json:"body"`
	Fetched time.Time           `json:"fetched"`
}

// maxCollateralSize bounds one cached or fetched response.
const maxCollateralSize = 1 << 20

var (
	tcbInfoPrefix = pcs.TcbInfoURL("")
	hexFMSPC      = regexp.MustCompile(`^[0-9a-fA-F]{12}$`)
)

// cacheFileName maps a PCS URL to its file in the cache.
func cacheFileName(u string) string {
	switch {
	case u == pcs.QeIdentityURL():
		return "qeidentity.json"
	case strings.HasPrefix(u, tcbInfoPrefix) && hexFMSPC.MatchString(u[len(tcbInfoPrefix):]):
		return "tcbinfo-" + strings.ToLower(u[len(tcbInfoPrefix):]) + ".json"
	case u == pcs.PckCrlURL("platform"):
		return "pckcrl-platform.json"
	case u == pcs.PckCrlURL("processor"):
		return "pckcrl-processor.json"
	}
	h := sha256.Sum256([]byte(u))
	return "crl-" + hex.EncodeToString(h[:8]) + ".json"
}

// readCached returns the cached response for u, or an error wrapping
// os.ErrNotExist.
func readCached(dir, u string) (*cachedResponse, error) {
	if dir == "" {
		return nil, fmt.Errorf("no collateral directory: %w", os.ErrNotExist)
	}
	f, err := os.Open(filepath.Join(dir, cacheFileName(u)))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 2*maxCollateralSize))
	if err != nil {
		return nil, err
	}
	var r cachedResponse
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("collateral cache %s: %v", cacheFileName(u), err)
	}
	if r.URL != u {
		return nil, fmt.Errorf("collateral cache %s holds %q, want %q", cacheFileName(u), r.URL, u)
	}
	return &r, nil
}

// writeCached stores r in dir atomically (temporary file, fsync, rename).
func writeCached(dir string, r *cachedResponse) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, cacheFileName(r.URL)), b, 0o644)
}

// collateralGetter serves go-tdx-guest's collateral requests for one
// verification: from the cache, or (online) from the network, storing what
// it fetched. It remembers the earliest nextUpdate of what it served, so
// that a cached verification result does not outlive its collateral.
type collateralGetter struct {
	ctx    context.Context
	dir    string
	online trust.HTTPSGetter // nil: offline
	until  time.Time         // earliest expiry of served collateral
	missed error             // first request that could not be served
}

func (g *collateralGetter) Get(u string) (map[string][]string, []byte, error) {
	r, err := g.get(u)
	if err != nil {
		if g.missed == nil {
			g.missed = err
		}
		return nil, nil, err
	}
	g.noteExpiry(u, r.Body)
	return r.Header, r.Body, nil
}

func (g *collateralGetter) get(u string) (*cachedResponse, error) {
	if err := g.ctx.Err(); err != nil {
		return nil, err
	}
	if g.online != nil {
		var hdr map[string][]string
		var body []byte
		var err error
		if cg, ok := g.online.(httpGetter); ok {
			hdr, body, err = cg.getContext(g.ctx, u)
		} else {
			hdr, body, err = g.online.Get(u)
		}
		if err == nil && len(body) > maxCollateralSize {
			err = fmt.Errorf("response larger than %d bytes", maxCollateralSize)
		}
		if err == nil {
			r := &cachedResponse{URL: u, Header: keepIssuerChains(hdr), Body: body, Fetched: clock.Now().UTC()}
			if g.dir != "" {
				// A failed cache write does not fail the verification: the
				// response is verified by the library all the same.
				_ = writeCached(g.dir, r)
			}
			return r, nil
		}
		// Fall back to the cache.
		r, cerr := readCached(g.dir, u)
		if cerr != nil {
			return nil, fmt.Errorf("fetching %s: %v; cache: %v", u, err, cerr)
		}
		return r, nil
	}
	return readCached(g.dir, u)
}

// keepIssuerChains keeps the response headers go-tdx-guest reads.
func keepIssuerChains(h map[string][]string) map[string][]string {
	out := map[string][]string{}
	for k, v := range h {
		switch http.CanonicalHeaderKey(k) {
		case "Tcb-Info-Issuer-Chain", "Sgx-Enclave-Identity-Issuer-Chain", "Sgx-Pck-Crl-Issuer-Chain":
			out[http.CanonicalHeaderKey(k)] = v
		}
	}
	return out
}

func (g *collateralGetter) noteExpiry(u string, body []byte) {
	var next time.Time
	switch {
	case u == pcs.QeIdentityURL():
		var qe pcs.QeIdentity
		if json.Unmarshal(body, &qe) == nil {
			next = qe.EnclaveIdentity.NextUpdate
		}
	case strings.HasPrefix(u, tcbInfoPrefix):
		var ti pcs.TdxTcbInfo
		if json.Unmarshal(body, &ti) == nil {
			next = ti.TcbInfo.NextUpdate
		}
	default:
		if crl, err := x509.ParseRevocationList(body); err == nil {
			next = crl.NextUpdate
		}
	}
	if !next.IsZero() && (g.until.IsZero() || next.Before(g.until)) {
		g.until = next
	}
}

// collateralPlan says which collateral checks an offline verification can
// run with what the cache holds.
type collateralPlan struct {
	tcbAndQE bool // TCB info for the FMSPC and QE identity are cached
	crls     bool // PCK CRL and root CA CRL are cached too
}

// planOffline looks at the cache: TCB info and QE identity enable the
// collateral checks; the PCK CRL for ca and the root CA CRL named by the QE
// identity issuer's root certificate enable revocation checks.
func planOffline(dir, fmspc, ca string) collateralPlan {
	var p collateralPlan
	if _, err := readCached(dir, pcs.TcbInfoURL(fmspc)); err != nil {
		return p
	}
	qe, err := readCached(dir, pcs.QeIdentityURL())
	if err != nil {
		return p
	}
	p.tcbAndQE = true
	if _, err := readCached(dir, pcs.PckCrlURL(ca)); err != nil {
		return p
	}
	root, err := issuerChainRoot(qe.Header, "Sgx-Enclave-Identity-Issuer-Chain")
	if err != nil || len(root.CRLDistributionPoints) == 0 {
		return p
	}
	for _, u := range root.CRLDistributionPoints {
		if _, err := readCached(dir, u); err == nil {
			p.crls = true
			break
		}
	}
	return p
}

// issuerChainRoot returns the second certificate of a URL-encoded PEM
// issuer chain header.
func issuerChainRoot(h map[string][]string, name string) (*x509.Certificate, error) {
	v := h[name]
	if len(v) != 1 {
		return nil, errors.New("no issuer chain")
	}
	s, err := url.QueryUnescape(v[0])
	if err != nil {
		return nil, err
	}
	rest := []byte(s)
	var blk *pem.Block
	for i := 0; i < 2; i++ {
		if blk, rest = pem.Decode(rest); blk == nil {
			return nil, errors.New("short issuer chain")
		}
	}
	return x509.ParseCertificate(blk.Bytes)
}

// httpGetter fetches collateral over HTTPS with a timeout and a size limit.
type httpGetter struct{ client *http.Client }

func (g httpGetter) Get(u string) (map[string][]string, []byte, error) {
	return g.getContext(context.Background(), u)
}

func (g httpGetter) getContext(ctx context.Context, u string) (map[string][]string, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := g.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxCollateralSize+1))
	if err != nil {
		return nil, nil, err
	}
	return resp.Header, body, nil
}
