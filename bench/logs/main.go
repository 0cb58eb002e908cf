// Command logs benchmarks transparency-log backends side by side, in one
// run on one machine: kbs's embedded log (tlog/boltlog), kbs's Trillian
// backend (tlog/trillianlog, over a real Trillian on PostgreSQL) and, as an
// independent peer, Tessera's POSIX driver.
//
// The backends are "boltlog", "trillian" (kbs's Trillian backend on a
// PREORDERED_LOG tree, where kbs orders the entries: the mode new trees
// use), "trillian-log" (the same backend on a LOG tree, where Trillian
// orders them: the mode of older trees) and "tessera".
//
// For each backend and each number of concurrent appenders it reports:
//
//   - durable appends/s: appends whose entry is durable (fsync'd, or
//     committed by the database) and has an index, per second;
//   - CPU/append: CPU time (user and system) per append, of this process
//     (the backend's client side and the load generator) and, for the
//     Trillian backends, of trillian_log_server, trillian_log_signer and
//     PostgreSQL as scripts/trillian.sh runs them (KBS_TRILLIAN_RUN_DIR);
//     stable on a busy machine, where rates are not;
//   - append latency p50/p99: call → durable index;
//   - append → proof latency p50/p99: call → an inclusion proof of the entry
//     in a signed checkpoint, verified by this program.
//
// Each appender loops: append, then hand the entry to a goroutine that gets
// its inclusion proof, and append again. For boltlog and trillianlog the
// proof is in the checkpoint Append returns; Tessera publishes checkpoints
// on its own schedule, so its proof waits for the next checkpoint.
//
// It lives in its own module so Tessera's dependencies stay out of kbs's.
// Run it with `make bench-logs` (which starts and stops Trillian), or:
//
//	eval "$(scripts/trillian.sh up | sed 's/^/export /')"
//	cd bench/logs && go run . -duration 5s
//
// With -rounds N, every backend runs N times at each concurrency, the
// backends taking turns so that they meet the same conditions on a busy
// machine, and each cell reports its median run and the range of rates.
// -cpuprofile profiles this process (kbs's side of each backend and the
// load generator).
//
// Without KBS_TRILLIAN_ADDR, the Trillian rows are skipped.
package main

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/trillian"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/boltlog"
	"github.com/kbs-dev/kbs/tlog/trillianlog"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/client"
	"github.com/transparency-dev/tessera/storage/posix"
	"golang.org/x/mod/sumdb/note"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"
)

var (
	duration    = flag.Duration("duration", 5*time.Second, "how long each backend runs at each concurrency")
	concurrency = flag.String("c", "1,8,64,512", "comma-separated numbers of concurrent appenders")
	backends    = flag.String("backends", "boltlog,trillian,tessera", "comma-separated backends to run")
	proofs      = flag.Bool("proofs", true, "also get and verify each entry's inclusion proof (false: durable appends only)")
	poll        = flag.Duration("trillian-poll", 0, "trillianlog's PollInterval (default: the package's)")
	cpuProfile  = flag.String("cpuprofile", "", "write a CPU profile of this process (the kbs side and the load generator) to `file`")
	rounds      = flag.Int("rounds", 1, "how many times to run each backend at each concurrency; cells report the median run and the range")
	tmp         = flag.String("dir", "", "directory for the logs' files (default: a new temporary directory)")
)

// appender is one backend under test.
type appender interface {
	// append makes entry durable and returns a function that returns its
	// verified inclusion proof's checkpoint size (called once, possibly
	// concurrently with further appends).
	append(ctx context.Context, entry []byte) (proofFn func() error, err error)
	close() error
}

var hasher = rfc6962.DefaultHasher

