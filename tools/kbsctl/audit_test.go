package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/audit"
	"github.com/kbs-dev/kbs/kbs/audit/audittest"
	"github.com/kbs-dev/kbs/tlog"
)

// BenchmarkAudit measures 'kbsctl audit' end to end on a log of 100k
// entries served over a unix socket: every tile and bundle fetched and
// verified against the checkpoint, every entry decoded and replayed.
func BenchmarkAudit(b *testing.B) {
	const n = 100_000
	tl := audittest.NewBench(b, n)
	size := n + 2
	addr, vkey := tl.Addr, tl.NoteKey
	var entries uint64
	b.ResetTimer()
	cpu0 := audittest.CPUTime()
	for i := 0; i < b.N; i++ {
		state := b.TempDir()
		code := run(context.Background(), []string{"--addr", addr, "--state", state, "audit", "--note-key", vkey},
			strings.NewReader(""), io.Discard, io.Discard)
		if code != 0 {
			var errb strings.Builder
			run(context.Background(), []string{"--addr", addr, "--state", state, "audit", "--note-key", vkey}, strings.NewReader(""), io.Discard, &errb)
			b.Fatalf("audit exited %d: %s", code, errb.String())
		}
		cp, _ := os.ReadFile(filepath.Join(state, "checkpoints", "checkpoint-kbs%2Fbench"))
		if len(cp) == 0 {
			b.Fatal("audit stored no checkpoint")
		}
		entries += uint64(size)
	}
	b.ReportMetric(float64(entries)/b.Elapsed().Seconds(), "entries/s")
	// CPU time per entry (client and server together) does not depend on
	// what else the machine runs, wall time does.
	b.ReportMetric(float64((audittest.CPUTime()-cpu0).Microseconds())/float64(entries), "cpu-µs/entry")
}

