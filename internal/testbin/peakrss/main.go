// Command peakrss runs a command and writes its peak resident memory to a
// file: a launcher for tests that measure the memory of a process they
// start (testbin.MeasuredCommand).
//
// Usage:
//
//	peakrss OUTFILE COMMAND [ARG...]
//
// It runs COMMAND with its standard input and output, waits for it, writes
// the peak resident set size of COMMAND in bytes (getrusage's ru_maxrss of
// the child) to OUTFILE, and exits with COMMAND's status (128+N for a
// signal N).
//
// Why a launcher: Linux keeps ru_maxrss across execve, and Go starts
// processes with vfork (CLONE_VM), so a process that a large test process
// starts directly reports the test process's memory as its own peak. Here
// the child inherits the launcher's few megabytes only.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: peakrss OUTFILE COMMAND [ARG...]")
		os.Exit(2)
	}
	cmd := exec.Command(os.Args[2], os.Args[3:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		fmt.Fprintln(os.Stderr, "peakrss:", err)
		os.Exit(2)
	}
	ru, _ := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if ru != nil {
		os.WriteFile(os.Args[1], []byte(strconv.FormatInt(ru.Maxrss*1024, 10)), 0o600)
	}
	code := cmd.ProcessState.ExitCode()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		code = 128 + int(ws.Signal())
	}
	os.Exit(code)
}
