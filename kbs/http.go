package kbs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/keystore"
	"github.com/kbs-dev/kbs/tlog"
)

// handlerFunc is an API handler: it writes a success answer itself, or
// returns an error that writeError maps to a status and an api.ErrorBody.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// Handler returns the broker's HTTP handler: every endpoint of the API, the
// log tiles, /healthz and /metrics. Handlers only read and decode the
// request, call the Broker's method, and write its answer.
func (b *Broker) Handler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern, name string, h handlerFunc) {
		mux.HandleFunc(pattern, b.wrap(name, h))
	}
	route("GET "+api.PathAttestation, "attestation", b.admitted(budgetAttestation, b.serveAttestation))
	route("GET "+api.PathManifest, "manifest", noBody(b.Manifest))
	route("GET "+api.PathManifestHistory, "manifest_history", noBody(b.ManifestHistory))
	route("PUT "+api.PathManifest, "manifest_put", b.admitted(budgetManifest, withBody(api.MaxManifestBody, b.UpdateManifest)))
	route("POST "+api.PathKeys, "key_upload", withBody(api.MaxKeyBody, b.UploadKey))
	route("GET "+api.PathKeys, "key_list", b.serveKeyList)
	route("GET "+api.PathKeys+"/{id...}", "key_info", b.serveKeyInfo)
	route("DELETE "+api.PathKeys+"/{id...}", "key_delete", func(w http.ResponseWriter, r *http.Request) error {
		return withBody(api.MaxKeyBody, func(ctx context.Context, req *api.KeyDelete) (*api.KeyDeleteResult, error) {
			return b.DeleteKey(ctx, r.PathValue("id"), req)
		})(w, r)
	})
	route("POST "+api.PathChallenge, "challenge", b.admitted(budgetChallenge, noBody(b.Challenge)))
	route("POST "+api.PathRelease, "release", func(w http.ResponseWriter, r *http.Request) error {
		body, err := readBody(w, r, api.MaxReleaseBody)
		if err != nil {
			return err
		}
		var req api.ReleaseRequest
		if err := decodeReleaseRequest(body, &req); err != nil {
			return err
		}
		ans, err := b.Release(r.Context(), &req)
		return reply(w, ans, err)
	})
	b.lifecycleRoutes(route)
	route("GET "+api.PathLogProof, "log_proof", b.serveLogProof)
	route("GET "+api.PathLogConsistency, "log_consistency", b.serveLogConsistency)
	route("GET "+api.PathWitnesses, "witnesses", noBody(b.Witnesses))
	mux.HandleFunc("GET "+api.PathLogPrefix+"checkpoint", b.serveCheckpoint) // cosigned (witness.go)
	// C2SP tlog-tiles, served by the log package with its own errors.
	tiles := tlog.NewHandler(b.cfg.Log)
	mux.HandleFunc("GET "+api.PathLogPrefix, func(w http.ResponseWriter, r *http.Request) {
		b.m.request("log_tiles", "served")
		tiles.ServeHTTP(w, r)
	})
	mux.HandleFunc("GET "+api.PathHealth, b.handleHealth)
	mux.HandleFunc("GET "+api.PathMetrics, b.handleMetrics)
	return &notFound{mux: mux, b: b}
}

// admitted serves h within the budget of class (ratelimit.go): a request
// beyond it, from its peer (PeerOf) or from all, is refused with
// Retry-After before its body is read.
func (b *Broker) admitted(class budgetClass, h handlerFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		done, err := b.budgets.of(class).admit(peerOf(r))
		if err != nil {
			return err
		}
		defer done()
		return h(w, r)
	}
}

// noBody serves a method that takes no request body.
func noBody[R any](f func(context.Context) (*R, error)) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		ans, err := f(r.Context())
		return reply(w, ans, err)
	}
}

// withBody serves a method whose request is a JSON body of at most limit
// bytes, decoded strictly (decodeBody).
func withBody[T, R any](limit int64, f func(context.Context, *T) (*R, error)) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		var req T
		if err := decodeBody(w, r, limit, &req); err != nil {
			return err
		}
		ans, err := f(r.Context(), &req)
		return reply(w, ans, err)
	}
}

