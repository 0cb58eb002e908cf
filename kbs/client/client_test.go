package client_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/kbs-dev/kbs/internal/testbin"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/attest/verify"
	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/kbs/policy"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

var kbsdBin string

func TestMain(m *testing.M) { testbin.Main(m, &kbsdBin, "github.com/kbs-dev/kbs/daemon") }

// startKbsd starts kbsd --dev in data (unix socket only) and returns its
// socket path.
func startKbsd(t *testing.T, data string) string {
	t.Helper()
	k := testbin.StartKbsd(t, kbsdBin, data, "--dev", "--listen-tcp", "none", "--attestation-rate", "1000", "--challenge-rate", "1000")
	t.Cleanup(func() { k.Stop() })
	return k.Socket
}

type verifierFunc func(context.Context, attest.Evidence, [attest.ReportDataSize]byte) (*attest.Claims, error)

func (f verifierFunc) Verify(ctx context.Context, ev attest.Evidence, rd [attest.ReportDataSize]byte) (*attest.Claims, error) {
	return f(ctx, ev, rd)
}

// tamperProxy serves on a unix socket and forwards to the broker's socket,
// rewriting attestation answers with mutate and manifest history answers
// with mutateHistory (when set).
type tamperProxy struct {
	mu            sync.Mutex
	mutate        func(*api.Attestation)
	mutateHistory func(*api.ManifestHistory)
}

func startProxy(t *testing.T, upstream string) (string, *tamperProxy) {
	t.Helper()
	p := &tamperProxy{}
	sock := filepath.Join(t.TempDir(), "proxy.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: p.handler(upstream)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "unix://" + sock, p
}

// handler forwards requests to the broker's unix socket upstream.
func (p *tamperProxy) handler(upstream string) http.Handler {
	up := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", upstream)
	}}}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, "http://kbs"+r.URL.RequestURI(), r.Body)
		req.Header.Set("Content-Type", r.Header.Get("Content-Type"))
		resp, err := up.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		p.mu.Lock()
		mutate, mutateHistory := p.mutate, p.mutateHistory
		p.mu.Unlock()
		if resp.StatusCode == http.StatusOK {
			var err error
			switch {
			case r.URL.Path == api.PathManifestHistory && mutateHistory != nil:
				body, err = rewrite(body, mutateHistory)
			case r.URL.Path == api.PathAttestation && mutate != nil:
				body, err = rewrite(body, mutate)
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
		}
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.WriteHeader(resp.StatusCode)
		w.Write(body)
	})
}

// rewrite decodes a JSON answer as a T, applies mutate and encodes it again.
func rewrite[T any](body []byte, mutate func(*T)) ([]byte, error) {
	var v T
	if err := json.Unmarshal(body, &v); err != nil {
		return nil, err
	}
	mutate(&v)
	return json.Marshal(&v)
}

func (p *tamperProxy) setHistory(f func(*api.ManifestHistory)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mutateHistory = f
}

func (p *tamperProxy) set(f func(*api.Attestation)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mutate = f
}

// storeWith is an in-memory checkpoint store preset with one note.
type storeWith struct {
	mu    sync.Mutex
	notes map[string][]byte
}

