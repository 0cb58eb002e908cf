// Package echo is kbs's demonstration model: an OpenAI-compatible HTTP
// server whose "inference" is an upper-case echo. `kbsctl worker run`
// serves it when no --upstream names a real inference server, and tests
// use it as the upstream, since it behaves like one on the routes kbs
// carries:
//
//   - GET /v1/models lists one model, "kbs-echo";
//   - POST /v1/chat/completions answers "echo from a kbs worker: " and the
//     last user message in upper case (text parts of array contents
//     joined), as a chat.completion or, with "stream": true, as
//     chat.completion.chunk server-sent events, one word per chunk, a
//     final chunk with finish_reason, a usage chunk when
//     stream_options.include_usage is set, and "data: [DONE]";
//   - POST /v1/completions does the same with "prompt" (a string or an
//     array of strings: one choice each) and text_completion objects;
//   - POST /v1/embeddings returns, for each input string, a deterministic
//     unit vector of "dimensions" floats (default 8) derived from SHA-256
//     of the input, as JSON floats or, with "encoding_format": "base64",
//     as base64 of little-endian float32s (what the OpenAI SDKs ask for);
//   - max_tokens (or max_completion_tokens) cuts the answer to that many
//     words, with finish_reason "length";
//   - errors are OpenAI error bodies: 400 for malformed JSON or missing
//     fields, 404 for an unknown model ("model_not_found") or route, 405
//     for a wrong method, 413 for a body over 16 MiB.
//
// It holds no state and is safe for concurrent use.
package echo

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/inference"
)

// Model is the name of the echo model.
const Model = "kbs-echo"

// Prefix starts every answer.
const Prefix = "echo from a kbs worker: "

const maxBody = 16 << 20

// Handler is the echo model's HTTP handler.
type Handler struct {
	// Now returns the time for "created" fields. Optional; default
	// clock.Now.
	Now func() time.Time
}

func (h *Handler) now() int64 {
	if h.Now != nil {
		return h.Now().Unix()
	}
	return clock.Now().Unix()
}

// Answer is the echo model's answer to a prompt.
func Answer(prompt string) string { return Prefix + strings.ToUpper(prompt) }

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e, ok := inference.Lookup(r.URL.Path)
	if !ok {
		inference.WriteError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no route %s", r.URL.Path), true)
		return
	}
	if r.Method != e.Method {
		inference.WriteError(w, http.StatusMethodNotAllowed, "method_not_allowed", fmt.Sprintf("%s wants %s", e.Path, e.Method), true)
		return
	}
	if !e.HasBody {
		writeJSON(w, map[string]any{"object": "list", "data": []any{
			map[string]any{"id": Model, "object": "model", "created": 0, "owned_by": "kbs"},
		}})
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		inference.WriteError(w, http.StatusRequestEntityTooLarge, "request_too_large", "request body too large", true)
		return
	}
	var req request
	if err := json.Unmarshal(body, &req); err != nil {
		inference.WriteError(w, http.StatusBadRequest, "invalid_request", "invalid JSON body: "+err.Error(), true)
		return
	}
	switch {
	case req.Model == "":
		inference.WriteError(w, http.StatusBadRequest, "invalid_request", "you must provide a model parameter", true)
		return
	case req.Model != Model:
		inference.WriteError(w, http.StatusNotFound, "model_not_found", fmt.Sprintf("The model `%s` does not exist.", req.Model), true)
		return
	}
	switch e.Path {
	case "/v1/chat/completions":
		h.chat(w, &req)
	case "/v1/completions":
		h.completions(w, &req)
	case "/v1/embeddings":
		h.embeddings(w, &req)
	}
}

