package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/audit/audittest"
	"github.com/kbs-dev/kbs/tlog"
)

// run0 runs kbsctl and returns its exit status, stdout and stderr.
func run0(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

// TestVersionFlag: --version says what kbsctl was built from.
func TestVersionFlag(t *testing.T) {
	code, out, _ := run0("--version")
	if code != 0 || !strings.HasPrefix(out, "kbsctl ") || !strings.Contains(out, "github.com/kbs-dev/kbs") {
		t.Fatalf("kbsctl --version: exit %d, %q", code, out)
	}
	code, out, _ = run0("--json", "--version")
	var v struct{ Program, Module, Go string }
	if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil || v.Program != "kbsctl" || v.Go == "" {
		t.Fatalf("kbsctl --json --version: exit %d, %v, %q", code, err, out)
	}
}

// TestJSONErrors: with --json every failure is one JSON object of one
// shape, on stdout; a result already printed keeps stdout one document.
func TestJSONErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		args []string
		exit int
		code string
		hint bool
	}{
		{[]string{"--json", "--addr", "unix://" + filepath.Join(dir, "none.sock"), "key", "ls"}, 2, "unreachable", true},
		{[]string{"--json", "frobnicate"}, 2, "usage", false},
		{[]string{"--json"}, 2, "usage", false},
		{[]string{"--jsn", "key", "ls", "--json"}, 2, "usage", false},
		{[]string{"verify", "--bogus", "--json"}, 2, "usage", false},
		{[]string{"--json", "verify", "--manifest", filepath.Join(dir, "missing.json")}, 2, "io", false},
		{[]string{"--json", "--addr", "ftp://x", "key", "ls"}, 2, "usage", false},
	} {
		code, out, errOut := run0(append([]string{"--state", filepath.Join(dir, "state")}, tt.args...)...)
		var e errorJSON
		dec := json.NewDecoder(strings.NewReader(out))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); code != tt.exit || err != nil || e.Error.Code != tt.code || e.Error.Message == "" || (e.Error.Hint != "") != tt.hint {
			t.Errorf("kbsctl %q: exit %d, %+v, %v; want exit %d, code %q, hint %v\nstdout:\n%s\nstderr:\n%s", tt.args, code, e, err, tt.exit, tt.code, tt.hint, out, errOut)
		}
		if errOut != "" {
			t.Errorf("kbsctl %q wrote to stderr with --json:\n%s", tt.args, errOut)
		}
		var raw map[string]map[string]any
		json.Unmarshal([]byte(out), &raw)
		for _, k := range []string{"code", "message", "hint"} {
			if _, ok := raw["error"][k]; !ok {
				t.Errorf("kbsctl %q: the error object has no %q: %s", tt.args, k, out)
			}
		}
	}

	// An audit that fails prints its report (ok false) on stdout and the
	// error on stderr.
	tl := audittest.New(t)
	tl.AppendManifest(t)
	tl.Append(t, tl.Release("acme/model", 1, "gpu-worker"))
	code, out, errOut := run0("--json", "--addr", tl.Addr, "--state", t.TempDir(), "audit", "--note-key", tl.NoteKey)
	var r struct {
		OK     bool           `json:"ok"`
		Counts map[string]int `json:"counts"`
	}
	var e errorJSON
	if code != 1 || json.Unmarshal([]byte(out), &r) != nil || r.OK || json.Unmarshal([]byte(errOut), &e) != nil || e.Error.Code != "audit_failed" {
		t.Fatalf("a failed audit --json: exit %d, report %+v, error %+v\nstdout:\n%s\nstderr:\n%s", code, r, e, out, errOut)
	}
	for _, typ := range []string{"identity", "manifest", "key-upload", "key-delete", "release"} {
		if _, ok := r.Counts[typ]; !ok {
			t.Errorf("audit --json counts lack %q: %v", typ, r.Counts)
		}
	}
}

