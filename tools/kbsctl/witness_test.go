package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/kbs-dev/kbs/internal/testbin"
	"github.com/kbs-dev/kbs/kbs/audit/monitor"
	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/tlog/witnesstest"
)

// TestWitnessedKbsd runs kbsctl against a real dev kbsd whose manifest
// names a witness (an in-process fake; daemon/witness_test.go runs real
// ones): verify, key put, key get, receipt verify and log witnesses show
// and require its cosignature; a receipt without it fails naming the
// witness; receipt verify without any manifest to take the witness policy
// from refuses to guess. Then the monitor's not-witnessed rule: quiet
// while the broker refreshes its cosignatures, it fires once the witness
// stops answering.
func TestWitnessedKbsd(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "kbs")
	fake := witnesstest.NewFake(t, "witness.example/m", "m", nil)
	k := testbin.StartKbsdUntil(t, kbsdBin, data, "kbsd serving", "--dev", "--listen-tcp", "none", "--attestation-rate", "1000",
		"--dev-witness", fake.URL+","+fake.Cosigner.VerifierKey(), "--witness-retry", "50ms", "--witness-refresh", "200ms")
	t.Cleanup(func() { k.Stop() })
	m := regexp.MustCompile(`note_key="?([^"\s]+)`).FindStringSubmatch(k.Output())
	if m == nil {
		t.Fatalf("no note key in kbsd's log:\n%s", k.Output())
	}
	noteKey := m[1]
	logV, err := note.NewVerifier(noteKey)
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{Kbsd: k, data: data, unix: "unix://" + k.Socket}
	state := filepath.Join(dir, "state")
	g := []string{"--addr", d.unix, "--state", state, "--sim-root", d.simRoot()}
	// Until the witness knows the log, kbsd does not act.
	out, _ := ctl(t, 1, append(g, "log", "witnesses")...)
	contains(t, out, "state           checking")
	fake.AddLog(logV.Name(), logV)
	k.WaitHealthy()

	mf := filepath.Join(dir, "manifest.json")
	copyFile(t, filepath.Join(data, "manifest.json"), mf)
	out, _ = ctl(t, 0, append(g, "verify", "--manifest", mf)...)
	contains(t, out, "witnesses     cosigned by witness.example-m")
	ctl(t, 0, append(g, "key", "put", "--manifest", mf, "--client-key", filepath.Join(data, "client.key"), "--id", "demo/w", "--generate", "--out", filepath.Join(dir, "w.key"))...)
	keys := filepath.Join(dir, "worker")
	out, _ = ctl(t, 0, append(g, "key", "get", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(), "--id", "demo/w", "--out", keys)...)
	contains(t, out, "receipt witnesses: cosigned by witness.example-m")
	receipts, _ := filepath.Glob(filepath.Join(keys, "demo", "w.v1.*.receipt"))
	if len(receipts) != 1 {
		t.Fatalf("receipts %v", receipts)
	}
	out, _ = ctl(t, 0, append(g, "receipt", "verify", receipts[0])...)
	contains(t, out, "witnesses: cosigned by witness.example-m")
	// Another state, no manifest: the policy is unknown, so no guess.
	other := []string{"--addr", d.unix, "--state", filepath.Join(dir, "other")}
	_, errOut := ctl(t, 2, append(other, "receipt", "verify", "--note-key", noteKey, receipts[0])...)
	contains(t, errOut, "pass --manifest FILE")
	ctl(t, 0, append(other, "receipt", "verify", "--note-key", noteKey, "--manifest", mf, receipts[0])...)
	// Without the cosignature line: refused, naming the witness.
	raw, err := os.ReadFile(receipts[0])
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, l := range strings.SplitAfter(string(raw), "\n") {
		if !strings.HasPrefix(l, "— witness.example/m ") {
			kept = append(kept, l)
		}
	}
	stripped := filepath.Join(dir, "stripped.receipt")
	os.WriteFile(stripped, []byte(strings.Join(kept, "")), 0o600)
	_, errOut = ctl(t, 1, append(g, "receipt", "verify", stripped)...)
	contains(t, errOut, `missing: "witness.example-m"`)
	out, _ = ctl(t, 0, append(g, "--json", "log", "witnesses")...)
	var st struct {
		State         string `json:"state"`
		WitnessedSize uint64 `json:"witnessed_size"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.State != "acting" || st.WitnessedSize < 4 {
		t.Errorf("log witnesses --json = %s (%v)", out, err)
	}

	// The monitor: not-witnessed for 2 s.
	c, err := client.New(client.Config{Addr: d.unix, AllowUnpinned: true, Checkpoints: client.State{Dir: filepath.Join(dir, "monitor")}.Checkpoints()})
	if err != nil {
		t.Fatal(err)
	}
	rules, err := monitor.ParseRules([]byte("unwitnessed not-witnessed for=2s\n"))
	if err != nil {
		t.Fatal(err)
	}
	var alerts testbin.SyncBuffer
	mon, err := monitor.Open(monitor.Config{Client: c, NoteKey: noteKey, State: filepath.Join(dir, "monitor.db"), Rules: rules, Out: &alerts})
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	ctx := context.Background()
	poll := func() {
		if _, err := mon.Poll(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for end := time.Now().Add(3500 * time.Millisecond); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		poll()
	}
	if s := alerts.String(); s != "" {
		t.Fatalf("not-witnessed fired while the witness cosigns:\n%s", s)
	}
	fake.SetFault(witnesstest.Down)
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(alerts.String(), `"unwitnessed"`); time.Sleep(250 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not-witnessed did not fire with the witness down")
		}
		poll()
	}
	var a monitor.Alert
	if err := json.Unmarshal([]byte(strings.SplitN(alerts.String(), "\n", 2)[0]), &a); err != nil || a.Witnesses == nil || a.Witnesses.Threshold != 1 || a.Witnesses.LastWitnessed == nil {
		t.Errorf("not-witnessed alert = %+v (%v)", a, err)
	}
	out, _ = ctl(t, 1, append(g, "log", "witnesses")...)
	contains(t, out, "state           no_quorum")
}
