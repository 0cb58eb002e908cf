// Package worker is the worker side of encrypted inference: an HTTP
// handler, run inside the confidential VM, that opens the sealed OpenAI
// requests a client proxy sends (kbs/inference/proxy), forwards them to an
// OpenAI-compatible inference server in the same VM (the upstream), and
// seals the upstream's answer back to the proxy — a streamed answer one
// server-sent event per frame, as the upstream produces them.
//
// # What it trusts and guarantees
//
// It trusts its Keyring (keys released to this worker after attestation,
// kbs/inference/worker.BrokerSource) and the upstream, which runs inside
// the same VM. It trusts nothing in a request until the request opened
// under the key its header names. In order, a request is refused when:
// its envelope or header is malformed or over the size limits (400, 413);
// its header does not match the URL path, the method or the envelope's
// clear model and stream (400); it was sealed for another instance of the
// worker (409 worker_instance: each start draws a new random instance id,
// sent on every answer in the Kbs-Worker-Instance header); its time is
// outside the replay window (400 stale_request); the key is not one the
// worker serves or can fetch (403 key_refused, 503 key_unavailable); it
// does not open (400 decryption_failed); the opened body's model and
// stream differ from the header's (400); its request id was accepted
// before (409 replayed_request) or the replay cache is full (429). Only
// then is the request id remembered and the upstream called, and
// everything after — the upstream's status, content type and body, or the
// worker's own error when the upstream fails — is sealed to the answer
// key of exactly that request. Refusals are OpenAI-style JSON errors and
// change nothing.
package worker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/inference"
)

// Config configures a Worker.
type Config struct {
	// Keys holds the prompt keys. Required.
	Keys *Keyring
	// Upstream is the base URL of the OpenAI-compatible inference server,
	// e.g. "http://127.0.0.1:8000" (the /v1/... paths are appended).
	// Required.
	Upstream string
	// UpstreamClient sends requests to the upstream. Optional; default a
	// client without an overall timeout (streams may run long) that waits
	// at most UpstreamTimeout for the answer's headers.
	UpstreamClient *http.Client
	// UpstreamTimeout bounds one upstream request, streaming included.
	// Optional; default 10 minutes.
	UpstreamTimeout time.Duration
	// Replay is the replay cache. Optional; default
	// inference.NewReplayCache(0, 0).
	Replay *inference.ReplayCache
	// Now returns the current time. Optional; default clock.Now.
	Now func() time.Time
	// Logger receives one line per refused request and upstream failure,
	// never request or answer content. Optional; default none.
	Logger hclog.Logger
}

// A Worker serves the sealed OpenAI endpoints (inference.Endpoints, each
// as POST with an api.InferenceEnvelope) and GET /healthz. It is safe for
// concurrent use.
type Worker struct {
	cfg      Config
	upstream *url.URL
	instance [api.InstanceSize]byte
	hex      string
}

// New returns a worker with a fresh random instance id.
func New(cfg Config) (*Worker, error) {
	if cfg.Keys == nil {
		return nil, errors.New("worker: no keyring")
	}
	u, err := ParseUpstream(cfg.Upstream)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = 10 * time.Minute
	}
	if cfg.UpstreamClient == nil {
		cfg.UpstreamClient = &http.Client{Transport: &http.Transport{
			ResponseHeaderTimeout: cfg.UpstreamTimeout,
			MaxIdleConnsPerHost:   64,
			IdleConnTimeout:       90 * time.Second,
			// The upstream is in the same VM: no proxy from the
			// environment may see the plaintext.
			Proxy: nil,
		}}
	}
	if cfg.Replay == nil {
		cfg.Replay = inference.NewReplayCache(0, 0)
	}
	if cfg.Now == nil {
		cfg.Now = clock.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	w := &Worker{cfg: cfg, upstream: u}
	rand.Read(w.instance[:])
	w.hex = hex.EncodeToString(w.instance[:])
	return w, nil
}

// ParseUpstream parses an upstream base URL: http or https, a host, an
// optional path prefix; a trailing "/v1" is dropped (the OpenAI paths
// bring their own).
func ParseUpstream(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("upstream %q: want http://HOST:PORT or https://HOST:PORT[/PREFIX]", s)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.Path = strings.TrimSuffix(u.Path, "/v1")
	return u, nil
}

// Instance returns the worker's instance id in hex.
func (w *Worker) Instance() string { return w.hex }

// refusal is a request refused before its answer was sealed.
type refusal struct {
	status int
	code   string
	msg    string
}

