package kbs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	sevverify "github.com/google/go-sev-guest/verify"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/attest/snp"
)

// BenchmarkRelease measures POST /v1/release end to end over loopback HTTP
// (keep-alive TCP, no TLS: decode, nonce, simulated SNP evidence
// verification, manifest policy, durable log append with group commit,
// HPKE seal, receipt) at 1, 8 and 32 concurrent workers, and next to it the
// crypto-bound limit measured in the same run (see cryptoLimit).
//
// Requests (challenges and evidence) are prepared before the clock starts,
// so client-side signing does not compete with the broker for the CPU, and
// each level first sends one untimed release per worker, so that the
// keep-alive connections exist before the clock starts.
//
// Besides releases/s, p50 and p99, each level reports the process's CPU time
// per release (broker, HTTP client and log together) and crypto-cpu-%: the
// share of that CPU time the crypto-bound work would take. Unlike wall-clock
// figures, that share hardly depends on what else runs on the machine.
func BenchmarkRelease(b *testing.B) {
	e := newBenchEnv(b)
	for _, conc := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("concurrency=%d", conc), func(b *testing.B) {
			e.run(b, e.tcp, conc)
		})
	}
}

// BenchmarkReleaseTransport measures 32 concurrent workers over the other
// transports kbsd serves: its unix socket, and TCP with TLS 1.3 (keep-alive,
// so the handshake happens once per connection, before the clock starts).
func BenchmarkReleaseTransport(b *testing.B) {
	e := newBenchEnv(b)
	for _, tr := range []string{"tcp", "unix", "tls"} {
		b.Run("transport="+tr+"/concurrency=32", func(b *testing.B) {
			t := e.tcp
			switch tr {
			case "unix":
				t = e.unix(b)
			case "tls":
				t = e.tls(b)
			}
			e.run(b, t, 32)
		})
	}
}

// benchEnv is a broker holding one key, a worker, and the inputs of the
// crypto-bound limit.
type benchEnv struct {
	*env
	w   *worker
	tcp *transport
	// The crypto-bound work of one release: the report signature check
	// under the VCEK, and an HPKE seal to the worker key.
	report   []byte
	vcek     *x509.Certificate
	material []byte
}

// transport is a way to reach the broker.
type transport struct {
	url    string
	client *http.Client
}

func newBenchEnv(b *testing.B) *benchEnv {
	e := &benchEnv{env: newEnv(b)}
	e.b.nonces = newNonceTable(1<<20, time.Hour, time.Now)
	e.b.limit = newRateLimiter(1e9, 1<<30, time.Now) // the benchmark measures releases, not the limiter
	e.material = bytes.Repeat([]byte{7}, 32)
	e.mustOK2(e.upload("demo/bench", 1, e.material))
	e.w = e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	e.tcp = &transport{url: e.srv.URL, client: &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64, DisableCompression: true}}}

	iss, err := sim.NewIssuer(e.simDir, attest.SNP, sim.Options{})
	if err != nil {
		b.Fatal(err)
	}
	ev, err := iss.Issue(context.Background(), [64]byte{1})
	if err != nil {
		b.Fatal(err)
	}
	parsed, err := snp.ParseEvidence(ev.Data)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range parsed.Certs {
		if c.GUID.String() == abi.VcekGUID {
			if e.vcek, err = x509.ParseCertificate(c.RawCert); err != nil {
				b.Fatal(err)
			}
		}
	}
	if e.vcek == nil {
		b.Fatal("sim evidence without a VCEK")
	}
	e.report = parsed.Report
	return e
}

// unix serves the broker on a unix socket, as kbsd does for local clients.
func (e *benchEnv) unix(b *testing.B) *transport {
	sock := filepath.Join(b.TempDir(), "kbs.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: e.b.Handler()}
	go srv.Serve(l)
	b.Cleanup(func() { srv.Close() })
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}
	return &transport{url: "http://kbsd", client: &http.Client{Transport: &http.Transport{
		DialContext: dial, MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64, DisableCompression: true}}}
}

// tls serves the broker over TCP with TLS 1.3 and the broker's identity
// certificate, as kbsd does for remote workers.
func (e *benchEnv) tls(b *testing.B) *transport {
	srv := httptest.NewUnstartedServer(e.b.Handler())
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{e.id.TLS}}
	srv.StartTLS()
	b.Cleanup(srv.Close)
	leaf, err := x509.ParseCertificate(e.id.TLS.Certificate[0])
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return &transport{url: srv.URL, client: &http.Client{Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13},
		MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64, DisableCompression: true}}}
}

