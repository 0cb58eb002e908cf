package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/inference"
	"github.com/kbs-dev/kbs/kbs/inference/echo"
)

// fakeBroker is a hand-written Source: a key id with versions, the latest
// of which a release returns.
type fakeBroker struct {
	mu       sync.Mutex
	latest   uint64
	deleted  bool
	fail     error
	statuses atomic.Int32
	releases atomic.Int32
	gate     chan struct{} // when set, Release waits for it
}

func material(v uint64) []byte { return bytes.Repeat([]byte{byte(v)}, 32) }

func (f *fakeBroker) Status(ctx context.Context, id string) (uint64, bool, error) {
	f.statuses.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.latest, f.deleted, f.fail
}

func (f *fakeBroker) Release(ctx context.Context, id string) (*api.KeyFile, error) {
	f.releases.Add(1)
	if f.gate != nil {
		<-f.gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return &api.KeyFile{ID: id, Version: f.latest, Material: material(f.latest)}, nil
}

const id = "demo/prompt-key"

func keyErrCode(err error) string {
	var ke *KeyError
	if errors.As(err, &ke) {
		return ke.Code
	}
	return ""
}

func TestKeyringVersions(t *testing.T) {
	now := time.Unix(1767225600, 0)
	b := &fakeBroker{latest: 1}
	r, err := NewKeyring(KeyringConfig{IDs: []string{id}, Source: b, MaxVersions: 2, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Add(&api.KeyFile{ID: id, Version: 1, Material: material(1)}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if k, err := r.Get(ctx, id, 1); err != nil || !bytes.Equal(k.Material, material(1)) {
		t.Fatalf("Get v1 = %v, %v", k, err)
	}
	if _, err := r.Get(ctx, "demo/other", 1); keyErrCode(err) != inference.CodeKeyRefused {
		t.Fatalf("another id: %v", err)
	}
	// Version 2 does not exist yet: one status read, no release; asked
	// again soon after, the broker is not asked again.
	for range 3 {
		if _, err := r.Get(ctx, id, 2); keyErrCode(err) != inference.CodeKeyRefused || !strings.Contains(err.Error(), "no version 2") {
			t.Fatalf("v2 before upload: %v", err)
		}
	}
	if b.statuses.Load() != 1 || b.releases.Load() != 0 {
		t.Fatalf("%d status reads, %d releases", b.statuses.Load(), b.releases.Load())
	}
	// The client uploads version 2; once RetryAfter passed, a request for
	// it makes the keyring fetch it: concurrent requests share one release.
	b.mu.Lock()
	b.latest = 2
	b.mu.Unlock()
	now = now.Add(10 * time.Second)
	b.gate = make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			k, err := r.Get(ctx, id, 2)
			if err == nil && k.Version != 2 {
				err = errors.New("wrong version")
			}
			errs <- err
		})
	}
	time.Sleep(50 * time.Millisecond)
	close(b.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if b.releases.Load() != 1 {
		t.Fatalf("%d releases for 8 concurrent requests, want 1", b.releases.Load())
	}
	b.gate = nil
	// Version 1 is still served.
	if _, err := r.Get(ctx, id, 1); err != nil {
		t.Fatal(err)
	}
	// Version 3: MaxVersions 2 drops version 1.
	b.mu.Lock()
	b.latest = 3
	b.mu.Unlock()
	now = now.Add(10 * time.Second)
	if _, err := r.Get(ctx, id, 3); err != nil {
		t.Fatal(err)
	}
	if vs := r.Versions(id); len(vs) != 2 || vs[0] != 2 || vs[1] != 3 {
		t.Fatalf("versions %v, want [2 3]", vs)
	}
	// An old version the worker no longer holds cannot be fetched (the
	// broker releases the latest only): refused without asking.
	rel := b.releases.Load()
	if _, err := r.Get(ctx, id, 1); keyErrCode(err) != inference.CodeKeyRefused || b.releases.Load() != rel {
		t.Fatalf("v1 after it was dropped: %v", err)
	}
	// A broker that cannot be reached: key_unavailable.
	b.mu.Lock()
	b.latest, b.fail = 4, errors.New("connection refused")
	b.mu.Unlock()
	now = now.Add(10 * time.Second)
	if _, err := r.Get(ctx, id, 4); keyErrCode(err) != inference.CodeKeyUnavailable {
		t.Fatalf("broker down: %v", err)
	}
	// Deletion (from the log) forgets every version up to the one named,
	// and they are refused from then on.
	r.Forget(id, 3)
	if vs := r.Versions(id); len(vs) != 0 {
		t.Fatalf("versions after deletion %v", vs)
	}
	if _, err := r.Get(ctx, id, 3); keyErrCode(err) != inference.CodeKeyRefused || !strings.Contains(err.Error(), "deleted") {
		t.Fatalf("deleted version: %v", err)
	}
	if err := r.Add(&api.KeyFile{ID: id, Version: 2, Material: material(2)}); err == nil {
		t.Fatal("added a deleted version")
	}
	// The broker says deleted: forgotten too.
	b.mu.Lock()
	b.latest, b.deleted, b.fail = 4, true, nil
	b.mu.Unlock()
	now = now.Add(10 * time.Second)
	if _, err := r.Get(ctx, id, 4); keyErrCode(err) != inference.CodeKeyRefused {
		t.Fatalf("deleted at the broker: %v", err)
	}
	if _, err := r.Get(ctx, id, 4); !strings.Contains(err.Error(), "deleted") {
		t.Fatalf("v4 after the broker said deleted: %v", err)
	}
}

// testWorker returns a worker in front of the echo model, with key v1.
func testWorker(t testing.TB, capacity int) (*Worker, *api.KeyFile) {
	up := httptest.NewServer(&echo.Handler{})
	t.Cleanup(up.Close)
	r, _ := NewKeyring(KeyringConfig{IDs: []string{id}})
	k := &api.KeyFile{ID: id, Version: 1, Material: material(1)}
	r.Add(k)
	w, err := New(Config{Keys: r, Upstream: up.URL + "/v1", Replay: inference.NewReplayCache(time.Minute, capacity)})
	if err != nil {
		t.Fatal(err)
	}
	return w, k
}

// envelope seals body for w.
func envelope(t testing.TB, w *Worker, k *api.KeyFile, path, model string, stream bool, body string) []byte {
	h := &api.InferenceRequest{ID: api.NewRequestID(), Time: w.cfg.Now().Unix(), Worker: w.instance, Method: "POST", Path: path, Model: model, Stream: stream}
	if path == "/v1/models" {
		h.Method = "GET"
	}
	sealed, err := api.SealInferenceRequest(k, h, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(api.InferenceEnvelope{Model: model, Stream: stream, Sealed: sealed})
	return b
}

func serve(w *Worker, path string, body []byte) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	w.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body)))
	return rec
}

