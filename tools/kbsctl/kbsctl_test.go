package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/internal/testbin"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/audit"
	"github.com/kbs-dev/kbs/kbs/client"
)

// These tests run kbsctl (in process, through run) against real kbsd
// processes in development mode, built once by TestMain.

var kbsdBin string

func TestMain(m *testing.M) { testbin.Main(m, &kbsdBin, "github.com/kbs-dev/kbs/daemon") }

// daemon is a running kbsd --dev.
type daemon struct {
	*testbin.Kbsd
	data  string
	unix  string
	https string
}

// stop sends SIGTERM and waits for kbsd to exit.
func (d *daemon) stop() { d.Stop() }

// startKbsd starts kbsd --dev on data and waits until it serves. It is
// stopped (SIGTERM) at the end of the test.
func startKbsd(t *testing.T, data string) *daemon {
	t.Helper()
	k := testbin.StartKbsd(t, kbsdBin, data, "--dev", "--listen-tcp", "127.0.0.1:0", "--attestation-rate", "1000", "--challenge-rate", "1000")
	t.Cleanup(func() { k.Stop() })
	return &daemon{Kbsd: k, data: data, unix: "unix://" + k.Socket, https: k.HTTPS}
}

func (d *daemon) simRoot() string { return sim.RootFile(filepath.Join(d.data, "sim")) }
func (d *daemon) simDir() string  { return filepath.Join(d.data, "sim") }

// ctl runs kbsctl with args and checks its exit status.
func ctl(t *testing.T, want int, args ...string) (stdout, stderr string) {
	t.Helper()
	return ctlIn(t, want, "", args...)
}

func ctlIn(t *testing.T, want int, stdin string, args ...string) (string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(stdin), &out, &errb)
	if code != want {
		t.Fatalf("kbsctl %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, want, out.String(), errb.String())
	}
	return out.String(), errb.String()
}

