package kbs

import (
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestLimitListener: a peer beyond its share is closed at once unless it
// has an idle connection to give up; a full listener closes the longest
// idle connection for a newcomer, and with none idle waits until one
// closes; Close ends a waiting Accept.
func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := LimitListener(inner, ConnLimits{Max: 3, PerPeer: 2, IdleGrace: 20 * time.Millisecond})
	accepted := make(chan net.Conn, 8)
	acceptErr := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			accepted <- c
		}
	}()
	dial := func(from string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	next := func(what string) net.Conn {
		t.Helper()
		select {
		case c := <-accepted:
			return c
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: not accepted", what)
			return nil
		}
	}
	closedByServer := func(c net.Conn, what string) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("%s: read %v, want EOF (closed by the listener)", what, err)
		}
	}

	a1, a2 := dial("127.0.0.1"), dial("127.0.0.1")
	s1, s2 := next("a1"), next("a2")
	if PeerOf(s1) != "ip:127.0.0.1" {
		t.Fatalf("PeerOf(accepted) = %q", PeerOf(s1))
	}
	closedByServer(dial("127.0.0.1"), "a third connection of a peer with a share of 2 and none idle")
	if _, refused, _ := ln.Stats(); refused != 1 {
		t.Fatalf("%d refused, want 1", refused)
	}
	_ = a2

	ln.ConnState(s1, http.StateIdle)
	closedByServer(dial("127.0.0.1"), "a third connection of a peer whose idle one is within its grace")
	time.Sleep(20 * time.Millisecond)
	dial("127.0.0.1")
	next("a third connection of a peer with one idle")
	closedByServer(a1, "the peer's idle connection")

	dial("127.0.0.2")
	sb1 := next("another peer's first")
	// Full (a2, a3, b1), none idle: the next waits for a place.
	dial("127.0.0.2")
	select {
	case <-accepted:
		t.Fatal("a fourth connection accepted by a listener of 3")
	case <-time.After(200 * time.Millisecond):
	}
	s2.Close()
	next("the connection that waited")
	if open, refused, evicted := ln.Stats(); open != 3 || refused != 2 || evicted != 1 {
		t.Fatalf("Stats() = %d open, %d refused, %d evicted; want 3, 2, 1", open, refused, evicted)
	}

	// Full again: an idle connection of any peer makes room.
	ln.ConnState(sb1, http.StateIdle)
	dial("127.0.0.3")
	next("a third peer's, in place of an idle one")

	dial("127.0.0.4")
	time.Sleep(50 * time.Millisecond)
	ln.Close()
	select {
	case err := <-acceptErr:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept still waiting after Close")
	}
}
