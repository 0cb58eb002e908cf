package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/internal/hostilebroker"
	"github.com/kbs-dev/kbs/internal/testbin"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/audit/audittest"
	"github.com/kbs-dev/kbs/tlog"
)

// These tests run kbsctl as a process against a broker that lies
// (internal/hostilebroker): each command ends, within bounded time and
// memory, with exit 1 (what arrived does not verify) or 2 (it could not
// be had: too large, too slow, redirected, beyond a limit), never 0.

// Bounds every kbsctl process of these tests must stay within. The wall
// bound only guards termination (a process still running is killed and
// the test fails): what they take is logged, and measured by
// BenchmarkHostileAudit.
const (
	hostileWall = 2 * time.Minute
	hostileRSS  = 256 << 20
)

// child is how a kbsctl process ended.
type child struct {
	code           int
	stdout, stderr string
	outBytes       int64 // all it wrote to stdout and stderr
	wall           time.Duration
	peakRSS        int64 // bytes
}

// capped keeps the first 1 MiB written to it and counts the rest.
type capped struct {
	buf bytes.Buffer
	n   atomic.Int64
}

func (c *capped) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	if room := 1<<20 - c.buf.Len(); room > 0 {
		c.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// runKbsctl runs the kbsctl binary with args and returns how it ended,
// with its peak resident memory (testbin.MeasuredCommand). A process that
// does not end within hostileWall is killed and fails the test.
func runKbsctl(t testing.TB, args ...string) child {
	t.Helper()
	cmd, peak := testbin.MeasuredCommand(t, filepath.Dir(kbsdBin), kbsctlBinary(t), args...)
	var out, errb capped
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(hostileWall, func() { testbin.KillGroup(cmd) })
	err := cmd.Wait()
	stopped := timer.Stop()
	c := child{stdout: out.buf.String(), stderr: errb.buf.String(), outBytes: out.n.Load() + errb.n.Load(), wall: time.Since(start)}
	if !stopped {
		t.Fatalf("kbsctl %s did not end within %v", strings.Join(args, " "), hostileWall)
	}
	var ee *exec.ExitError
	if err != nil && !errorsAs(err, &ee) {
		t.Fatal(err)
	}
	c.code = cmd.ProcessState.ExitCode()
	if c.peakRSS = peak(); c.peakRSS == 0 {
		t.Fatalf("kbsctl %s: no peak RSS measured", strings.Join(args, " "))
	}
	return c
}

func errorsAs(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*target = e
	}
	return ok
}

// expect checks that c ended with exit want, within the memory bound,
// with stderr containing each of says.
func (c child) expect(t testing.TB, want int, says ...string) {
	t.Helper()
	t.Logf("exit %d in %v, peak RSS %.1f MiB, %d bytes of output", c.code, c.wall.Round(time.Millisecond), float64(c.peakRSS)/(1<<20), c.outBytes)
	if c.code != want {
		t.Logf("stderr: %.2000s", c.stderr)
	}
	if c.code != want {
		t.Fatalf("exit %d, want %d\nstdout:\n%.2000s\nstderr:\n%.4000s", c.code, want, c.stdout, c.stderr)
	}
	if strings.Contains(c.stdout, "audit OK") {
		t.Fatalf("said audit OK:\n%.2000s", c.stdout)
	}
	if c.peakRSS > hostileRSS {
		t.Errorf("peak RSS %d MiB, more than %d MiB", c.peakRSS>>20, hostileRSS>>20)
	}
	for _, s := range says {
		if !strings.Contains(c.stderr, s) {
			t.Errorf("stderr does not say %q:\n%.4000s", s, c.stderr)
		}
	}
}

