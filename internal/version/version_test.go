package version

import (
	"runtime"
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	for _, tt := range []struct {
		i    Info
		want string
	}{
		{Info{Program: "kbsd", Module: "github.com/kbs-dev/kbs", Version: "(devel)", Revision: "0123abcd", Time: "2026-12-03T10:00:00Z", Modified: true, Go: "go1.26.8"},
			"kbsd (devel) github.com/kbs-dev/kbs revision 0123abcd (2026-12-03T10:00:00Z, modified) go1.26.8"},
		{Info{Program: "kbsctl", Module: "github.com/kbs-dev/kbs", Version: "v1.2.3", Revision: "0123abcd", Go: "go1.26.8"},
			"kbsctl v1.2.3 github.com/kbs-dev/kbs revision 0123abcd go1.26.8"},
		{Info{Program: "kbsctl", Module: "unknown", Version: "unknown", Go: "go1.26.8"},
			"kbsctl unknown unknown revision unknown go1.26.8"},
	} {
		if got := tt.i.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.i, got, tt.want)
		}
	}
}

// TestGet reads the test binary's own build information: go test stamps
// the module and the toolchain (no VCS revision).
func TestGet(t *testing.T) {
	i := Get("x")
	if i.Program != "x" || i.Module != "github.com/kbs-dev/kbs" || i.Go != runtime.Version() {
		t.Errorf("Get = %+v, want program x, module github.com/kbs-dev/kbs, go %s", i, runtime.Version())
	}
	if !strings.HasPrefix(i.String(), "x ") {
		t.Errorf("String() = %q", i.String())
	}
}
