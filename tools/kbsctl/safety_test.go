package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/manifest"
)

// These tests are the numbered bugs of issue 16: each command that changes
// the log checks its local preconditions first, never loses a key or a
// receipt, and a retry of a change that took effect is success.

// setup starts a dev broker and verifies it from a fresh state directory:
// it returns the broker, the global flags to use, the client's manifest
// copy and the work directory.
func setup(t *testing.T) (d *daemon, g []string, mf, dir string) {
	t.Helper()
	dir = t.TempDir()
	d = startKbsd(t, filepath.Join(dir, "kbs"))
	mf = filepath.Join(dir, "manifest.json")
	copyFile(t, filepath.Join(d.data, "manifest.json"), mf)
	g = []string{"--addr", d.unix, "--state", filepath.Join(dir, "state"), "--sim-root", d.simRoot()}
	ctl(t, 0, append(g, "verify", "--manifest", mf)...)
	return d, g, mf, dir
}

// logSize is the broker's log size, from a verified checkpoint.
func logSize(t *testing.T, g []string) uint64 {
	t.Helper()
	out, _ := ctl(t, 0, append(g, "--json", "log", "checkpoint")...)
	var r checkpointResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("log checkpoint --json: %v\n%s", err, out)
	}
	return r.Size
}

// unchanged fails the test if the log grew since size was taken.
func unchanged(t *testing.T, g []string, size uint64, what string) {
	t.Helper()
	if now := logSize(t, g); now != size {
		t.Fatalf("%s: the log grew from %d to %d entries", what, size, now)
	}
}

func exists(f string) bool {
	_, err := os.Lstat(f)
	return err == nil
}

