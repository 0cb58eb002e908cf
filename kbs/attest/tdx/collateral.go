package tdx

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/google/go-tdx-guest/pcs"
	"github.com/google/go-tdx-guest/verify/trust"

	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/attest/tdx/pcscache"
)

// The collateral cache is a directory of Intel PCS responses in
// kbs/attest/tdx/pcscache's format. Nothing in the cache is trusted: every
// response is verified against the trusted roots on use.

var tcbInfoPrefix = pcs.TcbInfoURL("")

// readCached returns the cached response for u, or an error wrapping
// os.ErrNotExist.
func readCached(dir, u string) (*pcscache.Response, error) { return pcscache.Read(dir, u) }

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

func (g *collateralGetter) get(u string) (*pcscache.Response, error) {
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
	body, err := io.ReadAll(io.LimitReader(resp.Body, pcscache.MaxSize+1))
	if err != nil {
		return nil, nil, err
	}
	return resp.Header, body, nil
}