// TestAuditAnomalies builds logs that tell an inconsistent story, each
// correctly signed and served: audit exits 1 naming the problem and stores
// no checkpoint.
func TestAuditAnomalies(t *testing.T) {
	upload := func(id string, v uint64, client string) *tlog.Entry {
		return &tlog.Entry{Type: tlog.TypeKeyUpload, KeyUpload: &tlog.KeyEntry{ID: id, Version: v, Client: client}}
	}
	for _, tc := range []struct {
		name  string
		build func(t *testing.T, tl *audittest.Log)
		want  string
	}{
		{"clean", func(t *testing.T, tl *audittest.Log) {
			tl.AppendManifest(t)
			tl.Append(t, upload("acme/model", 1, "acme"))
			tl.Append(t, tl.Release("acme/model", 1, "gpu-worker"))
			tl.Append(t, upload("acme/model", 2, "acme"))
			tl.Append(t, &tlog.Entry{Type: tlog.TypeKeyDelete, KeyDelete: &tlog.KeyEntry{ID: "acme/model", Version: 2, Client: "acme"}})
		}, ""},
		{"unsigned version 1", func(t *testing.T, tl *audittest.Log) {
			m := tl.Manifest
			idx := tl.Append(t, &tlog.Entry{Type: tlog.TypeManifest, Manifest: &tlog.ManifestEntry{Version: 1, Hash: m.Hash(), Body: m.Bytes()}})
			tl.EditHistory(func(h *[]api.Manifest) {
				*h = []api.Manifest{{Version: 1, Hash: m.Hash(), Body: m.Bytes(), Signatures: []string{}, LogIndex: idx}}
			})
			tl.Append(t, upload("acme/model", 1, "acme"))
			tl.Append(t, tl.Release("acme/model", 1, "gpu-worker"))
		}, ""},
		{"release of a key never uploaded", func(t *testing.T, tl *audittest.Log) {
			tl.AppendManifest(t)
			tl.Append(t, tl.Release("acme/model", 1, "gpu-worker"))
		}, "latest live version is 0"},
		{"release of a deleted key", func(t *testing.T, tl *audittest.Log) {
			tl.AppendManifest(t)
			tl.Append(t, upload("acme/model", 1, "acme"))
			tl.Append(t, &tlog.Entry{Type: tlog.TypeKeyDelete, KeyDelete: &tlog.KeyEntry{ID: "acme/model", Version: 1, Client: "acme"}})
			tl.Append(t, tl.Release("acme/model", 1, "gpu-worker"))
		}, "latest live version is 1"},
		{"release to a class the policy does not allow", func(t *testing.T, tl *audittest.Log) {
			tl.AppendManifest(t)
			tl.Append(t, upload("acme/model", 1, "acme"))
			tl.Append(t, tl.Release("acme/model", 1, "cpu-worker"))
		}, `does not release acme/model to class "cpu-worker"`},
		{"release under another manifest", func(t *testing.T, tl *audittest.Log) {
			tl.AppendManifest(t)
			tl.Append(t, upload("acme/model", 1, "acme"))
			e := tl.Release("acme/model", 1, "gpu-worker")
			e.Release.ManifestHash = "sha256:" + strings.Repeat("0", 64)
			tl.Append(t, e)
		}, "release under manifest sha256:0000"},
		{"release before any manifest", func(t *testing.T, tl *audittest.Log) {
			tl.Append(t, tl.Release("acme/model", 1, "gpu-worker"))
		}, "release before any manifest"},
		{"upload by a client the manifest does not allow", func(t *testing.T, tl *audittest.Log) {
			tl.AppendManifest(t)
			tl.Append(t, upload("acme/model", 1, "mallory"))
		}, `client "mallory" may not write acme/model`},
		{"upload skipping a version", func(t *testing.T, tl *audittest.Log) {
			tl.AppendManifest(t)
			tl.Append(t, upload("acme/model", 2, "acme"))
		}, "want version 1"},
		{"one version uploaded by two clients", func(t *testing.T, tl *audittest.Log) {
			tl.AppendManifest(t)
			tl.Append(t, upload("acme/model", 1, "acme"))
			tl.Append(t, upload("acme/model", 1, "mallory"))
		}, `upload of acme/model version 1 by client "mallory", but entry 1 uploaded that version by client "acme"`},
		{"upload of a deleted version", func(t *testing.T, tl *audittest.Log) {
			tl.AppendManifest(t)
			tl.Append(t, upload("acme/model", 1, "acme"))
			tl.Append(t, &tlog.Entry{Type: tlog.TypeKeyDelete, KeyDelete: &tlog.KeyEntry{ID: "acme/model", Version: 1, Client: "acme"}})
			tl.Append(t, upload("acme/model", 1, "acme"))
		}, "upload of acme/model version 1 after that version was deleted"},
		{"repeated upload after a release", func(t *testing.T, tl *audittest.Log) {
			tl.AppendManifest(t)
			tl.Append(t, upload("acme/model", 1, "acme"))
			tl.Append(t, tl.Release("acme/model", 1, "gpu-worker"))
			tl.Append(t, upload("acme/model", 1, "acme"))
		}, "upload of acme/model version 1 repeats entry 1 after that version was released"},
		{"upload of an older version", func(t *testing.T, tl *audittest.Log) {
			tl.AppendManifest(t)
			tl.Append(t, upload("acme/model", 1, "acme"))
			tl.Append(t, upload("acme/model", 2, "acme"))
			tl.Append(t, upload("acme/model", 1, "acme"))
		}, "upload of acme/model version 1, want version 3"},
		{"manifest admitted by a non-owner", func(t *testing.T, tl *audittest.Log) {
			m := tl.Manifest
			idx := tl.Append(t, &tlog.Entry{Type: tlog.TypeManifest, Manifest: &tlog.ManifestEntry{
				Version: 1, Hash: m.Hash(), Body: m.Bytes(), Signers: []string{"sha256:" + strings.Repeat("1", 64)}}})
			tl.EditHistory(func(h *[]api.Manifest) {
				*h = []api.Manifest{{Version: 1, Hash: m.Hash(), Body: m.Bytes(), Signatures: []string{}, LogIndex: idx}}
			})
		}, "is not an owner of version 1"},
		{"history disagrees with the log", func(t *testing.T, tl *audittest.Log) {
			tl.AppendManifest(t)
			tl.EditHistory(func(h *[]api.Manifest) { (*h)[0].LogIndex = 7 })
		}, "the log has"},
		{"history missing a version", func(t *testing.T, tl *audittest.Log) {
			tl.AppendManifest(t)
			tl.EditHistory(func(h *[]api.Manifest) { *h = nil })
		}, "history has 0 manifest versions, the log 1"},
		{"malformed entry", func(t *testing.T, tl *audittest.Log) {
			tl.AppendManifest(t)
			if _, _, err := tl.Backend.Append(context.Background(), []byte(`{"type":"release"}`)); err != nil {
				t.Fatal(err)
			}
		}, "malformed entry"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tl := audittest.New(t)
			tc.build(t, tl)
			state := t.TempDir()
			want := 0
			if tc.want != "" {
				want = 1
			}
			out, errOut := ctl(t, want, "--addr", tl.Addr, "--state", state, "audit", "--note-key", tl.NoteKey)
			stored, _ := os.ReadFile(filepath.Join(state, "checkpoints", "checkpoint-kbs%2Fbench"))
			if tc.want == "" {
				contains(t, out, "audit OK")
				if len(stored) == 0 {
					t.Fatal("a clean audit stored no checkpoint")
				}
				return
			}
			contains(t, errOut, tc.want)
			contains(t, out, "audit FAILED")
			if len(stored) != 0 {
				t.Fatal("a failed audit stored the checkpoint")
			}
		})
	}
}

