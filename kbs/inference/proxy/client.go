package proxy

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/inference"
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// Worker is the worker's base URL, e.g. "http://10.0.0.5:8080".
	// Required.
	Worker string
	// Key returns the prompt key to seal with (called once per request, so
	// that a rotated key file is picked up). Required.
	Key func() (*api.KeyFile, error)
	// HTTPClient sends requests to the worker. Optional; default a client
	// that waits up to 10 minutes for an answer's headers and has no
	// overall timeout (streams may run long).
	HTTPClient *http.Client
	// Now returns the current time, sealed into each request. Optional;
	// default clock.Now.
	Now func() time.Time
}

// A Client sends sealed OpenAI requests to a worker and opens its answers:
// the sealing half of the proxy, usable on its own ('kbsctl prompt send').
// It is safe for concurrent use.
type Client struct {
	cfg  ClientConfig
	base string

	mu       sync.Mutex
	instance *[api.InstanceSize]byte
}

// NewClient returns a client of the worker at cfg.Worker. It does not
// connect.
func NewClient(cfg ClientConfig) (*Client, error) {
	u, err := url.Parse(cfg.Worker)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("worker URL %q: want http://HOST:PORT", cfg.Worker)
	}
	if cfg.Key == nil {
		return nil, errors.New("no key")
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Transport: &http.Transport{
			ResponseHeaderTimeout: 10 * time.Minute,
			MaxIdleConnsPerHost:   64,
			IdleConnTimeout:       90 * time.Second,
		}}
	}
	if cfg.Now == nil {
		cfg.Now = clock.Now
	}
	return &Client{cfg: cfg, base: strings.TrimSuffix(u.String(), "/")}, nil
}

// UnreachableError reports that the worker could not be reached, or the
// connection broke before its answer's headers.
type UnreachableError struct {
	URL string
	Err error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("the worker at %s is unreachable: %v", e.URL, e.Err)
}
func (e *UnreachableError) Unwrap() error { return e.Err }

// WorkerError is a refusal by the worker, sent in clear before it could
// seal an answer (its JSON error), or an answer that is not a kbs worker's.
// Nothing authenticates it: a host can forge it, which only refuses
// service.
type WorkerError struct {
	Status int
	// Code is the worker's error code (inference.Code*), or "" when the
	// answer was not a kbs worker's error body.
	Code    string
	Message string
}

func (e *WorkerError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("the worker answered %d %s without a kbs error: %s", e.Status, http.StatusText(e.Status), e.Message)
	}
	return fmt.Sprintf("the worker refused the request (%d %s): %s", e.Status, e.Code, e.Message)
}

// IntegrityError reports an answer whose frames failed: tampered with,
// dropped, reordered, truncated, or not frames at all.
type IntegrityError struct{ Err error }

func (e *IntegrityError) Error() string {
	return "the worker's answer failed authentication (altered, reordered, dropped or cut short between worker and proxy): " + e.Err.Error()
}
func (e *IntegrityError) Unwrap() error { return e.Err }

// A Response is an opened answer: the upstream's status and content type,
// and its body piece by piece (for event streams, one event per piece),
// each authenticated in order.
type Response struct {
	Status      int
	ContentType string

	body   io.ReadCloser
	fr     *inference.FrameReader
	opener *api.ResponseOpener
}

// Next returns the next piece of the body, or io.EOF once the final frame
// authenticated. Any other error is an *IntegrityError or a read error,
// and the answer must be considered incomplete.
func (r *Response) Next() ([]byte, error) {
	for {
		if r.opener.Ended() {
			return nil, io.EOF
		}
		frame, err := r.fr.Next()
		switch {
		case err == io.EOF:
			return nil, &IntegrityError{Err: fmt.Errorf("the answer ended after %d frames without its last one", r.opener.Seq())}
		case errors.Is(err, inference.ErrFraming):
			return nil, &IntegrityError{Err: err}
		case err != nil:
			return nil, &IntegrityError{Err: fmt.Errorf("reading the answer: %w", err)}
		}
		p, _, err := r.opener.Open(frame)
		if err != nil {
			return nil, &IntegrityError{Err: err}
		}
		if len(p) > 0 {
			return p, nil
		}
	}
}