func (s *storeWith) Update(origin string, f func([]byte) ([]byte, error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := f(s.notes[origin])
	if err != nil || n == nil {
		return err
	}
	s.notes[origin] = bytes.Clone(n)
	return nil
}

func (s *storeWith) get(origin string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.notes[origin]
}

// startTampered starts kbsd --dev in a fresh data directory behind a
// tampering proxy, and returns the directory, the broker's socket, the
// proxy's address, the proxy, an offline verifier trusting the broker's
// sim root, and the broker's version 1 manifest.
func startTampered(t *testing.T) (data, sock, addr string, proxy *tamperProxy, v attest.Verifier, mine *manifest.Manifest) {
	t.Helper()
	data = filepath.Join(t.TempDir(), "kbs")
	sock = startKbsd(t, data)
	addr, proxy = startProxy(t, sock)
	v, err := verify.New(verify.Options{SimRootFile: sim.RootFile(filepath.Join(data, "sim")), Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	mine, err = manifest.Parse(mustRead(t, filepath.Join(data, "manifest.json")))
	if err != nil {
		t.Fatal(err)
	}
	return data, sock, addr, proxy, v, mine
}

// TestVerifyBrokerTampered checks that every field of the attestation answer
// is verified: a proxy changes one at a time, VerifyBroker fails with a
// verification error, and the stored checkpoint does not move.
func TestVerifyBrokerTampered(t *testing.T) {
	data, sock, addr, proxy, v, mine := startTampered(t)
	ctx := context.Background()

	// Baseline: verify, then grow the log with an upload so that later
	// attestations carry a consistency proof from the stored size.
	store := &storeWith{notes: map[string][]byte{}}
	c, err := client.New(client.Config{Addr: addr, Verifier: v, Checkpoints: store})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.VerifyBroker(ctx, mine, client.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if b.Previous != nil || b.Manifest.Hash() != mine.Hash() || !b.Service.OK() {
		t.Fatalf("baseline verification = %+v", b)
	}
	signer, err := readKey(t, filepath.Join(data, "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.UploadKey(ctx, signer, "demo-client", "demo/t", 1, bytes.Repeat([]byte{1}, 32)); err != nil {
		t.Fatal(err)
	}
	// UploadKey stored the receipt's checkpoint; go back to the baseline
	// so that the attestation must prove consistency from it.
	baseline := b.Checkpoint.Note
	origin := b.Origin
	store.notes[origin] = baseline

	otherManifest := nextVersion(t, mine, nil)

	for _, tc := range []struct {
		name   string
		mutate func(*api.Attestation)
		want   string
	}{
		{"evidence", func(a *api.Attestation) { a.Evidence[0x60] ^= 1 }, "broker evidence"},
		{"note key", func(a *api.Attestation) { a.NoteKey = strings.Replace(a.NoteKey, "+", "+0", 1) }, "note key"},
		{"hpke key", func(a *api.Attestation) { a.HPKEPublicKey[5] ^= 1 }, "broker evidence"},
		{"tls key", func(a *api.Attestation) { a.TLSSPKISHA256 = strings.Repeat("0", 64) }, "broker evidence"},
		{"checkpoint", func(a *api.Attestation) { a.Checkpoint = strings.Replace(a.Checkpoint, "\n3\n", "\n2\n", 1) }, "broker evidence"},
		{"simulated flag", func(a *api.Attestation) { a.Simulated = false }, "simulated"},
		{"platform", func(a *api.Attestation) { a.Platform = "tdx" }, "broker evidence"},
		{"manifest body", func(a *api.Attestation) {
			a.Manifest.Body = otherManifest
			a.Manifest.Hash = manifest.HashOf(otherManifest)
			a.Manifest.Version = 2
		}, "is not yours"},
		{"manifest hash", func(a *api.Attestation) { a.Manifest.Hash = "sha256:" + strings.Repeat("0", 64) }, "manifest"},
		{"inclusion proof", func(a *api.Attestation) { a.Manifest.InclusionProof[0][0] ^= 1 }, "manifest inclusion"},
		{"manifest index", func(a *api.Attestation) { a.Manifest.LogIndex = 0 }, "manifest inclusion"},
		{"manifest entry", func(a *api.Attestation) { a.Manifest.Entry = a.Manifest.Entry[:len(a.Manifest.Entry)-1] }, "manifest inclusion"},
		{"inclusion proof, entry from the bundle", func(a *api.Attestation) {
			a.Manifest.Entry = nil
			a.Manifest.InclusionProof[0][0] ^= 1
		}, "log entry"},
		{"consistency proof", func(a *api.Attestation) { a.ConsistencyProof[0][0] ^= 1 }, "consistency proof failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxy.set(tc.mutate)
			defer proxy.set(nil)
			c, err := client.New(client.Config{Addr: addr, Verifier: v, Checkpoints: store})
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.VerifyBroker(ctx, mine, client.VerifyOptions{KnownOrigin: origin})
			var ve *client.VerifyError
			var fe *tlog.ForkError
			if !errors.As(err, &ve) && !errors.As(err, &fe) {
				t.Fatalf("VerifyBroker = %v, want a verification error", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("VerifyBroker = %v, want an error about %q", err, tc.want)
			}
			if !bytes.Equal(store.get(origin), baseline) {
				t.Fatal("a failed verification changed the stored checkpoint")
			}
		})
	}

	// Claims whose fields the manifest matches but whose raw report (which
	// the vendor library re-reads) says another MEASUREMENT: the library's
	// validation of the service values refuses the broker.
	if b.Platform != attest.SNP {
		t.Fatalf("kbsd --dev runs %s, the test expects snp", b.Platform)
	}
	skewed := verifierFunc(func(ctx context.Context, ev attest.Evidence, rd [attest.ReportDataSize]byte) (*attest.Claims, error) {
		c, err := v.Verify(ctx, ev, rd)
		if err == nil && c.SNP != nil {
			c.SNP.Report = bytes.Clone(c.SNP.Report)
			c.SNP.Report[0x90] ^= 1 // MEASUREMENT
		}
		return c, err
	})
	cs, err := client.New(client.Config{Addr: addr, Verifier: skewed, Checkpoints: store})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cs.VerifyBroker(ctx, mine, client.VerifyOptions{KnownOrigin: origin})
	if ve := (*client.VerifyError)(nil); !errors.As(err, &ve) || !strings.Contains(ve.Step, "library validation") || !errors.Is(err, policy.ErrDisagreement) {
		t.Fatalf("VerifyBroker with claims the library rejects = %v, want a library validation failure", err)
	}
	if !bytes.Equal(store.get(origin), baseline) {
		t.Fatal("a failed verification changed the stored checkpoint")
	}

	// A TLS-terminating proxy with its own certificate in front of the
	// broker: the attested TLS key is not the connection's.
	mitm := httptest.NewUnstartedServer((&tamperProxy{}).handler(sock))
	mitm.Config.ErrorLog = log.New(io.Discard, "", 0)
	mitm.StartTLS()
	defer mitm.Close()
	cm, err := client.New(client.Config{Addr: mitm.URL, Verifier: v, Checkpoints: store})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cm.VerifyBroker(ctx, mine, client.VerifyOptions{KnownOrigin: origin})
	var ve *client.VerifyError
	if !errors.As(err, &ve) || ve.Step != "TLS binding" {
		t.Fatalf("VerifyBroker through a TLS proxy = %v, want a TLS binding failure", err)
	}
	if cm.TLSPin() != "" {
		t.Fatal("a failed TLS binding set a pin")
	}
	if _, err := cm.Keys(ctx); !errors.Is(err, client.ErrNotPinned) {
		t.Fatalf("Keys through the proxy after a failed verification = %v, want ErrNotPinned", err)
	}

	// Untampered, the same client state verifies and advances.
	b, err = c.VerifyBroker(ctx, mine, client.VerifyOptions{KnownOrigin: origin})
	if err != nil {
		t.Fatal(err)
	}
	if b.Previous == nil || b.Previous.Size != 2 || b.Checkpoint.Size != 3 {
		t.Fatalf("after the upload: previous %v, size %d", b.Previous, b.Checkpoint.Size)
	}
	// Another log at a known address is refused unless accepted.
	if _, err := c.VerifyBroker(ctx, mine, client.VerifyOptions{KnownOrigin: "kbs/other"}); !errors.Is(err, client.ErrNewLog) {
		t.Fatalf("VerifyBroker with another known origin = %v, want ErrNewLog", err)
	}
	if _, err := c.VerifyBroker(ctx, mine, client.VerifyOptions{KnownOrigin: "kbs/other", AcceptNewLog: true}); err != nil {
		t.Fatal(err)
	}
	// A release through the verified broker: keys open, the receipt checks.
	iss, err := sim.NewIssuer(filepath.Join(data, "sim"), attest.SNP, sim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rel, err := b.FetchKeys(ctx, iss, []string{"demo/t"}, api.KEMX25519)
	if err != nil {
		t.Fatal(err)
	}
	if len(rel.Keys) != 1 || !bytes.Equal(rel.Keys[0].Material, bytes.Repeat([]byte{1}, 32)) || rel.Class != "demo-worker" {
		t.Fatalf("FetchKeys = %+v", rel)
	}
}

// TestManifestChain checks the one client method that fetches and
// verifies the manifest history: a chain signed version by version and
// logged, and a proxy that tampers with the history, one field at a time,
// is refused with a verification error.
func TestManifestChain(t *testing.T) {
	data, _, addr, proxy, v, v1 := startTampered(t)
	owner, err := readKey(t, filepath.Join(data, "owner.key"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c, err := client.New(client.Config{Addr: addr, Verifier: v})
	if err != nil {
		t.Fatal(err)
	}
	// Versions 2 and 3, signed by the dev owner.
	prev := v1
	for range 2 {
		body := nextVersion(t, prev, nil)
		sig, err := manifest.Sign(owner, body)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.PutManifest(ctx, body, []string{sig}); err != nil {
			t.Fatal(err)
		}
		if prev, err = manifest.Parse(body); err != nil {
			t.Fatal(err)
		}
	}
	v3 := prev
	b, err := c.VerifyBroker(ctx, v1, client.VerifyOptions{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Followed) != 2 || b.Followed[1].Manifest.Hash() != v3.Hash() || len(b.Followed[0].Signers) != 1 || len(b.Followed[0].Changes) == 0 {
		t.Fatalf("VerifyBroker(follow) followed %+v", b.Followed)
	}
	cp := b.Checkpoint

	all, err := c.ManifestChain(ctx, cp, nil, 0)
	if err != nil || len(all) != 3 || all[0].Manifest.Hash() != v1.Hash() || all[2].Manifest.Hash() != v3.Hash() {
		t.Fatalf("ManifestChain(all) = %v, %v", all, err)
	}
	for i, lv := range all {
		if i > 0 && lv.LogIndex <= all[i-1].LogIndex {
			t.Errorf("version %d at log index %d, after %d", i+1, lv.LogIndex, all[i-1].LogIndex)
		}
	}
	part, err := c.ManifestChain(ctx, cp, all[1].Manifest, 2)
	if err != nil || len(part) != 1 || part[0].Manifest.Version() != 2 {
		t.Fatalf("ManifestChain(2..2) = %v, %v", part, err)
	}

	otherV2 := nextVersion(t, v1, func(d *manifest.Document) { d.Owners.Threshold, d.Clients = 1, d.Clients[:0] })
	for _, tc := range []struct {
		name   string
		anchor *manifest.Manifest
		mutate func(*api.ManifestHistory)
		want   string
	}{
		{"signature dropped", nil, func(h *api.ManifestHistory) { h.Manifests[2].Signatures = nil }, "too few owner signatures"},
		{"signature of another version", nil, func(h *api.ManifestHistory) { h.Manifests[2].Signatures = h.Manifests[1].Signatures }, "signature verifies under no owner key"},
		{"version replaced, resigned by nobody", nil, func(h *api.ManifestHistory) {
			h.Manifests[1].Body, h.Manifests[1].Hash = otherV2, manifest.HashOf(otherV2)
		}, "version 2"},
		{"hash field", nil, func(h *api.ManifestHistory) { h.Manifests[0].Hash = "sha256:" + strings.Repeat("0", 64) }, "hashes to"},
		{"log index of another version", nil, func(h *api.ManifestHistory) { h.Manifests[2].LogIndex = h.Manifests[1].LogIndex }, "not version 3"},
		{"version missing", nil, func(h *api.ManifestHistory) { h.Manifests = h.Manifests[:1] }, "missing from the broker's history"},
		{"versions out of order", nil, func(h *api.ManifestHistory) { h.Manifests[1], h.Manifests[2] = h.Manifests[2], h.Manifests[1] }, "want version 2"},
		{"empty history", nil, func(h *api.ManifestHistory) { h.Manifests = nil }, "no manifest history"},
		{"anchor not in the history", mustParseBody(t, otherV2), nil, "not the trusted one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxy.setHistory(tc.mutate)
			defer proxy.setHistory(nil)
			to := uint64(0)
			if tc.anchor == nil && tc.want == "missing from the broker's history" {
				to = 3
			}
			_, err := c.ManifestChain(ctx, cp, tc.anchor, to)
			var ve *client.VerifyError
			if !errors.As(err, &ve) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ManifestChain = %v, want a verification error about %q", err, tc.want)
			}
		})
	}
	// A client following through a tampered history is refused and
	// stores nothing.
	proxy.setHistory(func(h *api.ManifestHistory) { h.Manifests[1].Signatures = nil })
	defer proxy.setHistory(nil)
	store := &storeWith{notes: map[string][]byte{}}
	cf, err := client.New(client.Config{Addr: addr, Verifier: v, Checkpoints: store})
	if err != nil {
		t.Fatal(err)
	}
	var ve *client.VerifyError
	if _, err := cf.VerifyBroker(ctx, v1, client.VerifyOptions{Follow: true}); !errors.As(err, &ve) || ve.Step != "manifest chain" {
		t.Fatalf("VerifyBroker(follow) through a tampered history = %v", err)
	}
	if len(store.notes) != 0 {
		t.Fatal("a refused follow stored a checkpoint")
	}
}

// nextVersion returns the bytes of the version after prev, changed by edit
// (when not nil).
func nextVersion(t *testing.T, prev *manifest.Manifest, edit func(*manifest.Document)) []byte {
	t.Helper()
	d := prev.Document()
	d.Version, d.Previous = prev.Version()+1, prev.Hash()
	if edit != nil {
		edit(d)
	}
	body, err := manifest.Encode(d)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func mustParseBody(t *testing.T, b []byte) *manifest.Manifest {
	t.Helper()
	m, err := manifest.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func mustRead(t *testing.T, f string) []byte {
	t.Helper()
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readKey(t *testing.T, f string) (*ecdsa.PrivateKey, error) {
	t.Helper()
	k, err := manifest.ParsePrivateKey(mustRead(t, f), nil)
	if err != nil {
		return nil, err
	}
	return k.(*ecdsa.PrivateKey), nil
}

// TestTLSPinning checks that TLS requests go only to the pinned key.
func TestTLSPinning(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"keys":[]}`))
	}))
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	defer srv.Close()
	sum := sha256.Sum256(srv.Certificate().RawSubjectPublicKeyInfo)
	good := hex.EncodeToString(sum[:])
	for _, tc := range []struct {
		name     string
		pin      string
		unpinned bool
		want     error
	}{
		{"right pin", good, false, nil},
		{"right pin upper case", strings.ToUpper(good), false, nil},
		{"wrong pin", strings.Repeat("ab", 32), false, client.ErrPinMismatch},
		{"no pin", "", false, client.ErrNotPinned},
		{"no pin allowed", "", true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := client.New(client.Config{Addr: srv.URL, TLSPin: tc.pin, AllowUnpinned: tc.unpinned})
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Keys(context.Background())
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Keys() = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestNewAddress(t *testing.T) {
	for _, tt := range []struct {
		addr string
		ok   bool
	}{
		{"unix:///run/kbs.sock", true},
		{"unix://kbs-dev/kbs.sock", true},
		{"https://127.0.0.1:8443", true},
		{"https://kbs.example:8443/", true},
		{"unix://", false},
		{"http://127.0.0.1:8443", false},
		{"https://user@host:1", false},
		{"https://host:1/path", false},
		{"https://", false},
		{"127.0.0.1:8443", false},
	} {
		_, err := client.New(client.Config{Addr: tt.addr})
		if (err == nil) != tt.ok {
			t.Errorf("New(%q) error = %v, want ok %v", tt.addr, err, tt.ok)
		}
	}
}

// TestKeyPages checks that Keys walks a broker's pages (GET /v1/keys with
// after=Next) until a page has no Next, that Key reads one key, and that
// a page whose Next does not advance is refused rather than looped on.
func TestKeyPages(t *testing.T) {
	ids := make([]string, 2*api.MaxKeyListLimit+3)
	for i := range ids {
		ids[i] = fmt.Sprintf("demo/%06d", i)
	}
	var stuck atomic.Bool
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if id, ok := strings.CutPrefix(r.URL.Path, api.PathKeys+"/"); ok {
			json.NewEncoder(w).Encode(api.KeyInfo{ID: id, Version: 7})
			return
		}
		q := r.URL.Query()
		limit, _ := strconv.Atoi(q.Get(api.KeyListLimit))
		i, _ := slices.BinarySearch(ids, q.Get(api.KeyListAfter))
		if i < len(ids) && ids[i] == q.Get(api.KeyListAfter) {
			i++
		}
		var l api.KeyList
		for _, id := range ids[i:min(i+limit, len(ids))] {
			l.Keys = append(l.Keys, api.KeyInfo{ID: id, Version: 1})
		}
		if i+limit < len(ids) {
			l.Next = ids[i+limit-1]
		}
		if stuck.Load() {
			l.Next = q.Get(api.KeyListAfter)
		}
		json.NewEncoder(w).Encode(&l)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	defer srv.Close()
	c, err := client.New(client.Config{Addr: srv.URL, AllowUnpinned: true})
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.Keys(context.Background())
	if err != nil || len(l.Keys) != len(ids) || l.Keys[len(ids)-1].ID != ids[len(ids)-1] {
		t.Fatalf("Keys() = %d keys, %v; want %d", len(l.Keys), err, len(ids))
	}
	if k, err := c.Key(context.Background(), "demo/x"); err != nil || k.Version != 7 {
		t.Fatalf("Key(demo/x) = %+v, %v", k, err)
	}
	stuck.Store(true)
	if _, err := c.KeysPage(context.Background(), "", ids[5], 10); err == nil {
		t.Fatal("a page whose next does not advance was accepted")
	}
}
