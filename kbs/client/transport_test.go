package client_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/internal/hostilebroker"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/client"
)

// TestRedirectsRefused: the client follows no redirect, to plain HTTP,
// another host or the same server; the target never sees a request.
func TestRedirectsRefused(t *testing.T) {
	target := hostilebroker.Serve(t, nil)
	s := hostilebroker.Serve(t, nil)
	for _, loc := range []string{"http://127.0.0.1:1/v1/manifest", "https://example.com/v1/manifest", "/v1/other"} {
		for _, code := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
			s.Override(api.PathManifest, hostilebroker.Redirect(loc, code))
			c, err := client.New(client.Config{Addr: s.Addr})
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Manifest(context.Background())
			var te *client.TransportError
			if !errors.As(err, &te) || !errors.Is(err, client.ErrRedirect) {
				t.Errorf("%d to %s: %v, want a TransportError wrapping ErrRedirect", code, loc, err)
			}
		}
	}
	if n := s.Hits("/v1/other") + target.Hits("/v1/manifest"); n != 0 {
		t.Errorf("a redirect target got %d requests", n)
	}
}

// TestRetryAfter: answers that say nothing was done and when to try again
// (429 or 503 with Retry-After) are retried, others are not.
func TestRetryAfter(t *testing.T) {
	s := hostilebroker.Serve(t, nil)
	var hits atomic.Int32
	throttled := func(fails int32, status int, retryAfter string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if hits.Add(1) <= fails {
				if retryAfter != "" {
					w.Header().Set("Retry-After", retryAfter)
				}
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(status)
				w.Write([]byte(`{"error":{"code":"rate_limited","message":"slow down"}}`))
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte(`{"nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","expires":"2030-01-01T00:00:00Z"}`))
		})
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		h        http.Handler
		cfg      client.Config
		ok       bool
		wantHits int32
	}{
		{"429 with Retry-After", throttled(2, http.StatusTooManyRequests, "0"), client.Config{}, true, 3},
		{"503 with Retry-After", throttled(1, http.StatusServiceUnavailable, "0"), client.Config{}, true, 2},
		{"429 without Retry-After", throttled(1, http.StatusTooManyRequests, ""), client.Config{}, false, 1},
		{"500 with Retry-After", throttled(1, http.StatusInternalServerError, "0"), client.Config{}, false, 1},
		{"more failures than retries", throttled(10, http.StatusTooManyRequests, "0"), client.Config{Retries: 2}, false, 3},
		{"retries disabled", throttled(1, http.StatusTooManyRequests, "0"), client.Config{Retries: -1}, false, 1},
		{"a wait beyond MaxRetryWait", throttled(1, http.StatusTooManyRequests, "120"), client.Config{}, false, 1},
		{"a malformed Retry-After", throttled(1, http.StatusTooManyRequests, "soon"), client.Config{}, false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hits.Store(0)
			s.Override(api.PathChallenge, tc.h)
			cfg := tc.cfg
			cfg.Addr = s.Addr
			c, err := client.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Challenge(ctx)
			if tc.ok != (err == nil) {
				t.Errorf("Challenge = %v, want success %v", err, tc.ok)
			}
			var ae *api.Error
			if err != nil && !errors.As(err, &ae) {
				t.Errorf("Challenge = %v, want the broker's last answer", err)
			}
			if n := hits.Load(); n != tc.wantHits {
				t.Errorf("%d requests, want %d", n, tc.wantHits)
			}
		})
	}
	// No retry waits past the context's deadline.
	s.Override(api.PathChallenge, throttled(10, http.StatusTooManyRequests, "5"))
	c, _ := client.New(client.Config{Addr: s.Addr})
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := c.Challenge(short); err == nil {
		t.Error("Challenge succeeded")
	}
	if time.Since(start) > 1500*time.Millisecond {
		t.Errorf("a retry waited %v past a deadline it could not meet", time.Since(start))
	}
}

// TestBoundedAnswers: endless answers end the request with an error
// after the size limit, error answers after 64 KiB.
func TestBoundedAnswers(t *testing.T) {
	s := hostilebroker.Serve(t, nil)
	c, err := client.New(client.Config{Addr: s.Addr})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s.Override(api.PathManifest, hostilebroker.Endless(http.StatusOK, "application/json", `{"body":"`))
	_, err = c.Manifest(ctx)
	var te *client.TransportError
	if !errors.As(err, &te) || !strings.Contains(err.Error(), "answer larger than") {
		t.Errorf("endless answer: %v, want a TransportError", err)
	}
	s.Override(api.PathManifest, hostilebroker.Endless(http.StatusBadRequest, "application/json", `{"error":{"code":"bad_request","message":"`))
	_, err = c.Manifest(ctx)
	var nb *client.NotBrokerError
	if !errors.As(err, &nb) || len(nb.Body) > 200 {
		t.Errorf("endless error answer: %v, want a NotBrokerError", err)
	}
	s.Override(api.PathManifest, hostilebroker.Slow("application/json", []byte(`{"body":"AAAA"}`), time.Second))
	slow, _ := client.New(client.Config{Addr: s.Addr, Timeout: 2 * time.Second})
	start := time.Now()
	if _, err := slow.Manifest(ctx); !errors.As(err, &te) {
		t.Errorf("slow answer: %v, want a TransportError", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("a slow answer took %v with a 2 s timeout", d)
	}
}
