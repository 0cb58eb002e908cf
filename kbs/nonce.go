package kbs

import (
	"crypto/rand"
	"sync"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
)

// nonceTable holds the pending release challenges: single-use nonces that
// expire after ttl. It holds at most max nonces; when it is full and no
// nonce has expired, new challenges are refused (the caller answers 429),
// so a flood of challenges costs bounded memory.
type nonceTable struct {
	mu      sync.Mutex
	max     int
	ttl     time.Duration
	now     func() time.Time
	pending map[[api.NonceSize]byte]time.Time // nonce -> expiry
	// order lists nonces in issue order (expiry order, as ttl is fixed),
	// so expired ones are swept from the front.
	order [][api.NonceSize]byte
}

func newNonceTable(max int, ttl time.Duration, now func() time.Time) *nonceTable {
	return &nonceTable{max: max, ttl: ttl, now: now, pending: make(map[[api.NonceSize]byte]time.Time)}
}

// issue returns a fresh nonce and its expiry, or ok = false when the table
// is full.
func (t *nonceTable) issue() (nonce [api.NonceSize]byte, expires time.Time, ok bool) {
	if _, err := rand.Read(nonce[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	t.sweep(now)
	if len(t.pending) >= t.max {
		return nonce, time.Time{}, false
	}
	expires = now.Add(t.ttl)
	t.pending[nonce] = expires
	t.order = append(t.order, nonce)
	return nonce, expires, true
}

// consume removes nonce and reports whether it was pending and unexpired.
// A nonce is consumed by its first use whatever the outcome.
func (t *nonceTable) consume(nonce []byte) bool {
	if len(nonce) != api.NonceSize {
		return false
	}
	var k [api.NonceSize]byte
	copy(k[:], nonce)
	t.mu.Lock()
	defer t.mu.Unlock()
	exp, ok := t.pending[k]
	if !ok {
		return false
	}
	delete(t.pending, k)
	return t.now().Before(exp)
}

// sweep drops expired and already-consumed nonces from the front of order.
func (t *nonceTable) sweep(now time.Time) {
	i := 0
	for ; i < len(t.order); i++ {
		exp, ok := t.pending[t.order[i]]
		if ok && now.Before(exp) {
			break
		}
		delete(t.pending, t.order[i])
	}
	if i > 0 {
		t.order = append(t.order[:0:0], t.order[i:]...)
	}
	// Consumed nonces leave holes in order; compact when it grows large.
	if len(t.order) > 2*len(t.pending)+1024 {
		live := t.order[:0:0]
		for _, n := range t.order {
			if _, ok := t.pending[n]; ok {
				live = append(live, n)
			}
		}
		t.order = live
	}
}

func (t *nonceTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pending)
}