// TestPreconditions is bug 1 and 2: a local problem found after the
// broker logged the change (a key released into a file that is not a
// directory, a receipt path that cannot be created) is found before the
// first request now, and nothing is logged.
func TestPreconditions(t *testing.T) {
	d, g, mf, dir := setup(t)
	clientKey := filepath.Join(d.data, "client.key")
	ctl(t, 0, append(g, "key", "put", "--manifest", mf, "--client-key", clientKey, "--id", "demo/a", "--generate", "--out", filepath.Join(dir, "a.key"))...)
	get := func(out string) []string {
		return append(g, "key", "get", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(), "--id", "demo/a", "--out", out)
	}
	size := logSize(t, g)

	// Bug 1: --out names an existing regular file.
	notDir := filepath.Join(dir, "prompt.key")
	os.WriteFile(notDir, []byte("x"), 0o600)
	_, errOut := ctl(t, 2, get(notDir)...)
	contains(t, errOut, "is not a directory")
	unchanged(t, g, size, "key get --out FILE")
	// A file where the key file goes that is not a key file of that id.
	out := filepath.Join(dir, "worker")
	os.MkdirAll(filepath.Join(out, "demo"), 0o700)
	os.WriteFile(filepath.Join(out, "demo", "a.key"), []byte("my notes"), 0o600)
	_, errOut = ctl(t, 2, get(out)...)
	contains(t, errOut, "a.key exists and is not a key file of demo/a: refusing to overwrite it")
	unchanged(t, g, size, "key get over a file that is not a key file")
	if b, _ := os.ReadFile(filepath.Join(out, "demo", "a.key")); string(b) != "my notes" {
		t.Fatal("key get overwrote a file that is not a key file")
	}
	// A directory key get cannot write into.
	ro := filepath.Join(dir, "ro")
	os.Mkdir(ro, 0o500)
	if os.Getuid() != 0 {
		ctl(t, 2, get(ro)...)
		unchanged(t, g, size, "key get into a read-only directory")
	}
	// A refused release leaves no directory behind.
	_, errOut = ctl(t, 1, append(g, "key", "get", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(),
		"--sim-measurement", strings.Repeat("ab", 48), "--id", "demo/a", "--out", filepath.Join(dir, "refused", "keys"))...)
	contains(t, errOut, "REFUSED: policy_denied")
	if exists(filepath.Join(dir, "refused")) {
		t.Fatal("a refused release left its output directory behind")
	}
	size = logSize(t, g)

	// Bug 2: the receipt path cannot be created. On main the upload was
	// logged and then the generated key file deleted.
	gen := filepath.Join(dir, "b.key")
	_, errOut = ctl(t, 2, append(g, "key", "put", "--manifest", mf, "--client-key", clientKey, "--id", "demo/b",
		"--generate", "--out", gen, "--receipt", filepath.Join(dir, "nonexistent", "r"))...)
	contains(t, errOut, "--receipt "+filepath.Join(dir, "nonexistent", "r"))
	unchanged(t, g, size, "key put with a receipt path that cannot be created")
	if exists(gen) {
		t.Fatal("key put wrote a key it did not upload")
	}
	// An existing receipt is never overwritten.
	taken := filepath.Join(dir, "taken.receipt")
	os.WriteFile(taken, []byte("an old receipt"), 0o644)
	for _, args := range [][]string{
		{"key", "put", "--manifest", mf, "--client-key", clientKey, "--id", "demo/b", "--generate", "--out", gen, "--receipt", taken},
		{"key", "rm", "--manifest", mf, "--client-key", clientKey, "--id", "demo/a", "--receipt", taken},
	} {
		_, errOut = ctl(t, 2, append(g, args...)...)
		contains(t, errOut, "exists: refusing to overwrite it")
		unchanged(t, g, size, strings.Join(args[:2], " ")+" --receipt EXISTING")
	}
	// --out of --generate exists.
	_, errOut = ctl(t, 2, append(g, "key", "put", "--manifest", mf, "--client-key", clientKey, "--id", "demo/b", "--generate", "--out", taken)...)
	contains(t, errOut, "--out "+taken+" exists")
	// worker run: the address is taken.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, errOut = ctl(t, 2, append(g, "worker", "run", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(), "--id", "demo/a", "--listen", busy.Addr().String())...)
	contains(t, errOut, "--listen: listen tcp "+busy.Addr().String())
	// manifest set: the receipt next to the manifest cannot be written.
	v2 := filepath.Join(dir, "v2", "manifest-v2.json")
	os.Mkdir(filepath.Dir(v2), 0o700)
	ctl(t, 0, "manifest", "next", "--out", v2, mf)
	writeSig(t, filepath.Join(d.data, "owner.key"), v2, filepath.Join(dir, "v2.sig"))
	_, errOut = ctl(t, 2, append(g, "manifest", "set", "--sig", filepath.Join(dir, "v2.sig"), "--receipt", taken, v2)...)
	contains(t, errOut, "exists: refusing to overwrite it")
	unchanged(t, g, size, "manifest set --receipt EXISTING")
	if os.Getuid() != 0 {
		os.Chmod(filepath.Dir(v2), 0o500)
		_, errOut = ctl(t, 2, append(g, "manifest", "set", "--sig", filepath.Join(dir, "v2.sig"), v2)...)
		contains(t, errOut, "the receipt goes next to "+v2)
		unchanged(t, g, size, "manifest set next to a read-only directory")
		os.Chmod(filepath.Dir(v2), 0o700)
	}
}