// TestHelp: a command's help shows its own flags and the global flags it
// uses, nothing else; a typo in a global flag is the same one-line error
// as one in a command's flag.
func TestHelp(t *testing.T) {
	for _, tt := range []struct {
		args      []string
		want, not []string
	}{
		{[]string{"prompt", "encrypt", "-h"}, []string{"--key", "--key-version"}, []string{"--addr", "--sim-root", "--state", "--json", "Global flags"}},
		{[]string{"key", "ls", "-h"}, []string{"--prefix", "Global flags it uses", "--addr", "--state", "--json"}, []string{"--sim-root", "--offline"}},
		{[]string{"key", "get", "-h"}, []string{"--out", "--tee", "--sim-root", "--offline"}, nil},
		{[]string{"manifest", "sign", "-h"}, []string{"--key", "--json"}, []string{"--addr", "--state"}},
		{[]string{"attest", "-h"}, []string{"--tee", "--report-data", "--out"}, []string{"--addr"}},
	} {
		code, _, errOut := run0(tt.args...)
		if code != 0 {
			t.Errorf("kbsctl %q: exit %d", tt.args, code)
		}
		for _, w := range tt.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("kbsctl %q lacks %q:\n%s", tt.args, w, errOut)
			}
		}
		for _, n := range tt.not {
			if strings.Contains(errOut, n) {
				t.Errorf("kbsctl %q shows %q:\n%s", tt.args, n, errOut)
			}
		}
	}
	// A global flag the command does not use is an error after it.
	code, _, errOut := run0("prompt", "encrypt", "--addr", "x")
	if code != 2 || !strings.Contains(errOut, "kbsctl: prompt encrypt: flag provided but not defined: -addr (see 'kbsctl prompt encrypt -h')\n") {
		t.Errorf("prompt encrypt --addr: exit %d\n%s", code, errOut)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--adr", "x", "key", "ls"}, "kbsctl: flag provided but not defined: -adr (did you mean --addr?) (see 'kbsctl -h')\n"},
		{[]string{"audit", "--csvv"}, "kbsctl: audit: flag provided but not defined: -csvv (did you mean --csv?) (see 'kbsctl audit -h')\n"},
	} {
		code, out, errOut := run0(tt.args...)
		if code != 2 || errOut != tt.want || out != "" {
			t.Errorf("kbsctl %q: exit %d, stderr %q, want exactly %q", tt.args, code, errOut, tt.want)
		}
	}
}

