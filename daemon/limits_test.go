package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/kbs"
)

// TestConnLimits: the listeners' limits derived from RLIMIT_NOFILE leave
// kbsd its own files, give TCP at most half and the unix socket a quarter;
// explicit limits beyond the file limit, and a file limit too low to
// serve, are refused.
func TestConnLimits(t *testing.T) {
	for _, tc := range []struct {
		nofile         uint64
		c              Config
		tcp, unix, err string
	}{
		{nofile: 1024, tcp: "{480 120 0s}", unix: "{240 60 0s}"},
		{nofile: 256, tcp: "{96 24 0s}", unix: "{48 12 0s}"},
		{nofile: 1 << 20, tcp: "{4096 128 0s}", unix: "{1024 128 0s}"},
		{nofile: 1024, c: Config{MaxTCPConns: 10, MaxConnsPerPeer: 3}, tcp: "{10 3 0s}", unix: "{240 3 0s}"},
		{nofile: 1024, c: Config{MaxTCPConns: 900}, err: "together exceed"},
		{nofile: 64, err: "ulimit -n"},
	} {
		tcp, unix, err := connLimits(&tc.c, tc.nofile)
		got := func(l kbs.ConnLimits) string { return fmt.Sprint(l) }
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("connLimits(%d) = %v, want an error saying %q", tc.nofile, err, tc.err)
			}
			continue
		}
		if err != nil || got(tcp) != tc.tcp || got(unix) != tc.unix {
			t.Errorf("connLimits(%d) = %s %s %v, want %s %s", tc.nofile, got(tcp), got(unix), err, tc.tcp, tc.unix)
		}
	}
}