func contains(t *testing.T, s, sub string) {
	t.Helper()
	if !strings.Contains(s, sub) {
		t.Fatalf("output does not contain %q:\n%s", sub, s)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// copyDir copies a stopped broker's data directory (regular files only).
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		info, _ := d.Info()
		return os.WriteFile(dst, b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestFlow walks every command's success path and the failures a client,
// worker, owner and auditor must see, against one broker.
func TestFlow(t *testing.T) {
	dir := t.TempDir()
	d := startKbsd(t, filepath.Join(dir, "kbs"))
	state := filepath.Join(dir, "state")
	mf := filepath.Join(dir, "manifest.json")
	copyFile(t, filepath.Join(d.data, "manifest.json"), mf)
	g := []string{"--addr", d.unix, "--state", state, "--sim-root", d.simRoot()}
	gTLS := []string{"--addr", d.https, "--state", state, "--sim-root", d.simRoot()}
	clientKey := filepath.Join(d.data, "client.key")
	ownerKey := filepath.Join(d.data, "owner.key")

	// Client: verify over the unix socket and over TLS.
	out, _ := ctl(t, 0, append(g, "verify", "--manifest", mf)...)
	contains(t, out, "manifest      version 1")
	contains(t, out, "first checkpoint for this log")
	out, _ = ctl(t, 0, append(gTLS, "verify", "--manifest", mf)...)
	contains(t, out, "tls key       sha256")
	var vr verifyResult
	out, _ = ctl(t, 0, append(gTLS, "--json", "verify", "--manifest", mf)...)
	if err := json.Unmarshal([]byte(out), &vr); err != nil || vr.ManifestVersion != 1 || !vr.Simulated || vr.PreviousLogSize == nil {
		t.Fatalf("verify --json = %+v, %v", vr, err)
	}
	// Simulated evidence without --sim-root is rejected.
	_, errOut := ctl(t, 1, "--addr", d.unix, "--state", filepath.Join(dir, "nosim"), "verify", "--manifest", mf)
	contains(t, errOut, "simulated root")
	contains(t, errOut, "hint: this broker runs on a simulated TEE (kbsd --dev): to trust it for development, pass --sim-root")

	// Client: upload a generated key and a key from a raw file.
	keyFile := filepath.Join(dir, "prompt.key")
	out, _ = ctl(t, 0, append(gTLS, "key", "put", "--manifest", mf, "--client-key", clientKey, "--id", "demo/a", "--generate", "--out", keyFile)...)
	contains(t, out, "uploaded demo/a version 1")
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v, %v", fi, err)
	}
	raw := filepath.Join(dir, "raw.bin")
	os.WriteFile(raw, bytes.Repeat([]byte{7}, 32), 0o600)
	ctl(t, 0, append(g, "key", "put", "--manifest", mf, "--client-key", clientKey, "--id", "demo/b", "--file", raw)...)
	out, _ = ctl(t, 0, append(g, "key", "put", "--manifest", mf, "--client-key", clientKey, "--id", "demo/b", "--file", raw)...)
	contains(t, out, "uploaded demo/b version 2")
	// Each upload has its own receipt, none overwritten.
	ctl(t, 0, append(append(g, "receipt", "verify"), receiptFiles(t, raw, 2)...)...)
	// A key id the client may not write is refused by policy.
	_, errOut = ctl(t, 1, append(g, "key", "put", "--manifest", mf, "--client-key", clientKey, "--id", "other/x", "--file", raw)...)
	contains(t, errOut, "kbsctl: REFUSED: forbidden: ")
	// The owner key is not a client.
	ctl(t, 1, append(g, "key", "put", "--manifest", mf, "--client-key", ownerKey, "--id", "demo/c", "--file", raw)...)
	out, _ = ctl(t, 0, append(gTLS, "--json", "key", "ls")...)
	contains(t, out, `"id": "demo/a"`)
	contains(t, out, `"id": "demo/b"`)

	// Worker: fetch keys with simulated evidence, in its own state.
	wstate := []string{"--addr", d.unix, "--state", filepath.Join(dir, "wstate"), "--sim-root", d.simRoot()}
	wout := filepath.Join(dir, "worker")
	out, _ = ctl(t, 0, append(wstate, "key", "get", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(), "--id", "demo/a", "--id", "demo/b", "--out", wout)...)
	contains(t, out, "released to worker class demo-worker")
	got, _ := os.ReadFile(filepath.Join(wout, "demo", "a.key"))
	want, _ := os.ReadFile(keyFile)
	if !bytes.Equal(got, want) {
		t.Fatalf("worker key file\n%s\ndiffers from the client's\n%s", got, want)
	}
	kb, err := os.ReadFile(filepath.Join(wout, "demo", "b.key"))
	if err != nil {
		t.Fatal(err)
	}
	if k, err := api.ParseKeyFile(kb); err != nil || k.Version != 2 || !bytes.Equal(k.Material, bytes.Repeat([]byte{7}, 32)) {
		t.Fatalf("worker key demo/b = %+v, %v", k, err)
	}
	// The same with the post-quantum KEM, and with simulated TDX evidence.
	ctl(t, 0, append(wstate, "key", "get", "--pq", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(), "--id", "demo/a", "--out", filepath.Join(dir, "worker-pq"))...)
	ctl(t, 0, append(wstate, "key", "get", "--manifest", mf, "--tee", "sim", "--sim-platform", "tdx", "--sim-dir", d.simDir(), "--id", "demo/a", "--out", filepath.Join(dir, "worker-tdx"))...)
	// Offline receipt verification, and a tampered receipt.
	receipt := receiptFiles(t, filepath.Join(wout, "demo", "a"), 1)[0]
	out, _ = ctl(t, 0, append(wstate, "receipt", "verify", receipt)...)
	contains(t, out, "release of demo/a v1, demo/b v2 to class demo-worker")
	rb, _ := os.ReadFile(receipt)
	tampered := filepath.Join(dir, "tampered.receipt")
	os.WriteFile(tampered, bytes.Replace(rb, []byte("\nindex "), []byte("\nindex 1"), 1), 0o644)
	ctl(t, 1, append(wstate, "receipt", "verify", tampered)...)
	lines := strings.Split(string(rb), "\n")
	lines[1] = "extra " + b64Flip(t, strings.TrimPrefix(lines[1], "extra "))
	os.WriteFile(tampered, []byte(strings.Join(lines, "\n")), 0o644)
	_, errOut = ctl(t, 1, append(wstate, "receipt", "verify", tampered)...)
	contains(t, errOut, "VERIFICATION FAILED")

	// Prompts: encrypt, decrypt, tamper, and a round trip through the worker.
	enc, _ := ctlIn(t, 0, "hello worker", "prompt", "encrypt", "--key", keyFile)
	dec, _ := ctlIn(t, 0, enc, "prompt", "decrypt", "--key", filepath.Join(wout, "demo", "a.key"))
	if dec != "hello worker" {
		t.Fatalf("prompt round trip = %q", dec)
	}
	ctlIn(t, 1, enc[:len(enc)-1]+string(enc[len(enc)-1]^1), "prompt", "decrypt", "--key", keyFile)
	ctlIn(t, 1, enc, "prompt", "decrypt", "--key", filepath.Join(wout, "demo", "b.key"))
	url, stopWorker := startWorker(t, append(wstate, "worker", "run", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(), "--id", "demo/a", "--listen", "127.0.0.1:0"))
	out, _ = ctlIn(t, 0, "what is kbs?", "prompt", "send", "--worker", url, "--key", keyFile)
	if out != "echo from a kbs worker: WHAT IS KBS?" {
		t.Fatalf("worker reply = %q", out)
	}
	stopWorker()

	// A worker whose measurement the manifest does not list is refused.
	_, errOut = ctl(t, 1, append(wstate, "key", "get", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(),
		"--sim-measurement", strings.Repeat("ab", 48), "--id", "demo/a", "--out", filepath.Join(dir, "bad"))...)
	contains(t, errOut, "kbsctl: REFUSED: policy_denied: ")
	if _, err := os.Stat(filepath.Join(dir, "bad")); err == nil {
		t.Fatal("a refused worker got a key directory")
	}

	// manifest check: simulated evidence, explained field by field.
	ev := filepath.Join(dir, "evidence.bin")
	writeSimEvidence(t, d.simDir(), attest.SNP, ev, nil)
	evTDX := filepath.Join(dir, "evidence-tdx.bin")
	writeSimEvidence(t, d.simDir(), attest.TDX, evTDX, nil)
	out, _ = ctl(t, 0, append(g, "manifest", "check", "--manifest", mf, "--platform", "tdx", "--evidence", evTDX)...)
	contains(t, out, "class demo-worker: MATCH")
	contains(t, out, "report data "+strings.Repeat("0", 128)+" (not checked")
	out, _ = ctl(t, 0, append(g, "manifest", "check", "--manifest", mf, "--platform", "snp", "--evidence", ev, "--offline")...)
	contains(t, out, "class demo-worker: MATCH")
	ctl(t, 0, append(g, "manifest", "check", "--manifest", mf, "--platform", "snp", "--evidence", ev, "--class", "service", "--report-data", strings.Repeat("00", 64))...)
	ctl(t, 1, append(g, "manifest", "check", "--manifest", mf, "--platform", "snp", "--evidence", ev, "--report-data", strings.Repeat("11", 64))...)
	bad := filepath.Join(dir, "evidence-bad.bin")
	writeSimEvidence(t, d.simDir(), attest.SNP, bad, bytes.Repeat([]byte{0xcd}, 48))
	out, _ = ctl(t, 1, append(g, "manifest", "check", "--manifest", mf, "--platform", "snp", "--evidence", bad)...)
	contains(t, out, "FAIL measurement")

	// Owner: version 2, signed with kbsctl; a signature by a non-owner fails.
	v2 := filepath.Join(dir, "manifest-v2.json")
	ctl(t, 0, append(g, "manifest", "next", "--out", v2, mf)...)
	sig, _ := ctl(t, 0, "manifest", "sign", "--key", ownerKey, v2)
	sigFile := filepath.Join(dir, "v2.sig")
	os.WriteFile(sigFile, []byte(sig), 0o644)
	badSig, _ := ctl(t, 0, "manifest", "sign", "--key", clientKey, v2)
	badSigFile := filepath.Join(dir, "bad.sig")
	os.WriteFile(badSigFile, []byte(badSig), 0o644)
	ctl(t, 1, append(g, "manifest", "set", "--sig", badSigFile, v2)...)
	out, _ = ctl(t, 0, append(g, "manifest", "set", "--sig", sigFile, v2)...)
	contains(t, out, "manifest version 2")
	contains(t, out, "inclusion verified")
	out, _ = ctl(t, 0, append(g, "manifest", "history", "--manifest", mf)...)
	contains(t, out, "chain verified")

	// Client: the broker's manifest now differs from the client's.
	_, errOut = ctl(t, 1, append(g, "verify", "--manifest", mf)...)
	contains(t, errOut, "is not yours")
	// A manifest the broker never ran fails even with --follow.
	other := filepath.Join(dir, "other.json")
	ctl(t, 0, "manifest", "next", "--threshold", "1", "--out", other, v2)
	ctl(t, 1, append(g, "verify", "--follow", "--manifest", other)...)
	ctl(t, 1, append(g, "key", "put", "--manifest", mf, "--client-key", clientKey, "--id", "demo/z", "--file", raw)...)
	out, _ = ctl(t, 0, append(g, "verify", "--follow", "--manifest", mf)...)
	contains(t, out, "followed manifest version 2")
	contains(t, out, "previous:  -> sha256:")
	if b1, _ := os.ReadFile(mf); !bytes.Equal(b1, mustRead(t, v2)) {
		t.Fatal("verify --follow did not store version 2 as the client's manifest")
	}
	if _, err := os.Stat(mf + ".v1"); err != nil {
		t.Fatalf("verify --follow kept no copy of version 1: %v", err)
	}

	// Owners: version 3 adds a second owner and raises the threshold to 2;
	// version 4 then needs both. A client two versions behind follows both.
	behind := filepath.Join(dir, "behind.json")
	copyFile(t, mf, behind)
	owner2 := filepath.Join(dir, "owner2.key")
	owner2Pub := writeECKey(t, owner2)
	v3 := filepath.Join(dir, "manifest-v3.json")
	ctl(t, 0, "manifest", "next", "--add-owner", owner2Pub, "--threshold", "2", "--out", v3, mf)
	writeSig(t, ownerKey, v3, v3+".sig")
	ctl(t, 0, append(g, "manifest", "set", "--sig", v3+".sig", v3)...)
	v4 := filepath.Join(dir, "manifest-v4.json")
	ctl(t, 0, "manifest", "next", "--out", v4, v3)
	writeSig(t, ownerKey, v4, v4+".sig1")
	_, errOut = ctl(t, 1, append(g, "manifest", "set", "--sig", v4+".sig1", v4)...)
	contains(t, errOut, "too few owner signatures")
	_, errOut = ctl(t, 1, append(g, "manifest", "set", "--sig", v4+".sig1", "--sig", v4+".sig1", v4)...)
	contains(t, errOut, "signed more than once")
	writeSig(t, owner2, v4, v4+".sig2")
	// A retry of the active version (same hash) is success, nothing logged.
	out, _ = ctl(t, 0, append(g, "manifest", "set", "--sig", v3+".sig", v3)...)
	contains(t, out, "is already active (same hash): nothing to do, nothing logged")
	out, _ = ctl(t, 0, append(g, "manifest", "set", "--sig", v4+".sig1", "--sig", v4+".sig2", v4)...)
	contains(t, out, "signed by 2 owner(s)")
	out, _ = ctl(t, 0, append(g, "verify", "--follow", "--manifest", behind)...)
	contains(t, out, "followed manifest version 3")
	contains(t, out, "followed manifest version 4")
	contains(t, out, "owners.threshold: 1 -> 2")
	if !bytes.Equal(mustRead(t, behind), mustRead(t, v4)) {
		t.Fatal("verify --follow did not store version 4")
	}
	copyFile(t, v4, mf)
	out, _ = ctl(t, 0, append(g, "manifest", "history", "--manifest", v3)...)
	contains(t, out, "2 signer(s)")

	// Delete a key.
	out, _ = ctl(t, 0, append(g, "key", "rm", "--client-key", clientKey, "--id", "demo/b")...)
	contains(t, out, "deleted demo/b")
	ctl(t, 2, "--addr", d.unix, "--state", filepath.Join(dir, "empty"), "key", "rm", "--client-key", clientKey, "--id", "demo/a")
	// A retry of a deletion that took effect is success, and logs nothing.
	out, _ = ctl(t, 0, append(g, "key", "rm", "--manifest", mf, "--client-key", clientKey, "--id", "demo/b")...)
	contains(t, out, "demo/b is already deleted (versions up to 2); nothing to do, nothing logged")

	// Auditor: fresh state with the note key, then the client's state.
	noteKey := vr.NoteKey
	astate := []string{"--addr", d.unix, "--state", filepath.Join(dir, "astate")}
	out, _ = ctl(t, 0, append(astate, "audit", "--note-key", noteKey, "--manifest", mf)...)
	contains(t, out, "audit OK")
	contains(t, out, "signatures verified")
	out, _ = ctl(t, 0, append(astate, "--json", "audit", "--note-key", noteKey)...)
	var ar audit.Report
	if err := json.Unmarshal([]byte(out), &ar); err != nil {
		t.Fatal(err)
	}
	if len(ar.Manifests) != 4 || ar.Counts["release"] != 4 || ar.Counts["key-upload"] != 3 || ar.Counts["key-delete"] != 1 || len(ar.Anomalies) != 0 || ar.PreviousSize == nil {
		t.Fatalf("audit --json = %+v", ar)
	}
	out, _ = ctl(t, 0, append(g, "audit", "--csv")...)
	contains(t, out, "log_index,time,type,key")
	contains(t, out, ",release,demo/a,1,,demo-worker,snp,true,")
	out, _ = ctl(t, 0, append(gTLS, "log", "checkpoint")...)
	contains(t, out, vr.Origin+"\n")
	out, _ = ctl(t, 0, append(gTLS, "log", "verify")...)
	contains(t, out, "consistent with the stored size")
}

// receiptFiles returns the receipts base.v<version>.<index>.receipt, and
// checks that there are n.
func receiptFiles(t *testing.T, base string, n int) []string {
	t.Helper()
	files, err := filepath.Glob(base + ".v*.receipt")
	if err != nil || len(files) != n {
		t.Fatalf("receipts of %s: %q, %v; want %d", base, files, err, n)
	}
	return files
}

// writeECKey writes a new ECDSA P-256 key (PKCS #8 PEM) and its public key
// (PKIX PEM, file + ".pub"), and returns the public key file.
func writeECKey(t *testing.T, file string) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	pub, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	os.WriteFile(file+".pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
	return file + ".pub"
}

// writeSig signs manifest with key through 'kbsctl manifest sign'.
func writeSig(t *testing.T, key, manifestFile, sigFile string) {
	t.Helper()
	sig, _ := ctl(t, 0, "manifest", "sign", "--key", key, manifestFile)
	if err := os.WriteFile(sigFile, []byte(sig), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustRead(t *testing.T, f string) []byte {
	t.Helper()
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// b64Flip changes one byte inside base64 text, keeping it valid base64.
func b64Flip(t *testing.T, s string) string {
	t.Helper()
	i := len(s) / 2
	c := byte('A')
	if s[i] == 'A' {
		c = 'B'
	}
	return s[:i] + string(c) + s[i+1:]
}

func writeSimEvidence(t *testing.T, simDir string, p attest.Platform, file string, measurement []byte) {
	t.Helper()
	iss, err := sim.NewIssuer(simDir, p, sim.Options{Measurement: measurement})
	if err != nil {
		t.Fatal(err)
	}
	var rd [64]byte
	ev, err := iss.Issue(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, ev.Data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// syncWriter is a goroutine-safe buffer.
type syncWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// startWorker runs 'kbsctl worker run' in the background and returns its
// URL and a function that stops it and checks it exited cleanly.
func startWorker(t *testing.T, args []string) (string, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	var errb syncWriter
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, args, strings.NewReader(""), pw, &errb)
		pw.Close()
	}()
	lines := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(pr)
		if s.Scan() {
			lines <- s.Text()
		}
		close(lines)
		io.Copy(io.Discard, pr)
	}()
	var url string
	select {
	case url = <-lines:
	case code := <-done:
		cancel()
		t.Fatalf("worker exited %d:\n%s", code, errb.String())
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatalf("worker did not start:\n%s", errb.String())
	}
	if strings.HasPrefix(url, "{") {
		// worker run --json
		var r workerResult
		if err := json.Unmarshal([]byte(url), &r); err != nil || r.Receipt == "" || r.Class == "" {
			cancel()
			t.Fatalf("worker printed %q: %+v, %v", url, r, err)
		}
		url = r.URL
	}
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		cancel()
		t.Fatalf("worker printed %q", url)
	}
	stop := func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("worker exited %d:\n%s", code, errb.String())
		}
	}
	return url, stop
}

// TestRollback restores an old copy of the broker's data directory behind a
// client's back: the client, log verify and audit all detect the rollback.
func TestRollback(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "kbs")
	d := startKbsd(t, data)
	state := filepath.Join(dir, "state")
	mf := filepath.Join(dir, "manifest.json")
	copyFile(t, filepath.Join(data, "manifest.json"), mf)
	g := []string{"--addr", d.unix, "--state", state, "--sim-root", d.simRoot()}
	ctl(t, 0, append(g, "verify", "--manifest", mf)...)
	d.stop()
	copyDir(t, data, filepath.Join(dir, "old"))

	d = startKbsd(t, data)
	ctl(t, 0, append(g, "key", "put", "--manifest", mf, "--client-key", filepath.Join(data, "client.key"), "--id", "demo/a", "--generate", "--out", filepath.Join(dir, "a.key"))...)
	ctl(t, 0, append(g, "verify", "--manifest", mf)...)
	d.stop()

	// The host restores the old disk.
	if err := os.RemoveAll(data); err != nil {
		t.Fatal(err)
	}
	copyDir(t, filepath.Join(dir, "old"), data)
	startKbsd(t, data)
	_, errOut := ctl(t, 1, append(g, "verify", "--manifest", mf)...)
	contains(t, errOut, "rolled back")
	contains(t, errOut, "verified checkpoint:")
	contains(t, errOut, "conflicting checkpoint:")
	_, errOut = ctl(t, 1, append(g, "log", "verify")...)
	contains(t, errOut, "rolled back")
	_, errOut = ctl(t, 1, append(g, "audit")...)
	contains(t, errOut, "rolled back")
	// A key put must not reach a rolled back broker.
	ctl(t, 1, append(g, "key", "put", "--manifest", mf, "--client-key", filepath.Join(data, "client.key"), "--id", "demo/b", "--generate", "--out", filepath.Join(dir, "b.key"))...)
	if _, err := os.Stat(filepath.Join(dir, "b.key")); err == nil {
		t.Fatal("a key was generated for a rolled back broker")
	}
}