// TestAuditRepeatedUpload: an upload logged twice (the broker's log append
// failed ambiguously and the client retried the same version) is one
// logical upload: a warning, exit 0, the checkpoint stored.
func TestAuditRepeatedUpload(t *testing.T) {
	tl := audittest.New(t)
	tl.AppendManifest(t)
	up := &tlog.Entry{Type: tlog.TypeKeyUpload, KeyUpload: &tlog.KeyEntry{ID: "acme/model", Version: 1, Client: "acme"}}
	tl.Append(t, up)
	tl.Append(t, up)
	tl.Append(t, tl.Release("acme/model", 1, "gpu-worker"))
	tl.Append(t, &tlog.Entry{Type: tlog.TypeKeyUpload, KeyUpload: &tlog.KeyEntry{ID: "acme/model", Version: 2, Client: "acme"}})
	state := t.TempDir()
	out, _ := ctl(t, 0, "--addr", tl.Addr, "--state", state, "audit", "--note-key", tl.NoteKey)
	contains(t, out, "WARNINGS (not inconsistencies)")
	contains(t, out, `entry 2: upload of acme/model version 1 by client "acme" repeats entry 1: one upload logged twice`)
	contains(t, out, "upload-repeat")
	csv, _ := ctl(t, 0, "--addr", tl.Addr, "--state", t.TempDir(), "audit", "--csv", "--note-key", tl.NoteKey)
	contains(t, csv, "\n2,2026-01-01T00:00:00Z,key-upload-repeat,acme/model,1,acme,")
	contains(t, out, "audit OK: every entry verified, no inconsistencies (1 warnings above); checkpoint stored")
	if stored, _ := os.ReadFile(filepath.Join(state, "checkpoints", "checkpoint-kbs%2Fbench")); len(stored) == 0 {
		t.Fatal("an audit with only warnings stored no checkpoint")
	}

	out, _ = ctl(t, 0, "--addr", tl.Addr, "--state", t.TempDir(), "--json", "audit", "--note-key", tl.NoteKey)
	var r struct {
		Warnings  []string
		Anomalies []string
		KeyEvents []struct {
			Index uint64
			Event string
		} `json:"key_events"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("audit --json: %v\n%s", err, out)
	}
	if len(r.Warnings) != 1 || len(r.Anomalies) != 0 {
		t.Errorf("audit --json warnings = %q, anomalies = %q; want 1 warning, no anomalies", r.Warnings, r.Anomalies)
	}
	var events []string
	for _, k := range r.KeyEvents {
		events = append(events, k.Event)
	}
	if got, want := strings.Join(events, ","), "key-upload,key-upload-repeat,key-upload"; got != want {
		t.Errorf("key events = %s, want %s", got, want)
	}
}

// TestAppendReleaseRow checks the hand-written table row against the
// fmt format it replaces.
func TestAppendReleaseRow(t *testing.T) {
	for _, x := range []audit.Release{
		{Index: 7, Time: audittest.Time, ID: "acme/model", Version: 3, WorkerClass: "gpu-worker", Platform: "snp", Measurement: strings.Repeat("ab", 48), ManifestVersion: 2},
		{Index: 123456789012, Time: audittest.Time.Add(1500 * time.Millisecond), ID: strings.Repeat("long/", 10), Version: 1<<64 - 1, WorkerClass: "é-class", Platform: "tdx", Simulated: true, Measurement: "short", ManifestVersion: 10},
		{},
	} {
		pl := x.Platform
		if x.Simulated {
			pl += "(sim)"
		}
		want := fmt.Sprintf("%-32s %-7d %-16s %-9s %-22s v%-7d %-9d %s\n", x.ID, x.Version, x.WorkerClass, pl, short(x.Measurement), x.ManifestVersion, x.Index, ts(x.Time))
		if got := string(appendReleaseRow(nil, &x)); got != want {
			t.Errorf("appendReleaseRow(%+v) =\n%q, want\n%q", x, got, want)
		}
	}
}

// TestAuditManyChunks replays a log several decoding chunks long whose
// story holds only in log order: releases of version 1, the upload of
// version 2 (after which releasing version 1 would be an anomaly), then
// releases of version 2.
func TestAuditManyChunks(t *testing.T) {
	tl := audittest.New(t)
	tl.AppendManifest(t)
	up := func(v uint64) *tlog.Entry {
		return &tlog.Entry{Type: tlog.TypeKeyUpload, KeyUpload: &tlog.KeyEntry{ID: "acme/model", Version: v, Client: "acme"}}
	}
	releases := func(v uint64, n int) {
		raw, err := tlog.EncodeEntry(tl.Release("acme/model", v, "gpu-worker"))
		if err != nil {
			t.Fatal(err)
		}
		tl.AppendMany(t, raw, n)
	}
	tl.Append(t, up(1))
	releases(1, 1500)
	tl.Append(t, up(2))
	releases(2, 1500)
	out, _ := ctl(t, 0, "--addr", tl.Addr, "--state", t.TempDir(), "audit", "--note-key", tl.NoteKey)
	contains(t, out, "0 identity, 1 manifest, 2 key-upload, 0 key-delete, 3000 release")
	contains(t, out, "audit OK")
	csv, _ := ctl(t, 0, "--addr", tl.Addr, "--state", t.TempDir(), "audit", "--csv", "--note-key", tl.NoteKey)
	if n := strings.Count(csv, "\n"); n != 1+1+2+3000 {
		t.Errorf("audit --csv printed %d lines, want %d", n, 1+1+2+3000)
	}
	if i := strings.Index(csv, "\n1502,"); i < 0 || !strings.HasPrefix(csv[i+1:], "1502,2026-01-01T00:00:00Z,key-upload,acme/model,2,") {
		t.Errorf("audit --csv: entry 1502 is not the upload of version 2")
	}
}
