// Package testbin builds the project's binaries for tests that run them as
// real processes (kbsd under kbsctl, client and daemon tests), and starts
// processes that cannot outlive the test that started them.
//
// Every process a test starts through Command runs in its own process group
// with a parent-death signal (SIGKILL): when the test ends, passes or fails,
// its context is cancelled and the whole group is killed; when the test
// binary itself dies (a -timeout panic, a signal, os.Exit from a failed
// TestMain), the kernel kills the child. A test never leaves a kbsd behind.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/internal/clock"
)

// Main builds the Go package pkg into a temporary directory, stores the
// binary's path in *bin, runs the tests and exits with their status. Call it
// from TestMain.
func Main(m *testing.M, bin *string, pkg string) {
	dir, err := os.MkdirTemp("", "kbs-test-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	*bin = filepath.Join(dir, filepath.Base(pkg))
	if err := Build(*bin, pkg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Build builds the Go package pkg into the file out, with the build tags
// that matter to tests: a test binary built with kbs_clockskew (make
// test-future) builds its helpers with it too, so that they see the same
// clock.
func Build(out, pkg string) error {
	args := []string{"build", "-o", out}
	if clock.Skewable() {
		args = append(args, "-tags", "kbs_clockskew")
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("couldn't build %s: %v", pkg, err)
	}
	return nil
}

// A Lazy is a binary built on first use, for the tests of a package that
// need it only sometimes (kbsctl beside a TestMain that builds kbsd).
type Lazy struct {
	// Pkg is the Go package to build.
	Pkg  string
	once sync.Once
	path string
	err  error
}

// Path builds l.Pkg into dir the first time it is called (later calls
// return the same binary, whatever their dir) and returns the binary's
// path; a failed build fails t.
func (l *Lazy) Path(t testing.TB, dir string) string {
	t.Helper()
	l.once.Do(func() {
		l.path = filepath.Join(dir, filepath.Base(l.Pkg))
		l.err = Build(l.path, l.Pkg)
	})
	if l.err != nil {
		t.Fatal(l.err)
	}
	return l.path
}

// Command returns a command that cannot outlive the test t: it runs in its
// own process group, the kernel sends it SIGKILL when the test process dies,
// and when t ends (its Context is done) the whole group is killed. Run,
// Output and CombinedOutput work as usual; a process started with Start is
// killed at the end of the test whether or not anyone waits for it.
func Command(t testing.TB, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), name, args...)
	Guard(cmd)
	cmd.Cancel = func() error { return KillGroup(cmd) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// Guard makes cmd, before it starts, the leader of a new process group
// that receives SIGKILL when the thread that starts it (and so the test
// process) dies.
func Guard(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}

// KillGroup sends SIGKILL to the process group that a guarded, started cmd
// leads. It does not wait.
func KillGroup(cmd *exec.Cmd) error {
	if cmd.Process == nil {
		return nil
	}
	err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if err == syscall.ESRCH {
		return os.ErrProcessDone
	}
	return err
}

// MeasuredCommand is Command for a process whose peak memory the test
// measures: it runs name under the peakrss launcher (built into dir once
// per dir), and peak returns the process's peak resident set size in
// bytes once it has been waited for (0 if it is unknown). Started
// directly, a process would report the test process's own memory as its
// peak (Linux keeps ru_maxrss across execve, and Go starts processes with
// vfork).
func MeasuredCommand(t testing.TB, dir, name string, args ...string) (cmd *exec.Cmd, peak func() int64) {
	t.Helper()
	launcher, err := peakRSSLauncher(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "peakrss")
	cmd = Command(t, launcher, append([]string{out, name}, args...)...)
	return cmd, func() int64 {
		b, err := os.ReadFile(out)
		if err != nil {
			return 0
		}
		n, _ := strconv.ParseInt(string(b), 10, 64)
		return n
	}
}

var launchers sync.Map // dir -> *launcherBuild

type launcherBuild struct {
	once sync.Once
	path string
	err  error
}

func peakRSSLauncher(dir string) (string, error) {
	v, _ := launchers.LoadOrStore(dir, &launcherBuild{})
	lb := v.(*launcherBuild)
	lb.once.Do(func() {
		lb.path = filepath.Join(dir, "peakrss")
		lb.err = Build(lb.path, "github.com/kbs-dev/kbs/internal/testbin/peakrss")
	})
	return lb.path, lb.err
}
