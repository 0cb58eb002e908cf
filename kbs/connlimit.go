package kbs

import (
	"errors"
	"net"
	"net/http"
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
//   - idle connections give way: when a listener is full, a new connection
//     closes the one idle the longest (of any peer), once it has been idle
//     for ConnLimits.IdleGrace; only when none is does Accept wait. Idle
//     are the keep-alive connections between requests and the new ones
//     that have not begun a request (a TLS handshake, or silence). The
//     connections in a request end on their own, within the server's
//     timeouts.
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
	// IdleGrace is how long a connection must have been idle before it may
	// be closed to make room: a client between two requests keeps its
	// connection (closing it under a client that is sending its next
	// request fails that request), and connections that go idle all the
	// time cannot push the others out faster than that. Optional; default
	// 1s.
	IdleGrace time.Duration
}

// LimitedListener is a listener whose connections are bounded by
// ConnLimits (see LimitListener).
type LimitedListener struct {
	net.Listener
	lim    ConnLimits
	slots  chan struct{} // one per open connection
	closed chan struct{}
	once   sync.Once
	// idled wakes a waiting Accept when a connection turns idle.
	idled chan struct{}

	refused atomic.Uint64 // connections closed at once: their peer was full
	evicted atomic.Uint64 // idle connections closed to make room

	mu    sync.Mutex
	peers map[string]int
	idle  map[*limitedConn]time.Time // connections between requests, since when
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
		slots:    make(chan struct{}, lim.Max),
		closed:   make(chan struct{}),
		idled:    make(chan struct{}, 1),
		peers:    map[string]int{},
		idle:     map[*limitedConn]time.Time{},
	}
}

// Limits returns the listener's limits (with defaults applied).
func (l *LimitedListener) Limits() ConnLimits { return l.lim }

// Stats returns how many connections are open, how many were closed at
// once because their peer held its share, and how many idle ones were
// closed to make room.
func (l *LimitedListener) Stats() (open int, refused, evicted uint64) {
	return len(l.slots), l.refused.Load(), l.evicted.Load()
}

// Accept waits for a place, then for a connection, and admits it within
// its peer's share.
func (l *LimitedListener) Accept() (net.Conn, error) {
	for {
		if err := l.takeSlot(); err != nil {
			return nil, err
		}
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.slots
			return nil, err
		}
		peer := PeerOf(c)
		if lc := l.admit(c, peer); lc != nil {
			return lc, nil
		}
		l.refused.Add(1)
		c.Close()
		<-l.slots
	}
}

// takeSlot takes a place for one connection: a free one, else that of
// the longest idle connection (closing it), else the first that frees up
// or has been idle for idleGrace.
func (l *LimitedListener) takeSlot() error {
	for {
		select {
		case l.slots <- struct{}{}:
			return nil
		default:
		}
		v, wait := l.oldestIdle("")
		if v != nil {
			l.evicted.Add(1)
			v.Close() // gives its place back
		}
		var (
			timer *time.Timer
			tc    <-chan time.Time
		)
		if wait > 0 {
			timer = time.NewTimer(wait)
			tc = timer.C
		}
		var err error
		select {
		case l.slots <- struct{}{}:
			err = nil
		case <-l.idled:
			err = errRetry
		case <-tc:
			err = errRetry
		case <-l.closed:
			err = net.ErrClosed
		}
		if timer != nil {
			timer.Stop()
		}
		if err != errRetry {
			return err
		}
	}
}

// admit counts c against its peer's share, closing the peer's longest idle
// connection if it is full; nil if the peer is full with none idle.
func (l *LimitedListener) admit(c net.Conn, peer string) *limitedConn {
	for range 2 {
		l.mu.Lock()
		if l.peers[peer] < l.lim.PerPeer {
			l.peers[peer]++
			l.mu.Unlock()
			return &limitedConn{Conn: c, l: l, peer: peer}
		}
		l.mu.Unlock()
		v, _ := l.oldestIdle(peer)
		if v == nil {
			return nil
		}
		l.evicted.Add(1)
		v.Close()
	}
	return nil
}

var errRetry = errors.New("retry")

// oldestIdle returns the connection idle the longest, of peer if peer is
// not "", if it has been idle for idleGrace, and no longer counts it idle.
// If it has not, it returns how long until it will have; if there is none,
// it returns nil, 0.
func (l *LimitedListener) oldestIdle(peer string) (*limitedConn, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var (
		victim *limitedConn
		since  time.Time
	)
	for c, t := range l.idle {
		if (peer == "" || c.peer == peer) && (victim == nil || t.Before(since)) {
			victim, since = c, t
		}
	}
	if victim == nil {
		return nil, 0
	}
	if wait := l.lim.IdleGrace - time.Since(since); wait > 0 {
		return nil, wait
	}
	delete(l.idle, victim)
	return victim, 0
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
				l.idle[lc] = time.Now()
				select {
				case l.idled <- struct{}{}:
				default:
				}
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
		l.mu.Unlock()
		<-l.slots
	})
	return err
}
