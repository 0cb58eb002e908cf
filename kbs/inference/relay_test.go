package inference_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/inference"
	"github.com/kbs-dev/kbs/kbs/inference/echo"
	"github.com/kbs-dev/kbs/kbs/inference/proxy"
	"github.com/kbs-dev/kbs/kbs/inference/worker"
)

// These tests run the whole path in one process: an application (a plain
// HTTP client speaking the OpenAI API) -> proxy -> relay -> worker -> the
// echo model as upstream. The relay plays the host between proxy and
// worker: it records every byte and can tamper with the answer's events.

// tamper says what the relay does to the events of an answer.
type tamper struct {
	flip  int // flip a bit inside frame n (1-based; 0: none)
	drop  int // drop event n
	swap  int // swap events n and n+1
	cutAt int // end the answer after n events
	dupe  int // send event n twice
}

// relay is a recording, tampering HTTP relay in front of a worker.
type relay struct {
	target string
	mu     sync.Mutex
	log    bytes.Buffer // every request and answer byte
	t      tamper
	last   []byte // the last request body
	lastP  string
}

func (rl *relay) setTamper(t tamper) {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	rl.t = t
}

func (rl *relay) record(b []byte) {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	rl.log.Write(b)
}

func (rl *relay) recorded() []byte {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	return bytes.Clone(rl.log.Bytes())
}

func (rl *relay) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rl.record([]byte(r.Method + " " + r.URL.Path + "\n"))
	rl.record(body)
	rl.mu.Lock()
	if r.Method == http.MethodPost {
		rl.last, rl.lastP = body, r.URL.Path
	}
	t, target := rl.t, rl.target
	rl.mu.Unlock()
	req, _ := http.NewRequestWithContext(r.Context(), r.Method, target+r.URL.Path, bytes.NewReader(body))
	req.Header = r.Header.Clone()
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	if r.Method != http.MethodPost || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, _ := io.ReadAll(resp.Body)
		rl.record(b)
		w.Write(b)
		return
	}
	rc := http.NewResponseController(w)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 4<<20)
	n := 0
	var held string
	emit := func(ev string) {
		rl.record([]byte(ev))
		io.WriteString(w, ev)
		rc.Flush()
	}
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		ev := line + "\n\n"
		n++
		switch {
		case t.cutAt > 0 && n > t.cutAt:
			continue
		case n == t.flip:
			frame, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(line, "data: "))
			frame[len(frame)/2] ^= 0x10
			ev = "data: " + base64.StdEncoding.EncodeToString(frame) + "\n\n"
		case n == t.drop:
			continue
		case n == t.swap:
			held = ev
			continue
		case n == t.dupe:
			emit(ev)
		}
		emit(ev)
		if held != "" && n == t.swap+1 {
			emit(held)
			held = ""
		}
	}
}

// fixture is a running proxy, relay, worker and upstream.
type fixture struct {
	key     *api.KeyFile
	keys    *worker.Keyring
	relay   *relay
	proxy   *httptest.Server
	worker  *httptest.Server
	w       *worker.Worker
	checker *checker
	client  *proxy.Client
}

type checker struct {
	mu  sync.Mutex
	err error
	n   int
}

func (c *checker) Check(context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	return c.err
}

