package kbs

import (
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Connection limits: every connection costs kbsd a file descriptor and
// some memory until it closes, and a process that runs out of file
// descriptors can accept nothing, on any listener, and open no file.
// LimitListener bounds the connections of one listener, in all and per
// peer (PeerOf), so that:
//
//   - kbsd's descriptors are shared out ahead of time (kbsd gives the TCP
//     listener, the unix socket and its own files separate shares of
//     RLIMIT_NOFILE): a flood of TCP connections leaves the unix socket and
//     the database their headroom;
//   - one peer cannot hold a listener's every place: beyond its share, a
//     new connection of that peer closes its longest idle one, or is
//     closed at once when it has none idle;
//   - when a listener is full, a peer that holds less than its fair share
//     (Max over the peers present) gets in at once: its connection closes
//     an idle connection of the peer that holds the most. Others get in
//     only in place of a connection idle for ConnLimits.IdleGrace (the one
//     idle the longest), and are closed at once otherwise; a peer below
//     its fair share with nothing to close waits. Idle are the keep-alive
//     connections between requests and the new ones that have not begun a
//     request (a TLS handshake, or silence). The connections in a request
//     end on their own, within the server's timeouts.
//
// Accept never waits for a place while connections queue behind: the
// kernel's queue of connections keeps moving, so a legitimate client's
// connection is judged as soon as it arrives, not after a flood's.
//
// The server must report connection states to ConnState (http.Server's
// ConnState field), which is how the listener knows which connections are
// idle.

// ConnLimits bound one listener's connections.
type ConnLimits struct {
	// Max is the most connections open at once. Required.
	Max int
	// PerPeer is the most connections one peer may hold open. Optional;
	// default Max.
	PerPeer int
	// IdleGrace is how long a connection must have been idle before a peer
	// at or above its fair share may take its place: a client between two
	// requests keeps its connection (closing it under a client that is
	// sending its next request fails that request), and connections that
	// go idle all the time cannot push the others out faster than that.
	// Optional; default 1s.
	IdleGrace time.Duration
}

// LimitedListener is a listener whose connections are bounded by
// ConnLimits (see LimitListener).
type LimitedListener struct {
	net.Listener
	lim    ConnLimits
	now    func() time.Time // time.Now; tests set it
	closed chan struct{}
	once   sync.Once
	// changed wakes a waiting Accept when a connection closes or turns
	// idle.
	changed chan struct{}

	refused atomic.Uint64 // connections closed at once
	evicted atomic.Uint64 // idle connections closed to make room

	mu    sync.Mutex
	open  int
	peers map[string]int
	idle  map[*limitedConn]time.Time // new or between requests, since when
}

// LimitListener returns ln with its connections bounded by lim.
func LimitListener(ln net.Listener, lim ConnLimits) *LimitedListener {
	lim.Max = max(1, lim.Max)
	if lim.PerPeer <= 0 || lim.PerPeer > lim.Max {
		lim.PerPeer = lim.Max
	}
	if lim.IdleGrace <= 0 {
		lim.IdleGrace = time.Second
	}
	return &LimitedListener{
		Listener: ln,
		lim:      lim,
		now:      time.Now,
		closed:   make(chan struct{}),
		changed:  make(chan struct{}, 1),
		peers:    map[string]int{},
		idle:     map[*limitedConn]time.Time{},
	}
}

// ReportListener adds l, named name ("tcp", "unix"), to the broker's
// metrics: kbs_connections_open, kbs_connections_refused_total and
// kbs_connections_evicted_total, labelled listener=name.
func (b *Broker) ReportListener(name string, l *LimitedListener) {
	b.listenersMu.Lock()
	defer b.listenersMu.Unlock()
	if b.listeners == nil {
		b.listeners = map[string]*LimitedListener{}
	}
	b.listeners[name] = l
}

// writeListenerMetrics writes the metrics of the reported listeners.
func (b *Broker) writeListenerMetrics(w io.Writer) {
	b.listenersMu.Lock()
	defer b.listenersMu.Unlock()
	if len(b.listeners) == 0 {
		return
	}
	names := slices.Sorted(maps.Keys(b.listeners))
	for _, m := range []struct{ name, kind, help string }{
		{"kbs_connections_open", "gauge", "Connections open, by listener."},
		{"kbs_connections_refused_total", "counter", "Connections closed at once: their client held its share, or the listener was full."},
		{"kbs_connections_evicted_total", "counter", "Idle connections closed to make room for a new one."},
	} {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", m.name, m.help, m.name, m.kind)
		for _, n := range names {
			open, refused, evicted := b.listeners[n].Stats()
			v := map[string]uint64{"kbs_connections_open": uint64(open), "kbs_connections_refused_total": refused, "kbs_connections_evicted_total": evicted}[m.name]
			fmt.Fprintf(w, "%s{listener=%q} %d\n", m.name, n, v)
		}
	}
}

// Limits returns the listener's limits (with defaults applied).
func (l *LimitedListener) Limits() ConnLimits { return l.lim }

// Stats returns how many connections are open, how many were closed at
// once (their peer held its share, or the listener was full), and how
// many idle ones were closed to make room.
func (l *LimitedListener) Stats() (open int, refused, evicted uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open, l.refused.Load(), l.evicted.Load()
}

// Accept returns the next connection that the limits admit.
func (l *LimitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		lc, err := l.admit(c, PeerOf(c))
		if err != nil {
			c.Close()
			return nil, err
		}
		if lc != nil {
			return lc, nil
		}
		l.refused.Add(1)
		c.Close()
	}
}

