// Package inference is the protocol of encrypted inference: an application
// speaks the OpenAI HTTP API to a client proxy on its own machine
// (kbs/inference/proxy); the proxy seals each request under the client's
// prompt key and sends it to a worker inside a confidential VM
// (kbs/inference/worker), which opens it, forwards it to an
// OpenAI-compatible inference server beside it (vLLM, llama.cpp's server,
// Ollama, TGI, or the demo echo model of kbs/inference/echo), and seals
// the answer back, frame by frame for streamed answers. The wire formats
// are in kbs/api (SealInferenceRequest, ResponseSealer, ...); this package
// holds what both ends share beyond them: which OpenAI endpoints are
// carried, how a request's model and stream flag are read, the
// OpenAI-style error body, the worker's replay cache, and the event-stream
// framing on both hops.
//
// # What the host sees, and what it cannot do
//
// Between proxy and worker (the network and machines the host controls),
// these travel in clear: the OpenAI path and method, the model name and the
// stream flag (so that routers can route), the key id and version, the
// request id, the time the request was sealed, the worker instance it is
// for, and the sizes (padded to 256 bytes) and timing of the request and of
// each answer frame. Everything else — messages, prompt, input, every other
// request field, and the whole answer, status included — is sealed.
//
// The host cannot read or change a request or an answer; cannot make a
// worker run a request twice (the request id is bound into the
// encryption, and a worker keeps the ids it has seen for as long as their
// time is acceptable, see ReplayCache; a request names the worker
// instance it is for, so a restarted worker, whose cache is empty, refuses
// requests sealed for its previous life); cannot answer one request with
// the answer to another (the answer's key is derived from the whole
// sealed request); and cannot drop, repeat, reorder or cut short the frames
// of an answer without the proxy noticing (implicit sequence numbers, an
// authenticated last frame). It can refuse service, delay, and read the
// metadata above; the errors a worker returns before it could open a
// request (unknown key, replay, wrong instance) are not authenticated, and
// a host may forge them, which only refuses service too.
package inference

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// An Endpoint is an OpenAI API route that the proxy and the worker carry.
type Endpoint struct {
	Method string
	Path   string
	// HasBody reports whether requests carry a JSON body with a model.
	HasBody bool
	// CanStream reports whether the endpoint honours "stream": true.
	CanStream bool
}

// Endpoints are the OpenAI routes carried: chat and text completions
// (streamed or not), embeddings, and the model list.
var Endpoints = []Endpoint{
	{Method: http.MethodPost, Path: "/v1/chat/completions", HasBody: true, CanStream: true},
	{Method: http.MethodPost, Path: "/v1/completions", HasBody: true, CanStream: true},
	{Method: http.MethodPost, Path: "/v1/embeddings", HasBody: true},
	{Method: http.MethodGet, Path: "/v1/models"},
}

// Lookup returns the endpoint of path, or false.
func Lookup(path string) (Endpoint, bool) {
	for _, e := range Endpoints {
		if e.Path == path {
			return e, true
		}
	}
	return Endpoint{}, false
}

// RequestFields reads the fields of an OpenAI request body that travel in
// clear: model (a string, required) and stream (a boolean, false when
// absent or null). The body must be one JSON object with no repeated
// top-level keys (two "stream" keys could be read differently by the
// inference server than here) and nothing after it. The rest of the body
// is not interpreted.
func RequestFields(body []byte) (model string, stream bool, err error) {
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	tok, err := d.Token()
	if err != nil || tok != json.Delim('{') {
		return "", false, errors.New("the request body is not a JSON object")
	}
	seen := map[string]bool{}
	haveModel := false
	for d.More() {
		tok, err := d.Token()
		if err != nil {
			return "", false, fmt.Errorf("the request body is not valid JSON: %v", err)
		}
		key, _ := tok.(string)
		if seen[key] {
			return "", false, fmt.Errorf("the request body repeats the field %q", key)
		}
		seen[key] = true
		var raw json.RawMessage
		if err := d.Decode(&raw); err != nil {
			return "", false, fmt.Errorf("the request body is not valid JSON: %v", err)
		}
		switch key {
		case "model":
			if err := json.Unmarshal(raw, &model); err != nil {
				return "", false, errors.New(`"model" must be a string`)
			}
			haveModel = true
		case "stream":
			if string(raw) == "null" {
				continue
			}
			if err := json.Unmarshal(raw, &stream); err != nil {
				return "", false, errors.New(`"stream" must be a boolean`)
			}
		}
	}
	if _, err := d.Token(); err != nil {
		return "", false, fmt.Errorf("the request body is not valid JSON: %v", err)
	}
	if _, err := d.Token(); err != io.EOF {
		return "", false, errors.New("the request body has data after its JSON object")
	}
	if !haveModel || model == "" {
		return "", false, errors.New(`the request has no "model"`)
	}
	return model, stream, nil
}

