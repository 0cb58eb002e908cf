package kbs

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/keystore"
	"github.com/kbs-dev/kbs/tlog"
)

// BenchmarkKeyStore measures what the number of keys and of versions of
// one key could make slower: an upload (POST /v1/keys of a new id, or of
// the next version of the key with many versions), a release of one key
// (POST /v1/release), a page of the key list (GET /v1/keys, 100 keys
// after a random id), and a restart (New after a clean shutdown). Each is
// sequential, over loopback HTTP (httptest), against a broker on the
// embedded log.
//
// The sizes are keys=1k, 10k, 100k, 1M (ids demo/n/NNNNNNN, one version
// each) and versions=1, 100, 10k (of the key demo/v). KBS_BENCH_KEYS and
// KBS_BENCH_VERSIONS choose them (comma-separated, e.g. "1k,1M"; "none"
// for none); by default 1k and 10k keys and 1 and 100 versions, so that
// `make bench` stays short. `make bench-keys` runs them all.
//
// The keys are loaded without the upload path's signatures and HPKE
// (bulkKeys: the key store's staging, then key-upload entries appended to
// the log with group commit, then a start that applies them); the
// versions go through the broker's upload path.
func BenchmarkKeyStore(b *testing.B) {
	for _, n := range benchSizes(b, "KBS_BENCH_KEYS", "1k,10k") {
		b.Run("keys="+sizeName(n), func(b *testing.B) {
			e := newKeysEnv(b)
			ids := make([]string, n)
			for i := range ids {
				ids[i] = fmt.Sprintf("demo/n/%07d", i)
			}
			bulkKeys(b, e.env, ids)
			e.ids = ids
			e.measure(b)
		})
	}
	for _, n := range benchSizes(b, "KBS_BENCH_VERSIONS", "1,100") {
		b.Run("versions="+sizeName(n), func(b *testing.B) {
			e := newKeysEnv(b)
			e.hot = "demo/v"
			e.loadVersions(b, n)
			e.ids = []string{e.hot}
			e.measure(b)
		})
	}
}

// benchSizes parses the sizes in the environment variable name (default
// def): 1k, 10k, 1M, or plain numbers.
func benchSizes(b *testing.B, name, def string) []int {
	s := os.Getenv(name)
	if s == "" {
		s = def
	}
	if s == "none" {
		return nil
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		mult := 1
		switch {
		case strings.HasSuffix(f, "k"):
			mult, f = 1000, strings.TrimSuffix(f, "k")
		case strings.HasSuffix(f, "M"):
			mult, f = 1000000, strings.TrimSuffix(f, "M")
		}
		var n int
		if _, err := fmt.Sscan(f, &n); err != nil || n <= 0 {
			b.Fatalf("%s: bad size %q", name, f)
		}
		out = append(out, n*mult)
	}
	return out
}

