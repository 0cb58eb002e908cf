package audit_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/audit"
	"github.com/kbs-dev/kbs/kbs/audit/audittest"
	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// recorder is an Events that keeps everything, in order, as text.
type recorder struct {
	events []string
}

func (r *recorder) Manifest(m audit.Manifest) {
	r.events = append(r.events, fmt.Sprintf("%d manifest v%d", m.Index, m.Version))
}
func (r *recorder) Identity(id audit.Identity) {
	r.events = append(r.events, fmt.Sprintf("%d identity %s", id.Index, id.Platform))
}
func (r *recorder) KeyEvent(k audit.KeyEvent) {
	r.events = append(r.events, fmt.Sprintf("%d %s %s v%d", k.Index, k.Event, k.ID, k.Version))
}
func (r *recorder) Release(x audit.Release) {
	r.events = append(r.events, fmt.Sprintf("%d release %s v%d to %s", x.Index, x.ID, x.Version, x.WorkerClass))
}
func (r *recorder) Finding(f audit.Finding) {
	kind := "anomaly"
	if f.Warning {
		kind = "warning"
	}
	r.events = append(r.events, kind+" "+f.String())
}

// newClient returns a client of l and its log verifier over a fresh
// checkpoint store (dir).
func newClient(t testing.TB, l *audittest.Log, dir string) (*client.Client, *tlog.Verifier) {
	t.Helper()
	c, err := client.New(client.Config{Addr: l.Addr, Checkpoints: client.State{Dir: dir}.Checkpoints(), AllowUnpinned: true})
	if err != nil {
		t.Fatal(err)
	}
	lv, err := c.LogVerifier(l.NoteKey)
	if err != nil {
		t.Fatal(err)
	}
	return c, lv
}

// TestAuditEvents audits a small clean log twice: collecting everything in
// the Report, and streaming to Events, which then get every event in log
// order while the Report keeps only the manifests, counts and findings.
func TestAuditEvents(t *testing.T) {
	ctx := context.Background()
	l := audittest.New(t)
	l.AppendManifest(t)
	l.Append(t, audittest.Upload("acme/a", 1, "acme"))
	l.Append(t, audittest.Upload("acme/a", 1, "acme")) // a retried upload: a warning
	rel := l.Release("acme/a", 1, "gpu-worker")
	rel.Release.Keys = append(rel.Release.Keys, tlog.KeyRef{ID: "acme/a", Version: 1})
	l.Append(t, rel)
	l.Append(t, audittest.Delete("acme/a", 1, "acme"))

	c, lv := newClient(t, l, t.TempDir())
	var progress [][2]uint64
	r, err := audit.Audit(ctx, audit.Config{Client: c, Log: lv, Manifest: l.Manifest,
		Progress: func(done, total uint64) { progress = append(progress, [2]uint64{done, total}) }})
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() || !r.Stored || r.Size != 5 || r.PreviousSize != nil || len(r.Releases) != 2 || len(r.KeyEvents) != 3 || len(r.Warnings) != 1 {
		t.Fatalf("Audit = %+v", r)
	}
	if len(progress) == 0 || progress[len(progress)-1] != [2]uint64{5, 5} {
		t.Errorf("progress = %v, want it to end at 5 of 5", progress)
	}
	if stored, ok, _ := lv.Latest(); !ok || stored.Size != 5 {
		t.Errorf("stored checkpoint: %v, size %d", ok, stored.Size)
	}

	// Streamed, from a fresh state.
	c, lv = newClient(t, l, t.TempDir())
	var rec recorder
	r2, err := audit.Audit(ctx, audit.Config{Client: c, Log: lv, Events: &rec})
	if err != nil {
		t.Fatal(err)
	}
	if !r2.OK() || !r2.Stored || len(r2.Releases) != 0 || len(r2.KeyEvents) != 0 || len(r2.Identities) != 0 {
		t.Fatalf("streamed Audit kept events: %+v", r2)
	}
	if !slices.Equal(r2.Warnings, r.Warnings) || len(r2.Manifests) != 1 || r2.Counts["release"] != 1 || r2.Counts["key-upload"] != 2 {
		t.Errorf("streamed report = %+v, want the warnings, manifests and counts of %+v", r2, r)
	}
	want := []string{
		"0 manifest v1",
		"1 upload acme/a v1",
		`warning entry 2: upload of acme/a version 1 by client "acme" repeats entry 1: one upload logged twice (a retried request), not a new key`,
		"2 upload-repeat acme/a v1",
		"3 release acme/a v1 to gpu-worker",
		"3 release acme/a v1 to gpu-worker",
		"4 delete acme/a v1",
	}
	if !slices.Equal(rec.events, want) {
		t.Errorf("events:\n%s\nwant\n%s", strings.Join(rec.events, "\n"), strings.Join(want, "\n"))
	}
}

