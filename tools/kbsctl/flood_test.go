package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/internal/testbin"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
)

// Load tests: one peer floods a real kbsd on loopback while a legitimate
// worker, another process (kbsctl key get), fetches a key. kbsd runs with
// its default budgets and an open-file limit of floodFiles, so that its
// connection limits are small enough to reach.

// floodFiles is kbsd's RLIMIT_NOFILE in the load tests: its listeners
// take 96 TCP connections (24 per peer) and 48 on the unix socket (12 per
// process).
const floodFiles = 256

// floodEnv is a kbsd under floodFiles with a key to fetch.
type floodEnv struct {
	d    *testbin.Kbsd
	unix string // "unix://..."
	mf   string // the manifest file
	dir  string
}

func newFloodEnv(t testing.TB) *floodEnv {
	t.Helper()
	dir := t.TempDir()
	// A shell sets the limit (soft and hard: Go's runtime raises the soft
	// one to the hard one) and execs kbsd, which keeps its process.
	wrapper := filepath.Join(dir, "kbsd-limited")
	script := fmt.Sprintf("#!/bin/sh\nulimit -n %d || exit 1\nexec %q \"$@\"\n", floodFiles, kbsdBin)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "kbs")
	d := testbin.StartKbsd(t, wrapper, data, "--dev", "--listen-tcp", "127.0.0.1:0")
	t.Cleanup(func() { d.Stop() })
	e := &floodEnv{d: d, unix: "unix://" + d.Socket, mf: filepath.Join(dir, "manifest.json"), dir: dir}
	b, err := os.ReadFile(filepath.Join(data, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.mf, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out := runKbsctl(t, "--addr", e.unix, "--state", filepath.Join(dir, "state"), "--sim-root", sim.RootFile(filepath.Join(data, "sim")),
		"key", "put", "--manifest", e.mf, "--client-key", filepath.Join(data, "client.key"), "--id", "demo/flood", "--generate", "--out", filepath.Join(dir, "flood.key"))
	out.expect(t, 0)
	return e
}

// keyGet runs the legitimate worker: kbsctl key get over addr (the unix
// socket if ""), as a process of its own.
func (e *floodEnv) keyGet(t testing.TB, addr string) child {
	t.Helper()
	if addr == "" {
		addr = e.unix
	}
	data := e.d.Data
	return runKbsctl(t, "--addr", addr, "--state", t.TempDir(), "--sim-root", sim.RootFile(filepath.Join(data, "sim")),
		"key", "get", "--manifest", e.mf, "--tee", "sim", "--sim-dir", filepath.Join(data, "sim"), "--id", "demo/flood", "--out", t.TempDir())
}

// floodCounts are what a flood's requests got.
type floodCounts struct {
	ok, refused, other atomic.Int64
}

func (c *floodCounts) String() string {
	return fmt.Sprintf("%d answered, %d refused (429/503 or closed at once), %d other", c.ok.Load(), c.refused.Load(), c.other.Load())
}

func (c *floodCounts) count(status int) {
	switch {
	case status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable:
		c.refused.Add(1)
	case status < 300:
		c.ok.Add(1)
	default:
		c.other.Add(1)
	}
}

// A flood runs until ctx ends, from this test process: one peer on the
// unix socket, or TCP addresses of 127.0.0.0/8 other than the worker's.
type flood struct {
	name string
	run  func(ctx context.Context, e *floodEnv, c *floodCounts)
	// budgeted: over the unix socket only (the flooder's TCP address is
	// the worker's).
	budgeted bool
}

var floods = []flood{
	{"attestation", func(ctx context.Context, e *floodEnv, c *floodCounts) {
		nonce := hex.EncodeToString(make([]byte, api.NonceSize))
		hammer(ctx, e, c, 4, func() (*http.Request, error) {
			return http.NewRequest("GET", "http://kbsd"+api.PathAttestation+"?nonce="+nonce, nil)
		})
	}, true},
	{"challenge", func(ctx context.Context, e *floodEnv, c *floodCounts) {
		hammer(ctx, e, c, 4, func() (*http.Request, error) {
			return http.NewRequest("POST", "http://kbsd"+api.PathChallenge, nil)
		})
	}, true},
	{"manifest PUT", func(ctx context.Context, e *floodEnv, c *floodCounts) {
		body := manifestFloodBody(e)
		hammer(ctx, e, c, 4, func() (*http.Request, error) {
			return http.NewRequest("PUT", "http://kbsd"+api.PathManifest, strings.NewReader(body))
		})
	}, true},
	{"idle connections", idleFlood, false},
}

// hammer sends requests from workers goroutines over the unix socket, as
// fast as kbsd answers, ignoring Retry-After.
func hammer(ctx context.Context, e *floodEnv, c *floodCounts, workers int, req func() (*http.Request, error)) {
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", e.d.Socket)
		},
		MaxIdleConnsPerHost: workers,
	}}
	defer hc.CloseIdleConnections()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				r, err := req()
				if err != nil {
					panic(err)
				}
				resp, err := hc.Do(r.WithContext(ctx))
				if err != nil {
					c.other.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				c.count(resp.StatusCode)
			}
		})
	}
	wg.Wait()
}

