package kbs

import (
	"math"
	"sync"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
)

// Admission: the requests that cost the broker work before anyone is
// authenticated each draw on a budget of their own, a token bucket for
// the whole broker and a smaller one for each peer (peer.go):
//
//	attestation  GET /v1/attestation: fresh evidence from the TEE
//	challenge    POST /v1/release/challenge (and /v1/handover/challenge):
//	             the releases' budget, apart from the attestations', so
//	             that a flood of attestations never stops releases
//	manifest     PUT /v1/manifest: up to ~33 signature checks, and a body
//	             of up to 256 KiB; also at most maxManifestInFlight at
//	             once; a recovering broker's POST /v1/recovery/share
//	             (an HPKE open) draws on it too
//
// A peer may use at most Config.PeerShare of a budget, so one client that
// floods cannot spend what every other client needs (several peers
// together still can: a client that opens many processes on the unix
// socket, or holds many addresses). A request beyond a budget is refused
// before its body is read, with 429 (503 for the in-flight cap) and a
// Retry-After header saying when the bucket holds a token again:
// kbs/client waits that long and retries. A refused request has done
// nothing.

// budgets are the broker's admission budgets.
type budgets struct {
	attestation, challenge, manifest *budget
}

// budgetClass names one of the budgets.
type budgetClass int

const (
	budgetAttestation budgetClass = iota
	budgetChallenge
	budgetManifest
)

func (bs *budgets) of(c budgetClass) *budget {
	switch c {
	case budgetAttestation:
		return bs.attestation
	case budgetChallenge:
		return bs.challenge
	}
	return bs.manifest
}

func newBudgets(cfg Config) budgets {
	return budgets{
		attestation: newBudget("attestation", cfg.AttestationRate, cfg.AttestationBurst, cfg.PeerShare, 0, cfg.Now),
		challenge:   newBudget("challenge", cfg.ChallengeRate, cfg.ChallengeBurst, cfg.PeerShare, 0, cfg.Now),
		manifest:    newBudget("manifest update", cfg.ManifestRate, cfg.ManifestBurst, cfg.PeerShare, maxManifestInFlight, cfg.Now),
	}
}

// budget is one class of admission.
type budget struct {
	name      string
	global    *rateLimiter
	peerRate  float64
	peerBurst float64
	now       func() time.Time
	// inflight caps the requests of this class in progress; nil: no cap.
	inflight chan struct{}

	mu    sync.Mutex
	peers map[string]*rateLimiter
}

// maxPeerBuckets bounds the per-peer buckets of a budget: beyond it, idle
// buckets (full ones) are dropped, and if none is idle the peers without
// a bucket share one.
const maxPeerBuckets = 4096

// overflowPeer is the bucket the peers beyond maxPeerBuckets share.
const overflowPeer = "overflow"

// maxManifestInFlight is how many PUT /v1/manifest requests may be in
// progress (reading the body, checking signatures, logging) at once.
const maxManifestInFlight = 4

func newBudget(name string, rate float64, burst int, share float64, inflight int, now func() time.Time) *budget {
	b := &budget{
		name:      name,
		global:    newRateLimiter(rate, burst, now),
		peerRate:  rate * share,
		peerBurst: math.Max(1, math.Floor(float64(burst)*share)),
		now:       now,
		peers:     map[string]*rateLimiter{},
	}
	if inflight > 0 {
		b.inflight = make(chan struct{}, inflight)
	}
	return b
}

// admit takes a token from peer's bucket and the global one, and a place
// in flight. It returns the function that gives the place back, or an
// error that carries when to retry.
func (b *budget) admit(peer string) (done func(), err error) {
	done = func() {}
	if b.inflight != nil {
		select {
		case b.inflight <- struct{}{}:
			var once sync.Once
			done = func() { once.Do(func() { <-b.inflight }) }
		default:
			return nil, throttle(api.CodeUnavailable, time.Second, "too many %s requests in progress; retry in 1s", b.name)
		}
	}
	pl := b.peerBucket(peer)
	if ok, wait := pl.take(); !ok {
		done()
		return nil, throttle(api.CodeRateLimited, wait, "too many %s requests from this client; retry in %v", b.name, roundUp(wait))
	}
	if ok, wait := b.global.take(); !ok {
		pl.giveBack()
		done()
		return nil, throttle(api.CodeRateLimited, wait, "too many %s requests; retry in %v", b.name, roundUp(wait))
	}
	return done, nil
}

// peerBucket returns peer's bucket, making one.
func (b *budget) peerBucket(peer string) *rateLimiter {
	b.mu.Lock()
	defer b.mu.Unlock()
	if l := b.peers[peer]; l != nil {
		return l
	}
	if len(b.peers) >= maxPeerBuckets {
		for p, l := range b.peers {
			if p != overflowPeer && l.idle() {
				delete(b.peers, p)
			}
		}
		if len(b.peers) >= maxPeerBuckets {
			peer = overflowPeer
			if l := b.peers[peer]; l != nil {
				return l
			}
		}
	}
	l := newRateLimiter(b.peerRate, int(b.peerBurst), b.now)
	b.peers[peer] = l
	return l
}

// throttleError is a refusal by admission control: nothing was done, and
// the client may retry after After (the Retry-After header).
type throttleError struct {
	err   *api.Error
	after time.Duration
}

func (e *throttleError) Error() string { return e.err.Error() }

func throttle(code string, after time.Duration, format string, args ...any) error {
	return &throttleError{err: api.Errorf(code, format, args...), after: after}
}

// retryAfterSeconds is the value of a Retry-After header for d: whole
// seconds, at least 1.
func retryAfterSeconds(d time.Duration) int64 {
	return max(1, int64(math.Ceil(d.Seconds())))
}

func roundUp(d time.Duration) time.Duration {
	return time.Duration(retryAfterSeconds(d)) * time.Second
}

// rateLimiter is a token bucket.
type rateLimiter struct {
	mu     sync.Mutex
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	last   time.Time
	now    func() time.Time
}

func newRateLimiter(rate float64, burst int, now func() time.Time) *rateLimiter {
	return &rateLimiter{rate: rate, burst: float64(burst), tokens: float64(burst), last: now(), now: now}
}

// refill adds the tokens earned since the last call. l.mu is held.
func (l *rateLimiter) refill() {
	now := l.now()
	if el := now.Sub(l.last).Seconds(); el > 0 {
		l.tokens = math.Min(l.burst, l.tokens+el*l.rate)
	}
	l.last = now
}

// take takes a token if one is available; if not, it returns how long
// until one is.
func (l *rateLimiter) take() (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refill()
	if l.tokens < 1 {
		if l.rate <= 0 {
			return false, time.Hour
		}
		return false, time.Duration((1 - l.tokens) / l.rate * float64(time.Second))
	}
	l.tokens--
	return true, 0
}

// giveBack returns a token taken by take.
func (l *rateLimiter) giveBack() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tokens = math.Min(l.burst, l.tokens+1)
}

// idle reports whether the bucket is full: its peer has not been seen for
// a while, and dropping it loses nothing.
func (l *rateLimiter) idle() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refill()
	return l.tokens >= l.burst
}
