package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kbs-dev/kbs/internal/testbin"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/attest/verify"
	"github.com/kbs-dev/kbs/kbs/audit"
	kbsclient "github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// TestHandover upgrades a broker by handover, to a newcomer on SEV-SNP
// and on TDX (simulated), as process tests: keys uploaded to broker A; a
// newcomer whose measurement the active manifest does not list is refused,
// and so is a debug newcomer, each getting no key and leaving A's log
// unchanged; the owners publish a manifest version that lists the new
// measurement; broker B takes over (verifying A first), A is stopped; a
// worker gets the same keys from B; a client that followed A verifies B
// and finds one consistent log; the handover request, replayed to A and to
// B, gets no key and changes no log; the auditor finds the story coherent;
// A restarted decides nothing.
func TestHandover(t *testing.T) {
	for _, p := range []attest.Platform{attest.SNP, attest.TDX} {
		t.Run(string(p), func(t *testing.T) { testHandover(t, p) })
	}
}

func testHandover(t *testing.T, platform attest.Platform) {
	ctx := context.Background()
	dir := t.TempDir()
	dataA, dataB := filepath.Join(dir, "A"), filepath.Join(dir, "B")
	a := startDaemon(t, dataA)
	simDir := filepath.Join(dataA, "sim")
	v1, err := os.ReadFile(filepath.Join(dataA, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	anchor := filepath.Join(dir, "anchor.json")
	if err := os.WriteFile(anchor, v1, 0o644); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, a)
	c.verifyBroker()
	keys := map[string][]byte{"demo/a": []byte("key material of demo/a, 32 byte"), "demo/b": []byte("key material of demo/b, 32 byte")}
	for id, m := range keys {
		c.upload(id, 1, m)
	}
	// A client of the library that follows the broker across the upgrade.
	verifier, err := verify.New(verify.Options{SimRootFile: sim.RootFile(simDir), Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	store := &tlog.MemStore{}
	follower := func(sock string) *kbsclient.Client {
		cl, err := kbsclient.New(kbsclient.Config{Addr: "unix://" + sock, Verifier: verifier, Checkpoints: store})
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
	m1, err := manifest.Parse(v1)
	if err != nil {
		t.Fatal(err)
	}
	onA, err := follower(a.Socket).VerifyBroker(ctx, m1, kbsclient.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}

	newM := strings.Repeat("b7", 48)
	newcomer := func(data string, extra ...string) (*testbin.Kbsd, error) {
		args := append([]string{"--dev", "--listen-tcp", "127.0.0.1:0", "--tee", string(platform), "--sim-dir", simDir,
			"--manifest", anchor}, extra...)
		return testbin.TryStartKbsd(t, kbsdBin, data, args...)
	}
	refused := func(what, want string, extra ...string) {
		t.Helper()
		before := treeSize(t, a)
		_, err := newcomer(filepath.Join(dir, what), append(extra, "--handover-from", "unix://"+a.Socket)...)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: %v; want a refusal mentioning %q", what, err, want)
		}
		if after := treeSize(t, a); after != before {
			t.Fatalf("%s: A's log grew from %d to %d", what, before, after)
		}
		if _, err := os.Stat(filepath.Join(dir, what, "kbs.db")); err == nil {
			t.Fatalf("%s: the refused newcomer has a database", what)
		}
	}
	// Not listed yet: refused by the active manifest's service values.
	refused("unlisted", "policy_denied", "--sim-measurement", newM)

	// The upgrade is first a signed, logged manifest version.
	mv, mf := publishMeasurement(t, a, v1, platform, newM)
	refused("debug", "evidence_rejected", "--sim-measurement", newM, "--sim-debug")

	// B takes over through a proxy that keeps its requests, to replay them.
	rec := startRecordingProxy(t, a.Socket, filepath.Join(dir, "proxy.sock"))
	k, err := newcomer(dataB, "--sim-measurement", newM, "--handover-from", "unix://"+rec.sock)
	if err != nil {
		t.Fatal(err)
	}
	b := &daemon{Kbsd: k, t: t, hc: k.HTTPClient()}
	if !strings.Contains(b.Output(), "took over from the running broker") {
		t.Fatalf("B's log:\n%s", b.Output())
	}
	handoverAt := treeSize(t, a) - 1
	if st, ae, _ := a.call("POST", api.PathChallenge, nil, nil); st != http.StatusGone || ae.Code != api.CodeHandedOver {
		t.Fatalf("A after the handover: challenge = %d %+v, want 410 handed_over", st, ae)
	}
	// Replays: the newcomer's request again, to A and to B.
	req := rec.body(api.PathHandover)
	if req == nil {
		t.Fatal("the proxy saw no handover request")
	}
	for _, d := range []*daemon{a, b} {
		before := treeSize(t, d)
		var ans api.Handover
		st, ae, err := d.call("POST", api.PathHandover, jsonRaw(req), &ans)
		if err != nil || st != http.StatusUnauthorized || ae.Code != api.CodeNonceInvalid || ans.SealedMaster != nil {
			t.Fatalf("replayed handover request: %d %+v %v", st, ae, err)
		}
		if after := treeSize(t, d); after != before {
			t.Fatalf("a replayed handover request grew the log from %d to %d", before, after)
		}
	}
	a.stop()

	// A worker gets the same keys from B.
	got, rel, err := fetchWith(b, simDir, attest.SNP, api.KEMX25519, "demo/a", "demo/b")
	if err != nil {
		t.Fatal(err)
	}
	for id, m := range keys {
		if !bytes.Equal(got[id], m) {
			t.Fatalf("B released %s = %q, want %q", id, got[id], m)
		}
	}
	if rel.LogIndex <= handoverAt {
		t.Fatalf("B's release logged at %d, before the handover entry %d", rel.LogIndex, handoverAt)
	}
	// The client that followed A: B's log is consistent with what it saw,
	// and carries A's note key.
	onB, err := follower(b.Socket).VerifyBroker(ctx, m1, kbsclient.VerifyOptions{Follow: true, KnownOrigin: onA.Origin})
	if err != nil {
		t.Fatal(err)
	}
	if onB.NoteKey != onA.NoteKey || onB.Previous == nil || onB.Previous.Size < onA.Checkpoint.Size || onB.Manifest.Hash() != mv.Hash() {
		t.Fatalf("B verified with note key %s (A %s), previous %v, manifest %s", onB.NoteKey, onA.NoteKey, onB.Previous, onB.Manifest.Hash())
	}
	if hex.EncodeToString(onB.Claims.Measurement) != newM || onB.Platform != platform {
		t.Fatalf("B attests %s %x, want %s %s", onB.Platform, onB.Claims.Measurement, platform, newM)
	}
	// The auditor: one coherent log, with the handover.
	lv, err := onB.Client().LogVerifier(onB.NoteKey)
	if err != nil {
		t.Fatal(err)
	}
	ar, err := audit.Audit(ctx, audit.Config{Client: onB.Client(), Log: lv})
	if err != nil {
		t.Fatal(err)
	}
	if !ar.OK() || len(ar.LifecycleEvents) != 1 || ar.LifecycleEvents[0].Index != handoverAt || ar.LifecycleEvents[0].Measurement != newM {
		t.Fatalf("audit: OK %v, anomalies %v, lifecycle %+v", ar.OK(), ar.Anomalies, ar.LifecycleEvents)
	}
	_ = mf

	// Restarts. B on SNP reopens with its own sealing key and still
	// decides; on TDX there is no sealing key and no holder: it refuses to
	// start, and says how to bring it back.
	b.stop()
	if platform == attest.SNP {
		k, err := testbin.TryStartKbsd(t, kbsdBin, dataB, "--dev", "--listen-tcp", "127.0.0.1:0", "--sim-dir", simDir, "--sim-measurement", newM)
		if err != nil {
			t.Fatal(err)
		}
		b = &daemon{Kbsd: k, t: t, hc: k.HTTPClient()}
		if got, _, err := fetchWith(b, simDir, attest.TDX, api.KEMX25519, "demo/a"); err != nil || !bytes.Equal(got["demo/a"], keys["demo/a"]) {
			t.Fatalf("B after a restart: %v", err)
		}
		b.stop()
	} else {
		_, err := testbin.TryStartKbsd(t, kbsdBin, dataB, "--dev", "--listen-tcp", "127.0.0.1:0", "--tee", "tdx", "--sim-dir", simDir, "--sim-measurement", newM)
		if err == nil || !strings.Contains(err.Error(), "holds no recovery shares") {
			t.Fatalf("TDX B restarted without holders: %v", err)
		}
	}
	// A restarted: its log ends with its handover; it decides nothing.
	ka := startFenced(t, dataA)
	if st, ae, _ := ka.call("POST", api.PathChallenge, nil, nil); st != http.StatusGone || ae.Code != api.CodeHandedOver {
		t.Fatalf("A restarted: challenge = %d %+v, want 410 handed_over", st, ae)
	}
	if n := treeSize(t, ka); n != handoverAt+1 {
		t.Fatalf("A restarted: log size %d, want %d", n, handoverAt+1)
	}
	ka.stop()
}

// publishMeasurement activates on d the next manifest version after v1,
// listing newM as a service measurement of platform p too, signed by the
// dev owner. It returns the version and its file.
func publishMeasurement(t *testing.T, d *daemon, v1 []byte, p attest.Platform, newM string) (*manifest.Manifest, string) {
	t.Helper()
	m1, err := manifest.Parse(v1)
	if err != nil {
		t.Fatal(err)
	}
	doc := m1.Document()
	doc.Version, doc.Previous = 2, m1.Hash()
	raw, _ := hex.DecodeString(newM)
	switch p {
	case attest.SNP:
		doc.Service.SNP[0].Measurement.Values = append(doc.Service.SNP[0].Measurement.Values, raw)
	case attest.TDX:
		doc.Service.TDX[0].MRTD.Values = append(doc.Service.TDX[0].MRTD.Values, raw)
	}
	body, err := manifest.Encode(doc)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(d.Data, "owner.key"))
	if err != nil {
		t.Fatal(err)
	}
	owner, err := manifest.ParsePrivateKey(keyPEM, nil)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := manifest.Sign(owner, body)
	if err != nil {
		t.Fatal(err)
	}
	d.mustCall("PUT", api.PathManifest, api.ManifestUpdate{Body: body, Signatures: []string{sig}}, nil)
	file := filepath.Join(t.TempDir(), "manifest-v2.json")
	if err := os.WriteFile(file, body, 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Parse(body)
	if err != nil {
		t.Fatal(err)
	}
	return m, file
}

// startFenced starts a kbsd that handed over: it serves (its log and
// attestation) but fails /healthz, so it is started by its log line.
func startFenced(t *testing.T, data string) *daemon {
	t.Helper()
	k := testbin.StartKbsdUntil(t, kbsdBin, data, "kbsd serving", "--dev", "--listen-tcp", "127.0.0.1:0")
	if !strings.Contains(k.Output(), "handed its master key over") {
		t.Fatalf("a broker that handed over does not say so:\n%s", k.Output())
	}
	return &daemon{Kbsd: k, t: t, hc: k.HTTPClient()}
}

// recordingProxy forwards HTTP on a unix socket to another one and keeps
// the request bodies, by path.
type recordingProxy struct {
	sock   string
	mu     sync.Mutex
	bodies map[string][]byte
}

func startRecordingProxy(t *testing.T, upstream, sock string) *recordingProxy {
	t.Helper()
	p := &recordingProxy{sock: sock, bodies: map[string][]byte{}}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: "kbsd"})
	rp.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", upstream)
	}}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		p.mu.Lock()
		p.bodies[r.URL.Path] = body
		p.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(body))
		rp.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return p
}

func (p *recordingProxy) body(path string) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bodies[path]
}

// jsonRaw sends raw JSON bytes as a request body through daemon.call.
type jsonRaw []byte

func (j jsonRaw) MarshalJSON() ([]byte, error) { return j, nil }