// TestGeneratedKeyKept is bug 2's other half: once the broker may hold a
// generated key, kbsctl never deletes the client's copy. A proxy lets the
// upload through and answers 502 instead of the broker's answer: the key
// file stays, the message says why, and the broker holds the key.
func TestGeneratedKeyKept(t *testing.T) {
	d, _, mf, dir := setup(t)
	proxy := filepath.Join(dir, "proxy.sock")
	ln, err := net.Listen("unix", proxy)
	if err != nil {
		t.Fatal(err)
	}
	hc := d.HTTPClient()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, "http://kbsd"+r.URL.RequestURI(), r.Body)
		req.Header = r.Header.Clone()
		resp, err := hc.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		if r.Method == http.MethodPost && r.URL.Path == api.PathKeys {
			io.Copy(io.Discard, resp.Body)
			http.Error(w, "upstream timed out", http.StatusBadGateway)
			return
		}
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	pg := []string{"--addr", "unix://" + proxy, "--state", filepath.Join(dir, "pstate"), "--sim-root", d.simRoot()}
	key := filepath.Join(dir, "kept.key")
	_, errOut := ctl(t, 2, append(pg, "key", "put", "--manifest", mf, "--client-key", filepath.Join(d.data, "client.key"),
		"--id", "demo/kept", "--generate", "--out", key)...)
	contains(t, errOut, "this is not a kbs broker")
	contains(t, errOut, "hint: the key file "+key+" is kept: the broker may hold this key as demo/kept version 1")
	kf, err := api.ParseKeyFile(mustRead(t, key))
	if err != nil || kf.ID != "demo/kept" || kf.Version != 1 {
		t.Fatalf("the generated key file after an ambiguous failure: %+v, %v", kf, err)
	}
	out, _ := ctl(t, 0, "--addr", d.unix, "--state", filepath.Join(dir, "state"), "key", "ls")
	contains(t, out, "demo/kept")

	// A refused upload leaves no key file: the broker holds nothing.
	refused := filepath.Join(dir, "refused.key")
	ctl(t, 1, "--addr", d.unix, "--state", filepath.Join(dir, "state"), "--sim-root", d.simRoot(), "key", "put", "--manifest", mf,
		"--client-key", filepath.Join(d.data, "client.key"), "--id", "other/x", "--generate", "--out", refused)
	if exists(refused) {
		t.Fatal("a key the broker refused was kept")
	}
}

// TestReceipts is bug 3: every logged change writes a receipt, to a new
// file named by key, version and log index; none is overwritten.
func TestReceipts(t *testing.T) {
	d, g, mf, dir := setup(t)
	clientKey := filepath.Join(d.data, "client.key")
	raw := filepath.Join(dir, "raw.bin")
	os.WriteFile(raw, bytes.Repeat([]byte{7}, 32), 0o600)
	put := append(g, "key", "put", "--manifest", mf, "--client-key", clientKey, "--id", "demo/r", "--file", raw)
	ctl(t, 0, put...)
	ctl(t, 0, put...)
	puts := receiptFiles(t, raw, 2)
	if bytes.Equal(mustRead(t, puts[0]), mustRead(t, puts[1])) {
		t.Fatal("two uploads, one receipt")
	}
	// The same release directory twice: two receipts, one key file.
	get := append(g, "key", "get", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(), "--id", "demo/r", "--out", filepath.Join(dir, "w"))
	ctl(t, 0, get...)
	out, _ := ctl(t, 0, get...)
	contains(t, out, "demo/r version 2 -> "+filepath.Join(dir, "w", "demo", "r.key"))
	gets := receiptFiles(t, filepath.Join(dir, "w", "demo", "r"), 2)
	// A new version: the old key file is kept.
	ctl(t, 0, put...)
	out, _ = ctl(t, 0, get...)
	contains(t, out, "the key file of the version before is kept as "+filepath.Join(dir, "w", "demo", "r.v2.key"))
	if k, err := api.ParseKeyFile(mustRead(t, filepath.Join(dir, "w", "demo", "r.v2.key"))); err != nil || k.Version != 2 {
		t.Fatalf("kept key file: %+v, %v", k, err)
	}
	receiptFiles(t, filepath.Join(dir, "w", "demo", "r"), 3)
	// key rm writes one: by default in the state directory, or --receipt.
	out, _ = ctl(t, 0, append(g, "key", "rm", "--client-key", clientKey, "--id", "demo/r")...)
	rm := receiptFiles(t, filepath.Join(dir, "state", "receipts", "demo", "r.deleted"), 1)
	contains(t, out, "receipt verified and written to "+rm[0])
	ctl(t, 0, append(g, "key", "put", "--manifest", mf, "--client-key", clientKey, "--id", "demo/s", "--file", raw)...)
	mine := filepath.Join(dir, "s-deleted.receipt")
	ctl(t, 0, append(g, "key", "rm", "--client-key", clientKey, "--id", "demo/s", "--receipt", mine)...)
	// Every receipt verifies and says what happened.
	files := append(append(append(puts, gets...), rm...), mine)
	out, _ = ctl(t, 0, append(append(g, "receipt", "verify"), files...)...)
	for _, want := range []string{"key upload demo/r version 1", "key upload demo/r version 2", "release of demo/r v2", "key delete demo/r version 3", "key delete demo/s version 1"} {
		contains(t, out, want)
	}
	// worker run writes the release receipt too.
	ctl(t, 0, append(g, "key", "put", "--manifest", mf, "--client-key", clientKey, "--id", "demo/w", "--generate", "--out", filepath.Join(dir, "w.key"))...)
	_, stop := startWorker(t, append(g, "worker", "run", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(), "--id", "demo/w",
		"--listen", "127.0.0.1:0", "--receipts", filepath.Join(dir, "wr")))
	stop()
	out, _ = ctl(t, 0, append(append(g, "receipt", "verify"), receiptFiles(t, filepath.Join(dir, "wr", "demo", "w"), 1)...)...)
	contains(t, out, "release of demo/w v1")
}

