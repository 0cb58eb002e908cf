package witnesstest

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/internal/testbin"
	"github.com/kbs-dev/kbs/internal/witnesskey"
	"github.com/kbs-dev/kbs/tlog"
)

// Real witnesses: transparency-dev's omniwitness and torchwood's
// litewitness, each built from its own module (tools/witness,
// tools/litewitness) by scripts/witness.sh. An implementation runs when
// the directory of its binaries is named by its Env variable
// (KBS_WITNESS_BIN: omniwitness, generate_keys; KBS_LITEWITNESS_BIN:
// litewitness, witnessctl, which also needs ssh-keygen, ssh-agent and
// ssh-add), as `make test-witness` and `make bench-witness` set them;
// `make test` skips the tests that need them.

// Running is one running witness process.
type Running struct {
	// URL is its submission prefix; VKey its own verifier key.
	URL  string
	VKey string
	// Out is what it wrote to stdout and stderr.
	Out *testbin.SyncBuffer
	// Pid is its process id (for benchmarks that count its CPU time).
	Pid int
	// Stop kills it (and its helpers) and waits; calling it again does
	// nothing. It runs when the test ends.
	Stop func()
}

// An Impl is a real witness implementation.
type Impl struct {
	Name string
	// Env names the variable holding the directory of its binaries.
	Env string
	// VKey returns the verifier key of the witness whose state is in dir,
	// creating its key if there is none yet, without starting it (a
	// manifest names the key before the witness knows the log).
	VKey func(t testing.TB, bin, dir string) string
	// Start runs the witness whose state is in dir (kept across restarts)
	// for the log origin with note verifier key logVKey, on the loopback
	// address addr ("": a free port), and waits until it listens.
	Start func(t testing.TB, bin, dir, origin, logVKey, addr string) *Running
	// UnknownLog and Untrusted recognize the errors it gives for an origin
	// it does not know and a checkpoint signed by another key (the spec
	// says 404 and 403; see Impls).
	UnknownLog, Untrusted func(error) bool
	// SplitViewLog is what it writes to its output when it refuses a split
	// view, or "".
	SplitViewLog string
}

// Impls are the real witness implementations.
var Impls = []Impl{
	{
		Name: "omniwitness", Env: "KBS_WITNESS_BIN", VKey: omniVKey, Start: startOmniwitness,
		// omniwitness at the pinned version answers 500 to both: its
		// checkpoint-signature error and its SQLite "no rows" for an
		// unknown origin are not mapped to a status. The client reports
		// them as unavailable: no cosignature either way.
		UnknownLog:   IsStatus(500, tlog.ErrWitnessUnavailable),
		Untrusted:    IsStatus(500, tlog.ErrWitnessUnavailable),
		SplitViewLog: "INCONSISTENT CHECKPOINTS",
	},
	{
		Name: "litewitness", Env: "KBS_LITEWITNESS_BIN", VKey: liteVKey, Start: startLitewitness,
		// litewitness answers 403 to an unknown origin too.
		UnknownLog: IsStatus(403, tlog.ErrWitnessForbidden),
		Untrusted:  IsStatus(403, tlog.ErrWitnessForbidden),
	},
}

// IsStatus returns a function recognizing a *tlog.WitnessError with the
// HTTP status and the sentinel kind.
func IsStatus(status int, kind error) func(error) bool {
	return func(err error) bool {
		var we *tlog.WitnessError
		return errors.As(err, &we) && we.Status == status && errors.Is(err, kind)
	}
}

// Built returns the implementations whose binaries are there, each with
// its binaries' directory.
func Built() (impls []Impl, bins []string) {
	for _, impl := range Impls {
		if bin := os.Getenv(impl.Env); bin != "" {
			impls, bins = append(impls, impl), append(bins, bin)
		}
	}
	return impls, bins
}

// NotBuilt is the reason tests give when they skip for want of real
// witnesses.
const NotBuilt = "KBS_WITNESS_BIN and KBS_LITEWITNESS_BIN are not set: `make test-witness` and `make bench-witness` build the real witnesses"

// ForEach runs f as a subtest for each implementation whose binaries are
// there, and skips when none is.
func ForEach(t *testing.T, f func(t *testing.T, impl Impl, bin string)) {
	impls, bins := Built()
	if len(impls) == 0 {
		t.Skip(NotBuilt)
	}
	for i, impl := range impls {
		t.Run(impl.Name, func(t *testing.T) { f(t, impl, bins[i]) })
	}
}

// ForEachB is ForEach for benchmarks.
func ForEachB(b *testing.B, f func(b *testing.B, impl Impl, bin string)) {
	impls, bins := Built()
	if len(impls) == 0 {
		b.Skip(NotBuilt)
	}
	for i, impl := range impls {
		b.Run("impl="+impl.Name, func(b *testing.B) { f(b, impl, bins[i]) })
	}
}

// Omniwitness returns omniwitness and its binaries' directory, and skips
// the test when it is not built.
func Omniwitness(t testing.TB) (Impl, string) {
	t.Helper()
	bin := os.Getenv(Impls[0].Env)
	if bin == "" {
		t.Skip(NotBuilt)
	}
	return Impls[0], bin
}