func refuse(status int, code, format string, args ...any) *refusal {
	return &refusal{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

func (w *Worker) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	rw.Header().Set(api.HeaderWorkerInstance, w.hex)
	if r.URL.Path == "/healthz" {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			inference.WriteError(rw, http.StatusMethodNotAllowed, inference.CodeMethodNotAllowed, "GET /healthz", false)
			return
		}
		io.WriteString(rw, "ok\n")
		return
	}
	op, ref := w.open(r.Context(), rw, r)
	if ref != nil {
		w.cfg.Logger.Info("refused a request", "path", r.URL.Path, "code", ref.code, "reason", ref.msg)
		inference.WriteError(rw, ref.status, ref.code, ref.msg, ref.status == http.StatusConflict && ref.code == inference.CodeWorkerInstance)
		return
	}
	defer clear(op.body)
	w.forward(r.Context(), rw, op)
}

// opened is a request that authenticated.
type opened struct {
	h      *api.InferenceRequest
	body   []byte
	sealer *api.ResponseSealer
}

// open decides whether to serve r: everything up to and including
// authentication and the replay check.
func (w *Worker) open(ctx context.Context, rw http.ResponseWriter, r *http.Request) (*opened, *refusal) {
	ep, ok := inference.Lookup(r.URL.Path)
	if !ok {
		return nil, refuse(http.StatusNotFound, inference.CodeNotFound, "no route %s on a kbs worker", r.URL.Path)
	}
	if r.Method != http.MethodPost {
		return nil, refuse(http.StatusMethodNotAllowed, inference.CodeMethodNotAllowed, "a kbs worker takes sealed requests by POST")
	}
	raw, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, api.MaxInferenceEnvelope))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, refuse(http.StatusRequestEntityTooLarge, inference.CodeTooLarge, "body larger than %d bytes", api.MaxInferenceEnvelope)
		}
		return nil, refuse(http.StatusBadRequest, inference.CodeInvalidRequest, "couldn't read the body: %v", err)
	}
	env, err := parseEnvelope(raw)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, inference.CodeInvalidRequest, "%v", err)
	}
	h, _, _, err := api.ParseInferenceRequest(env.Sealed)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, inference.CodeInvalidRequest, "%v", err)
	}
	switch {
	case h.Path != ep.Path || h.Method != ep.Method:
		return nil, refuse(http.StatusBadRequest, inference.CodeInvalidRequest, "the sealed request is for %s %s, not %s %s", h.Method, h.Path, ep.Method, ep.Path)
	case h.Model != env.Model || h.Stream != env.Stream:
		return nil, refuse(http.StatusBadRequest, inference.CodeInvalidRequest, "the clear model and stream differ from the sealed header's")
	case h.Worker != w.instance:
		return nil, refuse(http.StatusConflict, inference.CodeWorkerInstance, "the request was sealed for worker instance %x, this is %s (it restarted): seal it again for this one", h.Worker, w.hex)
	}
	now := w.cfg.Now()
	if err := w.cfg.Replay.CheckTime(h.Time, now); err != nil {
		return nil, refuse(http.StatusBadRequest, inference.CodeStale, "%v: check the clocks of the proxy and the worker", err)
	}
	k, err := w.cfg.Keys.Get(ctx, h.KeyID, h.KeyVersion)
	if err != nil {
		var ke *KeyError
		if errors.As(err, &ke) && ke.Code == inference.CodeKeyUnavailable {
			return nil, refuse(http.StatusServiceUnavailable, ke.Code, "%v", err)
		}
		return nil, refuse(http.StatusForbidden, inference.CodeKeyRefused, "%v", err)
	}
	_, body, err := api.OpenInferenceRequest(k, env.Sealed)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, inference.CodeDecryption, "%v", err)
	}
	if ep.HasBody {
		model, stream, err := inference.RequestFields(body)
		if err != nil || model != h.Model || (stream && ep.CanStream) != h.Stream {
			clear(body)
			return nil, refuse(http.StatusBadRequest, inference.CodeInvalidRequest, "the sealed body's model and stream differ from its header's")
		}
	} else if len(body) != 0 {
		clear(body)
		return nil, refuse(http.StatusBadRequest, inference.CodeInvalidRequest, "%s %s takes no body", ep.Method, ep.Path)
	}
	if err := w.cfg.Replay.Add(h.ID, h.Time, now); err != nil {
		clear(body)
		switch {
		case errors.Is(err, inference.ErrReplayed):
			return nil, refuse(http.StatusConflict, inference.CodeReplayed, "request %x: %v", h.ID, err)
		case errors.Is(err, inference.ErrCacheFull):
			return nil, refuse(http.StatusTooManyRequests, inference.CodeBusy, "%v", err)
		}
		return nil, refuse(http.StatusBadRequest, inference.CodeStale, "%v", err)
	}
	s, err := api.NewResponseSealer(k, env.Sealed)
	if err != nil {
		clear(body)
		return nil, refuse(http.StatusInternalServerError, inference.CodeUpstream, "couldn't set up the answer's encryption")
	}
	return &opened{h: h, body: body, sealer: s}, nil
}

