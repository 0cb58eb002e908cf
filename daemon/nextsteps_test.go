package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/internal/testbin"
	"github.com/kbs-dev/kbs/kbs"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/manifest"
)

// nextSteps returns the shell commands of the "Next steps" kbsd --dev
// printed, without 'make build'.
func nextSteps(t *testing.T, out string) string {
	t.Helper()
	i := strings.Index(out, "Next steps")
	if i < 0 {
		t.Fatalf("kbsd --dev printed no next steps:\n%s", out)
	}
	var cmds []string
	for _, l := range strings.Split(out[i:], "\n")[1:] {
		if !strings.HasPrefix(l, "  ") {
			break
		}
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "#") || l == "make build" {
			continue
		}
		cmds = append(cmds, l)
	}
	if len(cmds) < 8 {
		t.Fatalf("only %d commands in the next steps:\n%s", len(cmds), out[i:])
	}
	return strings.Join(cmds, "\n")
}

// TestDevNextSteps runs the commands kbsd --dev prints, in a fresh
// directory with bin/kbsctl, as a user would: they verify, upload, fetch,
// audit, publish version 2 and follow it. The broker's own manifest file
// stays version 1 (the user worked on a copy), so kbsd restarts. Then the
// mistake the copy avoids: the data directory's file overwritten with
// version 2. kbsd refuses to start, says what happened and how to fix it,
// and the fix it prints works.
func TestDevNextSteps(t *testing.T) {
	work := t.TempDir()
	if err := os.Mkdir(filepath.Join(work, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := testbin.Build(filepath.Join(work, "bin", "kbsctl"), "github.com/kbs-dev/kbs/tools/kbsctl"); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(t.TempDir(), "kbs-dev")
	d := startDaemon(t, data)
	mfFile := filepath.Join(data, "manifest.json")
	v1, err := os.ReadFile(mfFile)
	if err != nil {
		t.Fatal(err)
	}

	sh := testbin.Command(t, "sh", "-e", "-x", "-c", nextSteps(t, d.Output()))
	sh.Dir = work
	sh.Env = append(cleanEnv(), "HOME="+filepath.Join(work, "home"), "XDG_CONFIG_HOME="+filepath.Join(work, "config"))
	if out, err := sh.CombinedOutput(); err != nil {
		t.Fatalf("the printed next steps failed: %v\n%s", err, out)
	}
	mine, err := manifest.Parse(mustReadFile(t, filepath.Join(work, "my-manifest.json")))
	if err != nil || mine.Version() != 2 {
		t.Fatalf("the client's copy after the steps: %v, %v; want version 2", mine, err)
	}
	if got := mustReadFile(t, mfFile); !bytes.Equal(got, v1) {
		t.Fatal("the printed steps changed the broker's manifest file")
	}
	d.stop()
	d = startDaemon(t, data)
	d.stop()

	// The mistake: a client followed version 2 into the broker's own file.
	if err := os.WriteFile(mfFile, mine.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := testbin.Command(t, kbsdBin, "--dev", "--data", data, "--listen-tcp", "none").CombinedOutput()
	for _, want := range []string{
		mfFile + " holds manifest version 2 (" + mine.Hash() + ")",
		"starts from another version 1 (" + manifest.HashOf(v1) + ") and is now at version 2",
		"kbsctl verify --follow --manifest " + mfFile,
		"mv " + mfFile + " " + mfFile + ".changed",
	} {
		if err == nil || !strings.Contains(string(out), want) {
			t.Fatalf("start with an overwritten manifest: %v, output lacks %q:\n%s", err, want, out)
		}
	}
	if err := os.Rename(mfFile, mfFile+".changed"); err != nil {
		t.Fatal(err)
	}
	d = startDaemon(t, data)
	if got := mustReadFile(t, mfFile); !bytes.Equal(got, v1) {
		t.Fatal("kbsd --dev did not write version 1 back")
	}
	var active api.Manifest
	d.mustCall("GET", api.PathManifest, nil, &active)
	if active.Version != 2 || active.Hash != mine.Hash() {
		t.Errorf("active manifest after the fix: version %d %s, want version 2 %s", active.Version, active.Hash, mine.Hash())
	}
	d.stop()
}

// cleanEnv is the test's environment without kbsctl's variables.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		// KBS_TEST_* (the test clock's skew) is the test's, not the user's.
		user := strings.HasPrefix(kv, "KBS_") && !strings.HasPrefix(kv, "KBS_TEST_")
		if !user && !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "XDG_CONFIG_HOME=") {
			env = append(env, kv)
		}
	}
	return env
}

func mustReadFile(t *testing.T, f string) []byte {
	t.Helper()
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestManifestMismatchMessage: in production the fix is to omit --manifest
// or pass the exact version 1, never a later version.
func TestManifestMismatchMessage(t *testing.T) {
	e := &kbs.InitialManifestError{Configured: "sha256:22", ConfiguredVersion: 3, Initial: "sha256:11", ActiveVersion: 4}
	c := &Config{Data: "/var/lib/kbs", Manifest: "/etc/kbs/manifest.json"}
	msg := manifestMismatch(c, nil, e).Error()
	for _, want := range []string{
		"/etc/kbs/manifest.json holds manifest version 3 (sha256:22)",
		"starts from another version 1 (sha256:11) and is now at version 4",
		"omit --manifest",
		"exact version 1 file (sha256:11)",
		"kbsctl verify --follow --manifest /etc/kbs/manifest.json",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "kbsd --dev") {
		t.Errorf("production message suggests --dev:\n%s", msg)
	}
	e.ConfiguredVersion = 0
	if msg := manifestMismatch(c, nil, e).Error(); !strings.Contains(msg, "not a valid manifest") {
		t.Errorf("message for an unparsable file:\n%s", msg)
	}
}