// TestSaysWhatItVerified: verify --json says whether it stored the
// checkpoint, log checkpoint what it checked, key ls when the current
// version was created, manifest history --json the chain and the log.
func TestSaysWhatItVerified(t *testing.T) {
	d, g, mf, dir := setup(t)
	fresh := []string{"--addr", d.unix, "--state", filepath.Join(dir, "fresh-state"), "--sim-root", d.simRoot()}
	var vr verifyResult
	out, _ := ctl(t, 0, append(fresh, "--json", "verify", "--manifest", mf)...)
	if err := json.Unmarshal([]byte(out), &vr); err != nil || !vr.CheckpointStored || vr.PreviousLogSize != nil {
		t.Fatalf("a first verify: %+v, %v", vr, err)
	}
	out, _ = ctl(t, 0, append(fresh, "--json", "verify", "--manifest", mf)...)
	if err := json.Unmarshal([]byte(out), &vr); err != nil || vr.CheckpointStored || *vr.PreviousLogSize != 2 {
		t.Fatalf("a second verify of an unchanged log: %+v, %v", vr, err)
	}
	out, _ = ctl(t, 0, append(fresh, "verify", "--manifest", mf)...)
	contains(t, out, "checkpoint unchanged (the stored one has the same size and root)")
	// The upload's receipt moves the stored checkpoint to size 3.
	ctl(t, 0, append(g, "key", "put", "--manifest", mf, "--client-key", filepath.Join(d.data, "client.key"), "--id", "demo/k", "--generate", "--out", filepath.Join(dir, "k.key"))...)

	out, _ = ctl(t, 0, append(g, "log", "checkpoint")...)
	contains(t, out, "checkpoint of log "+vr.Origin+", size 3, root ")
	contains(t, out, "signature     verified with the log key learned by 'kbsctl verify' for "+d.unix)
	contains(t, out, "consistency   the stored checkpoint has this size and root; nothing to store")
	contains(t, out, "\n"+vr.Origin+"\n3\n")
	out, _ = ctl(t, 0, append(fresh, "log", "checkpoint")...)
	contains(t, out, "consistency   extends the stored checkpoint of size 2 (proof verified); not stored")
	out, _ = ctl(t, 0, append(fresh, "log", "checkpoint")...)
	contains(t, out, "of size 2") // log checkpoint stores nothing
	out, _ = ctl(t, 0, "--addr", d.unix, "--state", filepath.Join(dir, "fresh"), "log", "checkpoint", "--note-key", vr.NoteKey)
	contains(t, out, "signature     verified with the log key --note-key")
	contains(t, out, "consistency   not checked: no stored checkpoint for this log")

	out, _ = ctl(t, 0, append(g, "key", "ls")...)
	contains(t, out, "VERSION CREATED")
	var l api.KeyList
	out, _ = ctl(t, 0, append(g, "--json", "key", "ls")...)
	if err := json.Unmarshal([]byte(out), &l); err != nil || len(l.Keys) != 1 || l.Keys[0].VersionCreated.IsZero() {
		t.Fatalf("key ls --json: %+v, %v", l, err)
	}
	ctl(t, 0, append(g, "key", "put", "--manifest", mf, "--client-key", filepath.Join(d.data, "client.key"), "--id", "demo/k", "--file", filepath.Join(dir, "k.key"))...)
	var l2 api.KeyList
	out, _ = ctl(t, 0, append(g, "--json", "key", "ls")...)
	if err := json.Unmarshal([]byte(out), &l2); err != nil || !l2.Keys[0].VersionCreated.After(l.Keys[0].VersionCreated) || !l2.Keys[0].Created.Equal(l.Keys[0].Created) {
		t.Fatalf("key ls after version 2: %+v, before %+v, %v", l2, l, err)
	}
	out, _ = ctl(t, 0, append(g, "key", "ls")...)
	contains(t, out, ts(l2.Keys[0].VersionCreated))
	var l3 api.KeyList
	out, _ = ctl(t, 0, append(g, "--json", "key", "ls", "--prefix", "demo/")...)
	if err := json.Unmarshal([]byte(out), &l3); err != nil || len(l3.Keys) != 1 || l3.Keys[0].ID != "demo/k" {
		t.Fatalf("key ls --prefix demo/: %+v, %v", l3, err)
	}
	out, _ = ctl(t, 0, append(g, "--json", "key", "ls", "--prefix", "other/")...)
	if err := json.Unmarshal([]byte(out), &l3); err != nil || len(l3.Keys) != 0 {
		t.Fatalf("key ls --prefix other/: %+v, %v", l3, err)
	}

	out, _ = ctl(t, 0, append(g, "--json", "manifest", "history", "--manifest", mf)...)
	var h historyResult
	if err := json.Unmarshal([]byte(out), &h); err != nil || !h.ChainVerified || len(h.Chain) != 1 || h.Active != 1 || h.YourVersion != 1 ||
		h.Log.Origin != vr.Origin || h.Log.Size != 4 || h.Log.PreviousSize == nil {
		t.Fatalf("manifest history --json: %+v, %v\n%s", h, err, out)
	}
}

