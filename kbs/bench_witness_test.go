package kbs

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
// receipt carries (kbs_witness_wait_seconds), and witness-cpu-ms/release
// the CPU time the witness processes spent per release (cpu-ms/release
// counts the broker and the load generator only); rounds/release how many
// checkpoints were submitted per release. The witnesses run on the
// same cores as the broker and the load generator. Skipped unless
// KBS_WITNESS_BIN names omniwitness's binaries (make bench-witness).
func BenchmarkReleaseWitnesses(b *testing.B) {
	impl, bin := witnesstest.Omniwitness(b)
	ns := []int{0, 1, 3}
	envs := map[int]*benchEnv{}
	pids := map[int][]int{}
	for _, n := range ns {
		e, ps := newEnvWithRealWitnesses(b, impl, bin, n)
		envs[n], pids[n] = newBenchEnvOf(b, e), ps
	}
	for _, conc := range []int{1, 32} {
		for _, n := range ns {
			b.Run(fmt.Sprintf("concurrency=%d/witnesses=%d", conc, n), func(b *testing.B) {
				e := envs[n]
				sum0, n0, r0 := e.waits()
				cpu0 := witnessCPU(pids[n])
				e.run(b, e.tcp, conc)
				if sum, count, rounds := e.waits(); n > 0 && count > n0 {
					b.ReportMetric((sum-sum0)/float64(count-n0)*1000, "cosign-wait-ms")
					b.ReportMetric((witnessCPU(pids[n])-cpu0).Seconds()*1000/float64(count-n0), "witness-cpu-ms/release")
					b.ReportMetric(float64(rounds-r0)/float64(count-n0), "rounds/release")
				}
			})
		}
	}
}

// waits returns the total and the count of the broker's waits from an
// append to a witnessed checkpoint (kbs_witness_wait_seconds), and its
// witness rounds so far.
func (e *benchEnv) waits() (float64, uint64, uint64) {
	w := e.b.wit
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.waits.sum, w.waits.n, w.rounds
}

// witnessCPU returns the CPU time (user and system) the processes pids
// have used, from /proc/PID/stat (in clock ticks of 10 ms).
func witnessCPU(pids []int) time.Duration {
	var total time.Duration
	for _, pid := range pids {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// The fields after the command name, which is in parentheses.
		f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+1:]))
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(ut+st) * 10 * time.Millisecond
	}
	return total
}

// newEnvWithRealWitnesses starts a broker whose manifest names n real
// witnesses of impl (n of n required), starts them for its log, and waits
// until the broker acts. It returns the witnesses' process ids.
func newEnvWithRealWitnesses(b *testing.B, impl witnesstest.Impl, bin string, n int) (*env, []int) {
	if n == 0 {
		return newEnv(b), nil
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
	var pids []int
	for _, x := range ws {
		pids = append(pids, impl.Start(b, bin, x.dir, e.id.Checkpoints.Origin(), e.id.NoteKey, x.addr).Pid)
	}
	e.waitWitnessState("acting")
	return e, pids
}