// request holds the fields of the three POST routes that the echo model
// reads.
type request struct {
	Model               string          `json:"model"`
	Messages            json.RawMessage `json:"messages"`
	Prompt              json.RawMessage `json:"prompt"`
	Input               json.RawMessage `json:"input"`
	Stream              bool            `json:"stream"`
	StreamOptions       *streamOptions  `json:"stream_options"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Dimensions          *int            `json:"dimensions"`
	EncodingFormat      string          `json:"encoding_format"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type message struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// text returns a message content's text: a string, or the text parts of
// an array.
func text(c json.RawMessage) (string, bool) {
	var s string
	if json.Unmarshal(c, &s) == nil {
		return s, true
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if json.Unmarshal(c, &parts) != nil {
		return "", false
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type == "text" {
			b.WriteString(p.Text)
		}
	}
	return b.String(), true
}

// words splits s into chunks at word starts, keeping the spaces: "a b" ->
// "a", " b".
func words(s string) []string {
	var out []string
	start := 0
	for i := 1; i < len(s); i++ {
		if s[i] == ' ' && s[i-1] != ' ' {
			out = append(out, s[start:i])
			start = i
		}
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

// limit cuts ws to the request's token limit.
func (r *request) limit(ws []string) ([]string, string) {
	n := r.MaxTokens
	if r.MaxCompletionTokens != nil {
		n = r.MaxCompletionTokens
	}
	if n != nil && *n >= 0 && *n < len(ws) {
		return ws[:*n], "length"
	}
	return ws, "stop"
}

func usage(prompt, completion int) map[string]int {
	return map[string]int{"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
}

func (h *Handler) chat(w http.ResponseWriter, req *request) {
	var msgs []message
	if json.Unmarshal(req.Messages, &msgs) != nil || len(msgs) == 0 {
		inference.WriteError(w, http.StatusBadRequest, "invalid_request", "'messages' must be a non-empty array of messages", true)
		return
	}
	prompt := ""
	for _, m := range msgs {
		t, ok := text(m.Content)
		if !ok {
			inference.WriteError(w, http.StatusBadRequest, "invalid_request", "a message's 'content' must be a string or an array of parts", true)
			return
		}
		if m.Role == "user" {
			prompt = t
		}
	}
	ws, finish := req.limit(words(Answer(prompt)))
	pt := len(words(prompt))
	id, created := "chatcmpl-kbs-echo", h.now()
	if !req.Stream {
		writeJSON(w, map[string]any{
			"id": id, "object": "chat.completion", "created": created, "model": Model,
			"choices": []any{map[string]any{"index": 0, "finish_reason": finish,
				"message": map[string]any{"role": "assistant", "content": strings.Join(ws, "")}}},
			"usage": usage(pt, len(ws)),
		})
		return
	}
	chunk := func(delta map[string]any, finish any) map[string]any {
		return map[string]any{"id": id, "object": "chat.completion.chunk", "created": created, "model": Model,
			"choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish}}}
	}
	sse := startSSE(w)
	sse.send(chunk(map[string]any{"role": "assistant", "content": ""}, nil))
	for _, t := range ws {
		sse.send(chunk(map[string]any{"content": t}, nil))
	}
	sse.send(chunk(map[string]any{}, finish))
	if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
		sse.send(map[string]any{"id": id, "object": "chat.completion.chunk", "created": created, "model": Model,
			"choices": []any{}, "usage": usage(pt, len(ws))})
	}
	sse.done()
}

func (h *Handler) completions(w http.ResponseWriter, req *request) {
	var prompts []string
	var one string
	if json.Unmarshal(req.Prompt, &one) == nil {
		prompts = []string{one}
	} else if json.Unmarshal(req.Prompt, &prompts) != nil || len(prompts) == 0 {
		inference.WriteError(w, http.StatusBadRequest, "invalid_request", "'prompt' must be a string or a non-empty array of strings", true)
		return
	}
	id, created := "cmpl-kbs-echo", h.now()
	type answer struct {
		words  []string
		finish string
	}
	var as []answer
	pt, ct := 0, 0
	for _, p := range prompts {
		ws, finish := req.limit(words(Answer(p)))
		as = append(as, answer{ws, finish})
		pt += len(words(p))
		ct += len(ws)
	}
	if !req.Stream {
		var choices []any
		for i, a := range as {
			choices = append(choices, map[string]any{"index": i, "text": strings.Join(a.words, ""), "finish_reason": a.finish, "logprobs": nil})
		}
		writeJSON(w, map[string]any{"id": id, "object": "text_completion", "created": created, "model": Model, "choices": choices, "usage": usage(pt, ct)})
		return
	}
	chunk := func(i int, text string, finish any) map[string]any {
		return map[string]any{"id": id, "object": "text_completion", "created": created, "model": Model,
			"choices": []any{map[string]any{"index": i, "text": text, "finish_reason": finish, "logprobs": nil}}}
	}
	sse := startSSE(w)
	for i, a := range as {
		for _, t := range a.words {
			sse.send(chunk(i, t, nil))
		}
		sse.send(chunk(i, "", a.finish))
	}
	if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
		sse.send(map[string]any{"id": id, "object": "text_completion", "created": created, "model": Model, "choices": []any{}, "usage": usage(pt, ct)})
	}
	sse.done()
}

// Embedding returns the echo model's embedding of s in dims dimensions: a
// unit vector from SHA-256 of s.
func Embedding(s string, dims int) []float32 {
	v := make([]float32, dims)
	var norm float64
	for i := range v {
		sum := sha256.Sum256(fmt.Appendf(nil, "%d\x00%s", i, s))
		x := float64(int32(binary.BigEndian.Uint32(sum[:]))) / math.MaxInt32
		v[i] = float32(x)
		norm += x * x
	}
	if norm > 0 {
		for i := range v {
			v[i] = float32(float64(v[i]) / math.Sqrt(norm))
		}
	}
	return v
}

func (h *Handler) embeddings(w http.ResponseWriter, req *request) {
	var inputs []string
	var one string
	if json.Unmarshal(req.Input, &one) == nil {
		inputs = []string{one}
	} else if json.Unmarshal(req.Input, &inputs) != nil || len(inputs) == 0 {
		inference.WriteError(w, http.StatusBadRequest, "invalid_request", "'input' must be a string or a non-empty array of strings", true)
		return
	}
	dims := 8
	if req.Dimensions != nil {
		dims = *req.Dimensions
	}
	if dims < 1 || dims > 4096 {
		inference.WriteError(w, http.StatusBadRequest, "invalid_request", "'dimensions' must be from 1 to 4096", true)
		return
	}
	if req.EncodingFormat != "" && req.EncodingFormat != "float" && req.EncodingFormat != "base64" {
		inference.WriteError(w, http.StatusBadRequest, "invalid_request", "'encoding_format' must be float or base64", true)
		return
	}
	var data []any
	tokens := 0
	for i, in := range inputs {
		v := Embedding(in, dims)
		tokens += len(words(in))
		var emb any = v
		if req.EncodingFormat == "base64" {
			b := make([]byte, 4*len(v))
			for j, x := range v {
				binary.LittleEndian.PutUint32(b[4*j:], math.Float32bits(x))
			}
			emb = base64.StdEncoding.EncodeToString(b)
		}
		data = append(data, map[string]any{"object": "embedding", "index": i, "embedding": emb})
	}
	writeJSON(w, map[string]any{"object": "list", "data": data, "model": Model,
		"usage": map[string]int{"prompt_tokens": tokens, "total_tokens": tokens}})
}

func writeJSON(w http.ResponseWriter, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(b, '\n'))
}

type sseWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func startSSE(w http.ResponseWriter) *sseWriter {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	return &sseWriter{w: w, rc: http.NewResponseController(w)}
}

func (s *sseWriter) send(v any) {
	b, _ := json.Marshal(v)
	s.raw("data: " + string(b) + "\n\n")
}

func (s *sseWriter) raw(ev string) {
	io.WriteString(s.w, ev)
	s.rc.Flush()
}

func (s *sseWriter) done() { s.raw("data: [DONE]\n\n") }
