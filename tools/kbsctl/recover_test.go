package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/internal/testbin"
)

// TestRecovery recovers a broker that lost its sealing key, with kbsctl
// as the holders and the client: the owners name three holders, two of
// whom restore the master key; the broker logs the shares; it loses its
// sealing key and starts in recovery, serving attestation and the log
// only; a broker that does not match the manifest (another measurement on
// the same data) gets nothing from a holder; one holder is not enough; two
// restore the key; every key is releasable again, and the audit shows the
// shares and the recovery.
func TestRecovery(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "kbs-dev")
	d := startKbsd(t, data)
	mf := filepath.Join(dir, "manifest.json")
	copyFile(t, filepath.Join(data, "manifest.json"), mf)
	g := []string{"--addr", d.unix, "--state", filepath.Join(dir, "state"), "--sim-root", d.simRoot()}
	holders := []string{"alice", "bob", "carol"}
	next := []string{"manifest", "next", "--recovery-threshold", "2", "--out", filepath.Join(dir, "v2.json")}
	for _, h := range holders {
		pub, _ := ctl(t, 0, "recover", "keygen", "--out", filepath.Join(dir, h+".key"))
		if err := os.WriteFile(filepath.Join(dir, h+".pub"), []byte(pub), 0o644); err != nil {
			t.Fatal(err)
		}
		next = append(next, "--add-recovery-holder", h+"="+filepath.Join(dir, h+".pub"))
	}
	ctl(t, 2, "recover", "keygen", "--out", filepath.Join(dir, "alice.key")) // never over a file
	ctl(t, 0, append(next, mf)...)
	sig, _ := ctl(t, 0, "manifest", "sign", "--key", filepath.Join(data, "owner.key"), filepath.Join(dir, "v2.json"))
	if err := os.WriteFile(filepath.Join(dir, "v2.sig"), []byte(sig), 0o644); err != nil {
		t.Fatal(err)
	}
	ctl(t, 0, append(g, "manifest", "set", "--sig", filepath.Join(dir, "v2.sig"), filepath.Join(dir, "v2.json"))...)
	ctl(t, 0, append(g, "verify", "--follow", "--manifest", mf)...)
	for _, id := range []string{"demo/a", "demo/b"} {
		ctl(t, 0, append(g, "key", "put", "--manifest", mf, "--client-key", filepath.Join(data, "client.key"), "--id", id, "--generate", "--out", filepath.Join(dir, strings.ReplaceAll(id, "/", "-")+".key"))...)
	}
	out, _ := ctl(t, 0, append(g, "recover", "status")...)
	contains(t, out, "the broker is not recovering")
	ctl(t, 1, append(g, "recover", "--manifest", mf, "--holder", "alice", "--key", filepath.Join(dir, "alice.key"))...)
	d.stop()

	// The sealing key is lost: the broker waits for its holders.
	if err := os.Remove(filepath.Join(data, "sim", "sealing.key")); err != nil {
		t.Fatal(err)
	}
	recovering := func(extra ...string) *testbin.Kbsd {
		k := testbin.StartKbsdUntil(t, kbsdBin, data, "kbsd recovering", append([]string{"--dev", "--listen-tcp", "127.0.0.1:0"}, extra...)...)
		t.Cleanup(func() { k.Stop() })
		return k
	}
	impostor := recovering("--sim-measurement", strings.Repeat("ee", 48))
	out, _ = ctl(t, 0, append(g, "recover", "status")...)
	contains(t, out, "recovering: 0 of 2 shares received")
	_, errOut := ctl(t, 1, append(g, "recover", "--manifest", mf, "--holder", "alice", "--key", filepath.Join(dir, "alice.key"))...)
	contains(t, errOut, "service reference values")
	out, _ = ctl(t, 0, append(g, "recover", "status")...)
	contains(t, out, "recovering: 0 of 2 shares received")
	if err := impostor.Stop(); err != nil {
		t.Fatal(err)
	}

	k := recovering()
	// Only attestation, the manifest and the log are served.
	_, errOut = ctl(t, 2, append(g, "key", "get", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(), "--id", "demo/a", "--out", filepath.Join(dir, "early"))...)
	contains(t, errOut, "recovering")
	// A holder with another's key, and a holder under another's name.
	ctl(t, 1, append(g, "recover", "--manifest", mf, "--holder", "alice", "--key", filepath.Join(dir, "bob.key"))...)
	out, _ = ctl(t, 0, append(g, "recover", "--manifest", mf, "--holder", "alice", "--key", filepath.Join(dir, "alice.key"))...)
	contains(t, out, "1 of 2 shares received")
	out, _ = ctl(t, 0, append(g, "recover", "--manifest", mf, "--holder", "alice", "--key", filepath.Join(dir, "alice.key"))...)
	contains(t, out, "1 of 2 shares received") // the same holder twice counts once
	out, _ = ctl(t, 0, append(g, "recover", "status")...)
	contains(t, out, "alice                received")
	out, _ = ctl(t, 0, append(g, "recover", "--manifest", mf, "--holder", "carol", "--key", filepath.Join(dir, "carol.key"))...)
	contains(t, out, "master key restored")
	waitFor(t, k, "kbsd serving")

	for _, id := range []string{"demo/a", "demo/b"} {
		ctl(t, 0, append(g, "key", "get", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(), "--id", id, "--out", filepath.Join(dir, "worker"))...)
		want, err := os.ReadFile(filepath.Join(dir, strings.ReplaceAll(id, "/", "-")+".key"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dir, "worker", id+".key"))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s after the recovery: %v", id, err)
		}
	}
	out, _ = ctl(t, 0, append(g, "audit")...)
	contains(t, out, "recovery-shares  master key split for recovery: 2 of [alice bob carol]")
	contains(t, out, "master key recovered by [alice carol]")
	contains(t, out, "audit OK")
	// Restarted, it opens with its new sealing key.
	if err := k.Stop(); err != nil {
		t.Fatal(err)
	}
	d = startKbsd(t, data)
	ctl(t, 0, append(g, "key", "get", "--manifest", mf, "--tee", "sim", "--sim-dir", d.simDir(), "--id", "demo/a", "--out", filepath.Join(dir, "worker2"))...)
}

// waitFor waits until k's output holds line.
func waitFor(t *testing.T, k *testbin.Kbsd, line string) {
	t.Helper()
	for i := 0; i < 3000 && !strings.Contains(k.Output(), line); i++ {
		if k.Exited() {
			t.Fatalf("kbsd exited:\n%s", k.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(k.Output(), line) {
		t.Fatalf("kbsd never said %q:\n%s", line, k.Output())
	}
}
