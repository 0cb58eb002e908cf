package boltlog

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/tlog"
)

// benchEntry is a realistic release entry (about 700 bytes).
var benchEntry = func() []byte {
	e, err := tlog.EncodeEntry(&tlog.Entry{Type: tlog.TypeRelease, Time: time.Date(2026, 11, 27, 3, 0, 0, 0, time.UTC), Release: &tlog.ReleaseEntry{
		Keys:            []tlog.KeyRef{{ID: "tenant-a/prompt-key", Version: 3}},
		WorkerClass:     "llama-70b-h100",
		Platform:        "snp",
		Measurement:     strings.Repeat("5e", 48),
		ChipID:          strings.Repeat("c1", 64),
		TCB:             "bl=4,tee=0,snp=22,ucode=213",
		EvidenceDigest:  "sha256:" + strings.Repeat("ab", 32),
		WorkerKeyDigest: "sha256:" + strings.Repeat("cd", 32),
		ManifestHash:    "sha256:" + strings.Repeat("ef", 32),
	}})
	if err != nil {
		panic(err)
	}
	return e
}()

// cpuTime returns the process's user+system CPU time, so benchmarks can
// report cost per operation independently of other load on the machine.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchLog(b *testing.B) *Log {
	signer, _ := testSigner(b)
	l, err := Open(filepath.Join(b.TempDir(), "kbs.db"), Config{Signer: signer})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	return l
}

// BenchmarkAppend measures durable appends per second with 1, 8 and 64
// concurrent appenders. One op is 4096 appends.
func BenchmarkAppend(b *testing.B) {
	const perOp = 4096
	for _, p := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("appenders=%d", p), func(b *testing.B) {
			l := benchLog(b)
			b.SetBytes(int64(len(benchEntry)) * perOp)
			b.ResetTimer()
			start, cpu0 := time.Now(), cpuTime()
			for b.Loop() {
				var wg sync.WaitGroup
				for g := 0; g < p; g++ {
					wg.Add(1)
					go func(g int) {
						defer wg.Done()
						for i := g; i < perOp; i += p {
							if _, _, err := l.Append(context.Background(), benchEntry); err != nil {
								b.Error(err)
								return
							}
						}
					}(g)
				}
				wg.Wait()
			}
			b.ReportMetric(float64(b.N*perOp)/time.Since(start).Seconds(), "appends/s")
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N*perOp), "cpu-µs/append")
		})
	}
}

// BenchmarkAppendToProof measures the time from calling Append to holding
// a durable inclusion proof of the entry in the returned checkpoint, with
// 1 (light load) and 8 concurrent callers. One op is 1000 calls per caller.
func BenchmarkAppendToProof(b *testing.B) {
	const perOp = 1000
	for _, p := range []int{1, 8} {
		b.Run(fmt.Sprintf("callers=%d", p), func(b *testing.B) {
			l := benchLog(b)
			var mu sync.Mutex
			var lat []time.Duration
			for b.Loop() {
				var wg sync.WaitGroup
				for g := 0; g < p; g++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						mine := make([]time.Duration, 0, perOp)
						for i := 0; i < perOp; i++ {
							t0 := time.Now()
							idx, cp, err := l.Append(context.Background(), benchEntry)
							if err != nil {
								b.Error(err)
								return
							}
							if _, err := l.InclusionProof(context.Background(), idx, cp.Size); err != nil {
								b.Error(err)
								return
							}
							mine = append(mine, time.Since(t0))
						}
						mu.Lock()
						lat = append(lat, mine...)
						mu.Unlock()
					}()
				}
				wg.Wait()
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}

// bigDir holds bigLog's file; TestMain removes it.
var bigDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if bigDir != "" {
		os.RemoveAll(bigDir)
	}
	os.Exit(code)
}

// bigLog builds (once per process) a log of 1M entries of benchEntry's
// size, in batches through the same commit path appends use.
var bigLog = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "boltlog-bench-")
	if err != nil {
		return "", err
	}
	bigDir = dir
	path := filepath.Join(dir, "kbs.db")
	signer, _ := testSigner(nil)
	l, err := Open(path, Config{Signer: signer})
	if err != nil {
		return "", err
	}
	defer l.Close()
	const n, batch = 1 << 20, 8192
	reqs := make([]*request, batch)
	for i := range reqs {
		reqs[i] = &request{entry: benchEntry}
	}
	for done := 0; done < n; done += batch {
		_, cp, err := l.commit(reqs)
		if err != nil {
			return "", err
		}
		l.cp.Store(&cp)
	}
	return path, nil
})

func openBig(b *testing.B) *Log {
	path, err := bigLog()
	if err != nil {
		b.Fatal(err)
	}
	signer, _ := testSigner(b)
	l, err := Open(path, Config{Signer: signer})
	if err != nil {
		b.Fatal(err)
	}
	return l
}

// BenchmarkInclusionProof1M measures inclusion proofs at random indices in
// a log of 2^20 entries. One op is 10000 proofs; the metric is per proof.
func BenchmarkInclusionProof1M(b *testing.B) {
	const perOp = 10000
	l := openBig(b)
	defer l.Close()
	ctx := context.Background()
	cp, _ := l.Checkpoint(ctx)
	r := rand.New(rand.NewPCG(1, 2))
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime()
	for b.Loop() {
		for i := 0; i < perOp; i++ {
			if _, err := l.InclusionProof(ctx, r.Uint64N(cp.Size), cp.Size); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(time.Since(start).Microseconds())/float64(b.N*perOp), "µs/proof")
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N*perOp), "cpu-µs/proof")
}

// BenchmarkOpen measures Open (including its signature and root checks)
// and Close, for a log of 1000 entries and one of 2^20 entries: it does not grow with
// the log's size.
func BenchmarkOpen(b *testing.B) {
	b.Run("entries=1k", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), "kbs.db")
		signer, _ := testSigner(b)
		l, err := Open(path, Config{Signer: signer})
		if err != nil {
			b.Fatal(err)
		}
		reqs := make([]*request, 1000)
		for i := range reqs {
			reqs[i] = &request{entry: benchEntry}
		}
		if _, _, err := l.commit(reqs); err != nil {
			b.Fatal(err)
		}
		l.Close()
		benchOpen(b, path)
	})
	b.Run("entries=1M", func(b *testing.B) {
		path, err := bigLog()
		if err != nil {
			b.Fatal(err)
		}
		benchOpen(b, path)
	})
}

// benchOpen opens and closes the log 100 times per op; the metric is per
// open.
func benchOpen(b *testing.B, path string) {
	const perOp = 100
	signer, _ := testSigner(b)
	start := time.Now()
	for b.Loop() {
		for i := 0; i < perOp; i++ {
			l, err := Open(path, Config{Signer: signer})
			if err != nil {
				b.Fatal(err)
			}
			l.Close()
		}
	}
	b.ReportMetric(float64(time.Since(start).Microseconds())/float64(b.N*perOp), "µs/open")
}

// BenchmarkBytesPerEntry reports the file size per entry of the 2^20-entry
// log, and the overhead beyond the entry's own bytes.
func BenchmarkBytesPerEntry(b *testing.B) {
	path, err := bigLog()
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		fi, err := os.Stat(path)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(fi.Size())/(1<<20), "bytes/entry")
		b.ReportMetric(float64(fi.Size())/(1<<20)-float64(len(benchEntry)), "overhead-bytes/entry")
	}
}