// TestHostileAudit: 'kbsctl audit' against a broker that lies.
func TestHostileAudit(t *testing.T) {
	small := hostilebroker.NewLog(t, 700, 1, hostilebroker.Malformed(60))
	audit := func(s *hostilebroker.Server, l *hostilebroker.Log, extra ...string) []string {
		return append([]string{"--addr", s.Addr, "--state", t.TempDir(), "audit", "--note-key", l.NoteKey}, extra...)
	}
	t.Run("checkpoint sizes at and around 2^62", func(t *testing.T) {
		for _, size := range []uint64{tlog.MaxTreeSize + 1, 1<<62 - 1, 1 << 62, 1<<62 + 1, 1 << 63, 1<<64 - 1} {
			s := hostilebroker.Serve(t, small.Handler(small.Sign(size, small.Root)))
			runKbsctl(t, audit(s, small)...).expect(t, 1, "VERIFICATION FAILED", "above the largest")
		}
	})
	t.Run("the largest size, tiles of nothing", func(t *testing.T) {
		s := hostilebroker.Serve(t, small.Handler(small.Sign(tlog.MaxTreeSize, small.Root)))
		runKbsctl(t, audit(s, small)...).expect(t, 1, "VERIFICATION FAILED")
		runKbsctl(t, audit(s, small, "--max-entries", "1000000")...).expect(t, 2, "more than the 1000000 this audit accepts")
		runKbsctl(t, audit(s, small, "--max-growth", "1000000")...).expect(t, 2, "beyond the stored checkpoint")
	})
	t.Run("endless checkpoint", func(t *testing.T) {
		s := hostilebroker.Serve(t, small.Handler(nil))
		s.Override("/log/checkpoint", hostilebroker.Endless(http.StatusOK, "text/plain", "kbs/hostile\n"))
		runKbsctl(t, audit(s, small)...).expect(t, 2, "larger than")
	})
	t.Run("endless entry bundle", func(t *testing.T) {
		s := hostilebroker.Serve(t, small.Handler(nil))
		s.Override("/log/tile/entries/001", hostilebroker.Endless(http.StatusOK, "application/octet-stream", ""))
		runKbsctl(t, audit(s, small)...).expect(t, 2, "larger than")
	})
	t.Run("endless manifest history", func(t *testing.T) {
		s := hostilebroker.Serve(t, small.Handler(nil))
		s.Override(api.PathManifestHistory, hostilebroker.Endless(http.StatusOK, "application/json", `{"manifests":["`))
		runKbsctl(t, audit(s, small)...).expect(t, 2, "larger than")
	})
	t.Run("slow entry bundle", func(t *testing.T) {
		s := hostilebroker.Serve(t, small.Handler(nil))
		s.Override("/log/tile/entries/001", hostilebroker.Slow("application/octet-stream", make([]byte, 256*62), 50*time.Millisecond))
		runKbsctl(t, audit(s, small, "--timeout", "3s")...).expect(t, 2, "deadline", "--timeout")
	})
	t.Run("redirected checkpoint", func(t *testing.T) {
		s := hostilebroker.Serve(t, small.Handler(nil))
		s.Override("/log/checkpoint", hostilebroker.Redirect("http://127.0.0.1:1/log/checkpoint", http.StatusFound))
		runKbsctl(t, audit(s, small)...).expect(t, 2, "redirect")
	})
	t.Run("redirected tile", func(t *testing.T) {
		s := hostilebroker.Serve(t, small.Handler(nil))
		s.Override("/log/tile/0/000", hostilebroker.Redirect("/log/tile/0/001", http.StatusMovedPermanently))
		runKbsctl(t, audit(s, small)...).expect(t, 2, "redirect")
	})
	t.Run("malformed entries at scale", func(t *testing.T) {
		l := hostilebroker.NewLog(t, 200_000, 2, hostilebroker.Malformed(100))
		s := hostilebroker.Serve(t, l.Handler(nil))
		c := runKbsctl(t, audit(s, l)...)
		c.expect(t, 1, "audit found 200000 inconsistencies", "and 199000 more (not listed)")
		if c.outBytes > 2<<20 {
			t.Errorf("%d bytes of output for 200000 malformed entries", c.outBytes)
		}
		c = runKbsctl(t, append([]string{"--json"}, audit(s, l)...)...)
		c.expect(t, 1)
		var r struct {
			OK        bool     `json:"ok"`
			Anomalies []string `json:"anomalies"`
			Omitted   int      `json:"anomalies_omitted"`
		}
		if err := json.Unmarshal([]byte(c.stdout), &r); err != nil || r.OK || len(r.Anomalies) != 1000 || r.Omitted != 199000 {
			t.Errorf("audit --json: ok %v, %d anomalies listed, %d omitted, %v", r.OK, len(r.Anomalies), r.Omitted, err)
		}
	})
	t.Run("large malformed entries", func(t *testing.T) {
		// 8192 entries of 64 KiB: 512 MiB of log, each entry quoted in
		// its anomaly.
		l := hostilebroker.NewLog(t, 8192, 3, hostilebroker.Malformed(tlog.MaxEntrySize))
		s := hostilebroker.Serve(t, l.Handler(nil))
		c := runKbsctl(t, audit(s, l)...)
		c.expect(t, 1, "audit found 8192 inconsistencies")
		if c.outBytes > 4<<20 {
			t.Errorf("%d bytes of output for 8192 malformed entries", c.outBytes)
		}
	})
}

