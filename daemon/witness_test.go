package main

// Process tests of kbsd with real witnesses from the ecosystem
// (transparency-dev's omniwitness, torchwood's litewitness; see
// tlog/witnesstest): kbsd --dev names the witness in its dev manifest
// (--dev-witness), the witness is configured with kbsd's log, and kbsctl
// plays the client, the worker and the auditor. `make test-witness` runs
// them (CI too); `make test` skips them (kbs/witness_test.go and
// kbs/client/witness_test.go run the same logic against in-process fakes).

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/kbs-dev/kbs/internal/testbin"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/witnesstest"
)

var kbsctlLazy = testbin.Lazy{Pkg: "github.com/kbs-dev/kbs/tools/kbsctl"}

// kbsctl returns the kbsctl binary, built once next to the test's kbsd.
func kbsctl(t *testing.T) string {
	t.Helper()
	return kbsctlLazy.Path(t, filepath.Dir(kbsdBin))
}

// witnessedDaemon is a kbsd --dev whose dev manifest names one real
// witness, and that witness.
type witnessedDaemon struct {
	*daemon
	impl    witnesstest.Impl
	bin     string
	wdir    string // the witness's state
	waddr   string // its loopback address, fixed in the manifest
	w       *witnesstest.Running
	noteKey string
	origin  string
}

var noteKeyLog = regexp.MustCompile(`note_key="?([^"\s]+)`)

// startWitnessed creates a dev broker in data whose manifest names a new
// witness of impl (state in wdir, at a fixed loopback address), starts
// the witness for kbsd's log once kbsd has said its key, and waits until
// kbsd acts (a quorum cosigned its checkpoint). extra are more kbsd flags.
func startWitnessed(t *testing.T, impl witnesstest.Impl, bin, data, wdir string, extra ...string) *witnessedDaemon {
	t.Helper()
	if err := os.MkdirAll(wdir, 0o700); err != nil {
		t.Fatal(err)
	}
	wd := &witnessedDaemon{impl: impl, bin: bin, wdir: wdir, waddr: witnesstest.FreeLoopbackAddr(t)}
	vkey := impl.VKey(t, bin, wdir)
	wd.daemon = wd.startKbsd(t, data, append([]string{"--dev-witness", "http://" + wd.waddr + "," + vkey}, extra...)...)
	m := noteKeyLog.FindStringSubmatch(wd.Output())
	if m == nil {
		t.Fatalf("kbsd did not log its note key:\n%s", wd.Output())
	}
	wd.noteKey = m[1]
	wd.origin, _, _ = strings.Cut(wd.noteKey, "+")
	wd.w = impl.Start(t, bin, wdir, wd.origin, wd.noteKey, wd.waddr)
	if wd.w.VKey != vkey {
		t.Fatalf("%s runs with the key %s, the manifest names %s", impl.Name, wd.w.VKey, vkey)
	}
	wd.WaitHealthy()
	return wd
}

// startKbsd starts (or restarts) kbsd in data, serving but not
// necessarily acting.
func (wd *witnessedDaemon) startKbsd(t *testing.T, data string, extra ...string) *daemon {
	t.Helper()
	args := append([]string{"--dev", "--listen-tcp", "127.0.0.1:0", "--witness-retry", "100ms", "--witness-wait", "10s"}, extra...)
	k := testbin.StartKbsdUntil(t, kbsdBin, data, "kbsd serving", args...)
	return &daemon{Kbsd: k, t: t, tcp: strings.TrimPrefix(k.HTTPS, "https://"), hc: k.HTTPClient()}
}

// kbsctlRun runs kbsctl against d's unix socket with the state dir state
// and the simulated root, and returns its output and exit code.
func kbsctlRun(t *testing.T, d *daemon, state string, args ...string) (string, int) {
	t.Helper()
	all := append([]string{"--addr", "unix://" + d.Socket, "--state", state, "--sim-root", filepath.Join(d.Data, "sim", "root.pem")}, args...)
	cmd := testbin.Command(t, kbsctl(t), all...)
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		code = -1
		if ee := (interface{ ExitCode() int })(nil); errors.As(err, &ee) {
			code = ee.ExitCode()
		}
	}
	return string(out), code
}

