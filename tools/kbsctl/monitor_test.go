package main

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/internal/testbin"
	"github.com/kbs-dev/kbs/kbs/audit/monitor"
	"github.com/kbs-dev/kbs/manifest"
)

// monitorProc is a 'kbsctl monitor' process.
type monitorProc struct {
	cmd    *exec.Cmd
	stdout *syncWriter
	stderr *syncWriter
	done   chan struct{}
}

func startMonitor(t *testing.T, bin string, args ...string) *monitorProc {
	t.Helper()
	p := &monitorProc{cmd: testbin.Command(t, bin, append([]string{"monitor"}, args...)...), stdout: &syncWriter{}, stderr: &syncWriter{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	return p
}

// kill sends SIGKILL and waits for the process to end.
func (p *monitorProc) kill() {
	testbin.KillGroup(p.cmd)
	<-p.done
}

// alertLog collects every alert line that every run of a monitor wrote,
// and every alert a webhook received, keeping repeats.
type alertLog struct {
	mu    sync.Mutex
	lines [][]byte
}

func (l *alertLog) add(b []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, bytes.Clone(b))
}

// unique returns the alerts by seq, failing the test if two deliveries
// of one seq differ; repeats counts the deliveries beyond the first.
func (l *alertLog) unique(t *testing.T) (alerts []monitor.Alert, repeats int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	bySeq := map[uint64][]byte{}
	for _, line := range l.lines {
		var a monitor.Alert
		if err := json.Unmarshal(line, &a); err != nil {
			t.Fatalf("alert %q: %v", line, err)
		}
		if prev, ok := bySeq[a.Seq]; ok {
			if !bytes.Equal(prev, line) {
				t.Fatalf("seq %d delivered twice with different contents:\n%s\n%s", a.Seq, prev, line)
			}
			repeats++
			continue
		}
		bySeq[a.Seq] = line
		alerts = append(alerts, a)
	}
	slices.SortFunc(alerts, func(a, b monitor.Alert) int { return int(a.Seq) - int(b.Seq) })
	return alerts, repeats
}

// alertWebhook is a webhook that fails while failing > 0.
type alertWebhook struct {
	log     alertLog
	mu      sync.Mutex
	failing int
	failed  int
}

func (h *alertWebhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	fail := h.failing > 0
	if fail {
		h.failing--
		h.failed++
	}
	h.mu.Unlock()
	if fail {
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
		return
	}
	var b bytes.Buffer
	b.ReadFrom(r.Body)
	h.log.add(bytes.TrimSpace(b.Bytes()))
}

func (h *alertWebhook) fail(n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.failing = n
}

// TestMonitorKbsd runs 'kbsctl monitor' as a process against a real dev
// kbsd, with a rules file naming every rule kind. Each rule fires exactly
// once, for the event it names; kill -9 of the monitor, while idle and
// while alerts flow, loses no alert and raises none twice; a webhook that
// fails, then recovers, gets every alert; restoring an old copy of the
// broker's data directory raises the fork alert with both checkpoints.
func TestMonitorKbsd(t *testing.T) {
	if testing.Short() {
		t.Skip("runs kbsd and kbsctl processes for about half a minute")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "kbsctl")
	if err := testbin.Build(bin, "github.com/kbs-dev/kbs/tools/kbsctl"); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "kbs")
	d := startKbsd(t, data)
	state := filepath.Join(dir, "state")
	mf := filepath.Join(dir, "manifest.json")
	copyFile(t, filepath.Join(data, "manifest.json"), mf)
	g := []string{"--addr", d.unix, "--state", state, "--sim-root", d.simRoot()}
	out, _ := ctl(t, 0, append(g, "--json", "verify", "--manifest", mf)...)
	var vr verifyResult
	if err := json.Unmarshal([]byte(out), &vr); err != nil {
		t.Fatal(err)
	}
	clientKey := filepath.Join(data, "client.key")
	put := func(id string) {
		ctl(t, 0, append(g, "key", "put", "--manifest", mf, "--client-key", clientKey, "--id", id, "--generate", "--out", filepath.Join(dir, strings.ReplaceAll(id, "/", "_")+".key"))...)
	}
	get := func(id string, measurement string) {
		args := append(slices.Clone(g), "key", "get", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(), "--id", id, "--out", filepath.Join(dir, "worker"))
		if measurement != "" {
			args = append(args, "--sim-measurement", measurement)
		}
		ctl(t, 0, args...)
	}

	rules := filepath.Join(dir, "rules.txt")
	os.WriteFile(rules, []byte(`
new-manifest   manifest
a-to-demo      release-class      key=demo/a class=demo-worker
simulated      simulated-release  key=demo/sim
stale          stale-manifest
deletions      key-delete         key=demo/*
burst          release-rate       max=2 per=1h key=demo/r
quiet          log-stale          for=20s
unwitnessed    not-witnessed      for=1s
`), 0o644)
	hook := &alertWebhook{failing: 3}
	srv := httptest.NewServer(hook)
	t.Cleanup(srv.Close)
	monState := filepath.Join(dir, "monitor.db")
	var stdout alertLog
	var run *monitorProc
	start := func() {
		run = startMonitor(t, bin, "--addr", d.unix, "--state", state, "--note-key", vr.NoteKey, "--db", monState, "--rules", rules,
			"--interval", "100ms", "--webhook", srv.URL+"/hook", "--webhook-retry-min", "20ms", "--webhook-retry-max", "200ms")
	}
	// stop kills the monitor with SIGKILL and keeps what it wrote.
	stop := func() {
		run.kill()
		for _, line := range bytes.Split([]byte(run.stdout.String()), []byte("\n")) {
			if len(bytes.TrimSpace(line)) > 0 {
				stdout.add(line)
			}
		}
	}
	// expect waits until the monitor has delivered n alerts in all (on
	// stdout of the current run plus the runs before, and to the
	// webhook), then for a few more polls, and checks that the new ones
	// are those of the rules want, in order.
	seen := 0
	expect := func(step string, want ...string) {
		t.Helper()
		n := seen + len(want)
		count := func() (int, int) {
			cur := alertLog{lines: stdout.lines}
			for _, line := range bytes.Split([]byte(run.stdout.String()), []byte("\n")) {
				if len(bytes.TrimSpace(line)) > 0 {
					cur.lines = append(slices.Clone(cur.lines), line)
				}
			}
			a, _ := cur.unique(t)
			h, _ := hook.log.unique(t)
			return len(a), len(h)
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			a, h := count()
			if a >= n && h >= n {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d alerts on stdout, %d at the webhook, want %d\nstderr:\n%s", step, a, h, n, run.stderr.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(500 * time.Millisecond) // a few more polls: nothing else fires
		stop()
		got, _ := stdout.unique(t)
		start()
		var rulesGot []string
		for _, a := range got[seen:] {
			rulesGot = append(rulesGot, a.Rule)
		}
		if !slices.Equal(rulesGot, want) {
			t.Fatalf("%s: alerts %v, want %v:\n%+v", step, rulesGot, want, got[seen:])
		}
		seen = len(got)
	}

	start()
	expect("start", "new-manifest") // version 1
	put("demo/a")
	put("demo/sim")
	put("demo/r")
	expect("uploads")
	get("demo/sim", "")
	expect("a simulated release of demo/sim", "simulated")

	// A copy of the broker's disk as it is now, for the rollback below.
	d.stop()
	copyDir(t, data, filepath.Join(dir, "old"))
	d = startKbsd(t, data)

	// Manifest version 2, while the monitor is down (killed while idle
	// by expect): a class "batch-worker" for another measurement, which
	// may receive demo/*.
	stop()
	batch := strings.Repeat("ab", 48)
	v1, err := manifest.Parse(mustRead(t, mf))
	if err != nil {
		t.Fatal(err)
	}
	doc := v1.Document()
	doc.Version, doc.Previous = 2, v1.Hash()
	var bc manifest.Class
	for _, s := range doc.Workers["demo-worker"].SNP {
		s.Measurement = manifest.Hexes(bytes.Repeat([]byte{0xab}, 48))
		bc.SNP = append(bc.SNP, s)
	}
	doc.Workers["batch-worker"] = bc
	for i := range doc.Keys {
		doc.Keys[i].ReleaseTo = append(doc.Keys[i].ReleaseTo, "batch-worker")
	}
	v2b, err := manifest.Encode(doc)
	if err != nil {
		t.Fatal(err)
	}
	v2 := filepath.Join(dir, "manifest-v2.json")
	os.WriteFile(v2, v2b, 0o644)
	writeSig(t, filepath.Join(data, "owner.key"), v2, v2+".sig")
	ctl(t, 0, append(g, "manifest", "set", "--sig", v2+".sig", v2)...)
	ctl(t, 0, append(g, "verify", "--follow", "--manifest", mf)...)
	start()
	expect("version 2", "new-manifest")

	get("demo/a", batch)
	expect("demo/a to batch-worker", "a-to-demo")
	hook.fail(5) // the webhook fails for a while, then recovers
	get("demo/r", "")
	get("demo/r", "")
	expect("two releases of demo/r")
	get("demo/r", "")
	expect("a third release of demo/r within the hour", "burst")
	get("demo/r", "")
	expect("a fourth")

	// kill -9 at a random instant while the deletion's alert is raised
	// and delivered.
	ctl(t, 0, append(g, "key", "rm", "--client-key", clientKey, "--id", "demo/sim")...)
	time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
	stop()
	start()
	expect("deletion", "deletions")

	// Nothing appended for 20 s.
	expect("a quiet log", "quiet")

	// The host restores the copy of the disk: the log is smaller than
	// the checkpoint the monitor verified.
	d.stop()
	os.RemoveAll(data)
	copyDir(t, filepath.Join(dir, "old"), data)
	d = startKbsd(t, data)
	expect("rollback", "fork")
	stop()

	all, repeats := stdout.unique(t)
	hooked, hookRepeats := hook.log.unique(t)
	for i, a := range all {
		if a.Seq != uint64(i+1) {
			t.Fatalf("stdout alert %d has seq %d: an alert is missing", i, a.Seq)
		}
	}
	if len(hooked) != len(all) || hook.failed != 8 {
		t.Fatalf("webhook got %d alerts, stdout %d; the webhook failed %d times", len(hooked), len(all), hook.failed)
	}
	for i := range all {
		a, _ := json.Marshal(all[i])
		b, _ := json.Marshal(hooked[i])
		if !bytes.Equal(a, b) {
			t.Errorf("stdout and webhook differ at seq %d:\n%s\n%s", i+1, a, b)
		}
	}
	t.Logf("%d alerts; repeated deliveries: %d on stdout, %d to the webhook (at most the one in flight at the random kill)", len(all), repeats, hookRepeats)
	if repeats > 1 || hookRepeats > 1 {
		t.Errorf("%d and %d repeated deliveries, want at most 1 each (the random kill)", repeats, hookRepeats)
	}
	fork := all[len(all)-1]
	if fork.Severity != monitor.SeverityEmergency || fork.Fork == nil || !fork.Fork.Rollback ||
		!strings.Contains(fork.Fork.Verified, vr.Origin) || !strings.Contains(fork.Fork.Conflicting, vr.Origin) || fork.Fork.Verified == fork.Fork.Conflicting {
		t.Errorf("fork alert = %+v", fork)
	}
	for _, a := range all {
		if a.Rule == "stale" || a.Rule == "unwitnessed" {
			t.Errorf("rule %s fired: %+v", a.Rule, a)
		}
	}
	if m := all[2]; m.Manifest == nil || !slices.ContainsFunc(m.Manifest.Changes, func(c manifest.Change) bool {
		return strings.HasPrefix(c.Field, `workers["batch-worker"]`) && c.Kind == "added"
	}) {
		t.Errorf("version 2 alert = %+v", m.Manifest)
	}

}
