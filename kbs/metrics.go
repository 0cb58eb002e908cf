package kbs

import (
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// metrics are the broker's counters, served in the Prometheus text
// exposition format (version 0.0.4) at /metrics.
type metrics struct {
	mu        sync.Mutex
	requests  map[[2]string]uint64 // {route, code} -> count
	releases  atomic.Uint64        // successful releases
	keysOut   atomic.Uint64        // keys released
	uploads   atomic.Uint64
	deletes   atomic.Uint64
	manifests atomic.Uint64 // manifest versions activated by PUT
	// release latency histogram (seconds)
	relBuckets []float64
	relCounts  []uint64
	relSum     float64
	relCount   uint64
}

func newMetrics() *metrics {
	b := []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}
	return &metrics{requests: map[[2]string]uint64{}, relBuckets: b, relCounts: make([]uint64, len(b))}
}

func (m *metrics) request(route, code string) {
	m.mu.Lock()
	m.requests[[2]string{route, code}]++
	m.mu.Unlock()
}

func (m *metrics) releaseLatency(d time.Duration) {
	s := d.Seconds()
	m.mu.Lock()
	for i, ub := range m.relBuckets {
		if s <= ub {
			m.relCounts[i]++
		}
	}
	m.relSum += s
	m.relCount++
	m.mu.Unlock()
}

// gauges are values read at scrape time.
type gauges struct {
	treeSize      uint64
	pendingNonces int
	manifestVer   uint64
}

func (m *metrics) write(w io.Writer, g gauges) {
	m.mu.Lock()
	defer m.mu.Unlock()
	writeCounters(w, "kbs_http_requests_total", "HTTP requests by route and result code.", "route", "code", m.requests)
	counter := func(name, help string, v uint64) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n%s %d\n", name, help, name, name, v)
	}
	gauge := func(name, help string, v uint64) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s gauge\n%s %d\n", name, help, name, name, v)
	}
	counter("kbs_releases_total", "Successful key releases.", m.releases.Load())
	counter("kbs_released_keys_total", "Keys released (a release may carry several).", m.keysOut.Load())
	counter("kbs_key_uploads_total", "Accepted key uploads.", m.uploads.Load())
	counter("kbs_key_deletes_total", "Keys crypto-shredded.", m.deletes.Load())
	counter("kbs_manifest_updates_total", "Manifest versions activated through PUT.", m.manifests.Load())
	gauge("kbs_log_tree_size", "Size of the transparency log's latest checkpoint.", g.treeSize)
	gauge("kbs_pending_challenges", "Release challenges issued and not yet used or expired.", uint64(g.pendingNonces))
	gauge("kbs_manifest_version", "Version of the active manifest.", g.manifestVer)
	fmt.Fprintln(w, "# HELP kbs_release_duration_seconds Time to serve a successful release.")
	fmt.Fprintln(w, "# TYPE kbs_release_duration_seconds histogram")
	for i, ub := range m.relBuckets {
		fmt.Fprintf(w, "kbs_release_duration_seconds_bucket{le=\"%g\"} %d\n", ub, m.relCounts[i])
	}
	fmt.Fprintf(w, "kbs_release_duration_seconds_bucket{le=\"+Inf\"} %d\n", m.relCount)
	fmt.Fprintf(w, "kbs_release_duration_seconds_sum %g\n", m.relSum)
	fmt.Fprintf(w, "kbs_release_duration_seconds_count %d\n", m.relCount)
}

// writeCounters writes the counter name with the labels l1 and l2, one
// line per key of m ({l1 value, l2 value}), in order.
func writeCounters(w io.Writer, name, help, l1, l2 string, m map[[2]string]uint64) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n", name, help, name)
	keys := make([][2]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i][0] != keys[j][0] {
			return keys[i][0] < keys[j][0]
		}
		return keys[i][1] < keys[j][1]
	})
	for _, k := range keys {
		fmt.Fprintf(w, "%s{%s=%q,%s=%q} %d\n", name, l1, k[0], l2, k[1], m[k])
	}
}
