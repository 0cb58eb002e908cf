package tlog_test

// Process-level tests against real witnesses from the ecosystem:
// transparency-dev's omniwitness and torchwood's litewitness, each built
// from its own module (tools/witness, tools/litewitness) by
// scripts/witness.sh. Each runs when its binaries' directory is named by
// KBS_WITNESS_BIN (omniwitness, generate_keys) or KBS_LITEWITNESS_BIN
// (litewitness, witnessctl; it also needs ssh-keygen, ssh-agent and
// ssh-add), as `make test-witness` (which CI runs) does; `make test` skips
// them to stay fast.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/kbs-dev/kbs/internal/testbin"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/boltlog"
)

// runningWitness is one running witness process.
type runningWitness struct {
	url  string
	vkey string // the witness's own verifier key
	out  *testbin.SyncBuffer
	stop func()
}

// A witnessImpl is a real witness implementation the tests run.
type witnessImpl struct {
	name string
	// env names the variable holding the directory of its binaries.
	env string
	// start runs it for the log origin with key logVKey, its state in dir
	// (kept across restarts).
	start func(t testing.TB, bin, dir, origin, logVKey string) *runningWitness
	// unknownLog and untrusted are the errors it gives for an origin it
	// does not know and a checkpoint signed by another key (the spec says
	// 404 and 403; see the implementations).
	unknownLog, untrusted func(error) bool
	// splitViewLog is what it writes to its output when it refuses a split
	// view, or "".
	splitViewLog string
}

var witnessImpls = []witnessImpl{
	{
		name: "omniwitness", env: "KBS_WITNESS_BIN", start: startOmniwitness,
		// omniwitness at the pinned version answers 500 to both: its
		// checkpoint-signature error and its SQLite "no rows" for an
		// unknown origin are not mapped to a status. The client reports
		// them as unavailable: no cosignature either way.
		unknownLog:   isStatus(500, tlog.ErrWitnessUnavailable),
		untrusted:    isStatus(500, tlog.ErrWitnessUnavailable),
		splitViewLog: "INCONSISTENT CHECKPOINTS",
	},
	{
		name: "litewitness", env: "KBS_LITEWITNESS_BIN", start: startLitewitness,
		// litewitness answers 403 to an unknown origin too.
		unknownLog: isStatus(403, tlog.ErrWitnessForbidden),
		untrusted:  isStatus(403, tlog.ErrWitnessForbidden),
	},
}

func isStatus(status int, kind error) func(error) bool {
	return func(err error) bool {
		var we *tlog.WitnessError
		return errors.As(err, &we) && we.Status == status && errors.Is(err, kind)
	}
}

// builtWitnesses returns the implementations whose binaries are there,
// each with its binaries' directory.
func builtWitnesses() (impls []witnessImpl, bins []string) {
	for _, impl := range witnessImpls {
		if bin := os.Getenv(impl.env); bin != "" {
			impls, bins = append(impls, impl), append(bins, bin)
		}
	}
	return impls, bins
}

const noWitnesses = "KBS_WITNESS_BIN and KBS_LITEWITNESS_BIN are not set: `make test-witness` and `make bench-witness` build the real witnesses"

// forEachWitness runs f for each implementation whose binaries are there,
// and skips when none is.
func forEachWitness(t *testing.T, f func(t *testing.T, impl witnessImpl, bin string)) {
	impls, bins := builtWitnesses()
	if len(impls) == 0 {
		t.Skip(noWitnesses)
	}
	for i, impl := range impls {
		t.Run(impl.name, func(t *testing.T) { f(t, impl, bins[i]) })
	}
}