func newKey(t testing.TB, version uint64) *api.KeyFile {
	k := &api.KeyFile{ID: "demo/prompt-key", Version: version, Material: make([]byte, 32)}
	rand.Read(k.Material)
	return k
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	up := httptest.NewServer(&echo.Handler{})
	t.Cleanup(up.Close)
	f := &fixture{key: newKey(t, 1), checker: &checker{}}
	var err error
	f.keys, err = worker.NewKeyring(worker.KeyringConfig{IDs: []string{"demo/prompt-key"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.keys.Add(f.key); err != nil {
		t.Fatal(err)
	}
	f.w, err = worker.New(worker.Config{Keys: f.keys, Upstream: up.URL})
	if err != nil {
		t.Fatal(err)
	}
	f.worker = httptest.NewServer(f.w)
	t.Cleanup(f.worker.Close)
	f.relay = &relay{target: f.worker.URL}
	rs := httptest.NewServer(f.relay)
	t.Cleanup(rs.Close)
	f.client, err = proxy.NewClient(proxy.ClientConfig{Worker: rs.URL, Key: func() (*api.KeyFile, error) { return f.key, nil }})
	if err != nil {
		t.Fatal(err)
	}
	p, err := proxy.New(proxy.Config{Client: f.client, Checker: f.checker})
	if err != nil {
		t.Fatal(err)
	}
	f.proxy = httptest.NewServer(p)
	t.Cleanup(f.proxy.Close)
	return f
}

// post sends an OpenAI request to the proxy as an application would.
func (f *fixture) post(t testing.TB, path, body string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Post(f.proxy.URL+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Logf("reading the answer: %v", err)
	}
	return resp, b
}

// events splits an SSE body into its data payloads.
func events(b []byte) []string {
	var out []string
	for _, ev := range strings.Split(string(b), "\n\n") {
		if d, ok := strings.CutPrefix(strings.TrimSpace(ev), "data: "); ok {
			out = append(out, d)
		}
	}
	return out
}

// streamText joins the content of a chat stream's chunks; done reports a
// final [DONE], errCode the code of an error event.
func streamText(t testing.TB, b []byte) (text string, done bool, errCode string) {
	t.Helper()
	for _, d := range events(b) {
		if d == "[DONE]" {
			done = true
			continue
		}
		var c struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
				Text string `json:"text"`
			} `json:"choices"`
			Error *inference.ErrorDetail `json:"error"`
		}
		if err := json.Unmarshal([]byte(d), &c); err != nil {
			t.Fatalf("event %q: %v", d, err)
		}
		if c.Error != nil {
			errCode = c.Error.Code
			continue
		}
		for _, ch := range c.Choices {
			text += ch.Delta.Content + ch.Text
		}
	}
	return text, done, errCode
}

const secretPrompt = "the launch codes are tango whiskey seven"

func chatBody(stream bool) string {
	b, _ := json.Marshal(map[string]any{"model": echo.Model, "stream": stream, "messages": []any{
		map[string]any{"role": "system", "content": "be brief"},
		map[string]any{"role": "user", "content": secretPrompt},
	}})
	return string(b)
}

func TestRelayRoundTrips(t *testing.T) {
	f := newFixture(t)
	want := echo.Answer(secretPrompt)

	resp, b := f.post(t, "/v1/chat/completions", chatBody(false))
	if resp.StatusCode != 200 {
		t.Fatalf("chat: %d %s", resp.StatusCode, b)
	}
	var cc struct {
		Choices []struct {
			Message struct{ Content string } `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(b, &cc); err != nil || len(cc.Choices) != 1 || cc.Choices[0].Message.Content != want {
		t.Fatalf("chat answer %s (%v), want content %q", b, err, want)
	}

	resp, b = f.post(t, "/v1/chat/completions", chatBody(true))
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("chat stream: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	text, done, code := streamText(t, b)
	if text != want || !done || code != "" {
		t.Fatalf("chat stream = %q, done %v, error %q; want %q", text, done, code, want)
	}

	resp, b = f.post(t, "/v1/completions", `{"model":"kbs-echo","prompt":"`+secretPrompt+`","stream":true}`)
	text, done, _ = streamText(t, b)
	if resp.StatusCode != 200 || text != want || !done {
		t.Fatalf("completions stream = %d %q %v", resp.StatusCode, text, done)
	}

	resp, b = f.post(t, "/v1/embeddings", `{"model":"kbs-echo","input":["`+secretPrompt+`"]}`)
	var emb struct {
		Data []struct{ Embedding []float32 } `json:"data"`
	}
	if err := json.Unmarshal(b, &emb); resp.StatusCode != 200 || err != nil || len(emb.Data) != 1 || len(emb.Data[0].Embedding) != 8 {
		t.Fatalf("embeddings = %d %s", resp.StatusCode, b)
	}
	for i, x := range echo.Embedding(secretPrompt, 8) {
		if emb.Data[0].Embedding[i] != x {
			t.Fatalf("embedding[%d] = %v, want %v", i, emb.Data[0].Embedding[i], x)
		}
	}

	r2, err := http.Get(f.proxy.URL + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(r2.Body)
	r2.Body.Close()
	if r2.StatusCode != 200 || !strings.Contains(string(b), `"id":"kbs-echo"`) {
		t.Fatalf("models = %d %s", r2.StatusCode, b)
	}

	// The upstream's own errors come back, sealed on the way, as they were.
	resp, b = f.post(t, "/v1/chat/completions", `{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}`)
	if d, ok := inference.ParseError(b); resp.StatusCode != 404 || !ok || d.Code != "model_not_found" {
		t.Fatalf("unknown model = %d %s", resp.StatusCode, b)
	}

	// The host saw none of it.
	rec := f.relay.recorded()
	for _, s := range []string{secretPrompt, strings.ToUpper(secretPrompt), "launch", "LAUNCH", "be brief", "echo from", "model_not_found", "chat.completion"} {
		if bytes.Contains(rec, []byte(s)) {
			t.Errorf("the relay recorded %q", s)
		}
	}
	if !bytes.Contains(rec, []byte(`"model":"kbs-echo"`)) {
		t.Errorf("the relay did not see the clear model name: the test looks at the wrong bytes")
	}
}

func TestRelayTamperedStreams(t *testing.T) {
	f := newFixture(t)
	want := echo.Answer(secretPrompt)
	// Event 1 is the head, 2 the role chunk, then one per word, the
	// finish chunk, [DONE], and the empty final frame.
	words := len(strings.Fields(want))
	done := 2 + words + 2
	final := done + 1
	for _, tc := range []struct {
		name string
		t    tamper
	}{
		{"flip head", tamper{flip: 1}},
		{"flip a word", tamper{flip: 4}},
		{"flip the final frame", tamper{flip: final}},
		{"drop a word", tamper{drop: 4}},
		{"drop the [DONE]", tamper{drop: done}},
		{"drop the final frame", tamper{drop: final}},
		{"swap two words", tamper{swap: 4}},
		{"swap [DONE] and the final frame", tamper{swap: done}},
		{"repeat a word", tamper{dupe: 5}},
		{"repeat [DONE]", tamper{dupe: done}},
		{"cut after the head", tamper{cutAt: 1}},
		{"cut in the middle", tamper{cutAt: 6}},
		{"cut before the final frame", tamper{cutAt: done}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.relay.setTamper(tc.t)
			defer f.relay.setTamper(tamper{})
			resp, b := f.post(t, "/v1/chat/completions", chatBody(true))
			if resp.StatusCode != 200 {
				// Failed before the first event went out: a JSON error.
				if d, ok := inference.ParseError(b); resp.StatusCode != http.StatusBadGateway || !ok || d.Code != inference.CodeIntegrity {
					t.Fatalf("got %d %s, want 502 %s", resp.StatusCode, b, inference.CodeIntegrity)
				}
				return
			}
			text, done, code := streamText(t, b)
			if done || code != inference.CodeIntegrity {
				t.Fatalf("stream = %q, done %v, error %q: the tampering went unnoticed", text, done, code)
			}
			if !strings.HasPrefix(want, text) {
				t.Fatalf("the application got %q, not a prefix of %q", text, want)
			}
		})
	}
	// The same for a whole (non-streamed) answer.
	for _, tt := range []tamper{{flip: 2}, {drop: 2}, {cutAt: 1}, {swap: 1}, {dupe: 1}} {
		f.relay.setTamper(tt)
		resp, b := f.post(t, "/v1/chat/completions", chatBody(false))
		if d, ok := inference.ParseError(b); resp.StatusCode != http.StatusBadGateway || !ok || d.Code != inference.CodeIntegrity {
			t.Fatalf("%+v: got %d %s", tt, resp.StatusCode, b)
		}
	}
	f.relay.setTamper(tamper{})
	resp, b := f.post(t, "/v1/chat/completions", chatBody(true))
	if text, done, _ := streamText(t, b); resp.StatusCode != 200 || text != want || !done {
		t.Fatalf("untampered stream after the tampering: %q %v", text, done)
	}
}

func TestRelayReplayAndRestart(t *testing.T) {
	f := newFixture(t)
	resp, _ := f.post(t, "/v1/chat/completions", chatBody(false))
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	f.relay.mu.Lock()
	last, path := f.relay.last, f.relay.lastP
	f.relay.mu.Unlock()
	// The host sends the recorded request again.
	r, err := http.Post(f.worker.URL+path, "application/json", bytes.NewReader(last))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if d, ok := inference.ParseError(b); r.StatusCode != http.StatusConflict || !ok || d.Code != inference.CodeReplayed {
		t.Fatalf("replay: %d %s", r.StatusCode, b)
	}
	// A restarted worker (a new instance, an empty replay cache) refuses
	// it too, and the proxy's next request reaches it after one retry.
	w2, err := worker.New(worker.Config{Keys: f.keys, Upstream: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	w2.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, bytes.NewReader(last)))
	if d, ok := inference.ParseError(rec.Body.Bytes()); rec.Code != http.StatusConflict || !ok || d.Code != inference.CodeWorkerInstance {
		t.Fatalf("replay to a restarted worker: %d %s", rec.Code, rec.Body)
	}
	u := swapWorker(t, f)
	f.relay.mu.Lock()
	f.relay.target = u
	f.relay.mu.Unlock()
	resp, b = f.post(t, "/v1/chat/completions", chatBody(false))
	if resp.StatusCode != 200 || !strings.Contains(string(b), echo.Answer(secretPrompt)) {
		t.Fatalf("after the worker restarted: %d %s", resp.StatusCode, b)
	}
}

// swapWorker starts a new worker (a restart) and returns its URL.
func swapWorker(t *testing.T, f *fixture) string {
	up := httptest.NewServer(&echo.Handler{})
	t.Cleanup(up.Close)
	w, err := worker.New(worker.Config{Keys: f.keys, Upstream: up.URL})
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewServer(w)
	t.Cleanup(s.Close)
	return s.URL
}

func TestProxyErrors(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		method, path, body string
		status             int
		code               string
	}{
		{"POST", "/v1/chat/completions", `not json`, 400, inference.CodeInvalidRequest},
		{"POST", "/v1/chat/completions", `{"messages":[]}`, 400, inference.CodeInvalidRequest},
		{"POST", "/v1/chat/completions", `{"model":"a b","messages":[]}`, 400, inference.CodeInvalidRequest},
		{"POST", "/v1/chat/completions", `{"model":"m","model":"n"}`, 400, inference.CodeInvalidRequest},
		{"POST", "/v1/chat/completions", `{"model":"m","stream":"yes"}`, 400, inference.CodeInvalidRequest},
		{"POST", "/v1/chat/completions", `{"model":"m"} {}`, 400, inference.CodeInvalidRequest},
		{"GET", "/v1/chat/completions", ``, 405, inference.CodeMethodNotAllowed},
		{"POST", "/v1/images/generations", `{}`, 404, inference.CodeNotFound},
		{"POST", "/v1/chat/completions", `{"model":"kbs-echo","pad":"` + strings.Repeat("x", api.MaxInferenceRequest) + `"}`, 413, inference.CodeTooLarge},
	} {
		req, _ := http.NewRequest(tc.method, f.proxy.URL+tc.path, strings.NewReader(tc.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if d, ok := inference.ParseError(b); resp.StatusCode != tc.status || !ok || d.Code != tc.code {
			t.Errorf("%s %s %.40q = %d %s, want %d %s", tc.method, tc.path, tc.body, resp.StatusCode, b, tc.status, tc.code)
		}
	}
	if n := len(f.relay.recorded()); n != 0 {
		t.Fatalf("malformed requests reached the worker (%d bytes)", n)
	}

	// A broker that fails verification: nothing is sent.
	f.checker.mu.Lock()
	f.checker.err = errors.New("evidence: measurement mismatch")
	f.checker.mu.Unlock()
	resp, b := f.post(t, "/v1/chat/completions", chatBody(false))
	if d, ok := inference.ParseError(b); resp.StatusCode != 503 || !ok || d.Code != inference.CodeBrokerUnverified || resp.Header.Get("X-Should-Retry") != "false" {
		t.Fatalf("unverified broker: %d %s", resp.StatusCode, b)
	}
	f.checker.mu.Lock()
	f.checker.err = &proxy.CheckError{Code: inference.CodeKeyRefused, Err: errors.New("the broker deleted key demo/prompt-key")}
	f.checker.mu.Unlock()
	resp, b = f.post(t, "/v1/chat/completions", chatBody(false))
	if d, ok := inference.ParseError(b); resp.StatusCode != 403 || !ok || d.Code != inference.CodeKeyRefused {
		t.Fatalf("refused key: %d %s", resp.StatusCode, b)
	}
	if n := len(f.relay.recorded()); n != 0 {
		t.Fatalf("requests reached the worker although the broker was not verified (%d bytes)", n)
	}
	f.checker.mu.Lock()
	f.checker.err = nil
	f.checker.mu.Unlock()

	// A key the worker does not hold (a version it cannot fetch).
	f.key = newKey(t, 2)
	resp, b = f.post(t, "/v1/chat/completions", chatBody(false))
	if d, ok := inference.ParseError(b); resp.StatusCode != 403 || !ok || d.Code != inference.CodeKeyRefused {
		t.Fatalf("unknown key version: %d %s", resp.StatusCode, b)
	}
	// The right id and version under other material: the worker cannot
	// open it.
	f.key = newKey(t, 1)
	resp, b = f.post(t, "/v1/chat/completions", chatBody(false))
	if d, ok := inference.ParseError(b); resp.StatusCode != 502 || !ok || d.Code != inference.CodeWorkerError || !strings.Contains(d.Message, inference.CodeDecryption) {
		t.Fatalf("wrong key material: %d %s", resp.StatusCode, b)
	}

	// The worker is down.
	f.worker.Close()
	c, err := proxy.NewClient(proxy.ClientConfig{Worker: f.worker.URL, Key: func() (*api.KeyFile, error) { return f.key, nil }})
	if err != nil {
		t.Fatal(err)
	}
	p, _ := proxy.New(proxy.Config{Client: c, Checker: f.checker})
	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(chatBody(true))))
	if d, ok := inference.ParseError(rec.Body.Bytes()); rec.Code != 502 || !ok || d.Code != inference.CodeWorkerUnreachable {
		t.Fatalf("worker down: %d %s", rec.Code, rec.Body)
	}
}
