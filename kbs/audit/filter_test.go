package audit_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/kbs/audit"
	"github.com/kbs-dev/kbs/kbs/audit/audittest"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// TestFilter: each filter field selects the key events and releases it
// names, by key pattern, uploading client, worker class and time; the
// manifests, counts and findings stay those of the whole log.
func TestFilter(t *testing.T) {
	ctx := context.Background()
	l := audittest.New(t)
	l.AppendManifest(t)
	d := l.Manifest.Document()
	d.Version, d.Previous = 2, l.Manifest.Hash()
	d.Workers["cpu-worker"] = d.Workers["gpu-worker"]
	d.Keys[0].ReleaseTo = append(d.Keys[0].ReleaseTo, "cpu-worker")
	d.Clients = append(d.Clients, d.Clients[0])
	d.Clients[1].Name = "acme2"
	d.Clients[1].PublicKey = string(must(os.ReadFile(audittest.Testdata("manifest/keys/client2.pub"))))
	v2 := must(manifest.Parse(must(manifest.Encode(d))))
	l.AppendVersion(t, v2, nil, v2.OwnerFingerprints())
	day := func(n int) time.Time { return audittest.Time.Add(time.Duration(n) * 24 * time.Hour) }
	at := func(e *tlog.Entry, n int) *tlog.Entry { e.Time = day(n); return e }
	rel := func(id string, v uint64, class string, n int) *tlog.Entry {
		e := l.Release(id, v, class)
		e.Release.ManifestHash = v2.Hash()
		return at(e, n)
	}
	l.Append(t, at(audittest.Upload("acme/a", 1, "acme"), 1))
	l.Append(t, at(audittest.Upload("acme/b", 1, "acme2"), 1))
	l.Append(t, rel("acme/a", 1, "gpu-worker", 2))
	l.Append(t, rel("acme/b", 1, "cpu-worker", 3))
	l.Append(t, at(audittest.Upload("acme/a", 2, "acme2"), 4))
	l.Append(t, rel("acme/a", 2, "cpu-worker", 5))
	l.Append(t, at(audittest.Delete("acme/b", 1, "acme2"), 6))

	list := func(r *audit.Report) []string {
		var s []string
		for _, k := range r.KeyEvents {
			s = append(s, fmt.Sprintf("%s %s v%d", k.Event, k.ID, k.Version))
		}
		for _, x := range r.Releases {
			s = append(s, fmt.Sprintf("release %s v%d %s", x.ID, x.Version, x.WorkerClass))
		}
		return s
	}
	var whole *audit.Report
	for _, tc := range []struct {
		f    *audit.Filter
		want []string
	}{
		{nil, []string{"upload acme/a v1", "upload acme/b v1", "upload acme/a v2", "delete acme/b v1",
			"release acme/a v1 gpu-worker", "release acme/b v1 cpu-worker", "release acme/a v2 cpu-worker"}},
		{&audit.Filter{Key: "acme/a"}, []string{"upload acme/a v1", "upload acme/a v2", "release acme/a v1 gpu-worker", "release acme/a v2 cpu-worker"}},
		{&audit.Filter{Key: "acme/*", Class: "cpu-worker"}, []string{"upload acme/a v1", "upload acme/b v1", "upload acme/a v2", "delete acme/b v1",
			"release acme/b v1 cpu-worker", "release acme/a v2 cpu-worker"}},
		{&audit.Filter{Client: "acme2"}, []string{"upload acme/b v1", "upload acme/a v2", "delete acme/b v1",
			"release acme/b v1 cpu-worker", "release acme/a v2 cpu-worker"}},
		{&audit.Filter{Client: "acme", Class: "cpu-worker"}, []string{"upload acme/a v1"}},
		{&audit.Filter{Since: day(2), Until: day(5)}, []string{"upload acme/a v2", "release acme/a v1 gpu-worker", "release acme/b v1 cpu-worker"}},
		{&audit.Filter{Key: "other/*"}, nil},
	} {
		c, lv := newClient(t, l, t.TempDir())
		r, err := audit.Audit(ctx, audit.Config{Client: c, Log: lv, Filter: tc.f})
		if err != nil {
			t.Fatal(err)
		}
		if got := list(r); !slices.Equal(got, tc.want) {
			t.Errorf("filter %q: %q, want %q", tc.f.String(), got, tc.want)
		}
		if whole == nil {
			whole = r
			continue
		}
		if len(r.Manifests) != 2 || r.Counts["release"] != whole.Counts["release"] || r.AnomalyCount() != whole.AnomalyCount() || r.Filter != tc.f {
			t.Errorf("filter %q changed the report's manifests, counts or findings", tc.f.String())
		}
	}
	// Streaming with KeepEvents: Events and the Report get the same.
	c, lv := newClient(t, l, t.TempDir())
	var rec recorder
	r, err := audit.Audit(ctx, audit.Config{Client: c, Log: lv, Events: &rec, KeepEvents: true, Filter: &audit.Filter{Key: "acme/b"}})
	if err != nil || len(r.Releases) != 1 || len(r.KeyEvents) != 2 || len(rec.events) != 2+3+1 { // 2 manifests, 3 events, 1 finding
		t.Fatalf("KeepEvents: %+v, %v; events %q", r, err, rec.events)
	}
	for _, bad := range []*audit.Filter{{Key: "a**"}, {Since: day(2), Until: day(2)}} {
		c, lv := newClient(t, l, t.TempDir())
		if _, err := audit.Audit(ctx, audit.Config{Client: c, Log: lv, Filter: bad}); err == nil {
			t.Errorf("Audit with filter %+v succeeded", bad)
		}
	}
}
