package kbs

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// TestPeerOf: a unix socket peer is named by its process (this one), a TCP
// one by its address, an IPv6 one by its /64.
func TestPeerOf(t *testing.T) {
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, want := PeerOf(s), fmt.Sprintf("unix:%d:%d", os.Getuid(), os.Getpid()); got != want {
		t.Errorf("PeerOf(unix connection) = %q, want %q", got, want)
	}
	for _, tc := range []struct{ addr, want string }{
		{"127.0.0.1:4000", "ip:127.0.0.1"},
		{"[::ffff:192.0.2.7]:1", "ip:192.0.2.7"},
		{"[2001:db8:1:2:3:4:5:6]:443", "ip:2001:db8:1:2::/64"},
		{"[2001:db8:1:2:ffff::1]:443", "ip:2001:db8:1:2::/64"},
	} {
		a, err := net.ResolveTCPAddr("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := addrPeer(a); got != tc.want {
			t.Errorf("addrPeer(%s) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}