func TestWorkerRefusals(t *testing.T) {
	w, k := testWorker(t, 1000)
	good := envelope(t, w, k, "/v1/chat/completions", "kbs-echo", false, `{"model":"kbs-echo","messages":[{"role":"user","content":"hi"}]}`)
	var env api.InferenceEnvelope
	json.Unmarshal(good, &env)
	reenc := func(f func(e *api.InferenceEnvelope)) []byte {
		e := env
		e.Sealed = bytes.Clone(env.Sealed)
		f(&e)
		b, _ := json.Marshal(e)
		return b
	}
	otherKey := &api.KeyFile{ID: id, Version: 1, Material: material(9)}
	for _, tc := range []struct {
		name   string
		path   string
		body   []byte
		status int
		code   string
	}{
		{"not JSON", "/v1/chat/completions", []byte("hello"), 400, inference.CodeInvalidRequest},
		{"unknown field", "/v1/chat/completions", []byte(`{"model":"m","kbs_sealed":"AA==","x":1}`), 400, inference.CodeInvalidRequest},
		{"trailing data", "/v1/chat/completions", append(bytes.Clone(good), '{'), 400, inference.CodeInvalidRequest},
		{"no sealed request", "/v1/chat/completions", []byte(`{"model":"m"}`), 400, inference.CodeInvalidRequest},
		{"not a sealed request", "/v1/chat/completions", []byte(`{"model":"m","kbs_sealed":"AAAA"}`), 400, inference.CodeInvalidRequest},
		{"other path", "/v1/completions", good, 400, inference.CodeInvalidRequest},
		{"unknown path", "/v1/files", good, 404, inference.CodeNotFound},
		{"clear model differs", "/v1/chat/completions", reenc(func(e *api.InferenceEnvelope) { e.Model = "gpt-4" }), 400, inference.CodeInvalidRequest},
		{"clear stream differs", "/v1/chat/completions", reenc(func(e *api.InferenceEnvelope) { e.Stream = true }), 400, inference.CodeInvalidRequest},
		{"tampered ciphertext", "/v1/chat/completions", reenc(func(e *api.InferenceEnvelope) { e.Sealed[len(e.Sealed)-1] ^= 1 }), 400, inference.CodeDecryption},
		{"other key material", "/v1/chat/completions", envelope(t, w, otherKey, "/v1/chat/completions", "kbs-echo", false, `{"model":"kbs-echo"}`), 400, inference.CodeDecryption},
		{"key not served", "/v1/chat/completions", envelope(t, w, &api.KeyFile{ID: "demo/x", Version: 1, Material: material(1)}, "/v1/chat/completions", "kbs-echo", false, `{"model":"kbs-echo"}`), 403, inference.CodeKeyRefused},
		{"body model differs from header", "/v1/chat/completions", envelope(t, w, k, "/v1/chat/completions", "kbs-echo", false, `{"model":"other"}`), 400, inference.CodeInvalidRequest},
		{"body stream differs from header", "/v1/chat/completions", envelope(t, w, k, "/v1/chat/completions", "kbs-echo", false, `{"model":"kbs-echo","stream":true}`), 400, inference.CodeInvalidRequest},
		{"a body for GET", "/v1/models", envelope(t, w, k, "/v1/models", "", false, `{}`), 400, inference.CodeInvalidRequest},
		{"too large", "/v1/chat/completions", make([]byte, api.MaxInferenceEnvelope+1), 413, inference.CodeTooLarge},
	} {
		before := w.cfg.Replay.Len()
		rec := serve(w, tc.path, tc.body)
		if d, ok := inference.ParseError(rec.Body.Bytes()); rec.Code != tc.status || !ok || d.Code != tc.code {
			t.Errorf("%s: %d %s, want %d %s", tc.name, rec.Code, rec.Body, tc.status, tc.code)
		}
		if w.cfg.Replay.Len() != before {
			t.Errorf("%s: a refused request was remembered", tc.name)
		}
	}
	// Wrong instance, stale time.
	h := &api.InferenceRequest{ID: api.NewRequestID(), Time: w.cfg.Now().Unix(), Method: "POST", Path: "/v1/embeddings", Model: "kbs-echo"}
	sealed, _ := api.SealInferenceRequest(k, h, []byte(`{"model":"kbs-echo","input":"x"}`))
	b, _ := json.Marshal(api.InferenceEnvelope{Model: "kbs-echo", Sealed: sealed})
	rec := serve(w, "/v1/embeddings", b)
	if d, _ := inference.ParseError(rec.Body.Bytes()); rec.Code != 409 || d.Code != inference.CodeWorkerInstance || rec.Header().Get(api.HeaderWorkerInstance) != w.Instance() {
		t.Fatalf("other instance: %d %s", rec.Code, rec.Body)
	}
	h.ID, h.Worker, h.Time = api.NewRequestID(), w.instance, w.cfg.Now().Add(-2*time.Minute).Unix()
	sealed, _ = api.SealInferenceRequest(k, h, []byte(`{"model":"kbs-echo","input":"x"}`))
	b, _ = json.Marshal(api.InferenceEnvelope{Model: "kbs-echo", Sealed: sealed})
	if rec := serve(w, "/v1/embeddings", b); rec.Code != 400 || !strings.Contains(rec.Body.String(), inference.CodeStale) {
		t.Fatalf("stale: %d %s", rec.Code, rec.Body)
	}
	// The good request is served once.
	if rec := serve(w, "/v1/chat/completions", good); rec.Code != 200 {
		t.Fatalf("good: %d %s", rec.Code, rec.Body)
	}
	if rec := serve(w, "/v1/chat/completions", good); rec.Code != 409 || !strings.Contains(rec.Body.String(), inference.CodeReplayed) {
		t.Fatalf("replay: %d %s", rec.Code, rec.Body)
	}
	// A GET on a route, and health.
	rec = httptest.NewRecorder()
	w.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/chat/completions", nil))
	if rec.Code != 405 {
		t.Fatalf("GET: %d", rec.Code)
	}
	rec = httptest.NewRecorder()
	w.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != 200 || rec.Header().Get(api.HeaderWorkerInstance) != w.Instance() {
		t.Fatalf("healthz: %d %v", rec.Code, rec.Header())
	}
}

