// Package version says what a kbs binary was built from, for the
// --version flag of kbsd and kbsctl: the main module's path and version and
// the version-control revision, commit time and "modified" flag that the go
// command stamps into binaries built inside a repository
// (runtime/debug.ReadBuildInfo). It reads nothing else and cannot fail: a
// binary built without that information reports "unknown".
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Info is what a binary was built from.
type Info struct {
	// Program is the binary's name ("kbsd", "kbsctl").
	Program string `json:"program"`
	// Module and Version are the main module's path and version: a
	// release tag, a pseudo-version, or "(devel)" for a build from a work
	// tree.
	Module  string `json:"module"`
	Version string `json:"version"`
	// Revision and Time are the version-control commit and its time;
	// Modified reports uncommitted changes in the work tree it was built
	// from. Empty (false) when the go command stamped none (go run, go
	// test, -buildvcs=false).
	Revision string `json:"revision,omitempty"`
	Time     string `json:"time,omitempty"`
	Modified bool   `json:"modified,omitempty"`
	// Go is the toolchain that built it.
	Go string `json:"go"`
}

// Get returns what the running binary, named program, was built from.
func Get(program string) Info {
	i := Info{Program: program, Module: "unknown", Version: "unknown", Go: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return i
	}
	i.Go = bi.GoVersion
	if bi.Main.Path != "" {
		i.Module = bi.Main.Path
	}
	if bi.Main.Version != "" {
		i.Version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			i.Revision = s.Value
		case "vcs.time":
			i.Time = s.Value
		case "vcs.modified":
			i.Modified = s.Value == "true"
		}
	}
	return i
}

// String is the one line --version prints, e.g.
//
//	kbsctl (devel) github.com/kbs-dev/kbs revision 0123abcd (2026-12-03T10:00:00Z, modified) go1.26.8
func (i Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s", i.Program, i.Version, i.Module)
	if i.Revision != "" {
		fmt.Fprintf(&b, " revision %s", i.Revision)
		var notes []string
		if i.Time != "" {
			notes = append(notes, i.Time)
		}
		if i.Modified {
			notes = append(notes, "modified")
		}
		if len(notes) > 0 {
			fmt.Fprintf(&b, " (%s)", strings.Join(notes, ", "))
		}
	} else {
		b.WriteString(" revision unknown")
	}
	fmt.Fprintf(&b, " %s", i.Go)
	return b.String()
}