// TestAttestAndRawKeys: 'kbsctl attest' writes evidence that 'manifest
// check' reads; prompt commands take the raw key files 'key put --file'
// takes.
func TestAttestAndRawKeys(t *testing.T) {
	d, g, mf, dir := setup(t)
	ev := filepath.Join(dir, "evidence.bin")
	out, _ := ctl(t, 0, "attest", "--tee", "sim", "--sim-dir", d.simDir(), "--out", ev)
	contains(t, out, "of snp evidence (simulated) to "+ev)
	contains(t, out, "--sim-root "+d.simRoot())
	ctl(t, 2, "attest", "--tee", "sim", "--sim-dir", d.simDir(), "--out", ev) // never overwritten
	out, _ = ctl(t, 0, append(g, "manifest", "check", "--manifest", mf, "--platform", "snp", "--evidence", ev)...)
	contains(t, out, "class demo-worker: MATCH")
	evTDX := filepath.Join(dir, "evidence-tdx.bin")
	ctl(t, 0, "attest", "--tee", "sim", "--sim-platform", "tdx", "--sim-dir", d.simDir(), "--report-data", strings.Repeat("11", 64), "--out", evTDX)
	ctl(t, 0, append(g, "manifest", "check", "--manifest", mf, "--platform", "tdx", "--evidence", evTDX, "--report-data", strings.Repeat("11", 64))...)

	raw := filepath.Join(dir, "raw.bin")
	os.WriteFile(raw, bytes.Repeat([]byte{9}, 32), 0o600)
	out, _ = ctl(t, 0, append(g, "key", "put", "--manifest", mf, "--client-key", filepath.Join(d.data, "client.key"), "--id", "demo/raw", "--file", raw)...)
	contains(t, out, "encrypt prompts with it: kbsctl prompt encrypt --key "+raw+" --id demo/raw --key-version 1")
	ctl(t, 0, append(g, "key", "get", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(), "--id", "demo/raw", "--out", filepath.Join(dir, "w"))...)
	enc, _ := ctlIn(t, 0, "raw hello", "prompt", "encrypt", "--key", raw, "--id", "demo/raw", "--key-version", "1")
	dec, _ := ctlIn(t, 0, enc, "prompt", "decrypt", "--key", filepath.Join(dir, "w", "demo", "raw.key"))
	if dec != "raw hello" {
		t.Fatalf("raw-key prompt round trip = %q", dec)
	}
	dec, _ = ctlIn(t, 0, enc, "prompt", "decrypt", "--key", raw, "--id", "demo/raw", "--key-version", "1")
	if dec != "raw hello" {
		t.Fatalf("raw-key decrypt = %q", dec)
	}
	url, stop := startWorker(t, append(g, "--json", "worker", "run", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(), "--id", "demo/raw", "--listen", "127.0.0.1:0"))
	out, _ = ctlIn(t, 0, "raw", "prompt", "send", "--worker", url, "--key", raw, "--id", "demo/raw", "--key-version", "1")
	if out != "echo from a kbs worker: RAW" {
		t.Fatalf("worker reply = %q", out)
	}
	stop()
	_, errOut := ctl(t, 2, "prompt", "encrypt", "--key", raw)
	contains(t, errOut, "holds raw key bytes: pass --id and --key-version")
	ctlIn(t, 1, enc, "prompt", "decrypt", "--key", raw, "--id", "demo/raw", "--key-version", "2")
}

// TestProgressBar: the audit's progress bar, on logs of at least 20,000
// entries: shown from the first update, then at most every interval, and
// completed when the audit is done.
func TestProgressBar(t *testing.T) {
	var b bytes.Buffer
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := newProgress(&b)
	p.now = func() time.Time { return now }
	p.update(10, progressMin-1)
	p.done()
	if b.Len() != 0 {
		t.Fatalf("a short audit printed a progress bar: %q", b.String())
	}
	p = newProgress(&b)
	p.now = func() time.Time { return now }
	p.update(0, 40000)
	p.update(10000, 40000) // within the interval: not drawn
	now = now.Add(time.Second)
	p.update(20000, 40000)
	p.done()
	want := "\raudit [" + strings.Repeat(".", 40) + "] 0/40000 entries" +
		"\raudit [" + strings.Repeat("#", 20) + strings.Repeat(".", 20) + "] 20000/40000 entries" +
		"\raudit [" + strings.Repeat("#", 40) + "] 40000/40000 entries\n"
	if b.String() != want {
		t.Fatalf("progress bar =\n%q\nwant\n%q", b.String(), want)
	}

	// End to end: an audit of a long log draws it on stderr.
	tl := audittest.New(t)
	tl.AppendManifest(t)
	tl.Append(t, &tlog.Entry{Type: tlog.TypeKeyUpload, KeyUpload: &tlog.KeyEntry{ID: "acme/model", Version: 1, Client: "acme"}})
	rel, err := tlog.EncodeEntry(tl.Release("acme/model", 1, "gpu-worker"))
	if err != nil {
		t.Fatal(err)
	}
	tl.AppendMany(t, rel, progressMin)
	n := progressMin + 2
	_, errOut := ctl(t, 0, "--addr", tl.Addr, "--state", t.TempDir(), "audit", "--note-key", tl.NoteKey)
	if !strings.HasPrefix(errOut, "\raudit [") || !strings.HasSuffix(errOut, "\raudit ["+strings.Repeat("#", 40)+"] "+strconv.Itoa(n)+"/"+strconv.Itoa(n)+" entries\n") {
		t.Fatalf("audit of %d entries: stderr %q", n, errOut)
	}
	_, errOut = ctl(t, 0, "--addr", tl.Addr, "--state", t.TempDir(), "audit", "--csv", "--note-key", tl.NoteKey)
	if !strings.Contains(errOut, "audit [") {
		t.Fatalf("audit --csv drew no progress bar: %q", errOut)
	}
}
