package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/internal/testbin"
)

// leakChildEnv makes TestLeakChild run: it is the child half of
// TestNoKbsdLeftBehind and does nothing in a normal run.
const leakChildEnv = "KBS_LEAK_CHILD"

// TestNoKbsdLeftBehind runs a test process that starts a real kbsd and then
// ends badly in each way a test run can: a test that fails half-way, a
// -timeout panic, os.Exit in the middle of a test (as log.Fatal does), and
// an interrupt (SIGINT, as Ctrl-C on make test). After each, the kbsd it
// started must be gone.
func TestNoKbsdLeftBehind(t *testing.T) {
	for _, mode := range []string{"fail", "timeout", "exit", "interrupt"} {
		t.Run(mode, func(t *testing.T) {
			pidFile := filepath.Join(t.TempDir(), "kbsd.pid")
			child := testbin.Command(t, os.Args[0], "-test.run=^TestLeakChild$", "-test.count=1", "-test.timeout=30s")
			if mode == "timeout" {
				child.Args[len(child.Args)-1] = "-test.timeout=8s"
			}
			child.Env = append(os.Environ(), leakChildEnv+"="+mode, "KBS_LEAK_PIDFILE="+pidFile)
			var out bytes.Buffer
			child.Stdout, child.Stderr = &out, &out
			if err := child.Start(); err != nil {
				t.Fatal(err)
			}
			pid := waitPidFile(t, pidFile, child.Process.Pid)
			// kbsd runs: now let the child end its way.
			if err := os.WriteFile(pidFile+".go", nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if mode == "interrupt" {
				child.Process.Signal(syscall.SIGINT)
			}
			if err := child.Wait(); err == nil {
				t.Fatalf("the child test succeeded; want a failure:\n%s", out.String())
			}
			for deadline := time.Now().Add(10 * time.Second); processAlive(pid); {
				if time.Now().After(deadline) {
					syscall.Kill(pid, syscall.SIGKILL)
					t.Fatalf("kbsd (pid %d) still runs after its test process ended (%s):\n%s", pid, mode, out.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// TestLeakChild is the child process of TestNoKbsdLeftBehind.
func TestLeakChild(t *testing.T) {
	mode := os.Getenv(leakChildEnv)
	if mode == "" {
		t.Skip("helper process of TestNoKbsdLeftBehind")
	}
	d := startDaemon(t, filepath.Join(t.TempDir(), "kbs-dev"), "--listen-tcp", "none")
	pidFile := os.Getenv("KBS_LEAK_PIDFILE")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(d.Pid())), 0o600); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(pidFile + ".go"); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	switch mode {
	case "fail":
		t.Fatal("failing half-way, as a test does")
	case "exit":
		os.Exit(3)
	default: // "timeout", "interrupt": wait for the panic or the signal
		select {}
	}
}

// waitPidFile waits until the child test wrote kbsd's pid, and fails if the
// child exits first.
func waitPidFile(t *testing.T, path string, child int) int {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
			pid, err := strconv.Atoi(string(b))
			if err != nil {
				t.Fatalf("pid file %q", b)
			}
			if !processAlive(pid) {
				t.Fatalf("kbsd (pid %d) not running right after start", pid)
			}
			return pid
		}
		if !processAlive(child) {
			t.Fatal("the child test exited before starting kbsd")
		}
	}
	t.Fatal("the child test did not start kbsd in time")
	return 0
}

// processAlive reports whether pid is a live process (a zombie, dead and not
// yet reaped by its new parent, counts as gone).
func processAlive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(stat)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z' && s[i+2] != 'X'
	}
	return true
}