// TestFork shows two views of one log (same identity, different entries
// after a common prefix) to one client: the second view is detected.
func TestFork(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a")
	d := startKbsd(t, a)
	mf := filepath.Join(dir, "manifest.json")
	copyFile(t, filepath.Join(a, "manifest.json"), mf)
	d.stop()
	b := filepath.Join(dir, "b")
	copyDir(t, a, b)
	state := filepath.Join(dir, "state")

	// View A: one upload, seen by the client.
	d = startKbsd(t, a)
	ga := []string{"--addr", d.unix, "--state", state, "--sim-root", d.simRoot()}
	ctl(t, 0, append(ga, "key", "put", "--manifest", mf, "--client-key", filepath.Join(a, "client.key"), "--id", "demo/a", "--generate", "--out", filepath.Join(dir, "a.key"))...)
	d.stop()

	// View B: the same identity and prefix, a different upload, shown to
	// the same client (same tree size, another root), then one more entry
	// (a larger tree that does not extend A).
	d = startKbsd(t, b)
	gb := []string{"--addr", d.unix, "--state", state, "--sim-root", d.simRoot()}
	fresh := []string{"--addr", d.unix, "--state", filepath.Join(dir, "fresh"), "--sim-root", d.simRoot()}
	ctl(t, 0, append(fresh, "key", "put", "--manifest", mf, "--client-key", filepath.Join(b, "client.key"), "--id", "demo/b", "--generate", "--out", filepath.Join(dir, "b.key"))...)
	_, errOut := ctl(t, 1, append(gb, "verify", "--manifest", mf)...)
	contains(t, errOut, "two roots for one tree size")
	contains(t, errOut, "conflicting checkpoint:")
	ctl(t, 0, append(fresh, "key", "put", "--manifest", mf, "--client-key", filepath.Join(b, "client.key"), "--id", "demo/c", "--generate", "--out", filepath.Join(dir, "c.key"))...)
	_, errOut = ctl(t, 1, append(gb, "verify", "--manifest", mf)...)
	contains(t, errOut, "consistency proof failed")
	st, err := client.State{Dir: state}.Broker(ga[1])
	if err != nil || st == nil {
		t.Fatalf("no broker state for view A: %v", err)
	}
	_, errOut = ctl(t, 1, append(gb, "log", "verify", "--note-key", st.NoteKey)...)
	contains(t, errOut, "forked")
	_, errOut = ctl(t, 1, append(gb, "audit", "--note-key", st.NoteKey)...)
	contains(t, errOut, "forked")
}