// ErrorBody is an OpenAI-style error answer, which the OpenAI client
// libraries turn into their API error types:
//
//	{"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": "key_refused"}}
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the error object of an ErrorBody.
type ErrorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    string  `json:"code"`
}

// Error codes of the proxy and the worker (the code field of ErrorBody).
// The HTTP status each is sent with is in the comment.
const (
	// Both.
	CodeInvalidRequest   = "invalid_request"    // 400: malformed request
	CodeTooLarge         = "request_too_large"  // 413
	CodeNotFound         = "not_found"          // 404: not an OpenAI route carried
	CodeMethodNotAllowed = "method_not_allowed" // 405
	CodeKeyRefused       = "key_refused"        // 403: the key is deleted, unknown, or not served
	// Worker.
	CodeDecryption     = "decryption_failed" // 400: the sealed request does not open
	CodeStale          = "stale_request"     // 400: sealed too long ago, or in the future
	CodeReplayed       = "replayed_request"  // 409: a request id seen before
	CodeWorkerInstance = "worker_instance"   // 409: sealed for another worker instance
	CodeBusy           = "replay_cache_full" // 429: too many recent requests to remember
	CodeKeyUnavailable = "key_unavailable"   // 503: the key could not be fetched now
	CodeUpstream       = "upstream_error"    // 502: the inference server failed (sealed)
	// Proxy.
	CodeBrokerUnverified  = "broker_verification_failed" // 503
	CodeWorkerUnreachable = "worker_unreachable"         // 502
	CodeWorkerError       = "worker_error"               // 502: the worker refused or answered nonsense
	CodeIntegrity         = "answer_integrity"           // 502: an answer frame failed authentication
)

// ErrorType returns the OpenAI error type for an HTTP status.
func ErrorType(status int) string {
	switch {
	case status == http.StatusTooManyRequests:
		return "rate_limit_error"
	case status == http.StatusForbidden:
		return "permission_error"
	case status >= 500:
		return "server_error"
	default:
		return "invalid_request_error"
	}
}

// NewError returns the ErrorBody of code and message for status.
func NewError(status int, code, message string) ErrorBody {
	return ErrorBody{Error: ErrorDetail{Message: message, Type: ErrorType(status), Code: code}}
}

// WriteError writes an OpenAI-style error answer. retry false adds
// "x-should-retry: false", which tells the OpenAI client libraries not to
// retry (they retry 409, 429 and 5xx answers by default).
func WriteError(w http.ResponseWriter, status int, code, message string, retry bool) {
	b, _ := json.Marshal(NewError(status, code, message))
	w.Header().Set("Content-Type", "application/json")
	if !retry {
		w.Header().Set("X-Should-Retry", "false")
	}
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// ParseError decodes an OpenAI-style error body; ok is false when b is not
// one (no error object with a message).
func ParseError(b []byte) (ErrorDetail, bool) {
	var e struct {
		Error *struct {
			Message string `json:"message"`
			Type    string `json:"type"`
			Code    any    `json:"code"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &e) != nil || e.Error == nil || e.Error.Message == "" {
		return ErrorDetail{}, false
	}
	d := ErrorDetail{Message: e.Error.Message, Type: e.Error.Type}
	if c, ok := e.Error.Code.(string); ok {
		d.Code = c
	}
	return d, true
}
