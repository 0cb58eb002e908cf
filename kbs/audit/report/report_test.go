package report_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"html"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/kbs/audit"
	"github.com/kbs-dev/kbs/kbs/audit/audittest"
	"github.com/kbs-dev/kbs/kbs/audit/monitor"
	"github.com/kbs-dev/kbs/kbs/audit/report"
	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// richLog builds a log with two manifest versions (the second adds a
// class), uploads, releases over three days to two classes (some on
// simulated TEEs), a deletion, and one inconsistency.
func richLog(t testing.TB) *audittest.Log {
	t.Helper()
	l := audittest.New(t)
	owner := must(manifest.ParsePrivateKey(must(os.ReadFile(audittest.Testdata("manifest/keys/owner1.key"))), nil))
	v1 := l.Manifest
	l.AppendVersion(t, v1, []string{must(manifest.Sign(owner, v1.Bytes()))}, v1.OwnerFingerprints())
	d := v1.Document()
	d.Version, d.Previous, d.AllowSimulated = 2, v1.Hash(), true
	d.Workers["cpu-worker"] = d.Workers["gpu-worker"]
	d.Keys[0].ReleaseTo = append(d.Keys[0].ReleaseTo, "cpu-worker")
	v2 := must(manifest.Parse(must(manifest.Encode(d))))
	at := func(e *tlog.Entry, h int) *tlog.Entry {
		e.Time = audittest.Time.Add(time.Duration(h) * time.Hour)
		return e
	}
	l.Append(t, at(audittest.Upload("acme/model", 1, "acme"), 1))
	l.Append(t, at(audittest.Upload("acme/prompts", 1, "acme"), 1))
	for h := 2; h < 20; h += 3 {
		l.Append(t, at(l.Release("acme/model", 1, "gpu-worker"), h))
	}
	l.AppendVersion(t, v2, []string{must(manifest.Sign(owner, v2.Bytes()))}, v1.OwnerFingerprints())
	for h := 24; h < 72; h += 5 {
		e := l.Release("acme/prompts", 1, "cpu-worker")
		e.Release.ManifestHash, e.Release.Simulated = v2.Hash(), h%2 == 0
		e.Release.Keys = append(e.Release.Keys, tlog.KeyRef{ID: "acme/model", Version: 1})
		l.Append(t, at(e, h))
	}
	l.Append(t, at(l.Release("acme/model", 1, "gpu-worker"), 73)) // under version 1's hash: an inconsistency
	l.Append(t, at(audittest.Delete("acme/prompts", 1, "acme"), 74))
	return l
}

const testRules = `
changes   manifest
model-gpu release-class key=acme/model class=gpu-worker
sim       simulated-release
quiet     log-stale for=1h
`

// render audits l as 'kbsctl audit --html --rules' does, from a fresh
// state, and returns the page and the JSON report of a separate plain
// audit of the same log.
func render(t testing.TB, l *audittest.Log, filter *audit.Filter) (page []byte, plain *audit.Report) {
	t.Helper()
	ctx := context.Background()
	newClient := func() (*client.Client, *tlog.Verifier) {
		c := must(client.New(client.Config{Addr: l.Addr, Checkpoints: &tlog.MemStore{}, AllowUnpinned: true}))
		return c, must(c.LogVerifier(l.NoteKey))
	}
	c, lv := newClient()
	plain, err := audit.Audit(ctx, audit.Config{Client: c, Log: lv, Filter: filter})
	if err != nil {
		t.Fatal(err)
	}
	// Through JSON, as 'kbsctl audit --json' prints it.
	b := must(json.Marshal(plain))
	plain = &audit.Report{}
	if err := json.Unmarshal(b, plain); err != nil {
		t.Fatal(err)
	}
	rules := must(monitor.ParseRules([]byte(testRules)))
	sum := report.NewSummary()
	eval := monitor.NewEvaluator(rules, lv.Origin(), func() time.Time { return audittest.Time.Add(100 * time.Hour) })
	c, lv = newClient()
	r, err := audit.Audit(ctx, audit.Config{Client: c, Log: lv, Events: report.Tee(sum, eval), Filter: filter})
	if err != nil {
		t.Fatal(err)
	}
	d := report.Data{Report: r, Summary: sum, NoteKey: l.NoteKey, Addr: l.Addr, Rules: rules, Generated: audittest.Time.Add(100 * time.Hour)}
	d.Alerts, d.AlertsOmitted = eval.Alerts()
	var buf bytes.Buffer
	if err := report.WriteHTML(&buf, d); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), plain
}