func main() {
	flag.Parse()
	log.SetFlags(0)
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	// Tessera logs through klog; keep its chatter out of the results.
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	dir := *tmp
	if dir == "" {
		d, err := os.MkdirTemp("", "kbs-bench-logs-")
		if err != nil {
			log.Fatal(err)
		}
		defer os.RemoveAll(d)
		dir = d
	}
	var cs []int
	for _, s := range strings.Split(*concurrency, ",") {
		var c int
		if _, err := fmt.Sscan(s, &c); err != nil || c < 1 {
			log.Fatalf("bad -c %q", s)
		}
		cs = append(cs, c)
	}
	load, _ := os.ReadFile("/proc/loadavg")
	mode := "append, then inclusion proof"
	if !*proofs {
		mode = "durable appends only, no proofs"
	}
	fmt.Printf("# log backends side by side (%s): %d CPUs, GOMAXPROCS %d, %s per run, %s, load average %s\n\n",
		mode, runtime.NumCPU(), runtime.GOMAXPROCS(0), *duration, time.Now().UTC().Format(time.RFC3339), strings.Join(strings.Fields(string(load))[:min(3, len(strings.Fields(string(load))))], " "))
	fmt.Println("| backend | appenders | durable appends/s | CPU/append | append p50 | append p99 | append → proof p50 | append → proof p99 |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|")
	// Each round runs every backend at each concurrency, the backends one
	// after the other at the same concurrency, so that they meet the
	// same conditions; a cell reports the run with the median rate, and
	// the range over the rounds.
	names := strings.Split(*backends, ",")
	results := map[string][]result{}
	skipped := map[string]bool{}
	run := 0
	for range *rounds {
		for _, c := range cs {
			for _, name := range names {
				if skipped[name] {
					continue
				}
				run++
				path := filepath.Join(dir, fmt.Sprintf("%s-%d", name, run))
				if err := os.MkdirAll(path, 0o700); err != nil {
					log.Fatal(err)
				}
				a, err := open(name, path)
				if err != nil {
					log.Printf("%s: %v", name, err)
					skipped[name] = true
					continue
				}
				r := measure(a, c, *duration, strings.HasPrefix(name, "trillian"))
				if err := a.close(); err != nil {
					log.Fatalf("%s: close: %v", name, err)
				}
				if r.err != nil {
					log.Fatalf("%s at %d appenders: %v", name, c, r.err)
				}
				key := fmt.Sprint(name, "/", c)
				results[key] = append(results[key], r)
			}
		}
	}
	for _, name := range names {
		for _, c := range cs {
			rs := results[fmt.Sprint(name, "/", c)]
			if len(rs) == 0 {
				continue
			}
			slices.SortFunc(rs, func(a, b result) int { return cmp.Compare(a.rate, b.rate) })
			r := rs[len(rs)/2]
			rate := fmt.Sprintf("%.0f", r.rate)
			if len(rs) > 1 {
				rate += fmt.Sprintf(" (%.0f–%.0f)", rs[0].rate, rs[len(rs)-1].rate)
			}
			p50, p99 := "–", "–"
			if *proofs {
				p50, p99 = ms(pct(r.proofLat, 50)), ms(pct(r.proofLat, 99))
			}
			fmt.Printf("| %s | %d | %s | %.0f µs | %s | %s | %s | %s |\n", name, c, rate, float64(r.cpu)/float64(time.Microsecond),
				ms(pct(r.appendLat, 50)), ms(pct(r.appendLat, 99)), p50, p99)
		}
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	return ds[min(len(ds)-1, len(ds)*p/100)]
}

type result struct {
	rate                float64
	cpu                 time.Duration // per append
	appendLat, proofLat []time.Duration
	err                 error
}

// measure runs c appenders on a for d; servers says whether the backend
// runs in the Trillian stack, whose CPU time counts too.
func measure(a appender, c int, d time.Duration, servers bool) result {
	ctx := context.Background()
	var (
		mu       sync.Mutex
		res      result
		count    atomic.Int64
		pending  sync.WaitGroup
		firstErr atomic.Pointer[error]
	)
	fail := func(err error) { firstErr.CompareAndSwap(nil, &err) }
	cpu0 := cpuUsed(servers)
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline) && firstErr.Load() == nil; i++ {
				e := entry(w, i)
				t0 := time.Now()
				proofFn, err := a.append(ctx, e)
				if err != nil {
					fail(err)
					return
				}
				t1 := time.Now()
				count.Add(1)
				if !*proofs {
					mu.Lock()
					res.appendLat = append(res.appendLat, t1.Sub(t0))
					mu.Unlock()
					continue
				}
				pending.Add(1)
				go func() {
					defer pending.Done()
					if err := proofFn(); err != nil {
						fail(err)
						return
					}
					t2 := time.Now()
					mu.Lock()
					res.appendLat = append(res.appendLat, t1.Sub(t0))
					res.proofLat = append(res.proofLat, t2.Sub(t0))
					mu.Unlock()
				}()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	pending.Wait()
	if p := firstErr.Load(); p != nil {
		res.err = *p
	}
	res.rate = float64(count.Load()) / elapsed.Seconds()
	res.cpu = (cpuUsed(servers) - cpu0) / time.Duration(max(1, count.Load()))
	slices.Sort(res.appendLat)
	slices.Sort(res.proofLat)
	return res
}

// entry is a release-sized log entry, unique per appender and sequence.
func entry(w, i int) []byte {
	return fmt.Appendf(nil, `{"type":"release","time":"%s","worker":%d,"seq":%d,"keys":[{"id":"demo/k1","version":1}],"class":"demo-worker","platform":"snp","measurement":"%064x","evidence_sha256":"%064x","worker_key_sha256":"%064x"}`,
		time.Now().UTC().Format(time.RFC3339Nano), w, i, w, i, w*1000003+i)
}

func keys(origin string) (note.Signer, note.Verifier, *tlog.CheckpointSigner) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	s, v, _, err := tlog.NewEd25519NoteKeys(origin, priv)
	if err != nil {
		log.Fatal(err)
	}
	cs, err := tlog.NewCheckpointSigner(origin, s, v)
	if err != nil {
		log.Fatal(err)
	}
	return s, v, cs
}