// omniVKey makes omniwitness's key with its own generate_keys, once.
func omniVKey(t testing.TB, bin, dir string) string {
	t.Helper()
	key := filepath.Join(dir, "witness.key")
	if _, err := os.Stat(key); err != nil {
		Run(t, nil, filepath.Join(bin, "generate_keys"), "--origin", "witness.kbs.test/omni",
			"--out_priv", key, "--out_pub", filepath.Join(dir, "witness.vkey"))
	}
	vkey, err := os.ReadFile(filepath.Join(dir, "witness.vkey"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(vkey))
}

// startOmniwitness starts omniwitness with a key made by its own
// generate_keys.
func startOmniwitness(t testing.TB, bin, dir, origin, logVKey, addr string) *Running {
	t.Helper()
	vkey := omniVKey(t, bin, dir)
	cfg := fmt.Sprintf("Logs:\n  - Origin: %s\n    PublicKey: %s\n", origin, logVKey)
	if err := os.WriteFile(filepath.Join(dir, "logs.yaml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return listen(t, addr, func(addr string) []string {
		return []string{filepath.Join(bin, "omniwitness"), "--listen", addr, "--metrics_listen", "",
			"--db_file", filepath.Join(dir, "witness.db"), "--additional_logs", filepath.Join(dir, "logs.yaml"),
			"--private_key_path", filepath.Join(dir, "witness.key")}
	}, nil, func(*testbin.SyncBuffer) string { return vkey })
}

// liteName is the key name the tests give litewitness (-name).
const liteName = "witness.kbs.test/lite"

// liteVKey makes litewitness's Ed25519 SSH key, once, and returns the
// verifier key litewitness will print for it: the key name, and the
// public key of the SSH key.
func liteVKey(t testing.TB, bin, dir string) string {
	t.Helper()
	key := filepath.Join(dir, "key")
	if _, err := os.Stat(key); err != nil {
		Run(t, nil, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "litewitness test", "-f", key)
	}
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	// "ssh-ed25519 <base64 of string "ssh-ed25519", string key> comment"
	f := strings.Fields(string(pub))
	blob, err := base64.StdEncoding.DecodeString(f[1])
	if err != nil || len(blob) < 4+11+4+32 || binary.BigEndian.Uint32(blob[4+11:]) != 32 {
		t.Fatalf("%s is not an ssh-ed25519 public key", key+".pub")
	}
	k, err := witnesskey.New(liteName, blob[len(blob)-32:])
	if err != nil {
		t.Fatal(err)
	}
	return k.String()
}

// startLitewitness starts litewitness with an Ed25519 SSH key held by an
// ssh-agent of its own, the log added with its witnessctl.
func startLitewitness(t testing.TB, bin, dir, origin, logVKey, addr string) *Running {
	t.Helper()
	key := filepath.Join(dir, "key")
	want := liteVKey(t, bin, dir)
	db := filepath.Join(dir, "lw.db")
	sum := sha256.Sum256([]byte(origin + "\n" + logVKey))
	added := filepath.Join(dir, "log-"+hex.EncodeToString(sum[:8]))
	if _, err := os.Stat(added); err != nil {
		Run(t, nil, filepath.Join(bin, "witnessctl"), "add-log", "-db", db, "-origin", origin)
		Run(t, nil, filepath.Join(bin, "witnessctl"), "add-key", "-db", db, "-origin", origin, "-key", logVKey)
		if err := os.WriteFile(added, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	fp := strings.Fields(Run(t, nil, "ssh-keygen", "-l", "-E", "sha256", "-f", key+".pub"))[1]
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
	Run(t, []string{"SSH_AUTH_SOCK=" + sock}, "ssh-add", "-q", key)
	return listen(t, addr, func(addr string) []string {
		return []string{filepath.Join(bin, "litewitness"), "-name", liteName, "-db", db,
			"-ssh-agent", sock, "-key", fp, "-listen", addr}
	}, stopAgent, func(out *testbin.SyncBuffer) string {
		m := regexp.MustCompile(`msg="verifier key" vkey=(\S+)`).FindStringSubmatch(out.String())
		if m == nil {
			t.Fatalf("litewitness did not print its verifier key:\n%s", out)
		}
		got := strings.Trim(m[1], `"`)
		if got != want {
			t.Fatalf("litewitness prints the verifier key %s, the key file gives %s", got, want)
		}
		return got
	})
}

// Run runs a setup command and returns its standard output; it fails the
// test if the command fails.
func Run(t testing.TB, env []string, name string, args ...string) string {
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

// listen starts the command args(addr) on fixed, or on a free loopback
// port when fixed is "", and waits until it listens, trying another free
// port if that one was taken meanwhile. after runs when the witness is
// stopped; vkey reads the witness's verifier key once it listens.
func listen(t testing.TB, fixed string, args func(addr string) []string, after func(), vkey func(*testbin.SyncBuffer) string) *Running {
	t.Helper()
	for attempt := 0; ; attempt++ {
		addr := fixed
		if addr == "" {
			addr = FreeLoopbackAddr(t)
		}
		w, portTaken := tryListen(t, addr, args(addr))
		if w != nil {
			stop := w.Stop
			w.Stop = sync.OnceFunc(func() {
				stop()
				if after != nil {
					after()
				}
			})
			w.VKey = vkey(w.Out)
			t.Cleanup(w.Stop)
			return w
		}
		if !portTaken || attempt == 3 || fixed != "" {
			t.Fatalf("%s did not start", a0(args(addr)))
		}
	}
}

func a0(a []string) string { return filepath.Base(a[0]) }

// tryListen starts a and waits until it listens on addr. It returns nil
// and true if the process exited because addr was taken.
func tryListen(t testing.TB, addr string, a []string) (*Running, bool) {
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
			return &Running{URL: "http://" + addr, Out: out, Stop: stop, Pid: cmd.Process.Pid}, false
		}
	}
	stop()
	t.Fatalf("%s did not listen on %s:\n%s", a0(a), addr, out)
	return nil, false
}

// FreeLoopbackAddr returns a loopback address whose port was free a moment
// ago.
func FreeLoopbackAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