// reply writes a method's answer as JSON (200), or returns its error for
// writeError.
func reply[T any](w http.ResponseWriter, v *T, err error) error {
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

func (b *Broker) serveAttestation(w http.ResponseWriter, r *http.Request) error {
	nonce, err := api.ParseNonce(r.URL.Query().Get("nonce"))
	if err != nil {
		return api.Errorf(api.CodeBadRequest, "%v", err)
	}
	since, _, err := queryUint(r, "since")
	if err != nil {
		return err
	}
	ans, err := b.Attestation(r.Context(), nonce, since)
	return reply(w, ans, err)
}

func (b *Broker) serveLogProof(w http.ResponseWriter, r *http.Request) error {
	index, ok, err := queryUint(r, "index")
	if err != nil {
		return err
	}
	if !ok {
		return api.Errorf(api.CodeBadRequest, "missing parameter index")
	}
	size, err := queryOptUint(r, "size")
	if err != nil {
		return err
	}
	ans, err := b.InclusionProof(r.Context(), index, size)
	return reply(w, ans, err)
}

func (b *Broker) serveLogConsistency(w http.ResponseWriter, r *http.Request) error {
	old, ok, err := queryUint(r, "old")
	if err != nil {
		return err
	}
	if !ok {
		return api.Errorf(api.CodeBadRequest, "missing parameter old")
	}
	newSize, err := queryOptUint(r, "new")
	if err != nil {
		return err
	}
	ans, err := b.ConsistencyProof(r.Context(), old, newSize)
	return reply(w, ans, err)
}

// notFound turns the mux's text 404 and 405 answers into JSON errors.
type notFound struct {
	mux *http.ServeMux
	b   *Broker
}

func (m *notFound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if _, pattern := m.mux.Handler(r); pattern != "" {
		m.mux.ServeHTTP(w, r)
		return
	}
	for _, method := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete} {
		r2 := r.Clone(r.Context())
		r2.Method = method
		if _, pattern := m.mux.Handler(r2); pattern != "" {
			m.b.writeError(w, r, "other", api.Errorf(api.CodeMethodNotAllowed, "method %s not allowed on %s", r.Method, r.URL.Path))
			return
		}
	}
	m.b.writeError(w, r, "other", api.Errorf(api.CodeNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path))
}

// wrap adds error mapping and request counting to h.
func (b *Broker) wrap(route string, h handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			b.writeError(w, r, route, err)
			return
		}
		b.m.request(route, "ok")
	}
}