// TestUsage checks that usage and I/O errors exit 2.
func TestUsage(t *testing.T) {
	dir := t.TempDir()
	nowhere := []string{"--addr", "unix://" + filepath.Join(dir, "none.sock"), "--state", filepath.Join(dir, "state")}
	mf := filepath.Join(dir, "m.json")
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"--addr"},
		{"key"},
		{"key", "frob"},
		{"verify"},
		{"verify", "extra"},
		append(nowhere, "verify", "--manifest", mf),
		{"--addr", "ftp://x", "key", "ls"},
		append(nowhere, "key", "ls"),
		{"key", "put", "--id", "demo/a"},
		{"key", "put", "--manifest", mf, "--client-key", mf, "--id", "demo/a", "--generate"},
		{"key", "put", "--manifest", mf, "--client-key", mf, "--id", "../x", "--file", mf},
		{"key", "get", "--manifest", mf, "--out", dir, "--id", "demo/a"},
		{"key", "get", "--manifest", mf, "--out", dir, "--id", "demo/a", "--tee", "quantum"},
		{"manifest", "sign", mf},
		{"manifest", "sign", "--key", mf},
		{"manifest", "set", mf},
		{"manifest", "check", "--manifest", mf},
		{"manifest", "check", "--manifest", mf, "--platform", "sev", "--evidence", mf},
		append(nowhere, "log", "verify"),
		append(nowhere, "audit"),
		{"audit", "--csv", "--json"},
		append(nowhere, "receipt", "verify", mf),
		{"receipt", "verify"},
		{"prompt", "encrypt"},
		{"prompt", "decrypt", "--key", filepath.Join(dir, "missing.key")},
		{"prompt", "send", "--key", mf},
		{"worker", "run"},
		{"--sim-root", filepath.Join(dir, "missing.pem"), "key", "ls"},
	} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, strings.NewReader(""), &out, &errb); code != 2 {
			t.Errorf("kbsctl %q: exit %d, want 2\n%s%s", args, code, out.String(), errb.String())
		}
	}
	for _, args := range [][]string{{"-h"}, {"verify", "-h"}, {"key", "help"}} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, strings.NewReader(""), &out, &errb); code != 0 {
			t.Errorf("kbsctl %q: exit %d, want 0\n%s", args, code, errb.String())
		}
	}
}