// TestAuditFindingsBounded: a hostile log of many malformed entries, some
// quoting 60 KB of text, gives a report of bounded size that fails.
func TestAuditFindingsBounded(t *testing.T) {
	ctx := context.Background()
	l := audittest.New(t)
	l.AppendManifest(t)
	l.AppendMany(t, []byte(`{"type":"release"}`), 2000)
	huge := []byte(`{"type":"` + strings.Repeat("x", 60000) + `","time":"2026-01-01T00:00:00Z"}`)
	l.AppendMany(t, huge, 100)
	c, lv := newClient(t, l, t.TempDir())
	r, err := audit.Audit(ctx, audit.Config{Client: c, Log: lv, MaxFindings: 50})
	if err != nil {
		t.Fatal(err)
	}
	if r.OK() || r.Stored || len(r.Anomalies) != 50 || r.AnomalyCount() != 2100 {
		t.Fatalf("Audit of 2100 malformed entries: OK %v, stored %v, %d anomalies listed of %d", r.OK(), r.Stored, len(r.Anomalies), r.AnomalyCount())
	}
	if _, ok, _ := lv.Latest(); ok {
		t.Error("a failed audit stored the checkpoint")
	}
	// The defaults keep a thousand; every message is clipped.
	c, lv = newClient(t, l, t.TempDir())
	var longest int
	var rec recorder
	r, err = audit.Audit(ctx, audit.Config{Client: c, Log: lv, Events: &rec})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Anomalies) != audit.DefaultMaxFindings || r.AnomaliesOmitted != 2100-audit.DefaultMaxFindings {
		t.Fatalf("default cap: %d listed, %d omitted", len(r.Anomalies), r.AnomaliesOmitted)
	}
	for _, e := range rec.events {
		longest = max(longest, len(e))
	}
	if longest > 2048 || !strings.Contains(strings.Join(rec.events, "\n"), "more bytes)") {
		t.Errorf("longest finding is %d bytes; want long ones clipped", longest)
	}
}

