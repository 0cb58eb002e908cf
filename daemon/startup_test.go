package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/internal/testbin"
)

// TestListenersFirst: kbsd binds its listeners before it creates anything.
// A busy TCP address, or a unix socket another kbsd listens on, fails the
// start with a clear message, and the data directory, identity and log are
// not created (or not touched).
func TestListenersFirst(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	data := filepath.Join(t.TempDir(), "kbs-dev")
	out, err := testbin.Command(t, kbsdBin, "--dev", "--data", data, "--listen-tcp", busy.Addr().String()).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "couldn't listen on "+busy.Addr().String()) {
		t.Fatalf("kbsd on a busy port: %v\n%s", err, out)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Fatalf("kbsd created its data directory before failing to listen: %v", err)
	}

	// A second kbsd on a running one's data directory.
	d := startDaemon(t, data)
	before := treeSize(t, d)
	out, err = testbin.Command(t, kbsdBin, "--dev", "--data", data, "--listen-tcp", "127.0.0.1:0").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another kbsd is listening") {
		t.Fatalf("a second kbsd on the same data directory: %v\n%s", err, out)
	}
	if after := treeSize(t, d); after != before {
		t.Fatalf("the refused kbsd changed the log: size %d, was %d", after, before)
	}
	d.stop()
}

// TestRefusedFlags: flags kbsd cannot honour fail the start before
// anything is created.
func TestRefusedFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--log-level", "verbose"}, `--log-level "verbose": want trace, debug, info, warn, error or off`},
		{[]string{"--log-level", ""}, `--log-level ""`},
	} {
		data := filepath.Join(t.TempDir(), "kbs-dev")
		out, err := testbin.Command(t, kbsdBin, append([]string{"--dev", "--data", data}, tt.args...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tt.want) {
			t.Errorf("kbsd %q: %v, output %q; want failure mentioning %q", tt.args, err, out, tt.want)
		}
		if _, err := os.Stat(data); !os.IsNotExist(err) {
			t.Errorf("kbsd %q created its data directory", tt.args)
		}
	}
	for _, level := range []string{"trace", "DEBUG", "warn", "off"} {
		if _, err := parse(t, "--dev", "--log-level", level); err != nil {
			t.Errorf("--log-level %s: %v", level, err)
		}
	}
}

// TestVersion: --version prints what kbsd was built from and needs no
// other flag.
func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"-version"}, {"--data", "/nonexistent", "--version"}} {
		out, err := testbin.Command(t, kbsdBin, args...).CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "kbsd ") || !strings.Contains(string(out), "github.com/kbs-dev/kbs") {
			t.Errorf("kbsd %q: %v, output %q", args, err, out)
		}
	}
}
