package kbs

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
)

// releasesPerLevel is how many releases each concurrency level serves per
// benchmark iteration.
const releasesPerLevel = 400

// BenchmarkRelease measures POST /v1/release end to end over loopback HTTP
// (decode, nonce, simulated SNP evidence verification, manifest policy,
// durable log append with group commit, HPKE seal, receipt) at 1, 8 and 32
// concurrent workers, and next to it the crypto-bound limit measured in the
// same run: one SNP report verification plus one HPKE seal per release,
// spread over all cores. Requests (challenges and evidence) are prepared
// before the clock starts, so client-side signing does not compete with the
// broker for the CPU.
func BenchmarkRelease(b *testing.B) {
	e := newEnv(b)
	e.b.nonces = newNonceTable(1<<20, time.Hour, time.Now)
	e.b.limit = newRateLimiter(1e9, 1<<30, time.Now) // the benchmark measures releases, not the limiter
	e.mustOK2(e.upload("demo/bench", 1, bytes.Repeat([]byte{7}, 32)))
	w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64}}
	for _, conc := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("concurrency=%d", conc), func(b *testing.B) {
			var lat []time.Duration
			var elapsed time.Duration
			var limitSum float64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				bodies := make([][]byte, releasesPerLevel)
				for j := range bodies {
					bodies[j] = mustJSON(e.releaseReq(w, e.challenge(), "demo/bench"))
				}
				// The limit is measured right before and right after each run
				// and averaged, so that both see the same machine (other
				// load included).
				before := cryptoLimit(b, e, w)
				b.StartTimer()
				l, d := runReleases(b, client, e.srv.URL, bodies, conc)
				b.StopTimer()
				limitSum += (before + cryptoLimit(b, e, w)) / 2
				b.StartTimer()
				lat = append(lat, l...)
				elapsed += d
			}
			limit := limitSum / float64(b.N)
			slices.Sort(lat)
			tput := float64(len(lat)) / elapsed.Seconds()
			p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
			b.ReportMetric(tput, "releases/s")
			b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
			b.ReportMetric(100*tput/limit, "%-of-limit")
			b.Logf("concurrency %2d: %6.0f releases/s (%3.0f%% of the crypto-bound %.0f/s), p50 %v, p99 %v",
				conc, tput, 100*tput/limit, limit, p50.Round(10*time.Microsecond), p99.Round(10*time.Microsecond))
		})
	}
}

// runReleases sends bodies with conc concurrent workers and returns each
// request's latency and the wall time.
func runReleases(b *testing.B, client *http.Client, url string, bodies [][]byte, conc int) ([]time.Duration, time.Duration) {
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
				resp, err := client.Post(url+api.PathRelease, "application/json", bytes.NewReader(bodies[i]))
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

// cryptoLimit measures the crypto-bound release rate: one SNP report
// verification plus one HPKE seal per release, run on every core at once
// (GOMAXPROCS goroutines), in releases per second.
func cryptoLimit(b *testing.B, e *env, w *worker) float64 {
	const perCore = 100
	ctx := context.Background()
	iss, err := sim.NewIssuer(e.simDir, attest.SNP, sim.Options{})
	if err != nil {
		b.Fatal(err)
	}
	var rd [64]byte
	ev, err := iss.Issue(ctx, rd)
	if err != nil {
		b.Fatal(err)
	}
	material := bytes.Repeat([]byte{7}, 32)
	cores := runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	start := time.Now()
	for c := 0; c < cores; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perCore; i++ {
				if _, err := e.verifier.Verify(ctx, ev, rd); err != nil {
					b.Error(err)
					return
				}
				if _, err := api.Seal(w.pub, api.ReleaseInfo("demo/bench", 1, uint64(i)), material); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return float64(cores*perCore) / time.Since(start).Seconds()
}