// releasesAt is how many timed releases a level serves per iteration: enough
// that p99 is not one of the first few requests.
func releasesAt(conc int) int { return max(400, 30*conc) }

// run measures one concurrency level over t.
func (e *benchEnv) run(b *testing.B, t *transport, conc int) {
	var lat []time.Duration
	var elapsed, cpu time.Duration
	var limitSum, cryptoCPUSum float64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		bodies := make([][]byte, conc+releasesAt(conc))
		for j := range bodies {
			bodies[j] = mustJSON(e.releaseReq(e.w, e.challenge(), "demo/bench"))
		}
		runReleases(b, t, bodies[:conc], conc) // open the connections
		bodies = bodies[conc:]
		// The limit is measured right before and right after each run and
		// averaged, so that both see the same machine (other load included).
		before, beforeCPU := e.cryptoLimit(b)
		runtime.GC()
		cpu0 := processCPU()
		b.StartTimer()
		l, d := runReleases(b, t, bodies, conc)
		b.StopTimer()
		cpu += processCPU() - cpu0
		after, afterCPU := e.cryptoLimit(b)
		limitSum += (before + after) / 2
		cryptoCPUSum += (beforeCPU + afterCPU) / 2
		b.StartTimer()
		lat = append(lat, l...)
		elapsed += d
	}
	limit := limitSum / float64(b.N)
	cryptoCPU := cryptoCPUSum / float64(b.N)
	slices.Sort(lat)
	tput := float64(len(lat)) / elapsed.Seconds()
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	cpuPer := cpu.Seconds() * 1000 / float64(len(lat))
	b.ReportMetric(tput, "releases/s")
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(100*tput/limit, "%-of-limit")
	b.ReportMetric(limit, "limit/s")
	b.ReportMetric(cpuPer, "cpu-ms/release")
	b.ReportMetric(100*cryptoCPU/cpuPer, "crypto-cpu-%")
	b.Logf("concurrency %2d: %6.0f releases/s (%3.0f%% of the crypto-bound %.0f/s), p50 %v, p99 %v; %.2f cpu-ms per release, %.2f of it crypto (%.0f%%)",
		conc, tput, 100*tput/limit, limit, p50.Round(10*time.Microsecond), p99.Round(10*time.Microsecond),
		cpuPer, cryptoCPU, 100*cryptoCPU/cpuPer)
}

// runReleases sends bodies with conc concurrent workers and returns each
// request's latency and the wall time.
func runReleases(b *testing.B, t *transport, bodies [][]byte, conc int) ([]time.Duration, time.Duration) {
	lat := make([]time.Duration, len(bodies))
	next := make(chan int, len(bodies))
	for i := range bodies {
		next <- i
	}
	close(next)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				t0 := time.Now()
				resp, err := t.client.Post(t.url+api.PathRelease, "application/json", bytes.NewReader(bodies[i]))
				if err != nil {
					b.Error(err)
					return
				}
				var rel api.Release
				err = json.NewDecoder(resp.Body).Decode(&rel)
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || err != nil || len(rel.Keys) != 1 {
					b.Errorf("release: status %d, %v", resp.StatusCode, err)
					return
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	return lat, time.Since(start)
}

// cryptoLimit measures the crypto-bound release rate: the work no release
// can skip, and nothing else. That is one ECDSA P-384 signature check of an
// SNP report under its VCEK (SHA-384 of the signed part, then the
// signature, as go-sev-guest's verify.SnpReportSignature does it) and one
// HPKE seal (X25519, HKDF-SHA256, AES-256-GCM) of a 32-byte key to the
// worker key, per release. It runs on GOMAXPROCS goroutines at once, so the
// rate is the whole machine's (as the releases get it: divided over the
// cores), and returns it in releases per second together with the CPU time
// one release's crypto took, in milliseconds.
func (e *benchEnv) cryptoLimit(b *testing.B) (perSecond, cpuMillis float64) {
	const perCore = 200
	pk, err := api.ParsePublicKey(e.w.pub)
	if err != nil {
		b.Fatal(err)
	}
	cores := runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	cpu0 := processCPU()
	start := time.Now()
	for c := 0; c < cores; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perCore; i++ {
				if err := sevverify.SnpReportSignature(e.report, e.vcek); err != nil {
					b.Error(err)
					return
				}
				if _, err := api.SealTo(pk, api.ReleaseInfo("demo/bench", 1, uint64(i)), e.material); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	n := float64(cores * perCore)
	return n / time.Since(start).Seconds(), (processCPU() - cpu0).Seconds() * 1000 / n
}

// processCPU returns the CPU time (user and system) the process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