var (
	styleRE = regexp.MustCompile(`(?s)<style.*?</style>|<head>.*?</head>|<title>.*?</title>`)
	tagRE   = regexp.MustCompile(`(?s)<[^>]*>`)
	spaceRE = regexp.MustCompile(`\s+`)
)

// text approximates the page's visible text.
func text(page []byte) string {
	s := styleRE.ReplaceAllString(string(page), " ")
	s = tagRE.ReplaceAllString(s, " ")
	return spaceRE.ReplaceAllString(html.UnescapeString(s), " ")
}

// expectedNumbers lists, from a JSON audit, what the report's visible
// text must say: the checkpoint, the counts, every manifest version's
// hash, each key's and each class's released keys.
func expectedNumbers(r *audit.Report) []string {
	want := []string{
		fmt.Sprintf("Verified tree size %d", r.Size),
		"Root hash (base64) " + r.RootHash,
		fmt.Sprintf("%d entries verified", r.Size),
	}
	for _, typ := range []string{"manifest", "identity", "key-upload", "key-delete", "release"} {
		want = append(want, fmt.Sprintf("%d %s entries", r.Counts[typ], typ))
	}
	want = append(want, fmt.Sprintf("%d inconsistencies", r.AnomalyCount()), fmt.Sprintf("%d keys released", len(r.Releases)))
	for _, m := range r.Manifests {
		want = append(want, fmt.Sprintf("%d %d", m.Version, m.Index), m.Hash)
	}
	perKey, perClass := map[string]int{}, map[string]int{}
	for _, x := range r.Releases {
		perKey[x.ID]++
		perClass[x.WorkerClass]++
	}
	for k, n := range perKey {
		want = append(want, fmt.Sprintf("%s %d release(s) of this key", k, n))
	}
	for c, n := range perClass {
		want = append(want, fmt.Sprintf("%s: %d released key(s)", c, n))
	}
	return append(want, r.Anomalies...)
}

var externalRE = regexp.MustCompile(`(?i)<script|<link|<iframe|<object|<embed|@import|url\(|(src|href|xlink:href|action)\s*=\s*"[^#"]`)

// TestHTML checks the page's content against a JSON audit of the same
// log, and that it references nothing outside itself.
func TestHTML(t *testing.T) {
	l := richLog(t)
	page, plain := render(t, l, nil)
	if m := externalRE.Find(page); m != nil {
		t.Errorf("the page references something outside itself: %q", m)
	}
	txt := text(page)
	for _, w := range expectedNumbers(plain) {
		if !strings.Contains(txt, w) {
			t.Errorf("the page's text lacks %q", w)
		}
	}
	if plain.OK() || len(plain.Releases) != 27 {
		t.Fatalf("the fixture log: OK %v, %d releases", plain.OK(), len(plain.Releases))
	}
	for _, w := range []string{
		"Audit FAILED: 1 inconsistencies",
		"allow_simulated: false -> true", `workers["cpu-worker"]: added`, // version 2's diff
		"(signatures verified)",
		"snp (simulated)",
		"Released keys per hour", // the chart's title
		// The rules' alerts: version 1 and 2, acme/model to cpu-worker
		// (10 entries), simulated releases (5), the inconsistency; the
		// time rule is named as not judged.
		"model-gpu", "acme/model v1 released to class \"cpu-worker\"",
		"The rules that watch time pass (quiet) are judged only by a running monitor",
		"kbsctl --addr " + l.Addr,
		"jq .counts audit.json",
	} {
		if !strings.Contains(txt, w) && !bytes.Contains(page, []byte(w)) {
			t.Errorf("the page lacks %q", w)
		}
	}
	if n := strings.Count(txt, "release-class"); n < 1 {
		t.Errorf("the rules table lacks model-gpu's kind")
	}
	alerts := strings.Count(txt, " critical model-gpu ")
	if alerts != 10 {
		t.Errorf("%d release-class alerts listed, want 10", alerts)
	}

	// Filtered: the per-key and per-class numbers follow the filter, the
	// counts stay the log's.
	page, plain = render(t, l, &audit.Filter{Class: "gpu-worker"})
	txt = text(page)
	for _, w := range append(expectedNumbers(plain), "Filter: worker class \"gpu-worker\"", "--class gpu-worker") {
		if !strings.Contains(txt, w) {
			t.Errorf("the filtered page's text lacks %q", w)
		}
	}
	if strings.Contains(txt, "cpu-worker: ") {
		t.Error("the filtered page lists class cpu-worker")
	}
}