func TestWorkerReplayCacheFull(t *testing.T) {
	w, k := testWorker(t, 2)
	for i := range 3 {
		rec := serve(w, "/v1/models", envelope(t, w, k, "/v1/models", "", false, ""))
		if want := map[bool]int{true: 200, false: 429}[i < 2]; rec.Code != want {
			t.Fatalf("request %d: %d %s, want %d", i, rec.Code, rec.Body, want)
		}
	}
}

func TestWorkerUpstreamDown(t *testing.T) {
	r, _ := NewKeyring(KeyringConfig{IDs: []string{id}})
	k := &api.KeyFile{ID: id, Version: 1, Material: material(1)}
	r.Add(k)
	w, _ := New(Config{Keys: r, Upstream: "http://127.0.0.1:1"})
	body := envelope(t, w, k, "/v1/completions", "kbs-echo", false, `{"model":"kbs-echo","prompt":"x"}`)
	rec := serve(w, "/v1/completions", body)
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "text/event-stream" {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	// The error is sealed: the host sees no reason.
	if strings.Contains(rec.Body.String(), "upstream") || strings.Contains(rec.Body.String(), "127.0.0.1") {
		t.Fatalf("the sealed answer leaks %s", rec.Body)
	}
	var env api.InferenceEnvelope
	json.Unmarshal(body, &env)
	o, _ := api.NewResponseOpener(k, env.Sealed)
	fr := inference.NewFrameReader(rec.Body)
	var payloads []string
	for {
		f, err := fr.Next()
		if err != nil {
			break
		}
		p, _, err := o.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		payloads = append(payloads, string(p))
	}
	if !o.Ended() || len(payloads) != 2 || !strings.Contains(payloads[0], `"status":502`) || !strings.Contains(payloads[1], inference.CodeUpstream) {
		t.Fatalf("answer %q", payloads)
	}
}

// FuzzWorkerRequest: whatever the body, the worker answers (no panic),
// serves only genuine requests, and a refused request leaves the replay
// cache as it was.
func FuzzWorkerRequest(f *testing.F) {
	w, k := testWorker(f, 1<<20)
	for _, p := range []string{"/v1/chat/completions", "/v1/embeddings"} {
		f.Add(p, envelope(f, w, k, p, "kbs-echo", false, `{"model":"kbs-echo","input":"x","messages":[{"role":"user","content":"x"}]}`))
	}
	f.Add("/v1/models", envelope(f, w, k, "/v1/models", "", false, ""))
	f.Add("/v1/chat/completions", []byte(`{"model":"m","stream":false,"kbs_sealed":"a2JzLWluZmVyZW5jZS12MQoKAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="}`))
	f.Fuzz(func(t *testing.T, path string, body []byte) {
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		before := w.cfg.Replay.Len()
		rec := httptest.NewRecorder()
		req, err := http.NewRequest(http.MethodPost, "http://w"+path, bytes.NewReader(body))
		if err != nil {
			return
		}
		w.ServeHTTP(rec, req)
		if rec.Code == 200 {
			if w.cfg.Replay.Len() != before+1 {
				t.Fatalf("served without remembering the request id")
			}
			return
		}
		if w.cfg.Replay.Len() != before {
			t.Fatalf("a refused request (%d %s) changed the replay cache", rec.Code, rec.Body)
		}
		if _, ok := inference.ParseError(rec.Body.Bytes()); !ok {
			t.Fatalf("refusal %d without an OpenAI error body: %q", rec.Code, rec.Body)
		}
	})
}
