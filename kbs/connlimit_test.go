package kbs

import (
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// TestLimitListener: a peer beyond its share is closed at once unless it
// has a connection idle past the grace to give up; in a full listener, a
// peer at or above its fair share is closed at once when nothing is idle
// past the grace, a peer below it takes the place of the heaviest peer's
// idle connection, or waits when nothing is idle; Close ends Accept.
func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := LimitListener(inner, ConnLimits{Max: 3, PerPeer: 2, IdleGrace: time.Second})
	var clock atomic.Int64 // seconds past the epoch of the listener's clock
	ln.now = func() time.Time { return time.Unix(clock.Load(), 0) }
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
	stats := func(wantOpen int, wantRefused, wantEvicted uint64) {
		t.Helper()
		if open, refused, evicted := ln.Stats(); open != wantOpen || refused != wantRefused || evicted != wantEvicted {
			t.Fatalf("Stats() = %d open, %d refused, %d evicted; want %d, %d, %d", open, refused, evicted, wantOpen, wantRefused, wantEvicted)
		}
	}

	a1 := dial("127.0.0.1")
	s1 := next("a1")
	dial("127.0.0.1")
	s2 := next("a2")
	if PeerOf(s1) != "ip:127.0.0.1" {
		t.Fatalf("PeerOf(accepted) = %q", PeerOf(s1))
	}
	closedByServer(dial("127.0.0.1"), "a third connection of a peer with a share of 2 and none idle")
	stats(2, 1, 0)

	ln.ConnState(s1, http.StateIdle)
	closedByServer(dial("127.0.0.1"), "a third connection of a peer whose idle one is within its grace")
	clock.Add(1)
	dial("127.0.0.1")
	s4 := next("a third connection of a peer with one idle past the grace")
	closedByServer(a1, "the peer's idle connection")
	stats(2, 2, 1)

	b1 := dial("127.0.0.2")
	sb1 := next("another peer's first")
	// Full (a2, a4, b1). Peer .2 holds its fair share (3 over 2 peers: 1)
	// and nothing is idle: closed at once.
	closedByServer(dial("127.0.0.2"), "a peer at its fair share in a full listener")
	stats(3, 3, 1)

	// A newcomer (fair share 1, holds 0) with nothing idle waits.
	dial("127.0.0.3")
	select {
	case <-accepted:
		t.Fatal("a fourth connection accepted by a listener of 3")
	case <-time.After(200 * time.Millisecond):
	}
	s2.Close()
	next("the newcomer that waited")
	stats(3, 3, 1)

	// Full (a4, b1, c1). A newcomer takes the place of the heaviest peer's
	// idle connection (all hold 1: the one idle the longest), within the
	// grace.
	ln.ConnState(sb1, http.StateIdle)
	clock.Add(1)
	ln.ConnState(s4, http.StateIdle)
	dial("127.0.0.4")
	next("a newcomer in place of an idle connection")
	closedByServer(b1, "the idle connection that made room")
	stats(3, 3, 2)

	ln.Close()
	select {
	case err := <-acceptErr:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept still running after Close")
	}
}
