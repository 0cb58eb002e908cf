package monitor_test

import (
	"context"
	"io"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/kbs/audit/audittest"
	"github.com/kbs-dev/kbs/kbs/audit/monitor"
)

// BenchmarkMonitorCatchUp: a new monitor, with every rule kind, catches up
// on a log of 100,002 entries (a manifest, an upload, 100,000 releases)
// served over a unix socket, committing every Batch entries. It reports
// entries/s and the live heap after the poll, of the whole process: the
// monitor and the in-process log server with its bbolt database.
func BenchmarkMonitorCatchUp(b *testing.B) {
	const n = 100_000
	l := audittest.NewBench(b, n)
	rules := mustRules(b, allRules)
	var entries uint64
	var heap uint64
	start := time.Now()
	for b.Loop() {
		m, err := monitor.Open(monitor.Config{Client: newClient(b, l.Addr), NoteKey: l.NoteKey,
			State: filepath.Join(b.TempDir(), "m.db"), Rules: rules, Out: io.Discard})
		if err != nil {
			b.Fatal(err)
		}
		st, err := m.Poll(context.Background())
		if err != nil || st.Replayed != n+2 {
			b.Fatalf("Poll = %+v, %v", st, err)
		}
		entries += st.Replayed
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		heap = max(heap, ms.HeapAlloc)
		m.Close()
	}
	b.ReportMetric(float64(entries)/time.Since(start).Seconds(), "entries/s")
	b.ReportMetric(float64(heap)/(1<<20), "heap-MiB")
}