func mustKbsctl(t *testing.T, d *daemon, state string, args ...string) string {
	t.Helper()
	out, code := kbsctlRun(t, d, state, args...)
	if code != 0 {
		t.Fatalf("kbsctl %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// checkServedCheckpoint fetches /log/checkpoint and verifies it with
// golang.org/x/mod/sumdb/note, given the log's key and the witness's own
// verifier key (as the witness printed or wrote it); it returns the
// checkpoint's size.
func (wd *witnessedDaemon) checkServedCheckpoint(t *testing.T) uint64 {
	t.Helper()
	resp, err := wd.hc.Get("http://kbsd/log/checkpoint")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	msg := make([]byte, 8192)
	n, _ := resp.Body.Read(msg)
	msg = msg[:n]
	logV, err := note.NewVerifier(wd.noteKey)
	if err != nil {
		t.Fatal(err)
	}
	wv, err := tlog.NewCosignatureVerifier(wd.w.VKey)
	if err != nil {
		t.Fatal(err)
	}
	nt, err := note.Open(msg, note.VerifierList(logV, wv))
	if err != nil || len(nt.Sigs) != 2 || nt.Sigs[1].Name != wv.Name() {
		t.Fatalf("note.Open(/log/checkpoint, log key, %s's key) = %+v, %v\n%s", wd.impl.Name, nt, err, msg)
	}
	cp, err := tlog.OpenCheckpoint(msg, wd.origin, logV)
	if err != nil {
		t.Fatal(err)
	}
	return cp.Size
}

// TestRealWitnessKbsd: a dev broker with a real witness. kbsctl verify,
// key put, key get (the worker), receipt verify, log verify, audit and
// log witnesses all see the witness's cosignature; the served checkpoint
// verifies with golang.org/x/mod/sumdb/note and the witness's own key;
// /metrics says who cosigned.
func TestRealWitnessKbsd(t *testing.T) {
	witnesstest.ForEach(t, func(t *testing.T, impl witnesstest.Impl, bin string) {
		dir := t.TempDir()
		wd := startWitnessed(t, impl, bin, filepath.Join(dir, "kbs"), filepath.Join(dir, "witness"))
		state := filepath.Join(dir, "state")
		mf := filepath.Join(dir, "my-manifest.json")
		copyTree(t, filepath.Join(wd.Data, "manifest.json"), mf)

		out := mustKbsctl(t, wd.daemon, state, "verify", "--manifest", mf)
		if !strings.Contains(out, "witnesses     cosigned by witness.kbs.test-") || !strings.Contains(out, "recent, as a first checkpoint must be") {
			t.Errorf("kbsctl verify:\n%s", out)
		}
		mustKbsctl(t, wd.daemon, state, "key", "put", "--manifest", mf, "--client-key", filepath.Join(wd.Data, "client.key"),
			"--id", "demo/w", "--generate", "--out", filepath.Join(dir, "w.key"))
		keys := filepath.Join(dir, "worker-keys")
		out = mustKbsctl(t, wd.daemon, filepath.Join(dir, "worker-state"), "key", "get", "--manifest", mf, "--tee", "sim",
			"--sim-dir", filepath.Join(wd.Data, "sim"), "--id", "demo/w", "--out", keys)
		if !strings.Contains(out, "receipt witnesses: cosigned by") {
			t.Errorf("kbsctl key get:\n%s", out)
		}
		receipts, _ := filepath.Glob(filepath.Join(keys, "demo", "w.v1.*.receipt"))
		if len(receipts) != 1 {
			t.Fatalf("worker receipts: %v", receipts)
		}
		out = mustKbsctl(t, wd.daemon, filepath.Join(dir, "worker-state"), "receipt", "verify", receipts[0])
		if !strings.Contains(out, "release of demo/w v1") || !strings.Contains(out, "witnesses: cosigned by") {
			t.Errorf("kbsctl receipt verify:\n%s", out)
		}
		out = mustKbsctl(t, wd.daemon, filepath.Join(dir, "auditor"), "audit", "--note-key", wd.noteKey)
		if !strings.Contains(out, "witnesses: cosigned by") || !strings.Contains(out, "audit OK") {
			t.Errorf("kbsctl audit:\n%s", out)
		}
		mustKbsctl(t, wd.daemon, state, "log", "verify")
		out = mustKbsctl(t, wd.daemon, state, "log", "witnesses")
		if !strings.Contains(out, "state           acting") || !strings.Contains(out, "1 of 1") {
			t.Errorf("kbsctl log witnesses:\n%s", out)
		}
		size := wd.checkServedCheckpoint(t)
		if size < 4 {
			t.Errorf("served checkpoint of size %d does not hold the release", size)
		}
		resp, err := wd.hc.Get("http://kbsd/metrics")
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1<<16)
		n, _ := resp.Body.Read(buf)
		resp.Body.Close()
		if m := string(buf[:n]); !strings.Contains(m, "kbs_witness_checked 1") || !strings.Contains(m, "kbs_witness_up{witness=") {
			t.Errorf("/metrics:\n%s", m)
		}
		wd.stop()
	})
}

// TestRealWitnessKbsdRollback plays the host restoring a whole data
// directory: copy it, make more changes that get cosigned, stop kbsd,
// restore the copy, start kbsd. The restored kbsd serves, says it is
// behind its witness, and refuses releases, uploads and manifest changes;
// a fresh client with no stored state refuses it because its checkpoint
// lacks the quorum.
func TestRealWitnessKbsdRollback(t *testing.T) {
	witnesstest.ForEach(t, func(t *testing.T, impl witnesstest.Impl, bin string) {
		dir := t.TempDir()
		data := filepath.Join(dir, "kbs")
		wd := startWitnessed(t, impl, bin, data, filepath.Join(dir, "witness"))
		c := newClient(t, wd.daemon)
		c.verifyBroker()
		c.upload("demo/r", 1, []byte("demo/r version 1 material......."))
		wd.stop()
		backup := filepath.Join(dir, "backup")
		copyTree(t, data, backup)

		wd.daemon = wd.startKbsd(t, data)
		wd.WaitHealthy()
		c.d = wd.daemon
		c.upload("demo/r", 2, []byte("demo/r version 2 material......."))
		if _, _, err := fetch(wd.daemon, attest.SNP, api.KEMX25519, "demo/r"); err != nil {
			t.Fatal(err)
		}
		cosigned := wd.checkServedCheckpoint(t)
		wd.stop()
		if err := os.RemoveAll(data); err != nil {
			t.Fatal(err)
		}
		copyTree(t, backup, data)

		wd.daemon = wd.startKbsd(t, data)
		for deadline := time.Now().Add(30 * time.Second); !strings.Contains(wd.Output(), "BEHIND ITS WITNESSES"); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) || wd.Exited() {
				t.Fatalf("the restored kbsd did not find itself behind its witness:\n%s", wd.Output())
			}
		}
		if got := treeSize(t, wd.daemon); got >= cosigned {
			t.Fatalf("restored log of size %d, the witness cosigned %d", got, cosigned)
		}
		for _, want := range []string{"larger tree", "latest copy of its data directory"} {
			if !strings.Contains(wd.Output(), want) {
				t.Errorf("kbsd's log does not say %q:\n%s", want, wd.Output())
			}
		}
		resp, err := wd.hc.Get("http://kbsd/healthz")
		if err != nil || resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("/healthz of the restored kbsd = %v %v", resp, err)
		}
		if _, _, err := fetch(wd.daemon, attest.SNP, api.KEMX25519, "demo/r"); err == nil || !strings.Contains(err.Error(), api.CodeBehindWitnesses) {
			t.Errorf("release from the restored kbsd = %v, want %s", err, api.CodeBehindWitnesses)
		}
		if _, err := c.tryUpload("demo/r", 2, []byte("demo/r version 2, again.........")); err == nil || !strings.Contains(err.Error(), api.CodeBehindWitnesses) {
			t.Errorf("upload to the restored kbsd = %v, want %s", err, api.CodeBehindWitnesses)
		}
		out, code := kbsctlRun(t, wd.daemon, filepath.Join(dir, "ops"), "log", "witnesses")
		if code != 1 || !strings.Contains(out, "state           behind") {
			t.Errorf("kbsctl log witnesses on the restored kbsd: exit %d\n%s", code, out)
		}
		// A client that never saw this log: the checkpoint carries no
		// cosignature, so it is refused, naming the witness.
		mf := filepath.Join(dir, "my-manifest.json")
		copyTree(t, filepath.Join(data, "manifest.json"), mf)
		out, code = kbsctlRun(t, wd.daemon, filepath.Join(dir, "fresh"), "verify", "--manifest", mf)
		if code != 1 || !strings.Contains(out, "witnesses") || !strings.Contains(out, `missing: "witness.kbs.test-`) {
			t.Errorf("kbsctl verify of the restored kbsd by a fresh client: exit %d\n%s", code, out)
		}
		wd.stop()
	})
}