// startOmniwitness starts omniwitness with a key made by its own
// generate_keys.
func startOmniwitness(t testing.TB, bin, dir, origin, logVKey string) *runningWitness {
	t.Helper()
	key := filepath.Join(dir, "witness.key")
	if _, err := os.Stat(key); err != nil {
		run(t, nil, filepath.Join(bin, "generate_keys"), "--origin", "witness.kbs.test/omni",
			"--out_priv", key, "--out_pub", filepath.Join(dir, "witness.vkey"))
	}
	vkey, err := os.ReadFile(filepath.Join(dir, "witness.vkey"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("Logs:\n  - Origin: %s\n    PublicKey: %s\n", origin, logVKey)
	if err := os.WriteFile(filepath.Join(dir, "logs.yaml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return listenWitness(t, func(addr string) []string {
		return []string{filepath.Join(bin, "omniwitness"), "--listen", addr, "--metrics_listen", "",
			"--db_file", filepath.Join(dir, "witness.db"), "--additional_logs", filepath.Join(dir, "logs.yaml"),
			"--private_key_path", key}
	}, nil, func(*testbin.SyncBuffer) string { return strings.TrimSpace(string(vkey)) })
}

// startLitewitness starts litewitness with an Ed25519 SSH key held by an
// ssh-agent of its own, the log added with its witnessctl.
func startLitewitness(t testing.TB, bin, dir, origin, logVKey string) *runningWitness {
	t.Helper()
	key := filepath.Join(dir, "key")
	db := filepath.Join(dir, "lw.db")
	if _, err := os.Stat(key); err != nil {
		run(t, nil, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "litewitness test", "-f", key)
		run(t, nil, filepath.Join(bin, "witnessctl"), "add-log", "-db", db, "-origin", origin)
		run(t, nil, filepath.Join(bin, "witnessctl"), "add-key", "-db", db, "-origin", origin, "-key", logVKey)
	}
	fp := strings.Fields(run(t, nil, "ssh-keygen", "-l", "-E", "sha256", "-f", key+".pub"))[1]
	sock := filepath.Join(dir, "agent.sock")
	os.Remove(sock)
	agent := testbin.Command(t, "ssh-agent", "-D", "-a", sock)
	agentOut := &testbin.SyncBuffer{}
	agent.Stdout, agent.Stderr = agentOut, agentOut
	if err := agent.Start(); err != nil {
		t.Fatalf("ssh-agent: %v", err)
	}
	agentDone := make(chan struct{})
	go func() { agent.Wait(); close(agentDone) }()
	stopAgent := func() { testbin.KillGroup(agent); <-agentDone }
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			stopAgent()
			t.Fatalf("ssh-agent did not create %s:\n%s", sock, agentOut)
		}
	}
	run(t, []string{"SSH_AUTH_SOCK=" + sock}, "ssh-add", "-q", key)
	return listenWitness(t, func(addr string) []string {
		return []string{filepath.Join(bin, "litewitness"), "-name", "witness.kbs.test/lite", "-db", db,
			"-ssh-agent", sock, "-key", fp, "-listen", addr}
	}, stopAgent, func(out *testbin.SyncBuffer) string {
		m := regexp.MustCompile(`msg="verifier key" vkey=(\S+)`).FindStringSubmatch(out.String())
		if m == nil {
			t.Fatalf("litewitness did not print its verifier key:\n%s", out)
		}
		return strings.Trim(m[1], `"`)
	})
}

// run runs a setup command and returns its standard output.
func run(t testing.TB, env []string, name string, args ...string) string {
	t.Helper()
	cmd := testbin.Command(t, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.Bytes())
	}
	return string(out)
}

// listenWitness starts the command args(addr) on a free loopback port and
// waits until it listens, trying another port if that one was taken
// meanwhile. after runs when the witness is stopped; vkey reads the
// witness's verifier key once it listens.
func listenWitness(t testing.TB, args func(addr string) []string, after func(), vkey func(*testbin.SyncBuffer) string) *runningWitness {
	t.Helper()
	for attempt := 0; ; attempt++ {
		addr := freeLoopbackAddr(t)
		w, portTaken := tryListen(t, addr, args(addr))
		if w != nil {
			stop := w.stop
			w.stop = sync.OnceFunc(func() {
				stop()
				if after != nil {
					after()
				}
			})
			w.vkey = vkey(w.out)
			t.Cleanup(w.stop)
			return w
		}
		if !portTaken || attempt == 3 {
			t.Fatalf("%s did not start", a0(args(addr)))
		}
	}
}

func a0(a []string) string { return filepath.Base(a[0]) }

