package audit_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/kbs/audit"
	"github.com/kbs-dev/kbs/kbs/audit/audittest"
	"github.com/kbs-dev/kbs/manifest"
)

// TestSnapshotRestore replays a log in steps of a few entries (ReplayTo),
// each step by a fresh replayer restored from the last one's Snapshot, as
// a monitor that restarts between steps does, and gets the events, counts,
// manifests and judgement of one replay of the whole log.
func TestSnapshotRestore(t *testing.T) {
	ctx := context.Background()
	l := audittest.New(t)
	signedChain(t, l) // versions 1 and 2
	l.Append(t, audittest.Upload("acme/a", 1, "acme"))
	l.Append(t, l.Release("acme/a", 1, "gpu-worker"))  // under version 1's hash: an anomaly
	l.Append(t, audittest.Upload("acme/a", 1, "acme")) // repeat after a release: an anomaly
	l.Append(t, audittest.Upload("acme/b", 1, "acme"))
	l.Append(t, audittest.Upload("acme/b", 1, "acme")) // a retried upload: a warning
	l.Append(t, audittest.Delete("acme/b", 1, "acme"))
	l.Append(t, l.Release("acme/b", 1, "gpu-worker")) // of a deleted key: anomalies
	c, lv := newClient(t, l, t.TempDir())
	cp, err := c.Tiles().Sync(ctx, lv)
	if err != nil {
		t.Fatal(err)
	}

	var once recorder
	whole := audit.NewReplayer(l.NoteKey, &once)
	if err := whole.Replay(ctx, c.Tiles(), cp, nil); err != nil {
		t.Fatal(err)
	}

	var steps recorder
	var snap []byte
	for end := uint64(0); ; end += 2 {
		end = min(end, cp.Size)
		rp := audit.NewReplayer(l.NoteKey, &steps)
		if snap != nil {
			if err := rp.Restore(snap); err != nil {
				t.Fatal(err)
			}
		}
		if err := rp.ReplayTo(ctx, c.Tiles(), cp, end, nil); err != nil {
			t.Fatalf("ReplayTo(%d): %v", end, err)
		}
		if rp.Next() != end {
			t.Fatalf("after ReplayTo(%d), Next = %d", end, rp.Next())
		}
		if snap, err = rp.Snapshot(); err != nil {
			t.Fatal(err)
		}
		if end == cp.Size {
			break
		}
	}
	last := audit.NewReplayer(l.NoteKey, &steps)
	if err := last.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(steps.events, once.events) {
		t.Errorf("replayed in restored steps:\n%s\nat once:\n%s", strings.Join(steps.events, "\n"), strings.Join(once.events, "\n"))
	}
	if last.Anomalies() != whole.Anomalies() || last.Anomalies() < 3 || last.Next() != cp.Size {
		t.Errorf("restored: %d anomalies, next %d; whole: %d anomalies", last.Anomalies(), last.Next(), whole.Anomalies())
	}
	for _, typ := range []string{"manifest", "key-upload", "key-delete", "release"} {
		if last.Counts()[typ] != whole.Counts()[typ] {
			t.Errorf("counts[%s] = %d, want %d", typ, last.Counts()[typ], whole.Counts()[typ])
		}
	}
	if last.ActiveManifest() == nil || last.ActiveManifest().Hash() != whole.ActiveManifest().Hash() || last.ActiveManifest().Version() != 2 {
		t.Errorf("restored active manifest = %v", last.ActiveManifest())
	}
	if ms := last.Manifests(); len(ms) != 2 || !last.Logged(l.Manifest) || len(ms[1].Changes) == 0 {
		t.Errorf("restored manifests = %+v", ms)
	}

	// A snapshot of another log, or of another format, is refused.
	other := audit.NewReplayer(l.Fork(t).NoteKey+"x", &steps)
	if err := other.Restore(snap); err == nil {
		t.Error("Restore of another log's state succeeded")
	}
	for _, bad := range []string{"", "{}", `{"format":1,"note_key":"` + l.NoteKey + `","active":"bm90IGEgbWFuaWZlc3Q="}`} {
		if err := audit.NewReplayer(l.NoteKey, &steps).Restore([]byte(bad)); err == nil {
			t.Errorf("Restore(%q) succeeded", bad)
		}
	}
	// ReplayTo refuses an end behind Next or past the checkpoint.
	if err := last.ReplayTo(ctx, c.Tiles(), cp, cp.Size-1, nil); err == nil {
		t.Error("ReplayTo behind Next succeeded")
	}
	if err := audit.NewReplayer(l.NoteKey, &steps).ReplayTo(ctx, c.Tiles(), cp, cp.Size+1, nil); err == nil {
		t.Error("ReplayTo past the checkpoint succeeded")
	}
}

// TestManifestChanges: a manifest entry carries its field-by-field diff
// from the version that was active before it.
func TestManifestChanges(t *testing.T) {
	ctx := context.Background()
	l := audittest.New(t)
	l.AppendManifest(t)
	d := l.Manifest.Document()
	d.Version, d.Previous, d.AllowSimulated = 2, l.Manifest.Hash(), !d.AllowSimulated
	v2 := must(manifest.Parse(must(manifest.Encode(d))))
	l.AppendVersion(t, v2, nil, v2.OwnerFingerprints())
	c, lv := newClient(t, l, t.TempDir())
	r, err := audit.Audit(ctx, audit.Config{Client: c, Log: lv})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Manifests) != 2 || len(r.Manifests[0].Changes) != 0 {
		t.Fatalf("manifests = %+v", r.Manifests)
	}
	want := manifest.Diff(l.Manifest, v2)
	if !slices.Equal(r.Manifests[1].Changes, want) || len(want) < 3 {
		t.Errorf("version 2 changes = %v, want %v", r.Manifests[1].Changes, want)
	}
}
