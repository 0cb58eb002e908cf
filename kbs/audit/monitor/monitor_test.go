package monitor_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/kbs-dev/kbs/kbs/audit/audittest"
	"github.com/kbs-dev/kbs/kbs/audit/monitor"
	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// fakeClock is a clock that moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// syncBuffer is an io.Writer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// alerts parses the JSON lines written so far.
func (s *syncBuffer) alerts(t testing.TB) []monitor.Alert {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	return parseAlerts(t, s.b.Bytes())
}

func parseAlerts(t testing.TB, b []byte) []monitor.Alert {
	t.Helper()
	var out []monitor.Alert
	for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var a monitor.Alert
		if err := json.Unmarshal(line, &a); err != nil {
			t.Fatalf("alert line %q: %v", line, err)
		}
		out = append(out, a)
	}
	return out
}

func rulesOf(as []monitor.Alert) []string {
	var r []string
	for _, a := range as {
		r = append(r, a.Rule)
	}
	return r
}

func mustRules(t testing.TB, s string) []monitor.Rule {
	t.Helper()
	r, err := monitor.ParseRules([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func newClient(t testing.TB, addr string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Addr: addr, Checkpoints: &tlog.MemStore{}, AllowUnpinned: true})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func open(t testing.TB, cfg monitor.Config) *monitor.Monitor {
	t.Helper()
	m, err := monitor.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// cosigner is a witness key that cosigns whatever a log serves.
type cosigner struct {
	s *tlog.Cosigner
}

func newCosigner(t testing.TB, name string, now func() time.Time) *cosigner {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, err := tlog.NewCosigner(name, priv, now)
	if err != nil {
		t.Fatal(err)
	}
	return &cosigner{s: s}
}

// cosign adds the witness's cosignature to a checkpoint note.
func (c *cosigner) cosign(t testing.TB, msg []byte) []byte {
	text, _, err := tlog.SplitNote(msg)
	if err != nil {
		t.Error(err)
		return msg
	}
	signed, err := note.Sign(&note.Note{Text: string(text)}, c.s)
	if err != nil {
		t.Error(err)
		return msg
	}
	_, sigs, _ := tlog.SplitNote(signed)
	out, err := tlog.MergeSignatures(msg, sigs...)
	if err != nil {
		t.Error(err)
		return msg
	}
	return out
}

// nextVersion logs the version after cur that edit makes, signed by the
// fixture's owner as far as the log is concerned.
func nextVersion(t testing.TB, l *audittest.Log, cur *manifest.Manifest, edit func(*manifest.Document)) *manifest.Manifest {
	t.Helper()
	d := cur.Document()
	d.Version, d.Previous = cur.Version()+1, cur.Hash()
	edit(d)
	b, err := manifest.Encode(d)
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := os.ReadFile(audittest.Testdata("manifest/keys/owner1.key"))
	if err != nil {
		t.Fatal(err)
	}
	owner, err := manifest.ParsePrivateKey(kb, nil)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := manifest.Sign(owner, b)
	if err != nil {
		t.Fatal(err)
	}
	l.AppendVersion(t, m, []string{sig}, cur.OwnerFingerprints())
	return m
}

const allRules = `
new-manifest manifest
acme-a-to-gpu release-class key=acme/a class=gpu-worker
simulated simulated-release
stale stale-manifest
deletions key-delete key=acme/*
burst release-rate max=4 per=1h key=acme/a
quiet log-stale for=30m
unwitnessed not-witnessed for=10m
`

// TestRulesFireOnce appends one event at a time to a log and polls after
// each: every rule fires exactly once, for the event it names, and no
// rule fires for the others.
func TestRulesFireOnce(t *testing.T) {
	ctx := context.Background()
	l := audittest.New(t)
	clk := &fakeClock{t: audittest.Time}
	var out syncBuffer
	m := open(t, monitor.Config{Client: newClient(t, l.Addr), NoteKey: l.NoteKey, State: filepath.Join(t.TempDir(), "m.db"),
		Rules: mustRules(t, allRules), Out: &out, Now: clk.Now})
	w := newCosigner(t, "witness.example/w1", clk.Now)

	var v2 *manifest.Manifest
	at := func(e *tlog.Entry) *tlog.Entry { e.Time = clk.Now(); return e }
	release := func(id string, class string) *tlog.Entry {
		e := l.Release(id, 1, class)
		e.Release.ManifestHash = v2.Hash()
		return at(e)
	}
	steps := []struct {
		name string
		do   func()
		want []string
	}{
		{"version 1", func() { l.AppendManifest(t) }, []string{"new-manifest"}},
		{"upload", func() { l.Append(t, at(audittest.Upload("acme/a", 1, "acme"))) }, nil},
		{"release under version 1", func() { l.Append(t, at(l.Release("acme/a", 1, "gpu-worker"))) }, nil},
		{"version 2", func() {
			v2 = nextVersion(t, l, l.Manifest, func(d *manifest.Document) {
				d.AllowSimulated = true
				d.Workers["cpu-worker"] = d.Workers["gpu-worker"]
				d.Keys[0].ReleaseTo = append(d.Keys[0].ReleaseTo, "cpu-worker")
				d.Witnesses = &manifest.WitnessPolicy{Threshold: 1, List: []manifest.Witness{{Name: "w1", Key: w.s.VerifierKey(), URL: "https://w1.example/"}}}
			})
			l.ServeCheckpoint(func(b []byte) []byte { return w.cosign(t, b) })
		}, []string{"new-manifest"}},
		{"release to another class", func() { l.Append(t, release("acme/a", "cpu-worker")) }, []string{"acme-a-to-gpu"}},
		{"upload b", func() { l.Append(t, at(audittest.Upload("acme/b", 1, "acme"))) }, nil},
		{"simulated release", func() {
			e := release("acme/b", "gpu-worker")
			e.Release.Simulated = true
			l.Append(t, e)
		}, []string{"simulated"}},
		{"release under an old manifest", func() { l.Append(t, at(l.Release("acme/a", 1, "gpu-worker"))) }, []string{"inconsistency", "stale"}},
		{"deletion", func() { l.Append(t, at(audittest.Delete("acme/b", 1, "acme"))) }, []string{"deletions"}},
		{"4th release of acme/a within the hour", func() { l.Append(t, release("acme/a", "gpu-worker")) }, nil},
		{"5th release", func() { l.Append(t, release("acme/a", "gpu-worker")) }, []string{"burst"}},
		{"6th release", func() { l.Append(t, release("acme/a", "gpu-worker")) }, nil},
		{"a quiet half hour", func() { clk.Add(31 * time.Minute) }, []string{"quiet"}},
		{"still quiet", func() { clk.Add(time.Minute) }, nil},
		{"witnesses stop cosigning", func() { l.ServeCheckpoint(nil); clk.Add(9 * time.Minute) }, nil},
		{"for ten minutes", func() { clk.Add(2 * time.Minute) }, []string{"unwitnessed"}},
		{"and on", func() { clk.Add(time.Hour) }, nil},
		{"back to normal", func() {
			l.ServeCheckpoint(func(b []byte) []byte { return w.cosign(t, b) })
			l.Append(t, at(audittest.Upload("acme/c", 1, "acme")))
		}, nil},
		{"2 hours later, a release", func() { clk.Add(2 * time.Hour); l.Append(t, release("acme/a", "gpu-worker")) }, nil},
	}
	seen := 0
	for _, s := range steps {
		clk.Add(time.Minute)
		s.do()
		if _, err := m.Poll(ctx); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		all := out.alerts(t)
		got := all[seen:]
		seen = len(all)
		if !slices.Equal(rulesOf(got), s.want) {
			t.Fatalf("%s: alerts %v, want %v:\n%+v", s.name, rulesOf(got), s.want, got)
		}
	}
	all := out.alerts(t)
	for i, a := range all {
		if a.Seq != uint64(i+1) || a.Log != audittest.Origin || a.Summary == "" || a.Raised.IsZero() {
			t.Errorf("alert %d = %+v", i, a)
		}
	}
	byRule := map[string]monitor.Alert{}
	for _, a := range all {
		byRule[a.Rule] = a
	}
	if a := byRule["new-manifest"]; a.Manifest == nil || a.Manifest.Version != 2 || !slices.ContainsFunc(a.Manifest.Changes, func(c manifest.Change) bool {
		return c.Field == "allow_simulated" && c.Old == "false" && c.New == "true"
	}) || a.Severity != monitor.SeverityWarning {
		t.Errorf("manifest alert = %+v", a.Manifest)
	}
	if a := byRule["acme-a-to-gpu"]; len(a.Releases) != 1 || a.Releases[0].WorkerClass != "cpu-worker" || a.Index == nil || a.Severity != monitor.SeverityCritical {
		t.Errorf("release-class alert = %+v", a)
	}
	if a := byRule["inconsistency"]; a.Severity != monitor.SeverityEmergency || !strings.Contains(a.Finding, "release under manifest") {
		t.Errorf("inconsistency alert = %+v", a)
	}
	if a := byRule["burst"]; a.Rate == nil || a.Rate.Count != 5 || a.Rate.Max != 4 {
		t.Errorf("rate alert = %+v", a)
	}
	if a := byRule["deletions"]; a.KeyEvent == nil || a.KeyEvent.ID != "acme/b" {
		t.Errorf("deletion alert = %+v", a)
	}
	if a := byRule["quiet"]; a.Checkpoint == nil || a.Checkpoint.Since == nil {
		t.Errorf("log-stale alert = %+v", a)
	}
	if a := byRule["unwitnessed"]; a.Witnesses == nil || a.Witnesses.LastWitnessed == nil || a.Witnesses.Threshold != 1 || len(a.Witnesses.Cosigned) != 0 {
		t.Errorf("not-witnessed alert = %+v", a.Witnesses)
	}
}

// history appends a short history that raises three alerts under
// allRules: version 1, a deletion, and a release to a class the rule
// does not allow (which the manifest does not allow either: an
// inconsistency too).
func history(t *testing.T, l *audittest.Log) {
	t.Helper()
	l.AppendManifest(t)
	l.Append(t, audittest.Upload("acme/a", 1, "acme"))
	l.Append(t, audittest.Delete("acme/a", 1, "acme"))
}

// TestForkAlert: a rollback and a split view each raise the fork alert
// once, with both signed checkpoints, and the stored checkpoint stays.
func TestForkAlert(t *testing.T) {
	ctx := context.Background()
	l := audittest.New(t)
	history(t, l)
	old := l.Checkpoint(t)
	l.Append(t, audittest.Upload("acme/b", 1, "acme"))
	state := filepath.Join(t.TempDir(), "m.db")
	var out syncBuffer
	cfg := monitor.Config{Client: newClient(t, l.Addr), NoteKey: l.NoteKey, State: state, Out: &out}
	m := open(t, cfg)
	if st, err := m.Poll(ctx); err != nil || st.Size != 4 || st.Raised != 0 {
		t.Fatalf("Poll = %+v, %v", st, err)
	}
	verified := l.Checkpoint(t)

	// The broker serves an older checkpoint: a rollback.
	l.ServeCheckpoint(func([]byte) []byte { return old })
	var fe *tlog.ForkError
	for range 2 {
		if _, err := m.Poll(ctx); !errors.As(err, &fe) || !fe.Rollback {
			t.Fatalf("Poll of a rolled back log = %v", err)
		}
	}
	as := out.alerts(t)
	if len(as) != 1 || as[0].Kind != monitor.KindFork || as[0].Severity != monitor.SeverityEmergency || as[0].Fork == nil ||
		as[0].Fork.Verified != string(verified) || as[0].Fork.Conflicting != string(old) || !as[0].Fork.Rollback {
		t.Fatalf("alerts after a rollback: %+v", as)
	}
	// Back to the real log: consistent again; a second rollback is a new
	// episode.
	l.ServeCheckpoint(nil)
	if _, err := m.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	l.ServeCheckpoint(func([]byte) []byte { return old })
	m.Poll(ctx)
	if as := out.alerts(t); len(as) != 2 || as[1].Kind != monitor.KindFork {
		t.Fatalf("second rollback: %+v", as)
	}
	l.ServeCheckpoint(nil)
	if _, err := m.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	m.Close()

	// Another log under the same key (a split view), larger than the
	// verified one: the same monitor state, restarted against it.
	fork := l.Fork(t)
	history(t, fork)
	fork.Append(t, audittest.Upload("acme/x", 1, "acme"))
	fork.Append(t, audittest.Upload("acme/y", 1, "acme"))
	cfg.Client = newClient(t, fork.Addr)
	m = open(t, cfg)
	for range 2 {
		if _, err := m.Poll(ctx); !errors.As(err, &fe) || fe.Rollback {
			t.Fatalf("Poll of a forked log = %v", err)
		}
	}
	as = out.alerts(t)
	if len(as) != 3 || as[2].Kind != monitor.KindFork || as[2].Fork.Verified != string(verified) || as[2].Fork.Rollback ||
		as[2].Fork.Conflicting != string(fork.Checkpoint(t)) || as[2].Seq != 3 {
		t.Fatalf("alerts after a split view: %+v", as)
	}
}

// failingWriter fails every write: the process died before its alerts
// reached stdout.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

// TestRestart: a monitor opened again on its state file goes on where it
// stopped: no alert raised twice, none lost, even when the alerts of the
// last step never reached the output.
func TestRestart(t *testing.T) {
	ctx := context.Background()
	l := audittest.New(t)
	state := filepath.Join(t.TempDir(), "m.db")
	rules := mustRules(t, allRules)
	var out syncBuffer
	cfg := monitor.Config{Client: newClient(t, l.Addr), NoteKey: l.NoteKey, State: state, Rules: rules, Out: &out, Batch: 2}
	m := open(t, cfg)
	history(t, l)
	if _, err := m.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	m.Close()
	if got := rulesOf(out.alerts(t)); !slices.Equal(got, []string{"new-manifest", "deletions"}) {
		t.Fatalf("first run: %v", got)
	}
	// Two more deletions while the monitor is down, then a run whose
	// output is gone: the alerts are committed, not delivered.
	l.Append(t, audittest.Upload("acme/a", 2, "acme"))
	l.Append(t, audittest.Delete("acme/a", 2, "acme"))
	l.Append(t, audittest.Upload("acme/b", 1, "acme"))
	l.Append(t, audittest.Delete("acme/b", 1, "acme"))
	cfg.Out = failingWriter{}
	m = open(t, cfg)
	if _, err := m.Poll(ctx); err == nil || !strings.Contains(err.Error(), "broken pipe") {
		t.Fatalf("Poll with a broken output = %v", err)
	}
	m.Close()
	cfg.Out = &out
	m = open(t, cfg)
	if st, err := m.Poll(ctx); err != nil || st.Raised != 0 || st.Replayed != 7 {
		t.Fatalf("Poll after the restart = %+v, %v", st, err)
	}
	as := out.alerts(t)
	if got := rulesOf(as); !slices.Equal(got, []string{"new-manifest", "deletions", "deletions", "deletions"}) {
		t.Fatalf("after the restart: %v", got)
	}
	for i, a := range as {
		if a.Seq != uint64(i+1) {
			t.Errorf("alert %d has seq %d", i, a.Seq)
		}
	}
	if as[3].KeyEvent.ID != "acme/b" {
		t.Errorf("last alert = %+v", as[3])
	}
	// The state file belongs to one log and one process.
	if _, err := monitor.Open(cfg); !errors.Is(err, monitor.ErrStateLocked) {
		t.Errorf("a second Open of a state in use = %v", err)
	}
	m.Close()
	other := audittest.New(t)
	if _, err := monitor.Open(monitor.Config{Client: newClient(t, other.Addr), NoteKey: other.NoteKey, State: state}); err == nil ||
		!strings.Contains(err.Error(), "follows the log with key") {
		t.Errorf("Open of another log's state = %v", err)
	}
}

// TestSkipHistory: a monitor started with SkipHistory on a log with a past
// raises rule alerts only for what comes after, and inconsistencies
// always.
func TestSkipHistory(t *testing.T) {
	ctx := context.Background()
	l := audittest.New(t)
	history(t, l)
	l.Append(t, l.Release("acme/zzz", 1, "gpu-worker")) // never uploaded: an inconsistency
	var out syncBuffer
	m := open(t, monitor.Config{Client: newClient(t, l.Addr), NoteKey: l.NoteKey, State: filepath.Join(t.TempDir(), "m.db"),
		Rules: mustRules(t, allRules), Out: &out, SkipHistory: true})
	if _, err := m.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rulesOf(out.alerts(t)); !slices.Equal(got, []string{"inconsistency"}) {
		t.Fatalf("alerts for the history: %v", got)
	}
	l.Append(t, audittest.Upload("acme/b", 1, "acme"))
	l.Append(t, audittest.Delete("acme/b", 1, "acme"))
	if _, err := m.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rulesOf(out.alerts(t)); !slices.Equal(got, []string{"inconsistency", "deletions"}) {
		t.Fatalf("alerts after the history: %v", got)
	}
}

// webhook records the alerts POSTed to it; it fails while failing > 0.
type webhook struct {
	mu      sync.Mutex
	failing int
	calls   int
	got     []monitor.Alert
}

func (h *webhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls++
	if h.failing > 0 {
		h.failing--
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
		return
	}
	var a monitor.Alert
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || json.NewDecoder(r.Body).Decode(&a) != nil ||
		r.Header.Get("Kbs-Alert-Seq") == "" {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	h.got = append(h.got, a)
}

func (h *webhook) seqs() []uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var s []uint64
	for _, a := range h.got {
		s = append(s, a.Seq)
	}
	return s
}

// TestWebhookRecovers: a webhook that fails, then recovers, gets every
// alert in order, also across a restart of the monitor while it is down.
func TestWebhookRecovers(t *testing.T) {
	ctx := context.Background()
	l := audittest.New(t)
	history(t, l)
	h := &webhook{failing: 3}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	state := filepath.Join(t.TempDir(), "m.db")
	cfg := monitor.Config{Client: newClient(t, l.Addr), NoteKey: l.NoteKey, State: state, Rules: mustRules(t, allRules),
		Webhook: srv.URL + "/alerts", RetryMin: 5 * time.Millisecond, RetryMax: 20 * time.Millisecond}
	m := open(t, cfg)
	if _, err := m.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := m.FlushWebhook(fctx); err != nil {
		t.Fatal(err)
	}
	if got := h.seqs(); !slices.Equal(got, []uint64{1, 2}) || h.calls != 5 {
		t.Fatalf("webhook got %v in %d calls", got, h.calls)
	}
	// Down for good: the alerts wait in the state across a restart.
	h.mu.Lock()
	h.failing = 1 << 30
	h.mu.Unlock()
	l.Append(t, audittest.Upload("acme/a", 2, "acme"))
	l.Append(t, audittest.Delete("acme/a", 2, "acme"))
	if _, err := m.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(ctx, 100*time.Millisecond)
	if err := m.FlushWebhook(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("FlushWebhook to a webhook that is down = %v", err)
	}
	scancel()
	m.Close()
	h.mu.Lock()
	h.failing = 2
	h.mu.Unlock()
	m = open(t, cfg)
	// Run delivers on its own.
	rctx, rcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(rctx) }()
	for deadline := time.Now().Add(30 * time.Second); len(h.seqs()) < 3 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	rcancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}
	if got := h.seqs(); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Fatalf("webhook got %v", got)
	}
	if a := h.got[2]; a.Rule != "deletions" || a.KeyEvent == nil || a.KeyEvent.Version != 2 {
		t.Errorf("third alert = %+v", a)
	}
	if _, err := monitor.Open(monitor.Config{Client: cfg.Client, NoteKey: l.NoteKey, State: filepath.Join(t.TempDir(), "x.db"), Webhook: "ftp://x"}); err == nil {
		t.Error("Open with an ftp webhook succeeded")
	}

}
