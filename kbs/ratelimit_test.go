package kbs

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
)

// unlimited returns budgets nothing exhausts.
func unlimited() budgets {
	return newBudgets(Config{AttestationRate: 1e9, AttestationBurst: 1 << 30, ChallengeRate: 1e9, ChallengeBurst: 1 << 30,
		ManifestRate: 1e9, ManifestBurst: 1 << 30, PeerShare: 1, Now: time.Now})
}

// TestBudgetPerPeer: a peer gets its share of a budget and no more, the
// others theirs; a refusal says when to retry, and a token a peer took
// from its own bucket is given back when the global one refuses.
func TestBudgetPerPeer(t *testing.T) {
	var now time.Time
	clock := func() time.Time { return now }
	b := newBudget("test", 8, 8, 0.25, 0, clock) // a peer: 2/s, burst 2
	for i := range 2 {
		if _, err := b.admit("a"); err != nil {
			t.Fatalf("peer a, request %d: %v", i, err)
		}
	}
	_, err := b.admit("a")
	var te *throttleError
	if !errors.As(err, &te) || te.err.Code != api.CodeRateLimited || te.after != 500*time.Millisecond {
		t.Fatalf("peer a beyond its share: %v, want rate_limited after 500ms", err)
	}
	for _, p := range []string{"b", "c", "d"} {
		for range 2 {
			if _, err := b.admit(p); err != nil {
				t.Fatalf("peer %s: %v", p, err)
			}
		}
	}
	// The global bucket is empty: peer e is refused, and keeps its tokens.
	if _, err := b.admit("e"); !errors.As(err, &te) {
		t.Fatalf("peer e with the global budget spent: %v", err)
	}
	if l := b.peers["e"]; l.tokens != 2 {
		t.Errorf("peer e holds %v tokens after a refusal by the global budget, want 2", l.tokens)
	}
	now = now.Add(time.Second)
	if _, err := b.admit("e"); err != nil {
		t.Errorf("peer e a second later: %v", err)
	}
}

// TestBudgetInFlight: at most the in-flight cap at once, refused with 503.
func TestBudgetInFlight(t *testing.T) {
	b := newBudget("test", 1000, 1000, 1, 2, time.Now)
	d1, err1 := b.admit("a")
	_, err2 := b.admit("b")
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	_, err := b.admit("c")
	var te *throttleError
	if !errors.As(err, &te) || te.err.Code != api.CodeUnavailable || te.after != time.Second {
		t.Fatalf("third in flight: %v, want unavailable after 1s", err)
	}
	d1()
	d1() // no effect
	if _, err := b.admit("c"); err != nil {
		t.Fatalf("after one finished: %v", err)
	}
	if _, err := b.admit("d"); err == nil {
		t.Fatal("a second done freed two places")
	}
}

// TestBudgetPeerTable: the per-peer buckets are bounded; idle ones make
// room, and when none is idle the newcomers share one.
func TestBudgetPeerTable(t *testing.T) {
	var now time.Time
	b := newBudget("test", 1e6, 1e6, 1e-5, 0, func() time.Time { return now }) // a peer: 10/s, burst 10
	for i := range maxPeerBuckets {
		if _, err := b.admit(fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	b.admit("newcomer")
	if b.peers[overflowPeer] == nil || len(b.peers) != maxPeerBuckets+1 {
		t.Fatalf("%d buckets, overflow %v: want the newcomer in the shared bucket", len(b.peers), b.peers[overflowPeer] != nil)
	}
	now = now.Add(time.Minute) // every bucket refills: idle
	b.admit("later")
	if b.peers["later"] == nil || len(b.peers) > 2 {
		t.Fatalf("%d buckets after the idle ones could go", len(b.peers))
	}
}

// TestAdmissionHTTP: through the handler, with peers as kbsd's
// ConnContext records them: one peer flooding attestations is refused
// with 429 and Retry-After, while another peer's attestation and the
// flooder's own challenges pass; a refused request changes nothing.
func TestAdmissionHTTP(t *testing.T) {
	e := newEnv(t)
	e.b.budgets = newBudgets(Config{AttestationRate: 8, AttestationBurst: 8, ChallengeRate: 8, ChallengeBurst: 8,
		ManifestRate: 4, ManifestBurst: 4, PeerShare: 0.5, Now: e.clock.Now})
	h := e.b.Handler()
	nonce := hex.EncodeToString(bytes.Repeat([]byte{1}, 32))
	serve := func(peer, method, path string, body []byte) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, path, bytes.NewReader(body))
		r = r.WithContext(context.WithValue(r.Context(), peerKey{}, peer))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	for i := range 4 {
		if w := serve("unix:0:100", "GET", api.PathAttestation+"?nonce="+nonce, nil); w.Code != 200 {
			t.Fatalf("attestation %d of the flooder: %d %s", i, w.Code, w.Body)
		}
	}
	w := serve("unix:0:100", "GET", api.PathAttestation+"?nonce="+nonce, nil)
	ra, err := strconv.Atoi(w.Header().Get("Retry-After"))
	if w.Code != http.StatusTooManyRequests || err != nil || ra < 1 {
		t.Fatalf("the flooder's 5th attestation: %d, Retry-After %q: want 429 with Retry-After", w.Code, w.Header().Get("Retry-After"))
	}
	if w := serve("unix:0:200", "GET", api.PathAttestation+"?nonce="+nonce, nil); w.Code != 200 {
		t.Fatalf("another peer's attestation: %d %s", w.Code, w.Body)
	}
	pending := e.b.nonces.len()
	if w := serve("unix:0:100", "POST", api.PathChallenge, nil); w.Code != 200 {
		t.Fatalf("the flooder's challenge: %d %s", w.Code, w.Body)
	}
	for range 3 {
		serve("unix:0:100", "POST", api.PathChallenge, nil)
	}
	if got := e.b.nonces.len(); got != pending+4 {
		t.Fatalf("%d challenges pending, want %d: refused challenges issued nonces", got, pending+4)
	}
	// Manifest updates: refused before the body is read.
	size := e.treeSize()
	for range 3 {
		serve("ip:192.0.2.1", "PUT", api.PathManifest, []byte(`{"body":"eA==","signatures":[]}`))
	}
	if w := serve("ip:192.0.2.1", "PUT", api.PathManifest, bytes.Repeat([]byte("x"), 1<<20)); w.Code != http.StatusTooManyRequests {
		t.Fatalf("a manifest update beyond the share of 2 of its peer: %d %s", w.Code, w.Body)
	}
	if e.treeSize() != size {
		t.Fatal("refused requests logged something")
	}
}
