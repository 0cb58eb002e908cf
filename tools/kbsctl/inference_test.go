package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/internal/testbin"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/inference"
	"github.com/kbs-dev/kbs/kbs/inference/echo"
)

// inferenceSetup is a dev broker with an uploaded prompt key, a worker in
// front of an OpenAI-compatible upstream (the echo model on its own
// loopback server, as a real inference server would be) and a proxy.
type inferenceSetup struct {
	d        *daemon
	dir      string
	mf       string
	g, wg    []string // client and worker global flags
	keyFile  string   // the proxy's key file
	upstream *httptest.Server
	worker   string // worker URL
	proxy    string // proxy URL
	receipts string
}

func setupInference(t *testing.T, workerArgs ...string) *inferenceSetup {
	t.Helper()
	s := &inferenceSetup{dir: t.TempDir()}
	s.d = startKbsd(t, filepath.Join(s.dir, "kbs"))
	s.mf = filepath.Join(s.dir, "manifest.json")
	copyFile(t, filepath.Join(s.d.data, "manifest.json"), s.mf)
	s.g = []string{"--addr", s.d.https, "--state", filepath.Join(s.dir, "state"), "--sim-root", s.d.simRoot()}
	s.wg = []string{"--addr", s.d.unix, "--state", filepath.Join(s.dir, "wstate"), "--sim-root", s.d.simRoot()}
	s.keyFile = filepath.Join(s.dir, "prompt.key")
	ctl(t, 0, append(s.g, "key", "put", "--manifest", s.mf, "--client-key", filepath.Join(s.d.data, "client.key"), "--id", "demo/prompt-key", "--generate", "--out", s.keyFile)...)
	s.upstream = httptest.NewServer(&echo.Handler{})
	t.Cleanup(s.upstream.Close)
	s.receipts = filepath.Join(s.dir, "receipts")
	var stop func()
	s.worker, stop = startWorker(t, append(append(s.wg, "worker", "run", "--manifest", s.mf, "--tee", "sim", "--sim-dir", s.d.simDir(),
		"--id", "demo/prompt-key", "--listen", "127.0.0.1:0", "--upstream", s.upstream.URL, "--receipts", s.receipts), workerArgs...))
	t.Cleanup(stop)
	s.proxy, stop = startWorker(t, append(s.g, "proxy", "--manifest", s.mf, "--key", s.keyFile, "--worker", s.worker, "--listen", "127.0.0.1:0"))
	t.Cleanup(stop)
	return s
}

// openai is what an application using the OpenAI API does, with plain
// HTTP (the real SDK is in TestOpenAINode).
func openai(t *testing.T, base, path, body string) (int, http.Header, []byte) {
	t.Helper()
	method := http.MethodPost
	if body == "" {
		method = http.MethodGet
	}
	req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer sk-the-app-s-own-key")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func chatRequest(prompt string, stream bool) string {
	b, _ := json.Marshal(map[string]any{"model": echo.Model, "stream": stream, "messages": []any{map[string]any{"role": "user", "content": prompt}}})
	return string(b)
}