// TestRealWitnessKbsdSplitView: two kbsd from copies of one data directory
// (the same log key) present different trees to the same witness. Both
// start (the witness saw their common tree); the first's change is
// cosigned; the witness refuses the second's different change at the same
// size, the second kbsd reports it and stops acting, and the witness keeps
// the evidence.
func TestRealWitnessKbsdSplitView(t *testing.T) {
	witnesstest.ForEach(t, func(t *testing.T, impl witnesstest.Impl, bin string) {
		dir := t.TempDir()
		dataA, dataB := filepath.Join(dir, "a"), filepath.Join(dir, "b")
		a := startWitnessed(t, impl, bin, dataA, filepath.Join(dir, "witness"))
		a.stop()
		copyTree(t, dataA, dataB)
		a.daemon = a.startKbsd(t, dataA)
		a.WaitHealthy()
		b := &witnessedDaemon{daemon: a.startKbsd(t, dataB), impl: impl, noteKey: a.noteKey, origin: a.origin, w: a.w}
		b.WaitHealthy()

		ca, cb := newClient(t, a.daemon), newClient(t, b.daemon)
		ca.verifyBroker()
		cb.verifyBroker()
		ca.upload("demo/a", 1, []byte("the first broker's key.........."))
		if _, err := cb.tryUpload("demo/b", 1, []byte("the second broker's key........")); err == nil || !strings.Contains(err.Error(), api.CodeBehindWitnesses) {
			t.Fatalf("upload to the second broker = %v, want %s", err, api.CodeBehindWitnesses)
		}
		out, code := kbsctlRun(t, b.daemon, filepath.Join(dir, "ops"), "log", "witnesses")
		if code != 1 || !strings.Contains(out, "behind") || !strings.Contains(out, "inconsistent") {
			t.Errorf("kbsctl log witnesses on the second broker: exit %d\n%s", code, out)
		}
		if !strings.Contains(b.Output(), "BEHIND ITS WITNESSES") {
			t.Errorf("the second kbsd did not report the split view:\n%s", b.Output())
		}
		if s := impl.SplitViewLog; s != "" && !strings.Contains(a.w.Out.String(), s) {
			t.Errorf("%s did not log the split view:\n%s", impl.Name, a.w.Out)
		}
		// The first broker goes on being cosigned.
		ca.upload("demo/a2", 1, []byte("the first broker goes on........"))
		a.checkServedCheckpoint(t)
		b.stop()
		a.stop()
	})
}