// manifestFloodBody is a PUT /v1/manifest body that costs kbsd the most
// work it can: a well-formed next version with 33 well-formed signatures
// by a key that is no owner's.
func manifestFloodBody(e *floodEnv) string {
	mf, err := os.ReadFile(e.mf)
	if err != nil {
		panic(err)
	}
	next := strings.Replace(string(mf), `"version": 1`, `"version": 2`, 1)
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	h := sha256.Sum256([]byte(next))
	sig, err := ecdsa.SignASN1(rand.Reader, k, h[:])
	if err != nil {
		panic(err)
	}
	sigs := make([]string, 33)
	for i := range sigs {
		sigs[i] = base64.StdEncoding.EncodeToString(sig)
	}
	b, err := json.Marshal(api.ManifestUpdate{Body: []byte(next), Signatures: sigs})
	if err != nil {
		panic(err)
	}
	return string(b)
}

// idleFlood holds as many connections as kbsd lets it: from eight TCP
// addresses (TLS handshake, one request, then idle keep-alive) and on the
// unix socket; half of them send nothing at all. A connection that kbsd
// closes is opened again.
func idleFlood(ctx context.Context, e *floodEnv, c *floodCounts) {
	tcpAddr := strings.TrimPrefix(e.d.HTTPS, "https://")
	var wg sync.WaitGroup
	hold := func(dial func() (net.Conn, error), silent bool) {
		for ctx.Err() == nil {
			conn, err := dial()
			if err != nil { // kbsd closed it before the TLS handshake ended
				c.refused.Add(1)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			stop := context.AfterFunc(ctx, func() { conn.Close() })
			start := time.Now()
			if !silent {
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: kbsd\r\n\r\n"); err == nil {
					if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err == nil {
						resp.Body.Close()
						c.count(resp.StatusCode)
					} else {
						c.refused.Add(1)
					}
				}
				conn.SetDeadline(time.Time{})
			}
			conn.Read(make([]byte, 1)) // until kbsd closes it
			stop()
			conn.Close()
			if time.Since(start) < 100*time.Millisecond {
				time.Sleep(10 * time.Millisecond) // closed at once: don't spin
			}
		}
	}
	for i := range 8 * 32 {
		from := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%8))}
		wg.Go(func() {
			hold(func() (net.Conn, error) {
				raw, err := (&net.Dialer{LocalAddr: from, Timeout: 10 * time.Second}).DialContext(ctx, "tcp", tcpAddr)
				if err != nil || i%2 == 1 {
					return raw, err
				}
				tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true}) // a hostile client checks nothing
				if err := tc.HandshakeContext(ctx); err != nil {
					raw.Close()
					return nil, err
				}
				return tc, nil
			}, i%2 == 1)
		})
	}
	for i := range 64 {
		wg.Go(func() {
			hold(func() (net.Conn, error) {
				return (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "unix", e.d.Socket)
			}, i%2 == 1)
		})
	}
	wg.Wait()
}