// TestReplayerResumes replays a growing log in steps, as a monitor does,
// and gets what one replay of the whole log gets.
func TestReplayerResumes(t *testing.T) {
	ctx := context.Background()
	l := audittest.New(t)
	c, lv := newClient(t, l, t.TempDir())
	tiles := c.Tiles()
	var steps recorder
	rp := audit.NewReplayer(l.NoteKey, &steps)
	grow := []func(){
		func() { l.AppendManifest(t) },
		func() {
			l.Append(t, audittest.Upload("acme/a", 1, "acme"))
			l.Append(t, l.Release("acme/a", 1, "gpu-worker"))
		},
		func() {}, // nothing new
		func() {
			l.Append(t, l.Release("acme/a", 2, "gpu-worker")) // not uploaded: an anomaly
			l.Append(t, audittest.Upload("acme/a", 2, "acme"))
		},
	}
	for i, g := range grow {
		g()
		cp, err := tiles.Sync(ctx, lv)
		if err != nil {
			t.Fatal(err)
		}
		if err := rp.Replay(ctx, tiles, cp, nil); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if rp.Next() != cp.Size {
			t.Fatalf("step %d: Next = %d, want %d", i, rp.Next(), cp.Size)
		}
	}
	cp, err := lv.VerifyCheckpoint(must(c.Checkpoint(ctx)))
	if err != nil {
		t.Fatal(err)
	}
	var once recorder
	whole := audit.NewReplayer(l.NoteKey, &once)
	if err := whole.Replay(ctx, tiles, cp, nil); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(steps.events, once.events) || rp.Anomalies() != 1 || whole.Anomalies() != 1 {
		t.Errorf("replayed in steps:\n%s\nat once:\n%s", strings.Join(steps.events, "\n"), strings.Join(once.events, "\n"))
	}
	if rp.ActiveManifest().Hash() != l.Manifest.Hash() || !rp.Logged(l.Manifest) {
		t.Error("the replayer lost the active manifest")
	}
	// A checkpoint behind what was replayed is refused.
	if err := rp.Replay(ctx, tiles, tlog.SignedCheckpoint{Root: tlog.Root{Size: 1}}, nil); err == nil {
		t.Error("Replay of an older checkpoint succeeded")
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// signedChain logs version 1 signed by its own owner and version 2 signed
// by the same owner, naming signers in the log and listing signatures in
// the history.
func signedChain(t *testing.T, l *audittest.Log) {
	t.Helper()
	owner, err := manifest.ParsePrivateKey(must(os.ReadFile(audittest.Testdata("manifest/keys/owner1.key"))), nil)
	if err != nil {
		t.Fatal(err)
	}
	sign := func(b []byte) []string {
		s, err := manifest.Sign(owner, b)
		if err != nil {
			t.Fatal(err)
		}
		return []string{s}
	}
	v1 := l.Manifest
	fps := v1.OwnerFingerprints()
	l.AppendVersion(t, v1, sign(v1.Bytes()), fps)
	d := v1.Document()
	d.Version, d.Previous = 2, v1.Hash()
	v2, err := manifest.Parse(must(manifest.Encode(d)))
	if err != nil {
		t.Fatal(err)
	}
	l.AppendVersion(t, v2, sign(v2.Bytes()), fps)
}

// TestAuditHistorySignatures: the history's signatures are verified with
// manifest.Chain, version 1's against its own owners; a bad version is
// reported and the check goes on after it.
func TestAuditHistorySignatures(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		tamper  func(h []api.Manifest)
		want    string
		checked []bool
	}{
		{"clean", nil, "", []bool{true, true}},
		{"version 1 signature of other bytes", func(h []api.Manifest) { h[0].Signatures = h[1].Signatures },
			"manifest version 1 signatures", []bool{false, true}},
		{"version 2 unsigned", func(h []api.Manifest) { h[1].Signatures = nil },
			"manifest version 2 signatures", []bool{true, false}},
		{"history body swapped", func(h []api.Manifest) { h[1].Body = h[0].Body },
			"history version 2 is", []bool{true, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := audittest.New(t)
			signedChain(t, l)
			if tc.tamper != nil {
				l.EditHistory(func(h *[]api.Manifest) { tc.tamper(*h) })
			}
			c, lv := newClient(t, l, t.TempDir())
			r, err := audit.Audit(ctx, audit.Config{Client: c, Log: lv})
			if err != nil {
				t.Fatal(err)
			}
			var checked []bool
			for _, m := range r.Manifests {
				checked = append(checked, m.SignaturesChecked)
			}
			if !slices.Equal(checked, tc.checked) {
				t.Errorf("signatures checked = %v, want %v", checked, tc.checked)
			}
			if tc.want == "" {
				if !r.OK() {
					t.Fatalf("anomalies: %q", r.Anomalies)
				}
				return
			}
			if r.OK() || !strings.Contains(strings.Join(r.Anomalies, "\n"), tc.want) {
				t.Fatalf("anomalies %q, want one about %q", r.Anomalies, tc.want)
			}
		})
	}
	// The log names a signer the signatures do not show.
	l := audittest.New(t)
	v1 := l.Manifest
	l.AppendVersion(t, v1, nil, nil)
	owner, _ := manifest.ParsePrivateKey(must(os.ReadFile(audittest.Testdata("manifest/keys/owner1.key"))), nil)
	d := v1.Document()
	d.Version, d.Previous = 2, v1.Hash()
	v2 := must(manifest.Parse(must(manifest.Encode(d))))
	sig := must(manifest.Sign(owner, v2.Bytes()))
	l.AppendVersion(t, v2, []string{sig}, []string{"sha256:" + strings.Repeat("1", 64)})
	c, lv := newClient(t, l, t.TempDir())
	r, err := audit.Audit(ctx, audit.Config{Client: c, Log: lv, Manifest: v2})
	if err != nil {
		t.Fatal(err)
	}
	if all := strings.Join(r.Anomalies, "\n"); !strings.Contains(all, "signatures are by") || r.Manifests[1].SignaturesChecked {
		t.Errorf("anomalies %q, want the signers disagreement", r.Anomalies)
	}
}

// TestAuditStoredCheckpoint: an audit fails on a log that contradicts the
// stored checkpoint, with both notes as evidence, and on a manifest the
// log does not hold.
func TestAuditStoredCheckpoint(t *testing.T) {
	ctx := context.Background()
	l := audittest.New(t)
	l.AppendManifest(t)
	dir := t.TempDir()
	c, lv := newClient(t, l, dir)
	if r, err := audit.Audit(ctx, audit.Config{Client: c, Log: lv}); err != nil || !r.OK() {
		t.Fatalf("first audit: %v", err)
	}
	l.Append(t, audittest.Upload("acme/a", 1, "acme"))
	r, err := audit.Audit(ctx, audit.Config{Client: c, Log: lv})
	if err != nil || r.PreviousSize == nil || *r.PreviousSize != 1 || r.Size != 2 {
		t.Fatalf("second audit: %+v, %v", r, err)
	}
	// The broker shows another log under the same key (a split view):
	// the stored checkpoint of size 2 is not a prefix of it.
	fork := l.Fork(t)
	fork.AppendManifest(t)
	fork.Append(t, audittest.Upload("acme/b", 1, "acme"))
	fork.Append(t, audittest.Upload("acme/b", 2, "acme"))
	fc, flv := newClient(t, fork, dir)
	stored, _, _ := flv.Latest()
	_, err = audit.Audit(ctx, audit.Config{Client: fc, Log: flv})
	var fe *tlog.ForkError
	if !errors.As(err, &fe) || fe.Rollback || fe.Old.Size != 2 || fe.New.Size != 3 || string(fe.Old.Note) != string(stored.Note) {
		t.Fatalf("audit of a forked log = %v, want a *tlog.ForkError from the stored size 2", err)
	}
	if now, _, _ := flv.Latest(); now.Size != 2 {
		t.Fatalf("the forked audit moved the stored checkpoint to %d", now.Size)
	}
	// A manifest the log does not hold.
	d := l.Manifest.Document()
	d.Version, d.Previous = 2, l.Manifest.Hash()
	v2 := must(manifest.Parse(must(manifest.Encode(d))))
	r, err = audit.Audit(ctx, audit.Config{Client: c, Log: lv, Manifest: v2})
	if err != nil || r.OK() || !strings.Contains(strings.Join(r.Anomalies, "\n"), "your manifest (version 2") {
		t.Fatalf("audit with a manifest the log lacks: %+v, %v", r, err)
	}
	if _, err := audit.Audit(ctx, audit.Config{}); err == nil {
		t.Error("Audit without a client succeeded")
	}
}

// discard is an Events that keeps nothing.
type discard struct{}

func (discard) Manifest(audit.Manifest)   {}
func (discard) Identity(audit.Identity)   {}
func (discard) KeyEvent(audit.KeyEvent)   {}
func (discard) Release(audit.Release)     {}
func (discard) Finding(audit.Finding)     {}
func (discard) Lifecycle(audit.Lifecycle) {}

// BenchmarkAudit audits a log of 100,002 entries (a manifest, an upload,
// 100,000 releases) served over a unix socket, the report collecting every
// release or streaming them to Events. Client and server share the
// process; cpu-µs/entry counts both.
func BenchmarkAudit(b *testing.B) {
	const n = 100_000
	l := audittest.NewBench(b, n)
	for _, mode := range []struct {
		name   string
		events audit.Events
	}{{"report", nil}, {"stream", discard{}}} {
		b.Run(mode.name, func(b *testing.B) {
			b.ReportAllocs()
			start, cpu0 := time.Now(), audittest.CPUTime()
			var entries uint64
			var retained uint64
			for b.Loop() {
				c, lv := newClient(b, l, b.TempDir())
				before := heapAlloc()
				r, err := audit.Audit(context.Background(), audit.Config{Client: c, Log: lv, Events: mode.events})
				if err != nil || !r.OK() || r.Size != n+2 {
					b.Fatalf("Audit = %v, %v", r, err)
				}
				if after := heapAlloc(); after > before {
					retained = max(retained, after-before)
				}
				runtime.KeepAlive(r)
				entries += r.Size
			}
			b.ReportMetric(float64(entries)/time.Since(start).Seconds(), "entries/s")
			b.ReportMetric(float64((audittest.CPUTime()-cpu0).Microseconds())/float64(entries), "cpu-µs/entry")
			// What the finished report holds on to (live heap after a GC).
			b.ReportMetric(float64(retained)/(1<<20), "report-MiB")
		})
	}
}

// heapAlloc returns the live heap after a collection.
func heapAlloc() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
