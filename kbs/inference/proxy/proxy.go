// Package proxy is the client side of encrypted inference: an HTTP
// handler that speaks the OpenAI API to applications on the client's
// machine (/v1/chat/completions, /v1/completions, /v1/embeddings,
// /v1/models; point an OpenAI SDK's base URL at it), seals each request
// under the client's prompt key and sends it to a worker
// (kbs/inference/worker), and opens the worker's answer — streamed answers
// event by event, each authenticated in order, as they arrive.
//
// # What it trusts and guarantees
//
// It trusts the prompt key and its Checker, which must verify the broker
// (its evidence, its manifest against the client's own, its log) and the
// key's status before any request leaves: the broker is what guarantees
// that only workers the manifest admits hold the key. It trusts nothing
// the worker or the network sends until it authenticated under the key.
// It never forwards the application's headers (an API key an SDK sends
// stays on the machine).
//
// Every failure is an OpenAI-style JSON error the SDKs understand
// (inference.ErrorBody), with these codes: broker_verification_failed
// (503), key_refused (403), worker_unreachable (502), worker_error (502:
// the worker refused, in clear, or answered something that is not kbs),
// answer_integrity (502: a frame failed authentication), and the
// request's own problems, invalid_request (400), request_too_large (413),
// not_found (404), method_not_allowed (405). Errors the proxy knows a retry
// cannot fix carry "x-should-retry: false". A streamed answer that fails
// after its first event has gone out ends with an error event
// (data: {"error": ...}, which the SDKs raise as an APIError) and a broken
// connection, never with a clean end: an application cannot mistake a cut
// or tampered stream for a complete one. The stream's "data: [DONE]" is
// held back until the final frame authenticated.
package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/hashicorp/go-hclog"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/inference"
)

// A Checker decides whether requests may go out: it verifies the broker
// and the key's status (kbsctl proxy re-verifies the broker at an
// interval). A *CheckError says which of the two failed; any other error
// counts as a failed verification.
type Checker interface {
	Check(ctx context.Context) error
}

// CheckError is a refusal by the Checker: Code is
// inference.CodeBrokerUnverified or inference.CodeKeyRefused.
type CheckError struct {
	Code string
	Err  error
}

func (e *CheckError) Error() string { return e.Err.Error() }
func (e *CheckError) Unwrap() error { return e.Err }

// Config configures a Proxy.
type Config struct {
	// Client seals requests and opens answers. Required.
	Client *Client
	// Checker is asked before each request. Required.
	Checker Checker
	// Logger receives one line per failed request (never content).
	// Optional; default none.
	Logger hclog.Logger
}

// A Proxy is the application-facing OpenAI API. It is safe for
// concurrent use.
type Proxy struct {
	cfg Config
}

