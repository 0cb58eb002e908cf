package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/hpke"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/internal/testbin"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/attest/verify"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

var kbsdBin string

func TestMain(m *testing.M) { testbin.Main(m, &kbsdBin, "github.com/kbs-dev/kbs/daemon") }

// daemon is a kbsd process in dev mode.
type daemon struct {
	*testbin.Kbsd
	t   testing.TB
	tcp string // host:port of the TCP listener
	hc  *http.Client
}

// startDaemon runs kbsd --dev in data and waits until it answers. The TCP
// listener takes a free port (127.0.0.1:0) and the test reads it from the
// log, so parallel test processes never race for a port. The process is
// killed when the test ends.
func startDaemon(t testing.TB, data string, extra ...string) *daemon {
	t.Helper()
	k := testbin.StartKbsd(t, kbsdBin, data, append([]string{"--dev", "--listen-tcp", "127.0.0.1:0"}, extra...)...)
	return &daemon{Kbsd: k, t: t, tcp: strings.TrimPrefix(k.HTTPS, "https://"), hc: k.HTTPClient()}
}

// stop sends SIGTERM and waits for a clean exit.
func (d *daemon) stop() {
	d.t.Helper()
	d.MustStop()
}

// call does a JSON request over the unix socket.
func (d *daemon) call(method, path string, in, out any) (int, *api.Error, error) {
	var body io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			return 0, nil, err
		}
		body = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, "http://kbsd"+path, body)
	if err != nil {
		return 0, nil, err
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	if resp.StatusCode != 200 {
		var eb api.ErrorBody
		if err := json.Unmarshal(raw, &eb); err != nil || eb.Error == nil {
			return resp.StatusCode, nil, fmt.Errorf("status %d with non-error body %q", resp.StatusCode, raw)
		}
		return resp.StatusCode, eb.Error, nil
	}
	if out != nil {
		return 200, nil, json.Unmarshal(raw, out)
	}
	return 200, nil, nil
}

func (d *daemon) mustCall(method, path string, in, out any) {
	d.t.Helper()
	st, ae, err := d.call(method, path, in, out)
	if err != nil || st != 200 {
		d.t.Fatalf("%s %s: %d %+v %v", method, path, st, ae, err)
	}
}

// client is the client side: it verifies the broker as kbsctl verify does
// and remembers the broker's identity and log.
type client struct {
	t        testing.TB
	d        *daemon
	verifier attest.Verifier
	manifest []byte
	att      api.Attestation
	log      *tlog.Verifier
}