// tryListen starts a and waits until it listens on addr. It returns nil
// and true if the process exited because addr was taken.
func tryListen(t testing.TB, addr string, a []string) (*runningWitness, bool) {
	t.Helper()
	out := &testbin.SyncBuffer{}
	cmd := testbin.Command(t, a[0], a[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() { testbin.KillGroup(cmd); <-exited }
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		select {
		case <-exited:
			if strings.Contains(out.String(), "address already in use") {
				return nil, true
			}
			t.Fatalf("%s exited:\n%s", a0(a), out)
		default:
		}
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return &runningWitness{url: "http://" + addr, out: out, stop: stop}, false
		}
	}
	stop()
	t.Fatalf("%s did not listen on %s:\n%s", a0(a), addr, out)
	return nil, false
}

func freeLoopbackAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// realWitnessEnv is a boltlog log and a real witness for it.
type realWitnessEnv struct {
	impl    witnessImpl
	bin     string
	dir     string
	wdir    string
	origin  string
	signer  note.Signer
	logV    note.Verifier
	logVKey string
	log     *boltlog.Log
	w       *runningWitness
	witness tlog.Witness
	client  *tlog.WitnessClient
}

func newRealWitnessEnv(t testing.TB, impl witnessImpl, bin string) *realWitnessEnv {
	t.Helper()
	e := &realWitnessEnv{impl: impl, bin: bin, dir: t.TempDir(), origin: "kbs/0123456789abcdef0123456789abcdef"}
	e.signer, e.logV, e.logVKey = testLogKey(t, e.origin)
	e.log = e.openLog(t, "kbs.db")
	e.wdir = filepath.Join(e.dir, "w")
	if err := os.Mkdir(e.wdir, 0o700); err != nil {
		t.Fatal(err)
	}
	e.w = impl.start(t, bin, e.wdir, e.origin, e.logVKey)
	var err error
	if e.witness, err = tlog.NewWitness(impl.name, e.w.vkey, e.w.url); err != nil {
		t.Fatalf("the witness's own verifier key %q: %v", e.w.vkey, err)
	}
	if e.client, err = tlog.NewWitnessClient(e.witness, nil, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return e
}

// restartWitness stops the witness and starts it again on its state.
func (e *realWitnessEnv) restartWitness(t testing.TB) {
	t.Helper()
	e.w.stop()
	e.w = e.impl.start(t, e.bin, e.wdir, e.origin, e.logVKey)
	e.witness.URL = e.w.url
	var err error
	if e.client, err = tlog.NewWitnessClient(e.witness, nil, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

func (e *realWitnessEnv) openLog(t testing.TB, name string) *boltlog.Log {
	t.Helper()
	return openSignedLog(t, filepath.Join(e.dir, name), e.origin, e.signer, e.logV)
}

func appendEntries(t testing.TB, l *boltlog.Log, tag string, n int) tlog.SignedCheckpoint {
	t.Helper()
	cp, err := l.Checkpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, cp, err = l.Append(context.Background(), fmt.Appendf(nil, `{"type":"test","tag":%q,"i":%d}`, tag, i)); err != nil {
			t.Fatal(err)
		}
	}
	return cp
}

// checkCosigned verifies a checkpoint cosigned by the real witness three
// ways: with our Quorum, with golang.org/x/mod/sumdb/note given the log's
// key and the witness's own verifier key, and by the cosigned message
// rebuilt from the spec.
func (e *realWitnessEnv) checkCosigned(t testing.TB, cp tlog.SignedCheckpoint, sig note.Signature) []byte {
	t.Helper()
	msg, err := tlog.MergeSignatures(cp.Note, sig)
	if err != nil {
		t.Fatal(err)
	}
	q, _ := tlog.NewQuorum(1, e.witness)
	got, err := q.Verify(msg, e.origin, e.logV)
	if err != nil {
		t.Fatalf("Quorum.Verify(cosigned by %s): %v\n%s", e.impl.name, err, msg)
	}
	if got.Root != cp.Root || len(got.Cosignatures) != 1 {
		t.Fatalf("Quorum.Verify = %+v", got)
	}
	logV, err := note.NewVerifier(e.logVKey)
	if err != nil {
		t.Fatal(err)
	}
	n, err := note.Open(msg, note.VerifierList(logV, e.witness.Key))
	if err != nil || len(n.Sigs) != 2 || n.Sigs[1].Name != e.witness.Key.Name() {
		t.Fatalf("x/mod note.Open(log key, witness vkey %s) = %+v, %v", e.w.vkey, n, err)
	}
	// Someone else's key with the witness's name does not verify it.
	other := testCosigner(t, e.witness.Key.Name(), "impostor", fixedTime)
	ov, _ := tlog.NewCosignatureVerifier(other.VerifierKey())
	if n, err := note.Open(msg, note.VerifierList(ov)); err == nil {
		t.Fatalf("the cosignature verified with another key: %+v", n)
	}
	return msg
}

func TestRealWitnessCosignsBoltlog(t *testing.T) {
	forEachWitness(t, testRealWitnessCosignsBoltlog)
}

func testRealWitnessCosignsBoltlog(t *testing.T, impl witnessImpl, bin string) {
	e := newRealWitnessEnv(t, impl, bin)
	ctx := t.Context()
	// The empty tree, then growing trees across tile boundaries: each
	// needs a consistency proof from the last cosigned size.
	var cps []tlog.SignedCheckpoint
	cp, _ := e.log.Checkpoint(ctx)
	cps = append(cps, cp)
	for _, n := range []int{1, 2, 5, 250, 300} {
		cps = append(cps, appendEntries(t, e.log, "grow", n))
	}
	var last []byte
	for _, cp := range cps {
		sig, err := e.client.Cosign(ctx, cp, e.log.ConsistencyProof)
		if err != nil {
			t.Fatalf("Cosign(size %d) with %s: %v\n%s", cp.Size, impl.name, err, e.w.out)
		}
		last = e.checkCosigned(t, cp, sig)
		ts, _ := tlog.CosignatureTime(sig)
		if d := time.Since(ts); d < -time.Minute || d > time.Minute {
			t.Errorf("cosignature timestamp %v is not about now", ts)
		}
	}
	if !bytes.HasPrefix(last, cps[len(cps)-1].Note) {
		t.Errorf("the cosigned note does not start with the log's note")
	}

	// A log restarting with no memory of the witness's size: 409, then a
	// proof from the witness's size.
	cp = appendEntries(t, e.log, "restart", 3)
	fresh, _ := tlog.NewWitnessClient(e.witness, nil, 10*time.Second)
	_, err := fresh.AddCheckpoint(ctx, 0, nil, cp)
	var we *tlog.WitnessError
	if !errors.As(err, &we) || !errors.Is(err, tlog.ErrWitnessConflict) || we.WitnessSize != cps[len(cps)-1].Size {
		t.Fatalf("AddCheckpoint(old 0) to a witness at %d = %v", cps[len(cps)-1].Size, err)
	}
	sig, err := fresh.Cosign(ctx, cp, e.log.ConsistencyProof)
	if err != nil {
		t.Fatalf("Cosign after a restart: %v", err)
	}
	e.checkCosigned(t, cp, sig)
	// The same checkpoint again: cosigned again, with the same root.
	if _, err := fresh.Cosign(ctx, cp, e.log.ConsistencyProof); err != nil {
		t.Errorf("Cosign(same checkpoint again): %v", err)
	}

	// A checkpoint the witness does not trust: another log key, same origin.
	otherSigner, _, _ := testLogKey(t, "kbs/0123456789abcdef0123456789abcdef-other")
	bad, err := note.Sign(&note.Note{Text: string(tlog.FormatCheckpoint(e.origin, cp.Root))}, otherSigner)
	if err != nil {
		t.Fatal(err)
	}
	// The spec says 403 for this and 404 for an unknown log; each
	// implementation's answer is in witnessImpls.
	_, err = fresh.AddCheckpoint(ctx, cp.Size, nil, tlog.SignedCheckpoint{Origin: e.origin, Root: cp.Root, Note: bad})
	if !impl.untrusted(err) {
		t.Errorf("AddCheckpoint(signed by another key) = %v", err)
	}
	// A log the witness does not know.
	uSigner, _, _ := testLogKey(t, "kbs/unknown")
	unknown, _ := note.Sign(&note.Note{Text: string(tlog.FormatCheckpoint("kbs/unknown", cp.Root))}, uSigner)
	_, err = fresh.AddCheckpoint(ctx, 0, nil, tlog.SignedCheckpoint{Origin: "kbs/unknown", Root: cp.Root, Note: unknown})
	if !impl.unknownLog(err) {
		t.Errorf("AddCheckpoint(unknown origin) = %v", err)
	}
	// A wrong proof.
	next := appendEntries(t, e.log, "bad proof", 7)
	p, _ := e.log.ConsistencyProof(ctx, cp.Size, next.Size)
	p[0][0] ^= 1
	if _, err := fresh.AddCheckpoint(ctx, cp.Size, p, next); !errors.Is(err, tlog.ErrWitnessInconsistent) {
		t.Errorf("AddCheckpoint(bad proof) = %v, want ErrWitnessInconsistent", err)
	}
}

// TestRealWitnessSplitView: two logs with the same key and origin but
// different entries (two brokers presenting different trees) reach the
// same witness: it cosigns the first and refuses the other, at the same
// size and at a larger one.
func TestRealWitnessSplitView(t *testing.T) {
	forEachWitness(t, func(t *testing.T, impl witnessImpl, bin string) {
		testRealWitnessSplitView(t, newRealWitnessEnv(t, impl, bin))
	})
}

func testRealWitnessSplitView(t *testing.T, e *realWitnessEnv) {
	ctx := t.Context()
	honest := appendEntries(t, e.log, "honest", 20)
	if _, err := e.client.Cosign(ctx, honest, e.log.ConsistencyProof); err != nil {
		t.Fatalf("Cosign(honest): %v", err)
	}
	fork := e.openLog(t, "fork.db")
	forked := appendEntries(t, fork, "forked", 20)
	if forked.Hash == honest.Hash {
		t.Fatal("the fork has the honest root")
	}
	// The other broker's own client, as a second kbsd would have.
	other, _ := tlog.NewWitnessClient(e.witness, nil, 10*time.Second)
	_, err := other.Cosign(ctx, forked, fork.ConsistencyProof)
	var we *tlog.WitnessError
	if !errors.As(err, &we) || !errors.Is(err, tlog.ErrWitnessInconsistent) || we.Status != http.StatusUnprocessableEntity {
		t.Fatalf("Cosign(split view, same size) = %v, want ErrWitnessInconsistent (422)", err)
	}
	forked = appendEntries(t, fork, "forked more", 30)
	if _, err := other.Cosign(ctx, forked, fork.ConsistencyProof); !errors.Is(err, tlog.ErrWitnessInconsistent) {
		t.Fatalf("Cosign(split view, larger) = %v, want ErrWitnessInconsistent", err)
	}
	// The honest log goes on being cosigned.
	honest = appendEntries(t, e.log, "honest", 5)
	sig, err := e.client.Cosign(ctx, honest, e.log.ConsistencyProof)
	if err != nil {
		t.Fatalf("Cosign(honest, after the fork was refused): %v", err)
	}
	e.checkCosigned(t, honest, sig)
	// The witness kept the evidence: both checkpoints in its log.
	if out := e.w.out.String(); e.impl.splitViewLog != "" && !strings.Contains(out, e.impl.splitViewLog) {
		t.Errorf("%s did not report the split view:\n%s", e.impl.name, out)
	}
}

// TestRealWitnessRollback: the host copies the log's whole store, lets the
// log grow and get cosigned, then restores the copy (a restored snapshot).
// The witness refuses the restored log's checkpoints: it cosigned a larger
// tree (409, ErrWitnessAhead); and once the restored log grows past the
// witness's size, its tree is not an extension of what the witness saw
// (422, ErrWitnessInconsistent). The witness keeps this across its own
// restart (SQLite state).
func TestRealWitnessRollback(t *testing.T) {
	forEachWitness(t, func(t *testing.T, impl witnessImpl, bin string) {
		testRealWitnessRollback(t, newRealWitnessEnv(t, impl, bin))
	})
}

func testRealWitnessRollback(t *testing.T, e *realWitnessEnv) {
	ctx := t.Context()
	old := appendEntries(t, e.log, "before snapshot", 10)
	oldSig, err := e.client.Cosign(ctx, old, e.log.ConsistencyProof)
	if err != nil {
		t.Fatal(err)
	}
	oldNote := e.checkCosigned(t, old, oldSig)
	if err := e.log.Close(); err != nil {
		t.Fatal(err)
	}
	snapshot, err := os.ReadFile(filepath.Join(e.dir, "kbs.db"))
	if err != nil {
		t.Fatal(err)
	}
	e.log = e.openLog(t, "kbs.db")
	newer := appendEntries(t, e.log, "after snapshot", 10)
	if _, err := e.client.Cosign(ctx, newer, e.log.ConsistencyProof); err != nil {
		t.Fatal(err)
	}
	e.log.Close()
	if err := os.WriteFile(filepath.Join(e.dir, "restored.db"), snapshot, 0o600); err != nil {
		t.Fatal(err)
	}
	// The witness restarts too: its refusal rests on its stored state.
	e.restartWitness(t)
	restored := e.openLog(t, "restored.db")
	cp, _ := restored.Checkpoint(ctx)
	if cp.Root != old.Root {
		t.Fatalf("restored log at %d, want %d", cp.Size, old.Size)
	}
	client, _ := tlog.NewWitnessClient(e.witness, nil, 10*time.Second)
	_, err = client.Cosign(ctx, cp, restored.ConsistencyProof)
	var we *tlog.WitnessError
	if !errors.As(err, &we) || !errors.Is(err, tlog.ErrWitnessAhead) || we.WitnessSize != newer.Size {
		t.Fatalf("Cosign(restored snapshot at %d) = %v, want ErrWitnessAhead at %d", cp.Size, err, newer.Size)
	}
	// An old checkpoint replayed to the witness: same answer.
	if _, err := client.Cosign(ctx, old, restored.ConsistencyProof); !errors.Is(err, tlog.ErrWitnessAhead) {
		t.Errorf("Cosign(old checkpoint replayed) = %v, want ErrWitnessAhead", err)
	}
	// The restored log grows past the witness's size with other entries.
	grown := appendEntries(t, restored, "rewritten history", 15)
	_, err = client.Cosign(ctx, grown, restored.ConsistencyProof)
	if !errors.Is(err, tlog.ErrWitnessInconsistent) {
		t.Fatalf("Cosign(restored log grown past the witness) = %v, want ErrWitnessInconsistent", err)
	}
	// And a quorum built on this witness reports the log as behind.
	q, _ := tlog.NewQuorum(1, e.witness)
	g, _ := tlog.NewWitnessGroup(q, nil, 10*time.Second)
	res, err := g.Cosign(ctx, cp, restored.ConsistencyProof)
	var qe *tlog.QuorumError
	if !errors.As(err, &qe) || !slices.Equal(qe.Missing, []string{e.impl.name}) || len(res.Behind(q)) != 1 {
		t.Errorf("WitnessGroup.Cosign(restored) = %v; Behind = %v", err, res.Behind(q))
	}
	// All the restored broker can show a client with no stored state is
	// its old checkpoint with the old cosignature: valid, but not fresh
	// once the client's freshness window has passed (the honest broker
	// refreshes its cosignatures every minute; this one cannot).
	cosigned, err := q.Verify(oldNote, e.origin, e.logV)
	if err != nil {
		t.Fatalf("the old cosigned checkpoint: %v", err)
	}
	later := cosigned.Cosignatures[0].Time.Add(11 * time.Minute)
	if err := q.CheckFresh(cosigned, later, 10*time.Minute); !errors.As(err, &qe) || !strings.Contains(err.Error(), e.impl.name) {
		t.Errorf("CheckFresh(old cosignature, 11 minutes later) = %v, want a QuorumError naming the witness", err)
	}
	// The broker's start-up check on the restored store halts.
	wit, err := tlog.NewWitnessing(tlog.WitnessingConfig{Group: g, Log: restored})
	if err != nil {
		t.Fatal(err)
	}
	var be *tlog.BehindError
	if err := wit.Check(ctx); !errors.As(err, &be) || wit.Halted() == nil {
		t.Errorf("Witnessing.Check(restored store) = %v, want a *BehindError", err)
	}
}

// TestRealWitnessDown: a witness that is not running is reported
// unavailable, and a group without it lacks a quorum.
func TestRealWitnessDown(t *testing.T) {
	forEachWitness(t, func(t *testing.T, impl witnessImpl, bin string) {
		testRealWitnessDown(t, newRealWitnessEnv(t, impl, bin))
	})
}

func testRealWitnessDown(t *testing.T, e *realWitnessEnv) {
	cp := appendEntries(t, e.log, "x", 2)
	e.w.stop()
	_, err := e.client.Cosign(t.Context(), cp, e.log.ConsistencyProof)
	if !errors.Is(err, tlog.ErrWitnessUnavailable) {
		t.Fatalf("Cosign(witness down) = %v, want ErrWitnessUnavailable", err)
	}
}

// forEachWitnessB is forEachWitness for benchmarks.
func forEachWitnessB(b *testing.B, f func(b *testing.B, impl witnessImpl, bin string)) {
	impls, bins := builtWitnesses()
	if len(impls) == 0 {
		b.Skip(noWitnesses)
	}
	for i, impl := range impls {
		b.Run("impl="+impl.name, func(b *testing.B) { f(b, impl, bins[i]) })
	}
}

// reportLatency reports the p50 and p99 of lat.
func reportLatency(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// BenchmarkRealWitnessCosign measures the time from a signed checkpoint to
// the real witness's verified cosignature, one new entry per checkpoint
// (so each request carries a consistency proof): the latency a log pays
// per witness, on loopback. It reports p50 and p99.
func BenchmarkRealWitnessCosign(b *testing.B) {
	forEachWitnessB(b, func(b *testing.B, impl witnessImpl, bin string) {
		e := newRealWitnessEnv(b, impl, bin)
		ctx := context.Background()
		cp := appendEntries(b, e.log, "warm", 100)
		if _, err := e.client.Cosign(ctx, cp, e.log.ConsistencyProof); err != nil {
			b.Fatal(err)
		}
		var lat []time.Duration
		for b.Loop() {
			b.StopTimer()
			cp := appendEntries(b, e.log, "bench", 1)
			b.StartTimer()
			start := time.Now()
			if _, err := e.client.Cosign(ctx, cp, e.log.ConsistencyProof); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(start))
		}
		reportLatency(b, lat)
	})
}

// BenchmarkRealWitnessAppendToCosigned measures, with 1 and 3 real
// witnesses (quorum: all of them), the time from a durable append to a
// checkpoint that contains the entry and carries the quorum's
// cosignatures, through Witnessing (Notify, then WaitCosigned): what a
// release would wait for if it waited for witnesses. Appends are
// sequential, one entry per checkpoint.
func BenchmarkRealWitnessAppendToCosigned(b *testing.B) {
	forEachWitnessB(b, func(b *testing.B, impl witnessImpl, bin string) {
		for _, n := range []int{1, 3} {
			b.Run(fmt.Sprintf("witnesses=%d", n), func(b *testing.B) {
				e := newRealWitnessEnv(b, impl, bin)
				ws := []tlog.Witness{e.witness}
				for i := 1; i < n; i++ {
					dir := filepath.Join(e.dir, fmt.Sprintf("w%d", i))
					if err := os.Mkdir(dir, 0o700); err != nil {
						b.Fatal(err)
					}
					rw := impl.start(b, bin, dir, e.origin, e.logVKey)
					w, err := tlog.NewWitness(fmt.Sprintf("%s-%d", impl.name, i), rw.vkey, rw.url)
					if err != nil {
						b.Fatal(err)
					}
					ws = append(ws, w)
				}
				q, err := tlog.NewQuorum(n, ws...)
				if err != nil {
					b.Fatal(err)
				}
				g, _ := tlog.NewWitnessGroup(q, nil, 10*time.Second)
				wit, _ := tlog.NewWitnessing(tlog.WitnessingConfig{Group: g, Log: e.log})
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				go wit.Run(ctx)
				var lat []time.Duration
				for b.Loop() {
					start := time.Now()
					_, cp, err := e.log.Append(ctx, []byte(`{"type":"bench"}`))
					if err != nil {
						b.Fatal(err)
					}
					wit.Notify()
					if _, err := wit.WaitCosigned(ctx, cp.Size); err != nil {
						b.Fatal(err)
					}
					lat = append(lat, time.Since(start))
				}
				reportLatency(b, lat)
			})
		}
	})
}