func sizeName(n int) string {
	switch {
	case n >= 1000000 && n%1000000 == 0:
		return fmt.Sprintf("%dM", n/1000000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

// keysEnv is a broker with many keys or versions.
type keysEnv struct {
	*env
	ids []string // the keys releases ask for
	hot string   // the key uploads add versions to ("" for new ids)
	w   *worker
	up  int // uploads made so far
}

func newKeysEnv(b *testing.B) *keysEnv {
	e := &keysEnv{env: newEnv(b)}
	e.b.budgets = unlimited()
	e.w = e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	return e
}

// loadVersions uploads n versions of e.hot through the broker, in order.
func (e *keysEnv) loadVersions(b *testing.B, n int) {
	ctx := context.Background()
	material := []byte("bench key material, many versions")
	for v := 1; v <= n; v++ {
		if _, err := e.b.UploadKey(ctx, e.uploadReq("demo-client", e.client, e.hot, uint64(v), material)); err != nil {
			b.Fatal(err)
		}
	}
	e.up = n
}

// measure runs the four measurements on e.
func (e *keysEnv) measure(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	b.Run("upload", func(b *testing.B) {
		reqs := make([]*api.KeyUpload, b.N)
		for i := range reqs {
			e.up++
			if e.hot != "" {
				reqs[i] = e.uploadReq("demo-client", e.client, e.hot, uint64(e.up), []byte("the next version"))
			} else {
				reqs[i] = e.uploadReq("demo-client", e.client, fmt.Sprintf("demo/new/%07d", e.up), 1, []byte("a new key"))
			}
		}
		b.ResetTimer()
		for _, r := range reqs {
			e.mustOK(e.do("POST", api.PathKeys, r, nil))
		}
	})
	b.Run("release", func(b *testing.B) {
		b.StopTimer()
		for done := 0; done < b.N; {
			// The test broker keeps at most 64 challenges.
			reqs := make([]*api.ReleaseRequest, min(32, b.N-done))
			for i := range reqs {
				reqs[i] = e.releaseReq(e.w, e.challenge(), e.ids[rng.IntN(len(e.ids))])
			}
			b.StartTimer()
			for _, r := range reqs {
				e.mustOK2r(e.release(r))
			}
			b.StopTimer()
			done += len(reqs)
		}
	})
	b.Run("list-page", func(b *testing.B) {
		for b.Loop() {
			after := "" // the one key of many versions
			if len(e.ids) > 100 {
				after = e.ids[rng.IntN(len(e.ids)-100)]
			}
			var l api.KeyList
			e.mustOK(e.do("GET", listPagePath(after), nil, &l))
			if len(l.Keys) == 0 {
				b.Fatal("empty page")
			}
		}
	})
	b.Run("restart", func(b *testing.B) {
		b.StopTimer()
		for range b.N {
			e.close()
			e.beforeNew, e.afterNew = b.StartTimer, b.StopTimer
			e.open(b)
			e.beforeNew, e.afterNew = nil, nil
		}
	})
}

// listPagePath is the path of a page of 100 keys after id.
func listPagePath(after string) string {
	return api.PathKeys + "?" + api.KeyListAfter + "=" + url.QueryEscape(after) + "&" + api.KeyListLimit + "=100"
}

// appendConcurrently appends entry(i) for i from from to n-1 to lg, from
// 256 goroutines, so that the log's group commit batches them.
func appendConcurrently(tb testing.TB, lg tlog.Backend, from, n uint64, entry func(i uint64) ([]byte, error)) {
	ctx := context.Background()
	var next atomic.Uint64
	next.Store(from)
	var wg sync.WaitGroup
	errs := make(chan error, 256)
	for range 256 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < n; i = next.Add(1) - 1 {
				raw, err := entry(i)
				if err == nil {
					_, _, err = lg.Append(ctx, raw)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}
}

// bulkKeys stores one version of each id and logs its upload, without
// the upload path's signature checks and HPKE: the key store's staging
// and commit, 2000 keys per transaction, then key-upload entries appended
// with group commit while the broker runs; then a restart applies them.
func bulkKeys(b testing.TB, e *env, ids []string) {
	material := []byte("bench key material")
	now := e.clock.Now()
	entries := make([][]byte, len(ids))
	const chunk = 2000
	for start := 0; start < len(ids); start += chunk {
		part := ids[start:min(start+chunk, len(ids))]
		puts := make([]keystore.Put, len(part))
		for i, id := range part {
			puts[i] = keystore.Put{ID: id, Version: 1, Client: "demo-client", Material: material}
		}
		digests, errs, err := e.keys.PreparePuts(puts, 0, now)
		if err == nil {
			err = errors.Join(errs...)
		}
		if err == nil {
			err = e.keys.CommitAll(part)
		}
		if err != nil {
			b.Fatal(err)
		}
		for i, id := range part {
			entries[start+i], err = tlog.EncodeEntry(&tlog.Entry{Type: tlog.TypeKeyUpload, Time: now,
				KeyUpload: &tlog.KeyEntry{ID: id, Version: 1, Client: "demo-client", SealedDigest: digests[i]}})
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	appendConcurrently(b, e.log, 0, uint64(len(entries)), func(i uint64) ([]byte, error) { return entries[i], nil })
	e.close()
	e.open(b)
	if resp, err := http.Get(e.srv.URL + api.PathHealth); err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("broker after loading: %v %v", resp, err)
	}
}

// BenchmarkUpload measures POST /v1/keys end to end over loopback HTTP
// (keep-alive TCP, no TLS: decode, the client's signature, HPKE open,
// the decision against the state, staging in the key store, the durable
// log append, the receipt) at 1, 8 and 64 concurrent clients, each upload
// a new key id, with the clients in a separate load generator process as
// in BenchmarkRelease; and, measured in the same run, the crypto-bound
// limit of an upload (see uploadCryptoLimit). It reports uploads/s, p50,
// p99, the share of the limit, the CPU time per upload (both processes)
// and the share of it the crypto takes.
func BenchmarkUpload(b *testing.B) {
	e := newEnv(b)
	e.b.budgets = unlimited()
	tcp := &transport{URL: e.srv.URL}
	n := 0
	for _, conc := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("concurrency=%d", conc), func(b *testing.B) {
			var lat []time.Duration
			var elapsed, cpu, clientCPU time.Duration
			var limitSum, cryptoCPUSum float64
			for range b.N {
				b.StopTimer()
				bodies := make([][]byte, conc+releasesAt(conc))
				for j := range bodies {
					n++
					bodies[j] = mustJSON(e.uploadReq("demo-client", e.client, fmt.Sprintf("demo/up/%07d", n), 1, []byte("an uploaded key, 32 bytes long..")))
				}
				before, beforeCPU := uploadCryptoLimit(b, e)
				res := tcp.sendTo(b, api.PathKeys, bodies[:conc], bodies[conc:], conc)
				cpu += res.ServerCPU + res.ClientCPU
				clientCPU += res.ClientCPU
				after, afterCPU := uploadCryptoLimit(b, e)
				limitSum += (before + after) / 2
				cryptoCPUSum += (beforeCPU + afterCPU) / 2
				b.StartTimer()
				lat = append(lat, res.Latencies...)
				elapsed += res.Elapsed
			}
			limit := limitSum / float64(b.N)
			cryptoCPU := cryptoCPUSum / float64(b.N)
			slices.Sort(lat)
			tput := float64(len(lat)) / elapsed.Seconds()
			cpuPer := cpu.Seconds() * 1000 / float64(len(lat))
			b.ReportMetric(tput, "uploads/s")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(100*tput/limit, "%-of-limit")
			b.ReportMetric(limit, "limit/s")
			b.ReportMetric(cpuPer, "cpu-ms/upload")
			b.ReportMetric(100*cryptoCPU/cpuPer, "crypto-cpu-%")
			b.ReportMetric((cpu-clientCPU).Seconds()*1000/float64(len(lat))-cryptoCPU, "kbsd-noncrypto-ms/upload")
			b.Logf("concurrency %2d: %6.0f uploads/s (%3.0f%% of the crypto-bound %.0f/s); %.3f cpu-ms per upload (%.3f of it the load generator's), %.3f of it crypto",
				conc, tput, 100*tput/limit, limit, cpuPer, clientCPU.Seconds()*1000/float64(len(lat)), cryptoCPU)
		})
	}
}

// uploadCryptoLimit measures the crypto-bound upload rate, on GOMAXPROCS
// goroutines at once: per upload, the check of the client's ECDSA P-256
// signature over the upload statement, the HPKE open (X25519, HKDF-SHA256,
// AES-256-GCM) of the sealed key, and the AES-256-GCM encryption of the
// key under its data key. It returns uploads per second and the CPU time
// of one upload's crypto in milliseconds.
func uploadCryptoLimit(b *testing.B, e *env) (perSecond, cpuMillis float64) {
	req := e.uploadReq("demo-client", e.client, "demo/limit", 1, []byte("an uploaded key, 32 bytes long.."))
	stmt := api.UploadStatement(req.Client, req.ID, req.Version, e.id.HPKEPublicKey, req.Sealed)
	dek, err := aes.NewCipher(make([]byte, 32))
	if err != nil {
		b.Fatal(err)
	}
	gcm, err := cipher.NewGCM(dek)
	if err != nil {
		b.Fatal(err)
	}
	return onEveryCore(b, func(int) error {
		if err := api.VerifyStatement(&e.client.PublicKey, stmt, req.Signature); err != nil {
			return err
		}
		m, err := api.Open(e.id.HPKE, api.UploadInfo(req.ID, req.Version), req.Sealed)
		if err != nil {
			return err
		}
		gcm.Seal(nil, make([]byte, gcm.NonceSize()), m, []byte(req.ID))
		return nil
	})
}
