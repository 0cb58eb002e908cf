package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/internal/testbin"
)

// startOver returns the command kbsd --dev prints to start over.
func startOver(t *testing.T, out string) string {
	t.Helper()
	_, after, ok := strings.Cut(out, "To start over")
	if !ok {
		t.Fatalf("kbsd --dev printed no way to start over:\n%s", out)
	}
	lines := strings.Split(after, "\n")
	if len(lines) < 2 || !strings.HasPrefix(strings.TrimSpace(lines[1]), "rm -rf ") {
		t.Fatalf("no rm command after 'To start over':\n%s", after)
	}
	return strings.TrimSpace(lines[1])
}

// TestStartOver runs the printed next steps, starts the broker over as a
// user would (a new data directory: a new log and a new version 1), and
// runs the steps again. Removing only the data directory fails at the
// first verify, with a hint that names --accept-new-log and the fresh copy
// of the manifest; the printed start-over command removes what the steps
// left behind, and then the steps work again.
func TestStartOver(t *testing.T) {
	work := t.TempDir()
	if err := os.Mkdir(filepath.Join(work, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := testbin.Build(filepath.Join(work, "bin", "kbsctl"), "github.com/kbs-dev/kbs/tools/kbsctl"); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(work, "kbs-dev")
	sh := func(script string) (string, error) {
		cmd := testbin.Command(t, "sh", "-e", "-x", "-c", script)
		cmd.Dir = work
		cmd.Env = append(cleanEnv(), "HOME="+filepath.Join(work, "home"), "XDG_CONFIG_HOME="+filepath.Join(work, "config"))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	d := startDaemon(t, data)
	steps, again := nextSteps(t, d.Output()), startOver(t, d.Output())
	if out, err := sh(steps); err != nil {
		t.Fatalf("the printed next steps failed: %v\n%s", err, out)
	}
	d.stop()

	// Only the broker's directory removed: the client's state remembers
	// the old log, its manifest copy the old chain.
	if err := os.RemoveAll(data); err != nil {
		t.Fatal(err)
	}
	d = startDaemon(t, data)
	out, err := sh(nextSteps(t, d.Output()))
	for _, want := range []string{"VERIFICATION FAILED: the broker presents a different log", "--accept-new-log", "take a fresh copy"} {
		if err == nil || !strings.Contains(out, want) {
			t.Fatalf("the steps after removing only %s: %v, output lacks %q:\n%s", data, err, want, out)
		}
	}
	d.stop()

	// The printed way to start over.
	if out, err := sh(again); err != nil {
		t.Fatalf("%s: %v\n%s", again, err, out)
	}
	d = startDaemon(t, data)
	if out, err := sh(nextSteps(t, d.Output())); err != nil {
		t.Fatalf("the printed next steps after starting over failed: %v\n%s", err, out)
	}
	d.stop()
}