// TestLongLogAudit: an honest log of 300k releases audits in bounded
// memory: the listed events go to disk, not to memory.
func TestLongLogAudit(t *testing.T) {
	tl := audittest.NewBench(t, 300_000)
	for _, out := range [][]string{{}, {"--csv"}, {"--json"}} {
		args := []string{"--addr", tl.Addr, "--state", t.TempDir(), "audit", "--note-key", tl.NoteKey}
		c := runKbsctl(t, append(args, out...)...)
		t.Logf("audit %v: exit %d in %v, peak RSS %.1f MiB, %d bytes of output", out, c.code, c.wall.Round(time.Millisecond), float64(c.peakRSS)/(1<<20), c.outBytes)
		if c.code != 0 || c.outBytes < 300_000*100 {
			t.Fatalf("audit %v: exit %d, %d bytes of output\n%.2000s", out, c.code, c.outBytes, c.stderr)
		}
		if c.peakRSS > hostileRSS {
			t.Errorf("audit %v: peak RSS %d MiB", out, c.peakRSS>>20)
		}
	}
}

// TestHostileLogVerify: 'kbsctl log verify' against a broker that lies.
func TestHostileLogVerify(t *testing.T) {
	// Version 1 of a manifest at entry 0: log verify finds the witness
	// policy (none) in the log before it checks the rest.
	body, err := os.ReadFile(filepath.Join("..", "..", "testdata", "manifest", "valid", "snp.json"))
	if err != nil {
		t.Fatal(err)
	}
	l := hostilebroker.NewManifestLog(t, 2000, 4, body, hostilebroker.Malformed(30))
	verify := func(s *hostilebroker.Server, state string, extra ...string) []string {
		return append([]string{"--addr", s.Addr, "--state", state, "log", "verify", "--note-key", l.NoteKey}, extra...)
	}
	for _, size := range []uint64{1 << 62, 1<<62 + 1, 1<<64 - 1} {
		s := hostilebroker.Serve(t, l.Handler(l.Sign(size, l.Root)))
		runKbsctl(t, verify(s, t.TempDir())...).expect(t, 1, "above the largest")
	}
	// A stored checkpoint of size 1000, then the broker's proofs to 2000
	// never end, come slowly, or redirect.
	stored := func(t *testing.T) string {
		state := t.TempDir()
		s := hostilebroker.Serve(t, l.Handler(l.Sign(1000, l.RootAt(1000))))
		runKbsctl(t, verify(s, state)...).expect(t, 0)
		return state
	}
	for _, tc := range []struct {
		name  string
		path  string
		h     http.Handler
		extra []string
		says  string
	}{
		{"endless checkpoint", "/log/checkpoint", hostilebroker.Endless(http.StatusOK, "text/plain", "kbs/hostile\n"), nil, "larger than"},
		{"redirected checkpoint", "/log/checkpoint", hostilebroker.Redirect("/log/elsewhere", http.StatusFound), nil, "redirect"},
		{"endless consistency proof", api.PathLogConsistency, hostilebroker.Endless(http.StatusOK, "application/json", `{"proof":["`), nil, "larger than"},
		{"slow consistency proof", api.PathLogConsistency, hostilebroker.Slow("application/json", bytes.Repeat([]byte(" "), 1000), 50*time.Millisecond), []string{"--timeout", "2s"}, "deadline exceeded"},
		{"redirected consistency proof", api.PathLogConsistency, hostilebroker.Redirect("/v1/log/elsewhere", http.StatusTemporaryRedirect), nil, "redirect"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := stored(t)
			s := hostilebroker.Serve(t, l.Handler(nil))
			s.Override(tc.path, tc.h)
			runKbsctl(t, verify(s, state, tc.extra...)...).expect(t, 2, tc.says)
		})
	}
}

