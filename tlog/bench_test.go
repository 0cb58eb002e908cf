package tlog_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/tlog"
)

// cpuTime returns the process's user+system CPU time, so benchmarks can
// report cost per operation independently of other load on the machine.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAudit measures a full audit over HTTP: TileClient.Entries
// fetching every entry bundle and level-0 tile of a 2^17-entry log (entries
// of a typical release's size) from the tiles handler over boltlog, and
// verifying each entry against the checkpoint. One op is one full pass.
func BenchmarkAudit(b *testing.B) {
	const n = 1 << 17
	l := newTestLog(b, 0)
	e, err := tlog.EncodeEntry(&tlog.Entry{Type: tlog.TypeRelease, Time: time.Date(2026, 11, 27, 3, 0, 0, 0, time.UTC), Release: &tlog.ReleaseEntry{
		Keys: []tlog.KeyRef{{ID: "tenant-a/prompt-key", Version: 3}}, WorkerClass: "llama-70b-h100", Platform: "snp",
		Measurement: strings.Repeat("5e", 48), ChipID: strings.Repeat("c1", 64), TCB: "bl=4,tee=0,snp=22,ucode=213",
		EvidenceDigest: "sha256:" + strings.Repeat("ab", 32), WorkerKeyDigest: "sha256:" + strings.Repeat("cd", 32), ManifestHash: "sha256:" + strings.Repeat("ef", 32),
	}})
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 512; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := g; i < n; i += 512 {
				if _, _, err := l.Append(context.Background(), e); err != nil {
					b.Error(err)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	srv := httptest.NewServer(tlog.NewHandler(l))
	defer srv.Close()
	cp, _ := l.Checkpoint(context.Background())
	for _, gz := range []bool{false, true} {
		name := "identity"
		if gz {
			name = "gzip"
		}
		b.Run(name, func(b *testing.B) {
			hc := srv.Client()
			hc.Transport.(*http.Transport).DisableCompression = !gz
			c := tlog.NewTileClient(srv.URL+"/log", hc)
			b.SetBytes(int64(len(e)) * n)
			b.ResetTimer()
			start, cpu0 := time.Now(), cpuTime()
			for b.Loop() {
				count := 0
				if err := c.Entries(context.Background(), cp, 0, func(uint64, []byte) error { count++; return nil }); err != nil || count != n {
					b.Fatalf("audit: %d entries, %v", count, err)
				}
			}
			b.ReportMetric(float64(b.N*n)/time.Since(start).Seconds(), "entries/s")
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N*n), "cpu-µs/entry")
		})
	}
}