// admit admits c, closing an idle connection to make room if it must, or
// waits; nil if c is refused.
func (l *LimitedListener) admit(c net.Conn, peer string) (*limitedConn, error) {
	for {
		l.mu.Lock()
		held := l.peers[peer]
		var (
			victim *limitedConn
			wait   time.Duration
			light  bool
		)
		switch {
		case held >= l.lim.PerPeer:
			victim, _ = l.oldestIdle(func(v *limitedConn) bool { return v.peer == peer }, true)
			if victim == nil {
				l.mu.Unlock()
				return nil, nil
			}
		case l.open < l.lim.Max:
			l.open++
			l.peers[peer]++
			l.mu.Unlock()
			return &limitedConn{Conn: c, l: l, peer: peer}, nil
		default:
			present := len(l.peers)
			if held == 0 {
				present++
			}
			light = held < max(1, l.lim.Max/present)
			if light {
				victim = l.heaviestIdle()
			}
			if victim == nil {
				victim, wait = l.oldestIdle(nil, true)
			}
		}
		l.mu.Unlock()
		if victim != nil {
			l.evicted.Add(1)
			victim.Close() // gives its place back
			continue
		}
		if !light {
			return nil, nil
		}
		// Below its fair share with nothing idle: wait for a place.
		if !l.await(wait) {
			return nil, net.ErrClosed
		}
	}
}

// await waits until a connection closes or turns idle, or wait (if not
// 0) passes; false if the listener closed.
func (l *LimitedListener) await(wait time.Duration) bool {
	var tc <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		tc = t.C
	}
	select {
	case <-l.changed:
	case <-tc:
	case <-l.closed:
		return false
	}
	return true
}

// oldestIdle returns the connection idle the longest among those of which
// (nil: all), and no longer counts it idle. With grace, only one idle for
// IdleGrace qualifies; if one would later, it returns how long until then.
// l.mu is held.
func (l *LimitedListener) oldestIdle(which func(*limitedConn) bool, grace bool) (*limitedConn, time.Duration) {
	var (
		victim *limitedConn
		since  time.Time
	)
	for c, t := range l.idle {
		if (which == nil || which(c)) && (victim == nil || t.Before(since)) {
			victim, since = c, t
		}
	}
	if victim == nil {
		return nil, 0
	}
	if grace {
		if wait := l.lim.IdleGrace - l.now().Sub(since); wait > 0 {
			return nil, wait
		}
	}
	delete(l.idle, victim)
	return victim, 0
}

// heaviestIdle returns the idle connection, the longest idle, of the peer
// that holds the most connections among those with one idle, and no
// longer counts it idle; nil if none is idle. l.mu is held.
func (l *LimitedListener) heaviestIdle() *limitedConn {
	most := 0
	for c := range l.idle {
		most = max(most, l.peers[c.peer])
	}
	if most == 0 {
		return nil
	}
	v, _ := l.oldestIdle(func(c *limitedConn) bool { return l.peers[c.peer] == most }, false)
	return v
}

func (l *LimitedListener) notify() {
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

// ConnState is an http.Server.ConnState: it tells the listener which of
// its connections are idle (new, or between requests).
func (l *LimitedListener) ConnState(c net.Conn, s http.ConnState) {
	for {
		if lc, ok := c.(*limitedConn); ok {
			if lc.l != l {
				return
			}
			l.mu.Lock()
			if (s == http.StateIdle || s == http.StateNew) && !lc.isClosed {
				l.idle[lc] = l.now()
				l.notify()
			} else {
				delete(l.idle, lc)
			}
			l.mu.Unlock()
			return
		}
		nc, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return
		}
		c = nc.NetConn()
	}
}

// Close closes the listener; a waiting Accept returns.
func (l *LimitedListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// limitedConn is a connection that holds a place in its listener.
type limitedConn struct {
	net.Conn
	l        *LimitedListener
	peer     string
	once     sync.Once
	isClosed bool // under l.mu
}

// Peer is the connection's peer (PeerOf).
func (c *limitedConn) Peer() string { return c.peer }

// Close closes the connection and gives its place back.
func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		l := c.l
		l.mu.Lock()
		c.isClosed = true
		delete(l.idle, c)
		if l.peers[c.peer]--; l.peers[c.peer] <= 0 {
			delete(l.peers, c.peer)
		}
		l.open--
		l.notify()
		l.mu.Unlock()
	})
	return err
}
