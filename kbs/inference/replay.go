package inference

import (
	"container/heap"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
)

// Errors of ReplayCache, which the worker maps to answers.
var (
	// ErrStale: the request's time is outside the window.
	ErrStale = errors.New("request sealed outside the accepted time window")
	// ErrReplayed: the request id was seen before.
	ErrReplayed = errors.New("request id seen before: a replay")
	// ErrCacheFull: the cache holds its capacity of unexpired ids.
	ErrCacheFull = errors.New("too many recent requests to remember: retry shortly")
)

// A ReplayCache remembers the ids of the requests a worker accepted, for
// as long as their sealing time is inside the window, and refuses an id it
// holds. Memory is bounded: a request is accepted only if its time is
// within Window of now (in either direction, for clock skew), so an id
// can be forgotten once its time is more than Window in the past; and at
// most Capacity unexpired ids are held — when full, new requests are
// refused (ErrCacheFull) rather than old ids forgotten early, which would
// let a replay through. Capacity / (2 × Window) is thus the sustained
// request rate a worker can take. It is safe for concurrent use.
type ReplayCache struct {
	window   time.Duration
	capacity int

	mu   sync.Mutex
	seen map[[api.RequestIDSize]byte]struct{}
	exp  expiryHeap
}

// DefaultWindow and DefaultCapacity are NewReplayCache's defaults: five
// minutes either way, and 1<<18 ids (about 30 MiB; 437 requests per
// second sustained).
const (
	DefaultWindow   = 5 * time.Minute
	DefaultCapacity = 1 << 18
)

// NewReplayCache returns a cache for requests within window of now, with
// room for capacity ids (zero values: the defaults).
func NewReplayCache(window time.Duration, capacity int) *ReplayCache {
	if window <= 0 {
		window = DefaultWindow
	}
	if capacity <= 0 {
		capacity = DefaultCapacity
	}
	return &ReplayCache{window: window, capacity: capacity, seen: map[[api.RequestIDSize]byte]struct{}{}}
}

// Window returns the accepted distance between a request's time and now.
func (c *ReplayCache) Window() time.Duration { return c.window }

// CheckTime reports ErrStale unless t (Unix seconds) is within the window
// of now. It remembers nothing: call it before the expensive work, and Add
// after the request authenticated.
func (c *ReplayCache) CheckTime(t int64, now time.Time) error {
	d := now.Sub(time.Unix(t, 0))
	if d > c.window || d < -c.window {
		return fmt.Errorf("%w: sealed at %s, now %s (window %s)", ErrStale, time.Unix(t, 0).UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), c.window)
	}
	return nil
}

// Add records id, sealed at t, as accepted: ErrStale if t is outside the
// window, ErrReplayed if id is held, ErrCacheFull if there is no room.
// Only requests that authenticated may be added, so that nobody without
// the key can fill the cache.
func (c *ReplayCache) Add(id [api.RequestIDSize]byte, t int64, now time.Time) error {
	if err := c.CheckTime(t, now); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// Forget ids whose time is now outside the window: a replay of them
	// is refused by CheckTime.
	for len(c.exp) > 0 && now.Sub(time.Unix(c.exp[0].t, 0)) > c.window {
		delete(c.seen, c.exp[0].id)
		heap.Pop(&c.exp)
	}
	if _, ok := c.seen[id]; ok {
		return ErrReplayed
	}
	if len(c.seen) >= c.capacity {
		return ErrCacheFull
	}
	c.seen[id] = struct{}{}
	heap.Push(&c.exp, expiry{t: t, id: id})
	return nil
}

// Len returns the number of ids held.
func (c *ReplayCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

type expiry struct {
	t  int64
	id [api.RequestIDSize]byte
}

// expiryHeap is a min-heap of ids by time.
type expiryHeap []expiry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].t < h[j].t }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