// TestHostileBrokerClient: 'kbsctl verify' and 'key get' through a proxy
// to a real kbsd that replaces one answer with an endless, slow or
// redirected one, or throttles it.
func TestHostileBrokerClient(t *testing.T) {
	d, g, mf, dir := setup(t)
	ctl(t, 0, append(g, "key", "put", "--manifest", mf, "--client-key", filepath.Join(d.data, "client.key"),
		"--id", "demo/h", "--generate", "--out", filepath.Join(dir, "h.key"))...)
	sock := strings.TrimPrefix(d.unix, "unix://")
	common := func(s *hostilebroker.Server) []string {
		return []string{"--addr", s.Addr, "--state", t.TempDir(), "--sim-root", d.simRoot()}
	}
	verify := func(s *hostilebroker.Server, extra ...string) []string {
		return append(append(common(s), "verify", "--manifest", mf), extra...)
	}
	keyGet := func(s *hostilebroker.Server, extra ...string) []string {
		return append(append(common(s), "key", "get", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(),
			"--id", "demo/h", "--out", filepath.Join(t.TempDir(), "out")), extra...)
	}
	slowJSON := hostilebroker.Slow("application/json", bytes.Repeat([]byte(" "), 1000), 50*time.Millisecond)
	for _, tc := range []struct {
		name  string
		path  string
		h     http.Handler
		args  func(*hostilebroker.Server, ...string) []string
		extra []string
		code  int
		says  string
	}{
		{"verify, endless attestation", api.PathAttestation, hostilebroker.Endless(http.StatusOK, "application/json", `{"evidence":"`), verify, nil, 2, "larger than"},
		{"verify, slow attestation", api.PathAttestation, slowJSON, verify, []string{"--timeout", "2s"}, 2, "deadline exceeded"},
		{"verify, redirected attestation", api.PathAttestation, hostilebroker.Redirect("http://127.0.0.1:1/v1/attestation", http.StatusFound), verify, nil, 2, "redirect"},
		{"verify, checkpoint of size 2^62", api.PathAttestation, rewriteAttestation(sock, func(a *api.Attestation) {
			lines := strings.SplitN(a.Checkpoint, "\n", 3)
			a.Checkpoint = lines[0] + "\n" + fmt.Sprint(uint64(1<<62)) + "\n" + lines[2]
		}), verify, nil, 1, "VERIFICATION FAILED"},
		{"key get, endless release", api.PathRelease, hostilebroker.Endless(http.StatusOK, "application/json", `{"keys":[{"sealed":"`), keyGet, nil, 2, "larger than"},
		{"key get, slow release", api.PathRelease, slowJSON, keyGet, []string{"--timeout", "3s"}, 2, "deadline exceeded"},
		{"key get, redirected release", api.PathRelease, hostilebroker.Redirect("/v1/release/elsewhere", http.StatusTemporaryRedirect), keyGet, nil, 2, "redirect"},
		{"key get, endless challenge", api.PathChallenge, hostilebroker.Endless(http.StatusOK, "application/json", `{"nonce":"`), keyGet, nil, 2, "larger than"},
		{"key get, throttled for good", api.PathChallenge, throttle(sock, 1000), keyGet, []string{"--timeout", "5s"}, 2, "rate_limited"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := hostilebroker.Serve(t, hostilebroker.Proxy(sock))
			s.Override(tc.path, tc.h)
			runKbsctl(t, tc.args(s, tc.extra...)...).expect(t, tc.code, tc.says)
		})
	}
	// Throttled twice, with Retry-After: kbsctl waits and gets the keys.
	s := hostilebroker.Serve(t, hostilebroker.Proxy(sock))
	s.Override(api.PathChallenge, throttle(sock, 2))
	c := runKbsctl(t, keyGet(s)...)
	c.expect(t, 0)
	if n := s.Hits(api.PathChallenge); n != 3 {
		t.Errorf("%d challenge requests, want 3 (two throttled)", n)
	}
}