func open(name, dir string) (appender, error) {
	ctx := context.Background()
	switch name {
	case "boltlog":
		_, _, cs := keys(tlog.OriginPrefix + "bench")
		l, err := boltlog.Open(filepath.Join(dir, "kbs.db"), boltlog.Config{Signer: cs})
		if err != nil {
			return nil, err
		}
		return backendAppender{b: l}, nil
	case "trillian", "trillian-log":
		addr := os.Getenv("KBS_TRILLIAN_ADDR")
		if addr == "" {
			return nil, fmt.Errorf("skipped: KBS_TRILLIAN_ADDR is not set (scripts/trillian.sh up)")
		}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		typ := trillian.TreeType_PREORDERED_LOG
		if name == "trillian-log" {
			typ = trillian.TreeType_LOG
		}
		tree, err := trillianlog.CreateTreeOfType(ctx, conn, "kbs-bench", typ)
		if err != nil {
			conn.Close()
			return nil, err
		}
		_, _, cs := keys(tlog.OriginPrefix + "bench")
		l, err := trillianlog.New(ctx, trillianlog.Config{Addr: addr, TreeID: tree, Signer: cs, StatePath: filepath.Join(dir, "state.json"), PollInterval: *poll})
		if err != nil {
			conn.Close()
			return nil, err
		}
		// Delete the tree afterwards: trillian_log_signer visits every
		// live tree on each pass, and finished runs would load it.
		return backendAppender{l, func() error {
			defer conn.Close()
			_, err := trillian.NewTrillianAdminClient(conn).DeleteTree(ctx, &trillian.DeleteTreeRequest{TreeId: tree})
			return err
		}}, nil
	case "tessera":
		return openTessera(ctx, dir)
	}
	return nil, fmt.Errorf("unknown backend %q", name)
}