// during runs f until work returns, starting work once f has been
// refused at least once (or after a second).
func during(t testing.TB, e *floodEnv, f flood, work func()) *floodCounts {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var c floodCounts
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.run(ctx, e, &c)
	}()
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline) && c.refused.Load() == 0; {
		time.Sleep(10 * time.Millisecond)
	}
	work()
	cancel()
	<-done
	return &c
}

// TestFloods: during each flood from one peer (idle connections from
// several), a legitimate worker's release succeeds, over the unix socket
// and over TCP; each flood reaches kbsd's limits (429/503, or connections
// closed); kbsd never runs out of file descriptors.
func TestFloods(t *testing.T) {
	e := newFloodEnv(t)
	for _, f := range floods {
		t.Run(f.name, func(t *testing.T) {
			c := during(t, e, f, func() {
				e.keyGet(t, "").expect(t, 0)
				e.keyGet(t, e.d.HTTPS).expect(t, 0)
			})
			t.Logf("flood: %v", c)
			if c.refused.Load() == 0 {
				t.Errorf("the flood was never refused: it did not reach kbsd's limits: %v", c)
			}
		})
	}
	// kbsd's metrics show its listeners at work.
	resp, err := e.d.HTTPClient().Get("http://kbsd/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, l := range []string{"tcp", "unix"} {
		var refused, evicted int
		for _, line := range strings.Split(string(metrics), "\n") {
			if strings.HasPrefix(line, fmt.Sprintf("kbs_connections_refused_total{listener=%q} ", l)) {
				fmt.Sscanf(strings.Fields(line)[1], "%d", &refused)
			}
			if strings.HasPrefix(line, fmt.Sprintf("kbs_connections_evicted_total{listener=%q} ", l)) {
				fmt.Sscanf(strings.Fields(line)[1], "%d", &evicted)
			}
		}
		t.Logf("%s listener: %d connections refused, %d evicted", l, refused, evicted)
		if refused+evicted == 0 {
			t.Errorf("the %s listener never refused or evicted a connection:\n%s", l, metrics)
		}
	}
	if out := e.d.Output(); strings.Contains(out, "too many open files") {
		t.Errorf("kbsd ran out of file descriptors:\n%.4000s", out)
	}
	if e.d.Exited() {
		t.Fatalf("kbsd exited:\n%.4000s", e.d.Output())
	}
}

// BenchmarkFlood reports a legitimate worker's kbsctl key get (a whole
// process: verify the broker, challenge, attest, release, check the
// receipt) over the unix socket, quiet and during each flood, and over TCP
// quiet and during the connection flood: the median and the slowest of
// b.N runs (make bench-hostile).
func BenchmarkFlood(b *testing.B) {
	e := newFloodEnv(b)
	measure := func(b *testing.B, addr string) {
		walls := make([]time.Duration, 0, b.N)
		for b.Loop() {
			c := e.keyGet(b, addr)
			if c.code != 0 {
				b.Fatalf("key get: exit %d\n%s", c.code, c.stderr)
			}
			walls = append(walls, c.wall)
		}
		slices.Sort(walls)
		b.ReportMetric(float64(walls[len(walls)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(walls[len(walls)-1].Microseconds())/1000, "max-ms")
	}
	b.Run("quiet/unix", func(b *testing.B) { measure(b, "") })
	b.Run("quiet/tcp", func(b *testing.B) { measure(b, e.d.HTTPS) })
	for _, f := range floods {
		name := strings.ReplaceAll(f.name, " ", "_")
		addrs := map[string]string{"unix": ""}
		if !f.budgeted {
			addrs["tcp"] = e.d.HTTPS
		}
		for _, via := range []string{"unix", "tcp"} {
			addr, ok := addrs[via]
			if !ok {
				continue
			}
			b.Run(name+"/"+via, func(b *testing.B) {
				start := time.Now()
				c := during(b, e, f, func() { measure(b, addr) })
				b.Logf("flood for %v: %v", time.Since(start).Round(time.Millisecond), c)
			})
		}
	}
}