// TestMessages checks what kbsctl says, and its exit status, on the common
// mistakes: no broker at --addr, a malformed --addr, a missing or
// unreadable --manifest, a bad flag, and asking for help.
func TestMessages(t *testing.T) {
	dir := t.TempDir()
	state := []string{"--state", filepath.Join(dir, "state")}

	// A socket file that nothing accepts on (kbsd killed).
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	// A TCP port nothing listens on.
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := tl.Addr().String()
	tl.Close()
	// A TLS server never verified from this state directory.
	tlsSrv := httptest.NewTLSServer(http.NotFoundHandler())
	defer tlsSrv.Close()

	for _, tt := range []struct {
		args []string
		code int
		want []string // in stderr, in order
	}{
		{[]string{"--addr", "unix://" + filepath.Join(dir, "none.sock"), "key", "ls"}, 2,
			[]string{"kbsctl: can't reach the broker at unix://" + dir + "/none.sock: connect: no such file or directory\n",
				"  hint: no socket at " + dir + "/none.sock (--addr): start kbsd, or point --addr or $KBS_ADDR at the socket it prints"}},
		{[]string{"--addr", "unix://" + stale, "key", "ls"}, 2,
			[]string{"can't reach the broker at unix://" + stale + ": connect: connection refused",
				"hint: the socket at " + stale + " (--addr) exists but nothing accepts on it: kbsd is not running there"}},
		{[]string{"--addr", "https://" + closedPort, "key", "ls"}, 2,
			[]string{"can't reach the broker at https://" + closedPort + ": connect: connection refused",
				"hint: nothing listens at https://" + closedPort + " (--addr): is kbsd running with --listen-tcp on that address?"}},
		{[]string{"--addr", tlsSrv.URL, "key", "ls"}, 2,
			[]string{"kbsctl: " + tlsSrv.URL + ": the broker's TLS key is not pinned yet: verify the broker first\n",
				"  hint: over TLS, kbsctl talks only to a broker whose attested TLS key it has pinned: run 'kbsctl --addr " + tlsSrv.URL + " verify --manifest FILE' once with this --state"}},
		{[]string{"--addr", "/run/kbs/kbs.sock", "key", "ls"}, 2,
			[]string{`kbsctl: --addr "/run/kbs/kbs.sock": want unix://PATH or https://HOST:PORT (did you mean unix:///run/kbs/kbs.sock?)`}},
		{[]string{"--addr", "http://kbs.example:8443", "key", "ls"}, 2, []string{"(did you mean https://kbs.example:8443?)"}},
		{[]string{"--addr", "kbs.example:8443", "key", "ls"}, 2, []string{"(did you mean https://kbs.example:8443?)"}},
		{[]string{"--addr", "ftp://x", "key", "ls"}, 2, []string{`kbsctl: --addr "ftp://x": want unix://PATH or https://HOST:PORT` + "\n"}},
		{[]string{"verify"}, 2, []string{"--manifest is required"}},
		{[]string{"--addr", "unix://" + filepath.Join(dir, "none.sock"), "key", "get", "--manifest", filepath.Join(dir, "m.json"), "--tee", "sim",
			"--sim-dir", filepath.Join(dir, "nosim"), "--id", "demo/a", "--out", dir}, 2,
			[]string{"kbsctl: --tee sim: no simulated TEE at --sim-dir " + dir + "/nosim (kbsd --dev creates one in DATA/sim): no such file or directory"}},
		{[]string{"verify", "--manifest", filepath.Join(dir, "missing.json")}, 2, []string{"kbsctl: --manifest: open " + dir + "/missing.json: no such file or directory"}},
		{[]string{"audit", "--bogus"}, 2, []string{"kbsctl: audit: flag provided but not defined: -bogus (see 'kbsctl audit -h')\n"}},
		{[]string{"receipt", "verify"}, 2, []string{"kbsctl: receipt verify: want at least 1 argument, got 0 (see 'kbsctl receipt verify -h')"}},
		{[]string{"key"}, 2, []string{"kbsctl: key: want a subcommand: get, ls, put, rm (see 'kbsctl key -h')"}},
		{[]string{"keys", "ls"}, 2, []string{`kbsctl: unknown command "keys" (want attest, audit, key, log, manifest, monitor, prompt, proxy, receipt, recover, verify, worker; see 'kbsctl help')`}},
		{[]string{"help"}, 0, []string{"Usage:\n  kbsctl [global flags] <command>", "Global flags:"}},
		{[]string{"help", "audit"}, 0, []string{"Usage: kbsctl audit [--manifest FILE]", "-csv"}},
		{[]string{"help", "key", "put"}, 0, []string{"Usage: kbsctl key put --manifest FILE", "-client-key"}},
		{[]string{"key", "-h"}, 0, []string{"Usage: kbsctl key <get|ls|put|rm>", "  key put --manifest FILE", "  key get --manifest FILE", "Run 'kbsctl key <subcommand> -h'"}},
	} {
		t.Setenv("KBS_ADDR", "")
		var out, errb bytes.Buffer
		code := run(context.Background(), append(slices.Clone(state), tt.args...), strings.NewReader(""), &out, &errb)
		got := errb.String()
		if code != tt.code {
			t.Errorf("kbsctl %q: exit %d, want %d\n%s", tt.args, code, tt.code, got)
			continue
		}
		rest := got
		for _, w := range tt.want {
			i := strings.Index(rest, w)
			if i < 0 {
				t.Errorf("kbsctl %q: stderr\n%s\nwant (in order) %q", tt.args, got, w)
				break
			}
			rest = rest[i+len(w):]
		}
		if tt.code == 2 && strings.Contains(got, "Flags:") {
			t.Errorf("kbsctl %q: a usage error printed the whole usage:\n%s", tt.args, got)
		}
	}
}