// throttle answers the first n requests with 429 and Retry-After: 1, and
// forwards the rest to the kbsd on sock.
func throttle(sock string, n int32) http.Handler {
	var seen atomic.Int32
	next := hostilebroker.Proxy(sock)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if seen.Add(1) > n {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Retry-After", "1")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		w.Write([]byte(`{"error":{"code":"rate_limited","message":"too many challenge requests; retry shortly"}}`))
	})
}

// rewriteAttestation forwards to the kbsd on sock and applies f to its
// attestation answer.
func rewriteAttestation(sock string, f func(*api.Attestation)) http.Handler {
	next := hostilebroker.Proxy(sock)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &recorder{header: http.Header{}}
		next.ServeHTTP(rec, r)
		var a api.Attestation
		if err := json.Unmarshal(rec.body.Bytes(), &a); err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		f(&a)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(&a)
	})
}

type recorder struct {
	header http.Header
	body   bytes.Buffer
	code   int
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *recorder) WriteHeader(code int)        { r.code = code }

// BenchmarkHostileAudit runs 'kbsctl audit' as a process against logs a
// hostile broker serves, and reports its peak resident memory (peak-MiB),
// its wall time (s/op) and its output (out-KiB): 200k malformed entries
// of 100 bytes, 8192 malformed entries of 64 KiB (512 MiB of log), and an
// honest log of 300k releases (table output). KBS_BENCH_KBSCTL names
// another kbsctl binary to measure (an older build, for comparison).
func BenchmarkHostileAudit(b *testing.B) {
	bin := os.Getenv("KBS_BENCH_KBSCTL")
	if bin == "" {
		bin = kbsctlBinary(b)
	}
	for _, tc := range []struct {
		name string
		log  func(b *testing.B) (addr, noteKey string)
	}{
		{"malformed-200k", func(b *testing.B) (string, string) {
			l := hostilebroker.NewLog(b, 200_000, 2, hostilebroker.Malformed(100))
			return hostilebroker.Serve(b, l.Handler(nil)).Addr, l.NoteKey
		}},
		{"malformed-8192x64KiB", func(b *testing.B) (string, string) {
			l := hostilebroker.NewLog(b, 8192, 3, hostilebroker.Malformed(tlog.MaxEntrySize))
			return hostilebroker.Serve(b, l.Handler(nil)).Addr, l.NoteKey
		}},
		{"releases-300k", func(b *testing.B) (string, string) {
			tl := audittest.NewBench(b, 300_000)
			return tl.Addr, tl.NoteKey
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			addr, key := tc.log(b)
			var peak, out int64
			b.ResetTimer()
			for range b.N {
				cmd, rss := testbin.MeasuredCommand(b, filepath.Dir(kbsdBin), bin, "--addr", addr, "--state", b.TempDir(), "audit", "--note-key", key)
				var c capped
				cmd.Stdout, cmd.Stderr = &c, &c
				cmd.Run()
				peak, out = max(peak, rss()), c.n.Load()
			}
			b.ReportMetric(float64(peak)/(1<<20), "peak-MiB")
			b.ReportMetric(float64(out)/1024, "out-KiB")
		})
	}
}
