package kbs

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog/witnesstest"
)

// BenchmarkReleaseWitnesses measures releases as BenchmarkRelease does
// (loopback HTTP, a separate load generator process, simulated SNP
// evidence, durable log append), with 0, 1 and 3 real omniwitness
// processes on loopback as the manifest's witnesses (all of them
// required), side by side in one run: the three brokers run at once and
// take turns at each concurrency level. A release answers only once a
// checkpoint containing its entry carries the quorum's cosignatures (the
// synchronous design of docs/witnesses.md), so at 1 worker the difference
// to 0 witnesses is the time from append to a cosigned checkpoint, and at
// 32 workers it shows how rounds shared by many releases (one round covers
// every append before it starts) keep throughput. cosign-wait-ms is the
// mean time from a release's append to the witnessed checkpoint that its
// receipt carries (kbs_witness_wait_seconds). The witnesses run on the
// same cores as the broker and the load generator. Skipped unless
// KBS_WITNESS_BIN names omniwitness's binaries (make bench-witness).
func BenchmarkReleaseWitnesses(b *testing.B) {
	impl, bin := witnesstest.Omniwitness(b)
	ns := []int{0, 1, 3}
	envs := map[int]*benchEnv{}
	for _, n := range ns {
		envs[n] = newBenchEnvOf(b, newEnvWithRealWitnesses(b, impl, bin, n))
	}
	for _, conc := range []int{1, 32} {
		for _, n := range ns {
			b.Run(fmt.Sprintf("concurrency=%d/witnesses=%d", conc, n), func(b *testing.B) {
				e := envs[n]
				sum0, n0 := e.waits()
				e.run(b, e.tcp, conc)
				if sum, count := e.waits(); n > 0 && count > n0 {
					b.ReportMetric((sum-sum0)/float64(count-n0)*1000, "cosign-wait-ms")
				}
			})
		}
	}
}

// waits returns the total and the count of the broker's waits from an
// append to a witnessed checkpoint (kbs_witness_wait_seconds).
func (e *benchEnv) waits() (float64, uint64) {
	w := e.b.wit
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.waits.sum, w.waits.n
}

// newEnvWithRealWitnesses starts a broker whose manifest names n real
// witnesses of impl (n of n required), starts them for its log, and waits
// until the broker acts.
func newEnvWithRealWitnesses(b *testing.B, impl witnesstest.Impl, bin string, n int) *env {
	if n == 0 {
		return newEnv(b)
	}
	type w struct{ dir, addr, vkey string }
	var ws []w
	p := &manifest.WitnessPolicy{Threshold: n}
	for i := range n {
		x := w{dir: filepath.Join(b.TempDir(), fmt.Sprintf("w%d", i)), addr: witnesstest.FreeLoopbackAddr(b)}
		if err := os.MkdirAll(x.dir, 0o700); err != nil {
			b.Fatal(err)
		}
		x.vkey = impl.VKey(b, bin, x.dir)
		ws = append(ws, x)
		p.List = append(p.List, manifest.Witness{Name: fmt.Sprintf("w%d", i), Key: x.vkey, URL: "http://" + x.addr})
	}
	e, err := newEnvSetup(b, func(d *manifest.Document) { d.Witnesses = p }, nil, func(e *env) {
		e.witnessOpts = WitnessOptions{Retry: 50 * time.Millisecond}
	})
	if err != nil {
		b.Fatal(err)
	}
	for _, x := range ws {
		impl.Start(b, bin, x.dir, e.id.Checkpoints.Origin(), e.id.NoteKey, x.addr)
	}
	e.waitWitnessState("acting")
	return e
}