func newClient(t testing.TB, d *daemon) *client {
	t.Helper()
	v, err := verify.New(verify.Options{SimRootFile: sim.RootFile(filepath.Join(d.Data, "sim")), Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	m, err := os.ReadFile(filepath.Join(d.Data, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	return &client{t: t, d: d, verifier: v, manifest: m}
}

// verifyBroker is the client check of docs/protocol.md (step 1): evidence bound to our nonce and the
// broker's keys and checkpoint, matching our manifest's service values;
// the broker's manifest byte-identical to ours and included in the
// checkpoint; the checkpoint consistent with the last one we saw; the TLS
// key the one the evidence binds.
func (c *client) verifyBroker() {
	t := c.t
	t.Helper()
	nonce := make([]byte, 32)
	rand.Read(nonce)
	since := ""
	if c.log != nil {
		if cp, ok, _ := c.log.Latest(); ok {
			since = fmt.Sprintf("&since=%d", cp.Size)
		}
	}
	var att api.Attestation
	c.d.mustCall("GET", api.PathAttestation+"?nonce="+hex.EncodeToString(nonce)+since, nil, &att)
	rd := api.ReportData(api.BrokerBinding(nonce, att.NoteKey, att.HPKEPublicKey, att.TLSSPKISHA256, att.Checkpoint))
	claims, err := c.verifier.Verify(context.Background(), attest.Evidence{Platform: attest.Platform(att.Platform), Data: att.Evidence}, rd)
	if err != nil {
		t.Fatalf("broker evidence: %v", err)
	}
	m, err := manifest.Parse(c.manifest)
	if err != nil {
		t.Fatal(err)
	}
	if r := m.MatchService(claims); !r.OK() {
		t.Fatalf("broker does not match the service values: %s", r.Summary())
	}
	if !bytes.Equal(att.Manifest.Body, c.manifest) {
		t.Fatal("the broker's manifest is not ours")
	}
	origin, _, _ := strings.Cut(att.Checkpoint, "\n")
	if c.log == nil {
		if c.log, err = tlog.NewVerifier(origin, att.NoteKey, nil); err != nil {
			t.Fatal(err)
		}
	}
	cp, err := c.log.Update([]byte(att.Checkpoint), toHashes(att.ConsistencyProof))
	if err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	ents := c.entries(att.Manifest.LogIndex, att.Manifest.LogIndex+1, cp.Size)
	if err := tlog.VerifyInclusion(cp, att.Manifest.LogIndex, ents[0], toHashes(att.Manifest.InclusionProof)); err != nil {
		t.Fatalf("manifest inclusion: %v", err)
	}
	// The TLS endpoint presents the key the evidence binds.
	conn, err := tls.Dial("tcp", c.d.tcp, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	spki := conn.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo
	conn.Close()
	if api.SPKISHA256(spki) != att.TLSSPKISHA256 {
		t.Fatal("TLS certificate is not the attested one")
	}
	if conn, err := tls.Dial("tcp", c.d.tcp, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}); err == nil {
		conn.Close()
		t.Fatal("kbsd accepted TLS 1.2")
	}
	c.att = att
}

// entries reads log entries through the tiles, like an auditor.
func (c *client) entries(start, end, size uint64) [][]byte {
	c.t.Helper()
	var out [][]byte
	for n := start / 256; n*256 < end; n++ {
		w := uint64(256)
		if (n+1)*256 > size {
			w = size - n*256
		}
		p := tlog.TilePath{Entries: true, N: n, Width: int(w)}
		resp, err := c.d.hc.Get("http://kbsd/log/" + p.String())
		if err != nil {
			c.t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		ents, err := tlog.DecodeBundle(raw, int(w))
		if err != nil {
			c.t.Fatalf("bundle %s: %v", p, err)
		}
		for i, e := range ents {
			if idx := n*256 + uint64(i); idx >= start && idx < end {
				out = append(out, e)
			}
		}
	}
	return out
}

func toHashes(bs [][]byte) []tlog.Hash {
	out := make([]tlog.Hash, len(bs))
	for i, b := range bs {
		copy(out[i][:], b)
	}
	return out
}

// upload seals material to the attested broker key and signs as the dev
// client.
func (c *client) upload(id string, version uint64, material []byte) *api.KeyUploadResult {
	c.t.Helper()
	res, err := c.tryUpload(id, version, material)
	if err != nil {
		c.t.Fatal(err)
	}
	return res
}

// tryUpload is upload that returns its error (for other goroutines).
func (c *client) tryUpload(id string, version uint64, material []byte) (*api.KeyUploadResult, error) {
	key := c.clientKey()
	sealed, err := api.Seal(c.att.HPKEPublicKey, api.UploadInfo(id, version), material)
	if err != nil {
		return nil, err
	}
	sig, err := api.SignStatement(key, api.UploadStatement("demo-client", id, version, c.att.HPKEPublicKey, sealed))
	if err != nil {
		return nil, err
	}
	var res api.KeyUploadResult
	st, ae, err := c.d.call("POST", api.PathKeys, api.KeyUpload{Client: "demo-client", ID: id, Version: version, Sealed: sealed, Signature: sig}, &res)
	if err != nil || st != 200 {
		return nil, fmt.Errorf("upload %s v%d: %d %+v %v", id, version, st, ae, err)
	}
	return &res, nil
}

func (c *client) clientKey() crypto.Signer {
	pemBytes, err := os.ReadFile(filepath.Join(c.d.Data, "client.key"))
	if err != nil {
		panic(err)
	}
	k, err := manifest.ParsePrivateKey(pemBytes, nil)
	if err != nil {
		panic(err)
	}
	return k
}

// fetch is the worker side of a release: challenge, evidence bound to a
// fresh HPKE key, release, unseal, receipt check.
func fetch(d *daemon, p attest.Platform, kem uint16, ids ...string) (map[string][]byte, *api.Release, error) {
	return fetchWith(d, filepath.Join(d.Data, "sim"), p, kem, ids...)
}

// fetchWith is fetch by a worker of the simulated TEE in simDir.
func fetchWith(d *daemon, simDir string, p attest.Platform, kem uint16, ids ...string) (map[string][]byte, *api.Release, error) {
	var ch api.Challenge
	if st, ae, err := d.call("POST", api.PathChallenge, nil, &ch); err != nil || st != 200 {
		return nil, nil, fmt.Errorf("challenge: %d %+v %v", st, ae, err)
	}
	sk, err := api.GenerateKey(kem)
	if err != nil {
		return nil, nil, err
	}
	pub := api.MarshalPublicKey(sk.PublicKey())
	iss, err := sim.NewIssuer(simDir, p, sim.Options{})
	if err != nil {
		return nil, nil, err
	}
	ev, err := iss.Issue(context.Background(), api.ReportData(api.WorkerBinding(ch.Nonce, pub)))
	if err != nil {
		return nil, nil, err
	}
	var rel api.Release
	st, ae, err := d.call("POST", api.PathRelease, api.ReleaseRequest{Platform: string(p), Nonce: ch.Nonce, Evidence: ev.Data, HPKEPublicKey: pub, KeyIDs: ids}, &rel)
	if err != nil || st != 200 {
		return nil, nil, fmt.Errorf("release: %d %+v %v", st, ae, err)
	}
	keys, err := unseal(sk, &rel)
	return keys, &rel, err
}

func unseal(sk hpke.PrivateKey, rel *api.Release) (map[string][]byte, error) {
	keys := map[string][]byte{}
	for _, k := range rel.Keys {
		m, err := api.Open(sk, api.ReleaseInfo(k.ID, k.Version, rel.LogIndex), k.Sealed)
		if err != nil {
			return nil, err
		}
		keys[k.ID] = m
	}
	return keys, nil
}

// checkReceipt verifies a receipt on its own and returns its entry.
func (c *client) checkReceipt(receipt string) *tlog.Entry {
	c.t.Helper()
	vr, err := c.log.VerifyReceipt([]byte(receipt))
	if err != nil {
		c.t.Fatalf("receipt: %v", err)
	}
	e, err := tlog.DecodeEntry(vr.Entry)
	if err != nil {
		c.t.Fatal(err)
	}
	return e
}

// simulatedPlatforms are the platforms the end-to-end test runs on: both.
func simulatedPlatforms(t testing.TB, simDir string) []attest.Platform {
	ps := []attest.Platform{attest.SNP, attest.TDX}
	for _, p := range ps {
		if _, err := sim.NewIssuer(simDir, p, sim.Options{}); err != nil {
			t.Fatalf("simulated %s: %v", p, err)
		}
	}
	return ps
}

// TestEndToEnd runs a real kbsd --dev process: the client verifies the
// broker and uploads a key; workers on every simulated platform fetch it;
// each receipt verifies; after a clean restart the identity, the key and
// the log are the same and the new checkpoint is consistent with the old.
func TestEndToEnd(t *testing.T) {
	data := filepath.Join(t.TempDir(), "kbs-dev")
	d := startDaemon(t, data)
	defer func() {
		if !d.Exited() {
			d.Kill()
		}
	}()
	for _, f := range []string{"kbs.db", "kbs.sock", "manifest.json", "manifest.json.sig", "owner.key", "owner.pub", "client.key", "client.pub", "sim/root.pem"} {
		if _, err := os.Stat(filepath.Join(data, f)); err != nil {
			t.Errorf("dev file %s: %v", f, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(data, "kbs.sock")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode: %v %v, want 0600", fi.Mode(), err)
	}
	if fi, err := os.Stat(data); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data directory mode: %v %v, want 0700", fi.Mode(), err)
	}
	if !strings.Contains(d.Output(), "Next steps") {
		t.Errorf("kbsd --dev printed no next steps:\n%s", d.Output())
	}
	c := newClient(t, d)
	c.verifyBroker()
	material := make([]byte, 32)
	rand.Read(material)
	up := c.upload("demo/e2e", 1, material)
	if e := c.checkReceipt(up.Receipt); e.Type != tlog.TypeKeyUpload || e.KeyUpload.ID != "demo/e2e" {
		t.Fatalf("upload receipt entry %+v", e)
	}
	var receipts []string
	for _, p := range simulatedPlatforms(t, filepath.Join(data, "sim")) {
		for _, kem := range []uint16{api.KEMX25519, api.KEMMLKEM768X25519} {
			keys, rel, err := fetch(d, p, kem, "demo/e2e")
			if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			if !bytes.Equal(keys["demo/e2e"], material) {
				t.Fatalf("%s: released key differs", p)
			}
			e := c.checkReceipt(rel.Receipt)
			if e.Type != tlog.TypeRelease || e.Release.Platform != string(p) || e.Release.Keys[0].ID != "demo/e2e" {
				t.Fatalf("%s: release entry %+v", p, e.Release)
			}
			receipts = append(receipts, rel.Receipt)
		}
	}
	// Against the real process too: a replayed release and a worker with
	// another measurement get their error, no key, and the log does not grow.
	replayAndMismatch(t, d)

	noteKey, hpkePub := c.att.NoteKey, c.att.HPKEPublicKey
	d.stop()
	if !strings.Contains(d.Output(), "final checkpoint") {
		t.Errorf("no final checkpoint in the shutdown log:\n%s", d.Output())
	}

	d = startDaemon(t, data)
	c.d = d
	c.verifyBroker() // consistency from the checkpoint seen before the restart
	if c.att.NoteKey != noteKey || !bytes.Equal(c.att.HPKEPublicKey, hpkePub) {
		t.Fatal("broker identity changed across a restart")
	}
	for _, r := range receipts {
		c.checkReceipt(r)
	}
	keys, _, err := fetch(d, attest.SNP, api.KEMX25519, "demo/e2e")
	if err != nil || !bytes.Equal(keys["demo/e2e"], material) {
		t.Fatalf("after restart: %v", err)
	}
	d.stop()
}

// TestProductionRefusals checks the start-up refusals of production mode.
func TestProductionRefusals(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--data", dir, "--tee", "sim"}, "development only"},
		{[]string{"--data", dir, "--tee", "tdx", "--manifest", "x"}, "self-attestation"},
		{[]string{"--data", dir, "--tee", "snp", "--sim-measurement", "00"}, "need --dev"},
		{[]string{"--dev", "--sim-measurement", "00"}, "96 hex digits"},
		{[]string{"--dev", "--handover-from", "unix:///x"}, "--handover-from needs --manifest"},
		{[]string{"--data", dir}, "--tee snp|tdx is required"},
		{[]string{"--tee", "snp"}, "--data is required"},
		{[]string{"--dev", "--log-backend", "trillian"}, "--trillian-addr"},
		{[]string{"--dev", "--log-backend", "etcd"}, "want bolt or trillian"},
		{[]string{"--dev", "--trillian-tree-id", "5"}, "need --log-backend trillian"},
		{[]string{"--dev", "--trillian-tls-ca", "ca.pem"}, "need --log-backend trillian"},
		{[]string{"--dev", "--data", dir, "--log-backend", "trillian", "--trillian-addr", "127.0.0.1:1", "--trillian-tree-id", "5", "--trillian-tls-ca", filepath.Join(dir, "missing.pem")}, "--trillian-tls-ca"},
		{[]string{"--dev", "--product", "Milan"}, "flag provided but not defined: -product"},
	} {
		out, err := testbin.Command(t, kbsdBin, tt.args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tt.want) {
			t.Errorf("kbsd %v: %v, output %q; want failure mentioning %q", tt.args, err, out, tt.want)
		}
	}
}

// TestDevTDXBroker runs the dev broker on the simulated TDX platform, with
// JSON logs: its own evidence is a TDX quote that the client verifies, and
// every line it writes is a JSON object.
func TestDevTDXBroker(t *testing.T) {
	d := startDaemon(t, filepath.Join(t.TempDir(), "kbs-dev"), "--tee", "tdx", "--log-format", "json")
	c := newClient(t, d)
	c.verifyBroker()
	if c.att.Platform != "tdx" || !c.att.Simulated {
		t.Fatalf("attestation platform %q simulated %v", c.att.Platform, c.att.Simulated)
	}
	d.stop()
	lines := strings.Split(strings.TrimSpace(d.Output()), "\n")
	for _, l := range lines {
		var v map[string]any
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Errorf("log line is not JSON: %q", l)
		}
	}
	if len(lines) < 5 {
		t.Errorf("only %d log lines", len(lines))
	}
}

// TestUnsignedInitialManifest: a first start with a version 1 that its
// owners did not sign is the operator's decision: kbsd starts, warns, and
// clients verify it against their own file. A signature that does not
// verify is refused. (The dev data directory stands in for a production
// one: the checks are the same.)
func TestUnsignedInitialManifest(t *testing.T) {
	data := filepath.Join(t.TempDir(), "kbs-dev")
	d := startDaemon(t, data)
	d.stop()
	sigFile := filepath.Join(data, "manifest.json.sig")
	sig, err := os.ReadFile(sigFile)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(data, "kbs.db"))
	bad := []byte(strings.Replace(string(sig), "M", "N", 1))
	if err := os.WriteFile(sigFile, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := testbin.Command(t, kbsdBin, "--dev", "--data", data, "--listen-tcp", "none").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "initial manifest") {
		t.Fatalf("start with a bad version-1 signature: %v\n%s", err, out)
	}
	os.Remove(sigFile)
	os.Remove(filepath.Join(data, "kbs.db"))
	d = startDaemon(t, data)
	if !strings.Contains(d.Output(), "trusted by the operator's decision") {
		t.Errorf("no warning about the unsigned version 1:\n%s", d.Output())
	}
	newClient(t, d).verifyBroker()
}

func treeSize(t *testing.T, d *daemon) uint64 {
	t.Helper()
	var p api.InclusionProof
	d.mustCall("GET", api.PathLogProof+"?index=0", nil, &p)
	return p.TreeSize
}

func replayAndMismatch(t *testing.T, d *daemon) {
	t.Helper()
	simDir := filepath.Join(d.Data, "sim")
	request := func(opts sim.Options) *api.ReleaseRequest {
		var ch api.Challenge
		d.mustCall("POST", api.PathChallenge, nil, &ch)
		sk, _ := api.GenerateKey(api.KEMX25519)
		pub := api.MarshalPublicKey(sk.PublicKey())
		iss, err := sim.NewIssuer(simDir, attest.SNP, opts)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := iss.Issue(context.Background(), api.ReportData(api.WorkerBinding(ch.Nonce, pub)))
		if err != nil {
			t.Fatal(err)
		}
		return &api.ReleaseRequest{Platform: "snp", Nonce: ch.Nonce, Evidence: ev.Data, HPKEPublicKey: pub, KeyIDs: []string{"demo/e2e"}}
	}
	used := request(sim.Options{})
	d.mustCall("POST", api.PathRelease, used, nil)
	for _, tt := range []struct {
		name   string
		req    *api.ReleaseRequest
		status int
		code   string
	}{
		{"replayed release", used, 401, api.CodeNonceInvalid},
		{"another measurement", request(sim.Options{Measurement: bytes.Repeat([]byte{9}, 48)}), 403, api.CodePolicyDenied},
		{"debug guest", request(sim.Options{Debug: true}), 403, api.CodeEvidenceRejected},
	} {
		before := treeSize(t, d)
		var rel api.Release
		st, ae, err := d.call("POST", api.PathRelease, tt.req, &rel)
		if err != nil || st != tt.status || ae == nil || ae.Code != tt.code || rel.Keys != nil {
			t.Errorf("%s: %d %+v %v, want %d %s", tt.name, st, ae, err, tt.status, tt.code)
		}
		if after := treeSize(t, d); after != before {
			t.Errorf("%s: the log grew %d -> %d", tt.name, before, after)
		}
	}
}
