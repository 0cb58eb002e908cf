package echo

import (
	"encoding/base64"
	"encoding/binary"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/kbs/inference"
)

func do(method, path, body string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	(&Handler{}).ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
	return rec
}

func TestErrorsLikeOpenAI(t *testing.T) {
	for _, tc := range []struct {
		method, path, body string
		status             int
		code               string
	}{
		{"POST", "/v1/chat/completions", `{`, 400, "invalid_request"},
		{"POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}]}`, 400, "invalid_request"},
		{"POST", "/v1/chat/completions", `{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}`, 404, "model_not_found"},
		{"POST", "/v1/chat/completions", `{"model":"kbs-echo","messages":[]}`, 400, "invalid_request"},
		{"POST", "/v1/completions", `{"model":"kbs-echo","prompt":[]}`, 400, "invalid_request"},
		{"POST", "/v1/embeddings", `{"model":"kbs-echo","input":"x","dimensions":0}`, 400, "invalid_request"},
		{"POST", "/v1/embeddings", `{"model":"kbs-echo","input":"x","encoding_format":"hex"}`, 400, "invalid_request"},
		{"GET", "/v1/chat/completions", ``, 405, "method_not_allowed"},
		{"GET", "/v1/files", ``, 404, "not_found"},
	} {
		rec := do(tc.method, tc.path, tc.body)
		if d, ok := inference.ParseError(rec.Body.Bytes()); rec.Code != tc.status || !ok || d.Code != tc.code {
			t.Errorf("%s %s %s = %d %s, want %d %s", tc.method, tc.path, tc.body, rec.Code, rec.Body, tc.status, tc.code)
		}
	}
}

func TestAnswers(t *testing.T) {
	rec := do("POST", "/v1/chat/completions", `{"model":"kbs-echo","stream":true,"max_tokens":3,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":[{"type":"text","text":"one two"},{"type":"image_url"},{"type":"text","text":" three"}]}]}`)
	body := rec.Body.String()
	if rec.Header().Get("Content-Type") != "text/event-stream" || !strings.HasSuffix(body, "data: [DONE]\n\n") ||
		!strings.Contains(body, `"content":"echo"`) || !strings.Contains(body, `"content":" a"`) || strings.Contains(body, `"content":" kbs"`) ||
		!strings.Contains(body, `"finish_reason":"length"`) || !strings.Contains(body, `"completion_tokens":3`) {
		t.Fatalf("stream:\n%s", body)
	}
	rec = do("POST", "/v1/completions", `{"model":"kbs-echo","prompt":["a","b"]}`)
	if !strings.Contains(rec.Body.String(), `"text":"`+Answer("a")+`"`) || !strings.Contains(rec.Body.String(), `"index":1`) {
		t.Fatalf("completions: %s", rec.Body)
	}
	rec = do("POST", "/v1/embeddings", `{"model":"kbs-echo","input":"x","encoding_format":"base64","dimensions":3}`)
	i := strings.Index(rec.Body.String(), `"embedding":"`)
	if i < 0 {
		t.Fatalf("embeddings: %s", rec.Body)
	}
	b64 := rec.Body.String()[i+len(`"embedding":"`):]
	raw, err := base64.StdEncoding.DecodeString(b64[:strings.IndexByte(b64, '"')])
	if err != nil || len(raw) != 12 {
		t.Fatalf("base64 embedding: %d bytes, %v", len(raw), err)
	}
	want := Embedding("x", 3)
	for j := range want {
		if got := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*j:])); got != want[j] {
			t.Fatalf("embedding[%d] = %v, want %v", j, got, want[j])
		}
	}
	if rec := do(http.MethodGet, "/v1/models", ""); !strings.Contains(rec.Body.String(), `"id":"kbs-echo"`) {
		t.Fatalf("models: %s", rec.Body)
	}
}
