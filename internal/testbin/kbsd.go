package testbin

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Kbsd is a kbsd process that a test started with StartKbsd. It is killed
// when the test ends (see Command) if the test has not stopped it.
type Kbsd struct {
	// Data is the data directory (--data).
	Data string
	// Socket is the path of the unix socket, kbs.sock in Data.
	Socket string
	// HTTPS is "https://127.0.0.1:PORT" when kbsd listens on TCP, else "".
	HTTPS string

	t    testing.TB
	cmd  *exec.Cmd
	out  *SyncBuffer
	done chan struct{}
	err  error
}

var (
	httpsRE = regexp.MustCompile(`https://127\.0\.0\.1:[0-9]+`)
	// serving is the line kbsd logs once every listener accepts.
	serving = []byte("kbsd serving")
)

// StartKbsd runs the kbsd binary bin with --data data and args, and waits
// (up to 60 s) until it logs that it serves and answers /healthz on its unix
// socket. A kbsd that exits or does not come up fails the test with its
// output.
func StartKbsd(t testing.TB, bin, data string, args ...string) *Kbsd {
	t.Helper()
	k, err := TryStartKbsd(t, bin, data, args...)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TryStartKbsd is StartKbsd for a kbsd that may refuse to start: it returns
// a *RefusedError (with kbsd's output) if kbsd exits before it serves.
func TryStartKbsd(t testing.TB, bin, data string, args ...string) (*Kbsd, error) {
	t.Helper()
	return startKbsd(t, bin, data, "", args...)
}

// StartKbsdUntil is StartKbsd for a kbsd that serves without being
// healthy (a broker that handed over, one that waits for its recovery
// holders or for its witnesses): it waits until kbsd's output holds line
// instead.
func StartKbsdUntil(t testing.TB, bin, data, line string, args ...string) *Kbsd {
	t.Helper()
	k, err := startKbsd(t, bin, data, line, args...)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// WaitHealthy waits up to 60 s until kbsd answers /healthz with 200.
func (k *Kbsd) WaitHealthy() {
	k.t.Helper()
	hc := k.HTTPClient()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := hc.Get("http://kbsd/healthz")
		if err == nil {
			body := make([]byte, 512)
			n, _ := resp.Body.Read(body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			if time.Now().After(deadline) {
				k.t.Fatalf("kbsd not healthy: %d %s\n%s", resp.StatusCode, body[:n], k.out)
			}
		} else if k.Exited() || time.Now().After(deadline) {
			k.t.Fatalf("kbsd not healthy: %v\n%s", err, k.out)
		}
	}
}

// startKbsd starts kbsd and waits until it serves and is healthy, or,
// when line is not empty, until its output holds line.
func startKbsd(t testing.TB, bin, data, line string, args ...string) (*Kbsd, error) {
	t.Helper()
	k := &Kbsd{t: t, Data: data, Socket: filepath.Join(data, "kbs.sock"), out: new(SyncBuffer), done: make(chan struct{})}
	k.cmd = Command(t, bin, append([]string{"--data", data}, args...)...)
	k.cmd.Stdout, k.cmd.Stderr = k.out, k.out
	if err := k.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		k.err = k.cmd.Wait()
		close(k.done)
	}()
	hc := k.HTTPClient()
	for deadline := time.Now().Add(60 * time.Second); ; {
		if out := k.out.Bytes(); line != "" && bytes.Contains(out, []byte(line)) {
			k.HTTPS = httpsRE.FindString(string(out))
			return k, nil
		}
		if out := k.out.Bytes(); line == "" && bytes.Contains(out, serving) {
			if resp, err := hc.Get("http://kbsd/healthz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					k.HTTPS = httpsRE.FindString(string(out))
					return k, nil
				}
			}
		}
		if k.Exited() {
			return nil, &RefusedError{Err: k.err, Output: k.out.String()}
		}
		if time.Now().After(deadline) {
			k.Kill()
			return nil, fmt.Errorf("kbsd did not come up:\n%s", k.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// RefusedError is TryStartKbsd's error for a kbsd that exited before it
// served.
type RefusedError struct {
	Err    error  // how it exited
	Output string // what it wrote
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("kbsd exited (%v) before it served:\n%s", e.Err, e.Output)
}

// HTTPClient returns a plain HTTP client that talks to kbsd's unix socket
// (any host name in the URL).
func (k *Kbsd) HTTPClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", k.Socket)
		},
	}}
}

// Output returns what kbsd has written to stdout and stderr so far.
func (k *Kbsd) Output() string { return k.out.String() }

// Pid returns the process id.
func (k *Kbsd) Pid() int { return k.cmd.Process.Pid }

// Done is closed when the process has exited.
func (k *Kbsd) Done() <-chan struct{} { return k.done }

// Exited reports whether the process has exited.
func (k *Kbsd) Exited() bool {
	select {
	case <-k.done:
		return true
	default:
		return false
	}
}

// Kill sends SIGKILL to kbsd's process group and waits for it to exit.
func (k *Kbsd) Kill() {
	KillGroup(k.cmd)
	<-k.done
}

// Stop sends SIGTERM and waits up to 20 s for kbsd to exit, then kills it.
// It returns an error unless kbsd exited cleanly (status 0) on the signal.
// Stopping a kbsd that has already exited returns how it exited.
func (k *Kbsd) Stop() error {
	if !k.Exited() {
		k.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-k.done:
		case <-time.After(20 * time.Second):
			k.Kill()
			return fmt.Errorf("kbsd did not stop on SIGTERM")
		}
	}
	if k.err != nil {
		return fmt.Errorf("kbsd exited with %v", k.err)
	}
	return nil
}

// MustStop is Stop that fails the test, with kbsd's output, on an error.
func (k *Kbsd) MustStop() {
	k.t.Helper()
	if err := k.Stop(); err != nil {
		k.t.Fatalf("%v\n%s", err, k.out)
	}
}

// SyncBuffer is a bytes.Buffer that a process writes to while a test reads
// it.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Bytes returns a copy of what was written.
func (b *SyncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Clone(b.buf.String())
}