// TestKeyFileVersion is bug 5: 'key put --file' of a key file uploads the
// next version and writes that version into the file, so prompts encrypted
// with it open at the worker.
func TestKeyFileVersion(t *testing.T) {
	d, g, mf, dir := setup(t)
	clientKey := filepath.Join(d.data, "client.key")
	key := filepath.Join(dir, "prompt.key")
	ctl(t, 0, append(g, "key", "put", "--manifest", mf, "--client-key", clientKey, "--id", "demo/p", "--generate", "--out", key)...)
	out, _ := ctl(t, 0, append(g, "key", "put", "--manifest", mf, "--client-key", clientKey, "--id", "demo/p", "--file", key)...)
	contains(t, out, "uploaded demo/p version 2")
	contains(t, out, key+" now says Key-Version: 2 (was 1)")
	kf, err := api.ParseKeyFile(mustRead(t, key))
	if err != nil || kf.Version != 2 {
		t.Fatalf("the key file after uploading version 2: %+v, %v", kf, err)
	}
	if fi, _ := os.Stat(key); fi.Mode().Perm() != 0o600 {
		t.Fatalf("the key file's mode became %v", fi.Mode().Perm())
	}
	ctl(t, 0, append(g, "key", "get", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(), "--id", "demo/p", "--out", filepath.Join(dir, "w"))...)
	enc, _ := ctlIn(t, 0, "hello", "prompt", "encrypt", "--key", key)
	dec, _ := ctlIn(t, 0, enc, "prompt", "decrypt", "--key", filepath.Join(dir, "w", "demo", "p.key"))
	if dec != "hello" {
		t.Fatalf("prompt round trip = %q", dec)
	}
}

// TestRetries is bug 6 and its kin: repeating a change that took effect
// (the first answer was lost) is success, and logs nothing.
func TestRetries(t *testing.T) {
	d, g, mf, dir := setup(t)
	owner := filepath.Join(d.data, "owner.key")
	v2 := filepath.Join(dir, "manifest-v2.json")
	ctl(t, 0, "manifest", "next", "--out", v2, mf)
	writeSig(t, owner, v2, v2+".sig")
	out, _ := ctl(t, 0, append(g, "manifest", "set", "--sig", v2+".sig", v2)...)
	contains(t, out, "manifest version 2")
	size := logSize(t, g)
	out, _ = ctl(t, 0, append(g, "manifest", "set", "--sig", v2+".sig", v2)...)
	contains(t, out, "manifest version 2 ("+manifestHash(t, v2)+") is already active (same hash): nothing to do, nothing logged")
	unchanged(t, g, size, "manifest set of the active version")
	// The retry keeps the receipt of the first attempt, which proves the
	// manifest entry on its own.
	out, _ = ctl(t, 0, append(append(g, "receipt", "verify"), receiptFiles(t, v2, 1)...)...)
	contains(t, out, "manifest version 2 "+manifestHash(t, v2))
	// Superseded since: still success.
	v3 := filepath.Join(dir, "manifest-v3.json")
	ctl(t, 0, "manifest", "next", "--out", v3, v2)
	writeSig(t, owner, v3, v3+".sig")
	ctl(t, 0, append(g, "manifest", "set", "--sig", v3+".sig", v3)...)
	size = logSize(t, g)
	out, _ = ctl(t, 0, append(g, "--json", "manifest", "set", "--sig", v2+".sig", v2)...)
	var r setResult
	if err := json.Unmarshal([]byte(out), &r); err != nil || !r.AlreadyActive || r.ActiveVersion != 3 || r.Version != 2 {
		t.Fatalf("manifest set of a superseded version: %+v, %v\n%s", r, err, out)
	}
	unchanged(t, g, size, "manifest set of a superseded version")
	// Another version 2 than the broker's is refused.
	other := filepath.Join(dir, "other-v2.json")
	ctl(t, 0, "manifest", "next", "--threshold", "1", "--add-owner", filepath.Join(d.data, "client.pub"), "--out", other, mf)
	writeSig(t, owner, other, other+".sig")
	_, errOut := ctl(t, 1, append(g, "manifest", "set", "--sig", other+".sig", other)...)
	contains(t, errOut, "the broker is at version 3 and its version 2 is not "+manifestHash(t, other))
}