// parseEnvelope decodes the worker's body strictly: one JSON object with
// exactly the envelope's fields and nothing after it.
func parseEnvelope(b []byte) (*api.InferenceEnvelope, error) {
	var env api.InferenceEnvelope
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&env); err != nil {
		return nil, fmt.Errorf("the body is not a kbs inference envelope: %v", err)
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, errors.New("the body has data after its JSON object")
	}
	if len(env.Sealed) == 0 {
		return nil, errors.New("the envelope has no kbs_sealed request")
	}
	return &env, nil
}

// answer writes the sealed frames of one answer.
type answer struct {
	s  *api.ResponseSealer
	fw *inference.FrameWriter
}

func (a *answer) frame(p []byte, final bool) error {
	f, err := a.s.Seal(p, final)
	if err != nil {
		return err
	}
	return a.fw.Write(f)
}

// body seals b as frames, the last one final.
func (a *answer) body(b []byte) error {
	for len(b) > api.MaxInferenceFrame {
		if err := a.frame(b[:api.MaxInferenceFrame], false); err != nil {
			return err
		}
		b = b[api.MaxInferenceFrame:]
	}
	return a.frame(b, true)
}

// fail seals the worker's own OpenAI-style error as the whole answer.
func (a *answer) fail(status int, code, msg string) error {
	if err := a.head(status, "application/json"); err != nil {
		return err
	}
	b, _ := json.Marshal(inference.NewError(status, code, msg))
	return a.body(append(b, '\n'))
}

func (a *answer) head(status int, ctype string) error {
	f, err := a.s.SealHead(api.InferenceHead{Status: status, ContentType: ctype})
	if err != nil {
		return err
	}
	return a.fw.Write(f)
}

// forward calls the upstream with the opened request and seals its
// answer.
func (w *Worker) forward(ctx context.Context, rw http.ResponseWriter, op *opened) {
	rw.Header().Set("Content-Type", "text/event-stream")
	rw.Header().Set("Cache-Control", "no-cache")
	rw.WriteHeader(http.StatusOK)
	a := &answer{s: op.sealer, fw: inference.NewFrameWriter(rw)}
	ctx, cancel := context.WithTimeout(ctx, w.cfg.UpstreamTimeout)
	defer cancel()
	u := *w.upstream
	u.Path += op.h.Path
	var rd io.Reader
	if op.h.Method == http.MethodPost {
		rd = bytes.NewReader(op.body)
	}
	req, err := http.NewRequestWithContext(ctx, op.h.Method, u.String(), rd)
	if err != nil {
		a.fail(http.StatusInternalServerError, inference.CodeUpstream, "worker: couldn't build the upstream request")
		return
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if op.h.Stream {
		req.Header.Set("Accept", "text/event-stream")
	} else {
		req.Header.Set("Accept", "application/json")
	}
	resp, err := w.cfg.UpstreamClient.Do(req)
	if err != nil {
		w.cfg.Logger.Warn("upstream unreachable", "path", op.h.Path, "error", err)
		a.fail(http.StatusBadGateway, inference.CodeUpstream, "worker: the inference server did not answer: "+err.Error())
		return
	}
	defer resp.Body.Close()
	ctype := resp.Header.Get("Content-Type")
	if strings.HasPrefix(ctype, "text/event-stream") {
		w.stream(a, resp, op.h.Path)
		return
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, api.MaxInferenceAnswer+1))
	switch {
	case err != nil:
		a.fail(http.StatusBadGateway, inference.CodeUpstream, "worker: reading the inference server's answer: "+err.Error())
	case len(b) > api.MaxInferenceAnswer:
		a.fail(http.StatusBadGateway, inference.CodeUpstream, fmt.Sprintf("worker: the inference server's answer is larger than %d bytes", api.MaxInferenceAnswer))
	default:
		if a.head(resp.StatusCode, ctype) == nil {
			a.body(b)
		}
	}
	clear(b)
}

// stream seals an upstream event stream, one event per frame, each
// flushed as it arrives, then an empty final frame. An upstream that
// fails mid-stream gets an error event (what OpenAI's own API sends), so
// that the application sees an error rather than a short answer.
func (w *Worker) stream(a *answer, resp *http.Response, path string) {
	if err := a.head(resp.StatusCode, resp.Header.Get("Content-Type")); err != nil {
		return
	}
	er := inference.NewEventReader(resp.Body, 0)
	for {
		ev, err := er.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			w.cfg.Logger.Warn("upstream stream failed", "path", path, "error", err)
			b, _ := json.Marshal(inference.NewError(http.StatusBadGateway, inference.CodeUpstream, "worker: the inference server's stream failed: "+err.Error()))
			if a.frame([]byte("data: "+string(b)+"\n\n"), false) != nil {
				return
			}
			break
		}
		if err := a.frame(ev, false); err != nil {
			// The proxy went away; the upstream request is cancelled
			// with the context.
			return
		}
	}
	a.frame(nil, true)
}
