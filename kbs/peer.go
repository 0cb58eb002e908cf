package kbs

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
)

// Peers: who sent a request, for the per-peer budgets (ratelimit.go) and
// kbsd's per-peer connection limits. A peer is named by a string:
//
//	unix:UID:PID   a process on the unix socket, from its peer credentials
//	               (SO_PEERCRED): every process is a peer of its own,
//	               since all of them run as the socket's owner anyway
//	ip:ADDR        a TCP client by its source address; IPv6 clients by
//	               their /64, which one host usually holds whole
//	unknown        a connection whose peer cannot be told
//
// Behind a proxy that terminates connections, every client is the proxy.

// PeerOf returns the peer of an accepted connection. A connection type
// that knows its peer (it has a Peer() string method, as kbsd's limited
// listener's connections do) is asked; wrappers with NetConn (TLS) are
// looked through.
func PeerOf(c net.Conn) string {
	for {
		switch cc := c.(type) {
		case interface{ Peer() string }:
			return cc.Peer()
		case *net.UnixConn:
			return unixPeer(cc)
		case interface{ NetConn() net.Conn }:
			c = cc.NetConn()
			continue
		}
		return addrPeer(c.RemoteAddr())
	}
}

// unixPeer names the process at the other end of a unix socket.
func unixPeer(c *net.UnixConn) string {
	raw, err := c.SyscallConn()
	if err != nil {
		return "unknown"
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return "unknown"
	}
	return fmt.Sprintf("unix:%d:%d", cred.Uid, cred.Pid)
}

// addrPeer names a TCP client by its address (an IPv6 one by its /64).
func addrPeer(a net.Addr) string {
	if a == nil {
		return "unknown"
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return "unknown"
	}
	ip := ap.Addr().Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return "ip:" + p.String()
	}
	return "ip:" + ip.String()
}

type peerKey struct{}

// ConnContext is an http.Server.ConnContext: it records the connection's
// peer (PeerOf) in the context of its requests, where the broker's
// budgets find it.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, peerKey{}, PeerOf(c))
}

// peerOf returns the peer of r: what ConnContext recorded, else its remote
// address (a server without ConnContext, such as httptest).
func peerOf(r *http.Request) string {
	if p, ok := r.Context().Value(peerKey{}).(string); ok {
		return p
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return "unknown"
	}
	return addrPeer(net.TCPAddrFromAddrPort(ap))
}