// sseContent joins the delta contents of a chat stream and reports
// whether it ended with [DONE].
func sseContent(t *testing.T, b []byte) (string, bool) {
	t.Helper()
	var text string
	done := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		d, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if d == "[DONE]" {
			done = true
			continue
		}
		var c struct {
			Choices []struct {
				Delta struct{ Content string } `json:"delta"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(d), &c); err != nil {
			t.Fatalf("event %q: %v", d, err)
		}
		for _, ch := range c.Choices {
			text += ch.Delta.Content
		}
	}
	return text, done
}

func errCode(b []byte) string {
	d, _ := inference.ParseError(b)
	return d.Code
}

// TestInferenceProxy runs an application's OpenAI requests through the
// proxy and the worker (both as kbsctl runs them) to an upstream, then
// rotates the key (the worker fetches the new version by a logged
// release), deletes it (the worker forgets it), and checks the proxy's
// errors for a broker that fails verification and an unreachable worker.
func TestInferenceProxy(t *testing.T) {
	s := setupInference(t, "--key-refresh", "100ms")
	prompt := "what is the capital of france?"
	want := echo.Answer(prompt)

	code, _, b := openai(t, s.proxy, "/v1/chat/completions", chatRequest(prompt, false))
	if code != 200 || !strings.Contains(string(b), `"content":"`+want+`"`) {
		t.Fatalf("chat: %d %s", code, b)
	}
	code, h, b := openai(t, s.proxy, "/v1/chat/completions", chatRequest(prompt, true))
	if text, done := sseContent(t, b); code != 200 || h.Get("Content-Type") != "text/event-stream" || text != want || !done {
		t.Fatalf("chat stream: %d %s: %q %v", code, h.Get("Content-Type"), text, done)
	}
	code, _, b = openai(t, s.proxy, "/v1/embeddings", `{"model":"kbs-echo","input":"hello","encoding_format":"base64"}`)
	if code != 200 || !strings.Contains(string(b), `"object":"embedding"`) {
		t.Fatalf("embeddings: %d %s", code, b)
	}
	code, _, b = openai(t, s.proxy, "/v1/models", "")
	if code != 200 || !strings.Contains(string(b), `"kbs-echo"`) {
		t.Fatalf("models: %d %s", code, b)
	}
	// prompt send speaks the same protocol.
	out, _ := ctlIn(t, 0, prompt, "prompt", "send", "--worker", s.worker, "--key", s.keyFile)
	if out != want {
		t.Fatalf("prompt send = %q", out)
	}

	// A proxy whose manifest is not the broker's: nothing is sent, the
	// application gets broker_verification_failed.
	other := filepath.Join(s.dir, "other-manifest.json")
	ctl(t, 0, "manifest", "next", "--out", other, s.mf)
	url, stop := startWorker(t, append(s.g, "proxy", "--manifest", other, "--key", s.keyFile, "--worker", s.worker, "--listen", "127.0.0.1:0"))
	code, h, b = openai(t, url, "/v1/chat/completions", chatRequest(prompt, false))
	if code != http.StatusServiceUnavailable || errCode(b) != inference.CodeBrokerUnverified || h.Get("X-Should-Retry") != "false" {
		t.Fatalf("unverified broker: %d %s", code, b)
	}
	stop()
	// An unreachable worker.
	url, stop = startWorker(t, append(s.g, "proxy", "--manifest", s.mf, "--key", s.keyFile, "--worker", "http://127.0.0.1:1", "--listen", "127.0.0.1:0"))
	code, _, b = openai(t, url, "/v1/chat/completions", chatRequest(prompt, false))
	if code != http.StatusBadGateway || errCode(b) != inference.CodeWorkerUnreachable {
		t.Fatalf("unreachable worker: %d %s", code, b)
	}
	stop()
	// Key rotation: the client uploads version 2 and the proxy's key file
	// changes; the worker, which holds version 1, fetches version 2 by a
	// new release (its receipt is kept).
	v1 := filepath.Join(s.dir, "prompt.v1.key")
	copyFile(t, s.keyFile, v1)
	v2 := filepath.Join(s.dir, "prompt-v2.key")
	ctl(t, 0, append(s.g, "key", "put", "--manifest", s.mf, "--client-key", filepath.Join(s.d.data, "client.key"), "--id", "demo/prompt-key", "--generate", "--out", v2)...)
	before, _ := filepath.Glob(filepath.Join(s.receipts, "demo", "prompt-key.v2.*.receipt"))
	copyFile(t, v2, s.keyFile)
	code, _, b = openai(t, s.proxy, "/v1/chat/completions", chatRequest(prompt, true))
	if text, done := sseContent(t, b); code != 200 || text != want || !done {
		t.Fatalf("chat with key version 2: %d %s", code, b)
	}
	after, _ := filepath.Glob(filepath.Join(s.receipts, "demo", "prompt-key.v2.*.receipt"))
	if len(before) != 0 || len(after) != 1 {
		t.Fatalf("receipts of version 2 before %v, after %v: want one new release", before, after)
	}
	ctl(t, 0, append(s.wg, "receipt", "verify", after[0])...)
	// Version 1 is still served (clients move over one by one).
	if out, _ := ctlIn(t, 0, prompt, "prompt", "send", "--worker", s.worker, "--key", v1); out != want {
		t.Fatalf("prompt send with version 1 = %q", out)
	}
	// A version the broker does not have: refused, nothing released.
	v3 := &api.KeyFile{ID: "demo/prompt-key", Version: 3, Material: bytes.Repeat([]byte{1}, 32)}
	os.WriteFile(filepath.Join(s.dir, "v3.key"), v3.Marshal(), 0o600)
	_, errOut := ctlIn(t, 1, prompt, "prompt", "send", "--worker", s.worker, "--key", filepath.Join(s.dir, "v3.key"))
	contains(t, errOut, "key_refused")
	contains(t, errOut, "no version 3")
	if rs, _ := filepath.Glob(filepath.Join(s.receipts, "demo", "prompt-key.v*.receipt")); len(rs) != 2 {
		t.Fatalf("receipts %v: want the two releases only", rs)
	}

	// Deletion: the worker reads the key-delete entry from the log and
	// forgets every version.
	ctl(t, 0, append(s.g, "key", "rm", "--manifest", s.mf, "--client-key", filepath.Join(s.d.data, "client.key"), "--id", "demo/prompt-key")...)
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, _, b = openai(t, s.proxy, "/v1/chat/completions", chatRequest(prompt, false))
		if code == http.StatusForbidden && errCode(b) == inference.CodeKeyRefused {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the key was deleted: %d %s", code, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, errOut = ctlIn(t, 1, prompt, "prompt", "send", "--worker", s.worker, "--key", v1)
	contains(t, errOut, "deleted")

	// A proxy refuses to listen beyond loopback unless told to.
	_, errOut = ctl(t, 2, append(s.g, "proxy", "--manifest", s.mf, "--key", v2, "--worker", s.worker, "--listen", "0.0.0.0:0")...)
	contains(t, errOut, "not a loopback address")
}

// TestOpenAINode is TestInferenceProxy's first part with the official
// OpenAI client library for Node.js as the application
// (testdata/openai-client.cjs): chat completions with and without
// streaming, completions, embeddings, the model list, and the SDK's error
// types for an unverified broker, a refused key, an unreachable worker and
// tampered answers.
// It needs the openai package: make test-openai installs it
// (scripts/openai-node.sh) and sets KBS_OPENAI_NODE_MODULES.
func TestOpenAINode(t *testing.T) {
	mods := os.Getenv("KBS_OPENAI_NODE_MODULES")
	if mods == "" {
		t.Skip("KBS_OPENAI_NODE_MODULES is not set: run make test-openai")
	}
	s := setupInference(t)
	// A proxy whose broker fails verification, for the error test.
	other := filepath.Join(s.dir, "other-manifest.json")
	ctl(t, 0, "manifest", "next", "--out", other, s.mf)
	bad, stop := startWorker(t, append(s.g, "proxy", "--manifest", other, "--key", s.keyFile, "--worker", s.worker, "--listen", "127.0.0.1:0"))
	t.Cleanup(stop)
	// A proxy that reaches the worker through a relay that flips a bit in
	// the fifth frame of every streamed answer.
	rl := httptest.NewServer(flipRelay(s.worker, 5))
	t.Cleanup(rl.Close)
	tampered, stop := startWorker(t, append(s.g, "proxy", "--manifest", s.mf, "--key", s.keyFile, "--worker", rl.URL, "--listen", "127.0.0.1:0"))
	t.Cleanup(stop)
	// And one that flips a bit in the second frame: the body of a whole
	// answer.
	rl2 := httptest.NewServer(flipRelay(s.worker, 2))
	t.Cleanup(rl2.Close)
	tamperedWhole, stop := startWorker(t, append(s.g, "proxy", "--manifest", s.mf, "--key", s.keyFile, "--worker", rl2.URL, "--listen", "127.0.0.1:0"))
	t.Cleanup(stop)

	// A proxy with a key version the broker never had, and one whose
	// worker is not there.
	v3 := filepath.Join(s.dir, "v3.key")
	os.WriteFile(v3, (&api.KeyFile{ID: "demo/prompt-key", Version: 3, Material: bytes.Repeat([]byte{1}, 32)}).Marshal(), 0o600)
	refused, stop := startWorker(t, append(s.g, "proxy", "--manifest", s.mf, "--key", v3, "--worker", s.worker, "--listen", "127.0.0.1:0"))
	t.Cleanup(stop)
	unreachable, stop := startWorker(t, append(s.g, "proxy", "--manifest", s.mf, "--key", s.keyFile, "--worker", "http://127.0.0.1:1", "--listen", "127.0.0.1:0"))
	t.Cleanup(stop)

	cmd := testbin.Command(t, "node", filepath.Join("testdata", "openai-client.cjs"))
	cmd.Env = append(os.Environ(),
		"KBS_OPENAI_NODE_MODULES="+mods,
		"PROXY_URL="+s.proxy+"/v1",
		"UNVERIFIED_PROXY_URL="+bad+"/v1",
		"TAMPERED_PROXY_URL="+tampered+"/v1",
		"TAMPERED_WHOLE_PROXY_URL="+tamperedWhole+"/v1",
		"REFUSED_PROXY_URL="+refused+"/v1",
		"UNREACHABLE_PROXY_URL="+unreachable+"/v1",
		"WANT="+echo.Answer("what is the capital of france?"),
	)
	out, err := cmd.CombinedOutput()
	t.Logf("node:\n%s", out)
	if err != nil {
		t.Fatalf("the OpenAI client failed: %v", err)
	}
	if !strings.Contains(string(out), "openai-client: all checks passed") {
		t.Fatal("the OpenAI client script did not finish")
	}
}

// flipRelay relays to target and flips a bit in frame n of every answer
// that is an event stream.
func flipRelay(target string, n int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, target+r.URL.Path, r.Body)
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
		if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
			io.Copy(w, resp.Body)
			return
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 4<<20)
		i := 0
		for sc.Scan() {
			line := sc.Text()
			if line == "" {
				continue
			}
			if i++; i == n {
				// Flip a bit of the base64 text's last full group.
				b := []byte(line)
				b[len(b)-5] ^= 0x01
				line = string(b)
			}
			io.WriteString(w, line+"\n\n")
			http.NewResponseController(w).Flush()
		}
	})
}