func manifestHash(t *testing.T, file string) string {
	t.Helper()
	return manifest.HashOf(mustRead(t, file))
}

// TestRefusedRelease is bug 7: a key the broker does not hold is a refused
// release (exit 1), said without internal package names, and nothing is
// logged.
func TestRefusedRelease(t *testing.T) {
	d, g, mf, dir := setup(t)
	size := logSize(t, g)
	_, errOut := ctl(t, 1, append(g, "key", "get", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(), "--id", "demo/nope", "--out", filepath.Join(dir, "w"))...)
	contains(t, errOut, `kbsctl: REFUSED: the broker has no key "demo/nope": nothing was requested`)
	for _, internal := range []string{"keystore:", "kbs:", "client:", "tlog:"} {
		if strings.Contains(errOut, internal) {
			t.Errorf("the message names an internal package (%s):\n%s", internal, errOut)
		}
	}
	unchanged(t, g, size, "key get of a key the broker does not hold")
	if exists(filepath.Join(dir, "w")) {
		t.Fatal("a refused key get left its directory")
	}
	out, _ := ctl(t, 1, append(g, "--json", "key", "get", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(), "--id", "demo/nope", "--out", filepath.Join(dir, "w"))...)
	var e errorJSON
	if err := json.Unmarshal([]byte(out), &e); err != nil || e.Error.Code != "not_found" || e.Error.Hint == "" {
		t.Fatalf("key get --json of a missing key: %+v, %v\n%s", e, err, out)
	}
}

// TestDiagnoses is bug 8: the message says what is wrong.
func TestDiagnoses(t *testing.T) {
	d, g, _, dir := setup(t)
	state := []string{"--state", filepath.Join(dir, "state2")}

	// --addr names the data directory, not the socket in it.
	_, errOut := ctl(t, 2, append(state, "--addr", "unix://"+d.data, "key", "ls")...)
	contains(t, errOut, "kbsctl: can't reach the broker at unix://"+d.data+": "+d.data+" is a directory, not a socket\n")
	contains(t, errOut, "hint: kbsd's socket is DATA/kbs.sock: did you mean --addr unix://"+d.unix[len("unix://"):]+"?")

	// A TLS server that is not a kbs broker.
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	_, errOut = ctl(t, 2, append(state, "--addr", srv.URL, "verify", "--manifest", filepath.Join(dir, "manifest.json"))...)
	contains(t, errOut, "kbsctl: the server at "+srv.URL+" answered GET /v1/attestation with 404 Not Found without a kbs error body: this is not a kbs broker")
	_, errOut = ctl(t, 2, append(state, "--addr", srv.URL, "log", "checkpoint", "--note-key", noteKey(t, g))...)
	contains(t, errOut, "this is not a kbs broker")

	// A tampered receipt: which entry is not in which tree.
	ctl(t, 0, append(g, "key", "put", "--manifest", filepath.Join(dir, "manifest.json"), "--client-key", filepath.Join(d.data, "client.key"),
		"--id", "demo/t", "--generate", "--out", filepath.Join(dir, "t.key"))...)
	rf := receiptFiles(t, filepath.Join(dir, "t.key"), 1)[0]
	lines := strings.Split(string(mustRead(t, rf)), "\n")
	lines[1] = "extra " + b64Flip(t, strings.TrimPrefix(lines[1], "extra "))
	tampered := filepath.Join(dir, "tampered.receipt")
	os.WriteFile(tampered, []byte(strings.Join(lines, "\n")), 0o644)
	_, errOut = ctl(t, 1, append(g, "receipt", "verify", tampered)...)
	contains(t, errOut, "receipt: the entry this receipt carries is not entry 2 of log kbs/")
	contains(t, errOut, " at tree size 3: its inclusion proof leads to root ")
	if strings.Contains(errOut, "[") {
		t.Errorf("the message prints byte arrays:\n%s", errOut)
	}
}

