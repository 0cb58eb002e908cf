package kbs

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/kbs-dev/kbs/internal/dbedit"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/tlog"
)

// BenchmarkStart measures a broker's start (New: restoring its state from
// the log and checking the database against it) on logs of 1k and 2^20
// entries: 100 keys (each uploaded, one in ten deleted), two manifest
// versions, and releases for the rest. The log is on the embedded backend,
// its file in the page cache (warm). Only New is timed (not opening the
// database, the key store and the log). Three cases:
//
//   - index: after a clean shutdown; the sealed state index is current.
//   - crash: the index is flushEvery (4096) entries behind the log (half
//     the log at 1k), as after a kill -9 at worst: the broker rewrites it
//     after every change and every flushEvery releases.
//   - rebuild: no index (a store from before the index existed, or one
//     whose index the host edited): every entry is read and checked
//     against the signed tree.
//
// It reports entries/s for the replaying cases.
func BenchmarkStart(b *testing.B) {
	for _, n := range []int{1000, 1 << 20} {
		name := "1k"
		if n == 1<<20 {
			name = "1M"
		}
		b.Run("entries="+name, func(b *testing.B) {
			e := newStartEnv(b, n)
			for _, mode := range []string{"index", "crash", "rebuild"} {
				b.Run(mode, func(b *testing.B) {
					var replayed uint64
					for i := 0; i < b.N; i++ {
						b.StopTimer()
						e.close()
						switch mode {
						case "crash":
							replayed += e.indexBehind(b)
						case "rebuild":
							e.dropIndex(b)
							replayed += e.size
						}
						e.beforeNew, e.afterNew = b.StartTimer, b.StopTimer
						e.open(b)
					}
					if replayed > 0 {
						b.ReportMetric(float64(replayed)/b.Elapsed().Seconds(), "entries/s")
					}
				})
			}
			e.close()
		})
	}
}

// startEnv is a broker whose log holds many entries.
type startEnv struct {
	*env
	size uint64
	// behind is the index's head as written behindBy entries before the
	// end of the log.
	behind   []byte
	behindBy uint64
}

func newStartEnv(b *testing.B, n int) *startEnv {
	e := &startEnv{env: newEnv(b)}
	ctx := context.Background()
	for i := range 100 {
		id := fmt.Sprintf("demo/k%03d", i)
		e.mustOK2(e.upload(id, 1, []byte("bench key material")))
		if i%10 == 0 {
			e.mustOK(e.do("DELETE", api.PathKeys+"/"+id, e.deleteReq(id, 1), nil))
		}
	}
	body := e.nextManifest(b)
	e.mustOK(e.do("PUT", api.PathManifest, api.ManifestUpdate{Body: body, Signatures: signAll(b, body, e.owners...)}, nil))
	w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	st, ae, rel := e.release(e.releaseReq(w, e.challenge(), "demo/k001", "demo/k002"))
	e.mustOK(st, ae)
	ents, err := e.log.Entries(ctx, rel.LogIndex, rel.LogIndex+1)
	if err != nil {
		b.Fatal(err)
	}
	template, err := tlog.DecodeEntry(ents[0])
	if err != nil {
		b.Fatal(err)
	}
	// The rest are releases, appended with group commit while the broker
	// runs: it counts them as another writer's, and applies them at its
	// next flush, which writes the index.
	e.behindBy = min(flushEvery, uint64(n)/2)
	e.appendReleases(b, template, uint64(n)-e.behindBy)
	if err := e.b.flush(ctx); err != nil {
		b.Fatal(err)
	}
	if e.behind, err = dbedit.Get(e.db, stateIndexPath, []byte("head")); err != nil {
		b.Fatal(err)
	}
	e.appendReleases(b, template, uint64(n))
	if err := e.b.flush(ctx); err != nil {
		b.Fatal(err)
	}
	e.size = e.b.st.size
	return e
}

// appendReleases appends copies of template until the log has n entries.
func (e *startEnv) appendReleases(b *testing.B, template *tlog.Entry, n uint64) {
	ctx := context.Background()
	cp, err := e.log.Checkpoint(ctx)
	if err != nil {
		b.Fatal(err)
	}
	appendConcurrently(b, e.log, cp.Size, n, func(i uint64) ([]byte, error) {
		r := *template
		r.Time = template.Time.Add(time.Duration(i))
		return tlog.EncodeEntry(&r)
	})
}

// indexBehind puts back the index head written behindBy entries before
// the end of the log, and returns how many entries the next start
// replays.
func (e *startEnv) indexBehind(b *testing.B) uint64 {
	if err := e.withDB(func(db *bbolt.DB) error { return dbedit.Put(db, stateIndexPath, []byte("head"), e.behind) }); err != nil {
		b.Fatal(err)
	}
	return e.behindBy
}

// dropIndex deletes the index's head.
func (e *startEnv) dropIndex(b *testing.B) {
	if err := e.withDB(func(db *bbolt.DB) error { return dbedit.Delete(db, stateIndexPath, []byte("head")) }); err != nil {
		b.Fatal(err)
	}
}

// withDB runs f on kbs.db while the broker is stopped.
func (e *startEnv) withDB(f func(*bbolt.DB) error) error {
	db, err := dbedit.Open(filepath.Join(e.dir, "kbs.db"))
	if err != nil {
		return err
	}
	defer db.Close()
	return f(db)
}
