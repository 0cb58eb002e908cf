package inference_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/inference/proxy"
	"github.com/kbs-dev/kbs/kbs/inference/worker"
)

// benchUpstream is an OpenAI-compatible upstream for latency figures: a
// small chat completion, or a stream of chunks spaced by gap, each
// carrying the time it was sent, so that the application can measure how
// long each chunk took to reach it.
type benchUpstream struct {
	chunks int
	gap    time.Duration
}

func (u *benchUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Stream bool `json:"stream"`
	}
	json.NewDecoder(r.Body).Decode(&req)
	if !req.Stream {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"The capital of France is Paris."}}],"usage":{"prompt_tokens":9,"completion_tokens":7,"total_tokens":16}}`+"\n")
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	rc := http.NewResponseController(w)
	for i := range u.chunks {
		if i > 0 {
			time.Sleep(u.gap)
		}
		fmt.Fprintf(w, `data: {"id":"x","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":" tok"},"finish_reason":null}],"sent":%d}`+"\n\n", time.Now().UnixNano())
		rc.Flush()
	}
	io.WriteString(w, "data: [DONE]\n\n")
	rc.Flush()
}

// benchPath returns the base URL an application would use: the upstream
// itself (direct) or a proxy in front of a worker in front of it.
func benchPath(b *testing.B, up http.Handler, direct bool) string {
	us := httptest.NewServer(up)
	b.Cleanup(us.Close)
	if direct {
		return us.URL
	}
	k := &api.KeyFile{ID: "demo/prompt-key", Version: 1, Material: make([]byte, 32)}
	keys, _ := worker.NewKeyring(worker.KeyringConfig{IDs: []string{k.ID}})
	keys.Add(k)
	w, err := worker.New(worker.Config{Keys: keys, Upstream: us.URL})
	if err != nil {
		b.Fatal(err)
	}
	ws := httptest.NewServer(w)
	b.Cleanup(ws.Close)
	c, _ := proxy.NewClient(proxy.ClientConfig{Worker: ws.URL, Key: func() (*api.KeyFile, error) { return k, nil }})
	p, _ := proxy.New(proxy.Config{Client: c, Checker: &checker{}})
	ps := httptest.NewServer(p)
	b.Cleanup(ps.Close)
	return ps.URL
}

const benchChat = `{"model":"m","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"What is the capital of France?"}]}`

// BenchmarkInferenceRequest: one small chat completion, application to
// upstream and back, directly and through proxy and worker (sealing,
// opening, two more HTTP hops on loopback; the broker check is cached).
func BenchmarkInferenceRequest(b *testing.B) {
	for _, direct := range []bool{true, false} {
		b.Run(map[bool]string{true: "direct", false: "proxied"}[direct], func(b *testing.B) {
			base := benchPath(b, &benchUpstream{}, direct)
			hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
			b.ResetTimer()
			for b.Loop() {
				resp, err := hc.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(benchChat))
				if err != nil {
					b.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || !strings.Contains(string(body), "Paris") {
					b.Fatalf("%d %s", resp.StatusCode, body)
				}
			}
		})
	}
}

// BenchmarkInferenceChunk: a stream of 50 chunks, 1 ms apart (a fast
// model's token rate); the figure is the mean time from the upstream
// writing a chunk to the application reading it (latency-ns/chunk), and
// the time to the first chunk (first-ns/op).
func BenchmarkInferenceChunk(b *testing.B) {
	const chunks = 50
	for _, direct := range []bool{true, false} {
		b.Run(map[bool]string{true: "direct", false: "proxied"}[direct], func(b *testing.B) {
			base := benchPath(b, &benchUpstream{chunks: chunks, gap: time.Millisecond}, direct)
			hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
			var lat, first time.Duration
			n := 0
			b.ResetTimer()
			for b.Loop() {
				start := time.Now()
				resp, err := hc.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(strings.Replace(benchChat, `{"model":"m"`, `{"model":"m","stream":true`, 1)))
				if err != nil {
					b.Fatal(err)
				}
				sc := bufio.NewScanner(resp.Body)
				got := 0
				for sc.Scan() {
					d, ok := strings.CutPrefix(sc.Text(), "data: ")
					if !ok || d == "[DONE]" {
						continue
					}
					now := time.Now()
					var c struct {
						Sent int64 `json:"sent"`
					}
					if err := json.Unmarshal([]byte(d), &c); err != nil || c.Sent == 0 {
						b.Fatalf("chunk %q: %v", d, err)
					}
					if got == 0 {
						first += now.Sub(start)
					}
					lat += now.Sub(time.Unix(0, c.Sent))
					got++
				}
				resp.Body.Close()
				if got != chunks {
					b.Fatalf("%d chunks, want %d", got, chunks)
				}
				n += got
			}
			b.ReportMetric(float64(lat.Nanoseconds())/float64(n), "latency-ns/chunk")
			b.ReportMetric(float64(first.Nanoseconds())/float64(b.N), "first-ns/op")
		})
	}
}
