package tdx

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/google/go-tdx-guest/pcs"
	"github.com/google/go-tdx-guest/verify/trust"

	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/attest/fetch"
	"github.com/kbs-dev/kbs/kbs/attest/tdx/pcscache"
)

// The collateral cache is a directory of Intel PCS responses in
// kbs/attest/tdx/pcscache's format. Nothing in the cache is trusted: every
// response is verified against the trusted roots on use.

// readCached returns the cached response for u, or an error wrapping
// os.ErrNotExist.
func readCached(dir, u string) (*pcscache.Response, error) { return pcscache.Read(dir, u) }

// collateralGetter fetches collateral for one verification: from the
// network (online), storing what it fetched in dir, or from dir.
type collateralGetter struct {
	ctx    context.Context
	dir    string
	online trust.HTTPSGetter // nil: offline
	gate   *fetch.Gate       // bounds online fetches
}

func (g *collateralGetter) get(u string) (*pcscache.Response, error) {
	if err := g.ctx.Err(); err != nil {
		return nil, err
	}
	if g.online != nil {
		var hdr map[string][]string
		var body []byte
		err := g.gate.Do(g.ctx, u, func(ctx context.Context) error {
			var err error
			if cg, ok := g.online.(httpGetter); ok {
				hdr, body, err = cg.getContext(ctx, u)
			} else {
				hdr, body, err = g.online.Get(u)
			}
			return err
		})
		if err == nil && len(body) > pcscache.MaxSize {
			err = fmt.Errorf("response larger than %d bytes", pcscache.MaxSize)
		}
		if err == nil {
			r := &pcscache.Response{URL: u, Header: keepIssuerChains(hdr), Body: body, Fetched: clock.Now().UTC()}
			if g.dir != "" {
				// A failed cache write does not fail the verification: the
				// response is verified by the library all the same.
				_ = pcscache.Write(g.dir, r)
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

// bundleGetter serves go-tdx-guest's collateral requests for one
// verification from collateral kbs has already judged, in the form PCS
// serves it (issuer chains as URL-escaped PEM headers).
type bundleGetter struct {
	c        *Collateral
	fmspc    string
	ca       string
	pckChain *pckChain
}

func (g *bundleGetter) Get(u string) (map[string][]string, []byte, error) {
	chainHeader := func(name string, certs []*x509.Certificate) map[string][]string {
		var b []byte
		for _, c := range certs {
			b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		return map[string][]string{name: {url.QueryEscape(string(b))}}
	}
	switch {
	case strings.EqualFold(u, pcs.TcbInfoURL(g.fmspc)):
		s := g.c.tcbInfoFor(g.fmspc)
		return chainHeader("Tcb-Info-Issuer-Chain", s.Chain[:2]), s.Body, nil
	case u == pcs.QeIdentityURL():
		s := g.c.QEIdentity
		return chainHeader("Sgx-Enclave-Identity-Issuer-Chain", s.Chain[:2]), s.Body, nil
	case u == pcs.PckCrlURL(g.ca):
		return chainHeader("Sgx-Pck-Crl-Issuer-Chain", []*x509.Certificate{g.pckChain.intermediate, g.pckChain.root}), g.c.PCKCRL[g.ca], nil
	case slices.Contains(g.pckChain.root.CRLDistributionPoints, u) || slices.Contains(g.c.QEIdentity.Chain[len(g.c.QEIdentity.Chain)-1].CRLDistributionPoints, u):
		return nil, g.c.RootCRL, nil
	}
	return nil, nil, fmt.Errorf("no collateral for %s", u)
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
	body, err := io.ReadAll(io.LimitReader(resp.Body, pcscache.MaxSize+1))
	if err != nil {
		return nil, nil, err
	}
	return resp.Header, body, nil
}