// TestRealWitnessTrillian: kbsd with its log on a real Trillian and a real
// omniwitness (make test-trillian, which builds the witness too): the
// witness cosigns the Trillian log's checkpoints; a client requiring the
// quorum verifies the broker, uploads, and a worker gets the key with a
// witnessed receipt; after a restart on the same tree kbsd checks its
// witness again and goes on, the served checkpoint cosigned and larger.
func TestRealWitnessTrillian(t *testing.T) {
	impl, bin := witnesstest.Omniwitness(t)
	flags := trillianFlags(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "kbs")
	wd := startWitnessed(t, impl, bin, data, filepath.Join(dir, "witness"), flags...)
	if !strings.Contains(wd.Output(), "using a Trillian log") {
		t.Fatalf("kbsd did not say it uses Trillian:\n%s", wd.Output())
	}
	c := newClient(t, wd.daemon)
	c.verifyBroker()
	c.upload("demo/tw", 1, []byte("trillian and a witness..........."))
	if _, _, err := fetch(wd.daemon, attest.SNP, api.KEMX25519, "demo/tw"); err != nil {
		t.Fatal(err)
	}
	before := wd.checkServedCheckpoint(t)
	wd.stop()

	wd.daemon = wd.startKbsd(t, data, flags...)
	wd.WaitHealthy()
	c.d = wd.daemon
	c.upload("demo/tw", 2, []byte("trillian and a witness, again..."))
	if after := wd.checkServedCheckpoint(t); after <= before {
		t.Errorf("served checkpoint of size %d after a restart and an upload, %d before", after, before)
	}
	wd.stop()
}
