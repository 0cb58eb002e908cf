// Package testbin builds the project's binaries for tests that run them as
// real processes (kbsd under kbsctl and client tests).
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
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
	cmd := exec.Command("go", "build", "-o", *bin, pkg)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "couldn't build %s: %v\n", pkg, err)
		os.RemoveAll(dir)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