// writeError is the one place where errors become HTTP statuses. API errors
// keep their code and message. Known sentinels map to their codes. Anything
// else is a 500 with a generic message; its details go to the log only.
func (b *Broker) writeError(w http.ResponseWriter, r *http.Request, route string, err error) {
	var (
		ae    *api.Error
		se    *statusError
		te    *throttleError
		mbe   *http.MaxBytesError
		kme   *KeyMismatchError
		cause error
	)
	switch {
	case errors.As(err, &se):
		ae, cause = se.err, se.cause
	case errors.As(err, &te):
		// Nothing was done: say when to try again (kbs/client does).
		ae = te.err
		w.Header().Set("Retry-After", strconv.FormatInt(retryAfterSeconds(te.after), 10))
	case errors.As(err, &ae):
	case errors.As(err, &mbe):
		ae = api.Errorf(api.CodeTooLarge, "request body larger than %d bytes", mbe.Limit)
	case errors.As(err, &kme):
		// The store does not hold what the log says: an operator problem,
		// stated precisely (key ids and versions are public in the log).
		ae, cause = api.Errorf(api.CodeInternal, "%v", kme), err
	case errors.Is(err, keystore.ErrNotFound):
		ae = api.Errorf(api.CodeNotFound, "%v", err)
	case errors.Is(err, keystore.ErrVersion):
		ae = api.Errorf(api.CodeConflict, "%v", err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		ae, cause = api.Errorf(api.CodeUnavailable, "request canceled or timed out"), err
	default:
		ae, cause = api.Errorf(api.CodeInternal, "internal error"), err
	}
	status := api.StatusOf(ae.Code)
	args := []any{"method", r.Method, "path", r.URL.Path, "status", status, "code", ae.Code, "message", ae.Message}
	if cause != nil {
		args = append(args, "cause", cause.Error())
	}
	if status >= 500 && te == nil && ae.Code != api.CodeRecovering {
		b.log.Error("request failed", args...)
	} else {
		b.log.Debug("request rejected", args...)
	}
	b.m.request(route, ae.Code)
	writeJSON(w, status, api.ErrorBody{Error: &api.Error{Code: ae.Code, Message: ae.Message}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		body = []byte(`{"error":{"code":"internal","message":"couldn't encode the answer"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}

// decodeBody reads at most limit bytes of r's body and decodes it strictly
// into v: one JSON object, no unknown fields, nothing after it.
func decodeBody(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	body, err := readBody(w, r, limit)
	if err != nil {
		return err
	}
	return decodeJSON(body, v)
}

// readBody reads at most limit bytes of r's body.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	var buf bytes.Buffer
	if n := r.ContentLength; n > 0 && n <= limit {
		buf.Grow(int(n) + bytes.MinRead) // one allocation for a body of the announced length
	}
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, limit)); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, api.Errorf(api.CodeTooLarge, "request body larger than %d bytes", limit)
		}
		return nil, api.Errorf(api.CodeBadRequest, "couldn't read the request body: %v", err)
	}
	return buf.Bytes(), nil
}

// decodeJSON is the strict decoder of every request body. It is separate
// from decodeBody so the fuzz targets reach it directly.
func decodeJSON(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return api.Errorf(api.CodeBadRequest, "empty request body")
	}
	d := json.NewDecoder(bytes.NewReader(body))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return api.Errorf(api.CodeBadRequest, "malformed JSON body: %v", err)
	}
	if _, err := d.Token(); err != io.EOF {
		return api.Errorf(api.CodeBadRequest, "malformed JSON body: data after the object")
	}
	return nil
}

// queryOptUint parses an optional unsigned decimal query parameter; nil
// when it is absent.
func queryOptUint(r *http.Request, name string) (*uint64, error) {
	v, ok, err := queryUint(r, name)
	if !ok || err != nil {
		return nil, err
	}
	return &v, nil
}

// queryUint parses an optional unsigned decimal query parameter.
func queryUint(r *http.Request, name string) (v uint64, present bool, err error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return 0, false, nil
	}
	v, err = strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, true, api.Errorf(api.CodeBadRequest, "parameter %s: %q is not an unsigned decimal integer", name, s)
	}
	return v, true, nil
}

func (b *Broker) handleHealth(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if b.closing.Load() {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	if _, err := b.cfg.Log.Checkpoint(ctx); err != nil {
		http.Error(w, "log unavailable", http.StatusServiceUnavailable)
		return
	}
	if b.appendFailing.Load() {
		http.Error(w, "log appends are failing", http.StatusServiceUnavailable)
		return
	}
	if b.halted.Load() != nil {
		http.Error(w, "stopped after a log or store failure; restart kbsd", http.StatusServiceUnavailable)
		return
	}
	if _, ok := b.HandedOver(); ok {
		http.Error(w, "handed over to its successor; stop this kbsd", http.StatusServiceUnavailable)
		return
	}
	if err := b.wit.health(); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

func (b *Broker) handleMetrics(w http.ResponseWriter, r *http.Request) {
	var g gauges
	if cp, err := b.cfg.Log.Checkpoint(r.Context()); err == nil {
		g.treeSize = cp.Size
	}
	g.pendingNonces = b.nonces.len()
	if am := b.active.Load(); am != nil {
		g.manifestVer = am.rec.Version
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	b.m.write(w, g)
	b.wit.writeMetrics(r.Context(), w)
	b.writeListenerMetrics(w)
}