// ReadAll returns the whole body, at most max bytes.
func (r *Response) ReadAll(max int) ([]byte, error) {
	var b []byte
	for {
		p, err := r.Next()
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return nil, err
		}
		if len(b)+len(p) > max {
			return nil, fmt.Errorf("the answer is larger than %d bytes", max)
		}
		b = append(b, p...)
	}
}

// Close releases the connection.
func (r *Response) Close() error { return r.body.Close() }

// Do seals body (the application's JSON; nil for GET) for method and
// path, sends it to the worker and returns the opened head of its answer.
// model and stream are the request's clear fields (inference.RequestFields).
// A worker that restarted since the last request (worker_instance) gets
// the request sealed again once, for its new instance.
func (c *Client) Do(ctx context.Context, method, path string, body []byte, model string, stream bool) (*Response, error) {
	for attempt := 0; ; attempt++ {
		inst, err := c.workerInstance(ctx)
		if err != nil {
			return nil, err
		}
		resp, err := c.do(ctx, inst, method, path, body, model, stream)
		var we *WorkerError
		if attempt == 0 && errors.As(err, &we) && we.Code == inference.CodeWorkerInstance {
			continue
		}
		return resp, err
	}
}

// workerInstance returns the worker's instance id, asking GET /healthz
// when none is known.
func (c *Client) workerInstance(ctx context.Context) ([api.InstanceSize]byte, error) {
	c.mu.Lock()
	inst := c.instance
	c.mu.Unlock()
	if inst != nil {
		return *inst, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/healthz", nil)
	if err != nil {
		return [api.InstanceSize]byte{}, err
	}
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return [api.InstanceSize]byte{}, &UnreachableError{URL: c.base, Err: err}
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if !c.learnInstance(resp) {
		return [api.InstanceSize]byte{}, &WorkerError{Status: resp.StatusCode, Message: "GET /healthz has no " + api.HeaderWorkerInstance + " header: is this a kbs worker?"}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return *c.instance, nil
}

// learnInstance remembers the instance id a worker's answer names.
func (c *Client) learnInstance(resp *http.Response) bool {
	var id [api.InstanceSize]byte
	h := resp.Header.Get(api.HeaderWorkerInstance)
	if len(h) != 2*len(id) {
		return false
	}
	if _, err := hex.Decode(id[:], []byte(h)); err != nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.instance = &id
	return true
}

func (c *Client) do(ctx context.Context, inst [api.InstanceSize]byte, method, path string, body []byte, model string, stream bool) (*Response, error) {
	k, err := c.cfg.Key()
	if err != nil {
		return nil, err
	}
	h := &api.InferenceRequest{ID: api.NewRequestID(), Time: c.cfg.Now().Unix(), Worker: inst, Method: method, Path: path, Model: model, Stream: stream}
	sealed, err := api.SealInferenceRequest(k, h, body)
	if err != nil {
		return nil, err
	}
	env, err := json.Marshal(api.InferenceEnvelope{Model: model, Stream: stream, Sealed: sealed})
	if err != nil {
		return nil, err
	}
	opener, err := api.NewResponseOpener(k, sealed)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(env))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, &UnreachableError{URL: c.base, Err: err}
	}
	c.learnInstance(resp)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		defer resp.Body.Close()
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if d, ok := inference.ParseError(raw); ok && resp.StatusCode != http.StatusOK {
			return nil, &WorkerError{Status: resp.StatusCode, Code: d.Code, Message: d.Message}
		}
		return nil, &WorkerError{Status: resp.StatusCode, Message: firstLine(raw)}
	}
	r := &Response{body: resp.Body, fr: inference.NewFrameReader(resp.Body), opener: opener}
	frame, err := r.fr.Next()
	if err == nil {
		var p []byte
		if p, _, err = opener.Open(frame); err == nil {
			var head api.InferenceHead
			if head, err = api.ParseInferenceHead(p); err == nil {
				r.Status, r.ContentType = head.Status, head.ContentType
				return r, nil
			}
		}
	}
	resp.Body.Close()
	if err == io.EOF {
		err = errors.New("the answer ended before its head")
	}
	return nil, &IntegrityError{Err: err}
}

func firstLine(b []byte) string {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	}
	if len(b) > 200 {
		b = b[:200]
	}
	return strings.ToValidUTF8(string(b), "?")
}