// New returns a proxy.
func New(cfg Config) (*Proxy, error) {
	if cfg.Client == nil || cfg.Checker == nil {
		return nil, errors.New("proxy: a client and a checker are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	return &Proxy{cfg: cfg}, nil
}

func (p *Proxy) fail(w http.ResponseWriter, r *http.Request, status int, code, msg string, retry bool) {
	p.cfg.Logger.Info("request failed", "path", r.URL.Path, "status", status, "code", code, "reason", msg)
	inference.WriteError(w, status, code, msg, retry)
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ep, ok := inference.Lookup(r.URL.Path)
	if !ok {
		p.fail(w, r, http.StatusNotFound, inference.CodeNotFound, fmt.Sprintf("kbs proxy: no route %s %s (it carries /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models)", r.Method, r.URL.Path), false)
		return
	}
	if r.Method != ep.Method {
		p.fail(w, r, http.StatusMethodNotAllowed, inference.CodeMethodNotAllowed, fmt.Sprintf("kbs proxy: %s takes %s", ep.Path, ep.Method), false)
		return
	}
	var body []byte
	var model string
	var stream bool
	if ep.HasBody {
		var err error
		body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, api.MaxInferenceRequest))
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				p.fail(w, r, http.StatusRequestEntityTooLarge, inference.CodeTooLarge, fmt.Sprintf("kbs proxy: the request body is larger than %d bytes", api.MaxInferenceRequest), false)
				return
			}
			p.fail(w, r, http.StatusBadRequest, inference.CodeInvalidRequest, "kbs proxy: couldn't read the request body", false)
			return
		}
		defer clear(body)
		if model, stream, err = inference.RequestFields(body); err != nil {
			p.fail(w, r, http.StatusBadRequest, inference.CodeInvalidRequest, "kbs proxy: "+err.Error(), false)
			return
		}
		if err := api.ValidModelName(model); err != nil {
			p.fail(w, r, http.StatusBadRequest, inference.CodeInvalidRequest, "kbs proxy: "+err.Error()+" (the model name travels in clear in a header)", false)
			return
		}
		stream = stream && ep.CanStream
	}
	if err := p.cfg.Checker.Check(r.Context()); err != nil {
		var ce *CheckError
		if errors.As(err, &ce) && ce.Code == inference.CodeKeyRefused {
			p.fail(w, r, http.StatusForbidden, inference.CodeKeyRefused, "kbs proxy: the prompt key is refused: "+err.Error(), false)
			return
		}
		p.fail(w, r, http.StatusServiceUnavailable, inference.CodeBrokerUnverified, "kbs proxy: the key broker failed verification, nothing was sent: "+err.Error(), false)
		return
	}
	resp, err := p.cfg.Client.Do(r.Context(), ep.Method, ep.Path, body, model, stream)
	if err != nil {
		p.failRequest(w, r, err)
		return
	}
	defer resp.Close()
	if !stream || resp.Status != http.StatusOK || !strings.HasPrefix(resp.ContentType, "text/event-stream") {
		b, err := resp.ReadAll(api.MaxInferenceAnswer)
		if err != nil {
			p.failRequest(w, r, err)
			return
		}
		if resp.ContentType != "" {
			w.Header().Set("Content-Type", resp.ContentType)
		}
		w.WriteHeader(resp.Status)
		w.Write(b)
		clear(b)
		return
	}
	p.stream(w, r, resp)
}

// failRequest answers an error of Client.Do or of reading an answer that
// has not started.
func (p *Proxy) failRequest(w http.ResponseWriter, r *http.Request, err error) {
	var ue *UnreachableError
	var we *WorkerError
	var ie *IntegrityError
	switch {
	case errors.As(err, &ue):
		p.fail(w, r, http.StatusBadGateway, inference.CodeWorkerUnreachable, "kbs proxy: "+err.Error(), true)
	case errors.As(err, &we) && we.Code == inference.CodeKeyRefused:
		p.fail(w, r, http.StatusForbidden, inference.CodeKeyRefused, "kbs proxy: the worker refused the prompt key: "+we.Message, false)
	case errors.As(err, &we):
		retry := we.Code == inference.CodeKeyUnavailable || we.Code == inference.CodeBusy || we.Code == inference.CodeWorkerInstance
		p.fail(w, r, http.StatusBadGateway, inference.CodeWorkerError, "kbs proxy: "+err.Error(), retry)
	case errors.As(err, &ie):
		p.fail(w, r, http.StatusBadGateway, inference.CodeIntegrity, "kbs proxy: "+err.Error(), true)
	case errors.Is(err, context.Canceled):
		// The application went away.
	default:
		p.fail(w, r, http.StatusInternalServerError, inference.CodeWorkerError, "kbs proxy: "+err.Error(), false)
	}
}

// stream relays an authenticated event stream as it arrives.
func (p *Proxy) stream(w http.ResponseWriter, r *http.Request, resp *Response) {
	w.Header().Set("Content-Type", resp.ContentType)
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(resp.Status)
	rc := http.NewResponseController(w)
	rc.Flush()
	var held []byte // a "data: [DONE]" event, until the end authenticated
	for {
		ev, err := resp.Next()
		if err == io.EOF {
			if held != nil {
				w.Write(held)
				rc.Flush()
			}
			return
		}
		if err != nil {
			p.cfg.Logger.Warn("stream failed", "path", r.URL.Path, "error", err)
			if r.Context().Err() != nil {
				return
			}
			b, _ := json.Marshal(inference.NewError(http.StatusBadGateway, inference.CodeIntegrity, "kbs proxy: "+err.Error()))
			w.Write([]byte("data: " + string(b) + "\n\n"))
			rc.Flush()
			// Break the HTTP response, so that no client takes the
			// stream for a complete one.
			panic(http.ErrAbortHandler)
		}
		if held != nil {
			w.Write(held)
			held = nil
		}
		if inference.IsDone(ev) {
			held = ev
			continue
		}
		w.Write(ev)
		rc.Flush()
	}
}
