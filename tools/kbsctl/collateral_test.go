package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestManifestCheckCollateral: offline TDX verification never skips the
// collateral. A real quote with --offline and no --collateral is refused
// naming the missing collateral; an expired real bundle is judged (and
// refused at today's date, whatever today is: its pieces expired in 2025,
// its PCK certificate expires in 2032); --collateral must name a directory.
func TestManifestCheckCollateral(t *testing.T) {
	state := t.TempDir()
	g := []string{"--state", state}
	mf := filepath.Join("..", "..", "testdata", "manifest", "valid", "tdx.json")
	quote := filepath.Join("..", "..", "testdata", "tdx", "quote-v4-b0c06f.dat")
	bundle := filepath.Join("..", "..", "testdata", "tdx", "collateral-b0c06f")

	_, errOut := ctl(t, 1, append(g, "manifest", "check", "--manifest", mf, "--platform", "tdx", "--evidence", quote, "--offline")...)
	contains(t, errOut, "collateral")
	_, errOut = ctl(t, 1, append(g, "manifest", "check", "--manifest", mf, "--platform", "tdx", "--evidence", quote, "--offline", "--collateral", bundle)...)
	if strings.Contains(errOut, "no collateral bundle") || strings.Contains(errOut, "not a directory") {
		t.Errorf("the bundle was not read: %s", errOut)
	}
	ctl(t, 2, append(g, "manifest", "check", "--manifest", mf, "--platform", "tdx", "--evidence", quote, "--offline", "--collateral", filepath.Join(t.TempDir(), "none"))...)
}
