package snp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	sevtest "github.com/google/go-sev-guest/testing"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/fetch"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
)

// fakeKDS serves fixed URLs and counts requests.
type fakeKDS struct {
	mu    sync.Mutex
	files map[string][]byte
	hits  map[string]int
}

func (f *fakeKDS) Get(url string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hits[url]++
	if b, ok := f.files[url]; ok {
		return b, nil
	}
	return nil, fmt.Errorf("404 %s", url)
}

// onlineSim builds a sim whose ARK key the test keeps, so it can sign CRLs.
func onlineSim(t *testing.T, revokeASK bool) (dir string, kdsSrv *fakeKDS) {
	t.Helper()
	dir = t.TempDir()
	vcek, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ark := sevtest.DefaultArk()
	if err := sim.GenerateSNPWithKeys(dir, ark, sevtest.DefaultAsk(), vcek); err != nil {
		t.Fatal(err)
	}
	chain, err := sim.SNPRoots(dir) // ARK, ASK
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := ParseEvidence(issue(t, dir, sim.SNPOptions{}, [64]byte{}).Data)
	if err != nil {
		t.Fatal(err)
	}
	vcekCert, err := x509.ParseCertificate(parsed.cert(vcekGUID))
	if err != nil {
		t.Fatal(err)
	}
	chain = append(chain, vcekCert)
	now := simNow(t, dir)
	tmpl := &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(24 * time.Hour)}
	if revokeASK {
		tmpl.RevokedCertificateEntries = []x509.RevocationListEntry{{SerialNumber: chain[1].SerialNumber, RevocationTime: now.Add(-time.Minute)}}
	}
	crl, err := x509.CreateRevocationList(rand.Reader, tmpl, chain[0], ark)
	if err != nil {
		t.Fatal(err)
	}
	exts, err := kds.VcekCertificateExtensions(chain[2])
	if err != nil {
		t.Fatal(err)
	}
	certChain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain[1].Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain[0].Raw})...)
	kdsSrv = &fakeKDS{hits: map[string]int{}, files: map[string][]byte{
		kds.CrlLinkByKey("Milan", abi.VcekReportSigner):        crl,
		kds.ProductCertChainURL(abi.VcekReportSigner, "Milan"): certChain,
		kds.VCEKCertURL("Milan", exts.HWID, exts.TCBVersion):   chain[2].Raw,
	}}
	return dir, kdsSrv
}

func onlineVerifier(t *testing.T, dir, cacheDir string, getter *fakeKDS) *Verifier {
	t.Helper()
	certs, err := sim.SNPRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := simNow(t, dir)
	v, err := NewVerifier(Options{Roots: RootsFromCerts(certs), Now: func() time.Time { return now },
		Online: true, Getter: getter, CacheDir: cacheDir})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestOnlineFetchAndCRL(t *testing.T) {
	ctx := context.Background()
	dir, srv := onlineSim(t, false)
	rd := [64]byte{8}
	ev := issue(t, dir, sim.SNPOptions{}, rd)
	bare := attest.Evidence{Platform: attest.SNP, Data: ev.Data[:ReportSize]}
	cache := t.TempDir()

	v := onlineVerifier(t, dir, cache, srv)
	if _, err := v.Verify(ctx, bare, rd); err != nil {
		t.Fatalf("online Verify(bare report) = %v", err)
	}
	if _, err := v.Verify(ctx, bare, rd); err != nil {
		t.Fatalf("second online Verify = %v", err)
	}
	crlURL := kds.CrlLinkByKey("Milan", abi.VcekReportSigner)
	if srv.hits[crlURL] != 1 {
		t.Errorf("CRL fetched %d times, want 1 (cached until NextUpdate)", srv.hits[crlURL])
	}
	// The fetched VCEK is on disk: an offline verifier with the same cache
	// needs no network.
	entries, _ := os.ReadDir(cache)
	if len(entries) == 0 {
		t.Fatalf("nothing cached in %s", cache)
	}
	certs, _ := sim.SNPRoots(dir)
	now := simNow(t, dir)
	off, err := NewVerifier(Options{Roots: RootsFromCerts(certs), Now: func() time.Time { return now }, CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := off.Verify(ctx, bare, rd); err != nil {
		t.Errorf("offline Verify(bare report) from the cache = %v", err)
	}
	if _, err := os.Stat(filepath.Join(cache, "kds")); err != nil {
		t.Errorf("KDS downloads not cached: %v", err)
	}
}

func TestOnlineRevoked(t *testing.T) {
	ctx := context.Background()
	dir, srv := onlineSim(t, true)
	rd := [64]byte{8}
	ev := issue(t, dir, sim.SNPOptions{}, rd)
	if _, err := onlineVerifier(t, dir, "", srv).Verify(ctx, ev, rd); !errors.Is(err, errRevoked) {
		t.Errorf("Verify with the ASK revoked = %v, want errRevoked", err)
	}
	// No CRL at all fails closed.
	delete(srv.files, kds.CrlLinkByKey("Milan", abi.VcekReportSigner))
	if _, err := onlineVerifier(t, dir, "", srv).Verify(ctx, ev, rd); !errors.Is(err, errRevoked) {
		t.Errorf("Verify without a reachable CRL = %v, want errRevoked", err)
	}
}

// TestOnlineFetchFailureRemembered: a report whose VCEK AMD's KDS does not
// serve is refused, and the failed fetch is not repeated for the next such
// report (kbs/attest/fetch's negative cache) until NegativeTTL has passed.
func TestOnlineFetchFailureRemembered(t *testing.T) {
	ctx := context.Background()
	dir, srv := onlineSim(t, false)
	rd := [64]byte{9}
	ev := issue(t, dir, sim.SNPOptions{}, rd)
	bare := attest.Evidence{Platform: attest.SNP, Data: ev.Data[:ReportSize]}
	srv.mu.Lock()
	for u := range srv.files {
		if strings.Contains(u, "/vcek/") && !strings.HasSuffix(u, "/crl") && !strings.HasSuffix(u, "/cert_chain") {
			delete(srv.files, u) // KDS does not know this chip
		}
	}
	srv.mu.Unlock()
	now := simNow(t, dir)
	clock := now
	certs, err := sim.SNPRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	gate := fetch.NewGate(fetch.Limits{NegativeTTL: time.Minute, Now: func() time.Time { return clock }})
	v, err := NewVerifier(Options{Roots: RootsFromCerts(certs), Now: func() time.Time { return now },
		Online: true, Getter: srv, Fetches: gate})
	if err != nil {
		t.Fatal(err)
	}
	fetches := func() int {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		n := 0
		for u, h := range srv.hits {
			if !strings.HasSuffix(u, "/crl") && !strings.HasSuffix(u, "/cert_chain") {
				n += h
			}
		}
		return n
	}
	for i := range 3 {
		if _, err := v.Verify(ctx, bare, rd); err == nil {
			t.Fatalf("verification %d of a report whose VCEK KDS does not serve succeeded", i)
		}
	}
	first := fetches()
	if first == 0 {
		t.Fatal("the VCEK was never fetched")
	}
	clock = clock.Add(time.Minute)
	if _, err := v.Verify(ctx, bare, rd); err == nil {
		t.Fatal("succeeded after NegativeTTL")
	}
	if again := fetches(); again <= first {
		t.Errorf("%d fetches after NegativeTTL, want more than the %d of the first three verifications", again, first)
	}
	t.Logf("three verifications cost %d VCEK fetches", first)
}