// backendAppender drives a tlog.Backend: Append returns a durable signed
// checkpoint, and the proof is asked for in it. cleanup, if set, runs
// after Close.
type backendAppender struct {
	b       tlog.Backend
	cleanup func() error
}

func (a backendAppender) append(ctx context.Context, e []byte) (func() error, error) {
	idx, cp, err := a.b.Append(ctx, e)
	if err != nil {
		return nil, err
	}
	return func() error {
		p, err := a.b.InclusionProof(ctx, idx, cp.Size)
		if err != nil {
			return err
		}
		return verify(idx, cp.Size, e, p, cp.Hash)
	}, nil
}

func (a backendAppender) close() error {
	err := a.b.Close()
	if a.cleanup != nil {
		err = errors.Join(err, a.cleanup())
	}
	return err
}

func verify(idx, size uint64, e []byte, p []tlog.Hash, root tlog.Hash) error {
	hs := make([][]byte, len(p))
	for i := range p {
		hs[i] = p[i][:]
	}
	if err := proof.VerifyInclusion(hasher, idx, size, hasher.HashLeaf(e), hs, root[:]); err != nil {
		return fmt.Errorf("inclusion proof of %d in %d: %w", idx, size, err)
	}
	return nil
}

// tesseraAppender drives Tessera's POSIX driver, configured for low
// latency: batches flushed after at most 10 ms, checkpoints published every
// 100 ms (the driver's minimum).
type tesseraAppender struct {
	a        *tessera.Appender
	shutdown func(context.Context) error
	r        tessera.LogReader
	awaiter  *tessera.PublicationAwaiter
	v        note.Verifier
	origin   string
	cancel   context.CancelFunc
}

func openTessera(ctx context.Context, dir string) (appender, error) {
	origin := tlog.OriginPrefix + "bench-tessera"
	s, v, _ := keys(origin)
	actx, cancel := context.WithCancel(ctx)
	d, err := posix.New(actx, posix.Config{Path: dir})
	if err != nil {
		cancel()
		return nil, err
	}
	a, shutdown, r, err := tessera.NewAppender(actx, d, tessera.NewAppendOptions().
		WithCheckpointSigner(s).
		WithBatching(tessera.DefaultBatchMaxSize, 10*time.Millisecond).
		WithCheckpointInterval(100*time.Millisecond).
		WithPushback(1<<20))
	if err != nil {
		cancel()
		return nil, err
	}
	return &tesseraAppender{
		a: a, shutdown: shutdown, r: r, v: v, origin: origin, cancel: cancel,
		awaiter: tessera.NewPublicationAwaiter(actx, r.ReadCheckpoint, 5*time.Millisecond),
	}, nil
}

func (t *tesseraAppender) append(ctx context.Context, e []byte) (func() error, error) {
	f := t.a.Add(ctx, tessera.NewEntry(e))
	idx, err := f()
	if err != nil {
		return nil, err
	}
	return func() error {
		_, cpRaw, err := t.awaiter.Await(ctx, func() (tessera.Index, error) { return idx, nil })
		if err != nil {
			return err
		}
		cp, err := tlog.OpenCheckpoint(cpRaw, t.origin, t.v)
		if err != nil {
			return err
		}
		pb, err := client.NewProofBuilder(ctx, cp.Size, t.r.ReadTile)
		if err != nil {
			return err
		}
		p, err := pb.InclusionProof(ctx, idx.Index)
		if err != nil {
			return err
		}
		hs := make([]tlog.Hash, len(p))
		for i := range p {
			hs[i] = tlog.Hash(p[i])
		}
		return verify(idx.Index, cp.Size, e, hs, cp.Hash)
	}, nil
}

func (t *tesseraAppender) close() error {
	err := t.shutdown(context.Background())
	t.cancel()
	return err
}