func noteKey(t *testing.T, g []string) string {
	t.Helper()
	out, _ := ctl(t, 0, append(g, "--json", "verify", "--manifest", filepath.Join(filepath.Dir(g[3]), "manifest.json"))...)
	var r verifyResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	return r.NoteKey
}

// TestManifestHints is bug 4: after a broker started over, or when the
// broker's manifest differs from the client's, the hint matches the
// situation: a later version (--follow), an earlier one (rolled back or
// started over), the same version with other bytes, another log.
func TestManifestHints(t *testing.T) {
	d, g, mf, dir := setup(t)
	data := d.data

	// The client's copy is ahead of the broker (version 2, never set).
	ahead := filepath.Join(dir, "ahead.json")
	ctl(t, 0, "manifest", "next", "--add-owner", filepath.Join(data, "client.pub"), "--out", ahead, mf)
	for _, follow := range [][]string{nil, {"--follow"}} {
		_, errOut := ctl(t, 1, append(append(g, "verify"), append(follow, "--manifest", ahead)...)...)
		contains(t, errOut, "is not yours (version 2, ")
		contains(t, errOut, "it is an older version")
		contains(t, errOut, "hint: --follow never accepts an earlier version. Either the broker was rolled back")
	}
	// The broker is ahead.
	v2 := filepath.Join(dir, "v2.json")
	ctl(t, 0, "manifest", "next", "--out", v2, mf)
	writeSig(t, filepath.Join(data, "owner.key"), v2, v2+".sig")
	ctl(t, 0, append(g, "manifest", "set", "--sig", v2+".sig", v2)...)
	_, errOut := ctl(t, 1, append(g, "verify", "--manifest", mf)...)
	contains(t, errOut, "it is a later version")
	contains(t, errOut, "hint: if its owners published the later version, accept it through its signed, logged chain: 'kbsctl verify --follow --manifest FILE'")
	// Another version 2.
	_, errOut = ctl(t, 1, append(g, "verify", "--follow", "--manifest", ahead)...)
	contains(t, errOut, "the same version number with other bytes")
	contains(t, errOut, "hint: two different manifests claim one version")

	// Started over: a new log at the same address.
	d.stop()
	os.RemoveAll(data)
	startKbsd(t, data)
	_, errOut = ctl(t, 1, append(g, "verify", "--manifest", v2)...)
	contains(t, errOut, "VERIFICATION FAILED: the broker presents a different log")
	contains(t, errOut, "'kbsctl verify --accept-new-log --manifest FILE'")
	contains(t, errOut, "take a fresh copy of it first")
	// Accepting the new log with the old copy: the new broker's version 1
	// is not the client's version 2.
	_, errOut = ctl(t, 1, append(g, "verify", "--accept-new-log", "--manifest", v2)...)
	contains(t, errOut, "it is an older version")
	contains(t, errOut, "started over with a new log")
	copyFile(t, filepath.Join(data, "manifest.json"), mf)
	ctl(t, 0, append(g, "verify", "--accept-new-log", "--manifest", mf)...)
	ctl(t, 0, append(g, "verify", "--manifest", mf)...)
}