// TestUnsignedVersion1 runs a broker whose version 1 carries no owner
// signatures (trusted by the operator's --manifest alone): the client
// verifies it by its own file, follows a signed version 2, lists the
// history and audits the log.
func TestUnsignedVersion1(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "kbs")
	startKbsd(t, data).stop()
	os.Remove(filepath.Join(data, "manifest.json.sig"))
	os.Remove(filepath.Join(data, "kbs.db"))
	d := startKbsd(t, data)
	state := filepath.Join(dir, "state")
	mf := filepath.Join(dir, "manifest.json")
	copyFile(t, filepath.Join(data, "manifest.json"), mf)
	g := []string{"--addr", d.unix, "--state", state, "--sim-root", d.simRoot()}

	out, _ := ctl(t, 0, append(g, "verify", "--manifest", mf)...)
	contains(t, out, "manifest      version 1")

	v2 := filepath.Join(dir, "manifest-v2.json")
	ctl(t, 0, append(g, "manifest", "next", "--out", v2, mf)...)
	writeSig(t, filepath.Join(data, "owner.key"), v2, v2+".sig")
	ctl(t, 0, append(g, "manifest", "set", "--sig", v2+".sig", v2)...)
	out, _ = ctl(t, 0, append(g, "manifest", "history", "--manifest", mf)...)
	contains(t, out, "your manifest")
	contains(t, out, "chain verified")
	out, _ = ctl(t, 0, append(g, "verify", "--follow", "--manifest", mf)...)
	contains(t, out, "followed manifest version 2")
	out, _ = ctl(t, 0, append(g, "audit")...)
	contains(t, out, "none (version 1 trusted by the operator's decision)")
	contains(t, out, "audit OK")
}
