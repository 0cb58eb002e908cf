// Package client is the Go client of kbsd: the transport (a unix socket, or
// TCP with TLS 1.3), the API calls of docs/protocol.md, and the client side of
// the trust argument — verifying the broker before handing it anything.
//
// # What it trusts and guarantees
//
// A Client trusts nothing the broker says until VerifyBroker has checked it:
// fresh hardware evidence (through the attest.Verifier it is given, which
// decides which vendor or simulated roots count) whose REPORT_DATA binds the
// client's nonce, the broker's log key, HPKE key, TLS key and the current
// checkpoint; the evidence's claims against the service reference values of
// the caller's own manifest; the broker's active manifest byte for byte
// against the caller's (or, when following, through a chain of versions
// each signed by the owners of the one before and each included in the
// log); the inclusion of that manifest in the signed checkpoint; and the
// consistency of that checkpoint with the last one this client verified
// (kept in a tlog.CheckpointStore). The checkpoint is stored only when all
// of this holds.
//
// Over TCP, the broker's TLS certificate is never checked against a CA: the
// SHA-256 of its SubjectPublicKeyInfo is pinned through the attestation
// binding. The attestation answer itself is accepted only if it arrived on a
// connection with the key it binds; from then on every connection must
// present that key. A pin can be restored from an earlier verification
// (Config.TLSPin).
//
// The plain API methods (Manifest, ManifestHistory, Keys, ...) return what
// the broker sent, decoded and size-limited but otherwise unverified;
// VerifyBroker, ManifestChain (the manifest history as one signed chain,
// each version's log entry proven included), Entry, SyncLog and the Verify*
// methods say what they check. Stored checkpoints move only through
// tlog.Verifier.Advance, for which a Client is a proof source.
package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/transparency-dev/merkle/proof"

	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/tlog"
)

// Config configures a Client.
type Config struct {
	// Addr is the broker's address: "unix://PATH" or "https://HOST:PORT".
	// Required.
	Addr string
	// Verifier checks the broker's evidence. Required for VerifyBroker.
	Verifier attest.Verifier
	// Checkpoints keeps the last verified checkpoint of each log. Optional;
	// default an in-memory store (nothing survives the process).
	Checkpoints tlog.CheckpointStore
	// TLSPin is the hex SHA-256 of the broker's TLS SubjectPublicKeyInfo
	// learned by an earlier VerifyBroker. Optional: VerifyBroker sets it.
	TLSPin string
	// AllowUnpinned lets requests other than the attestation use a TLS
	// connection before a pin is known. Set it only for reads whose answers
	// are verified by other means (checkpoints, tiles and proofs, signed
	// manifests). Optional; default false.
	AllowUnpinned bool
	// Timeout bounds each HTTP request, its answer's body included.
	// Optional; default 30s.
	Timeout time.Duration
	// Retries is how many times a request is sent again after an answer
	// that says nothing was done and when to try again: 429 or 503 with a
	// Retry-After header (the broker's rate limits and admission control).
	// Each retry waits the longer of Retry-After and an exponential
	// back-off from 250 ms with jitter, and none is made when the wait
	// would pass MaxRetryWait or ctx's deadline. Optional; default 4;
	// negative disables retries.
	Retries int
	// MaxRetryWait is the longest a single retry waits. Optional; default
	// 30s.
	MaxRetryWait time.Duration
	// Now returns the current time. Optional; default clock.Now (the wall clock).
	Now func() time.Time
}

// Client talks to one broker. It is safe for concurrent use.
type Client struct {
	cfg  Config
	base string // URL prefix of every request

	pinned   *http.Client // every request but the attestation
	unpinned *http.Client // the attestation (checked against the answer)

	mu  sync.Mutex
	pin string
}

// Errors callers branch on.
var (
	// ErrNotPinned reports a TLS request made before the broker's TLS key
	// was pinned by VerifyBroker or Config.TLSPin.
	ErrNotPinned = errors.New("the broker's TLS key is not pinned yet: verify the broker first")
	// ErrPinMismatch reports a TLS connection whose key is not the pinned
	// one.
	ErrPinMismatch = errors.New("the broker's TLS key is not the attested one")
)

// Response size limits: generous for the largest legitimate answers.
const (
	maxJSONAnswer  = 4 << 20  // an attestation: evidence, a manifest and its entry
	maxListAnswer  = 32 << 20 // manifest history of many 48 KiB versions, key lists
	maxErrorAnswer = 64 << 10 // an error answer: {"error": {...}}
)

// answerLimit is the size limit of a success answer to a request for path.
func answerLimit(path string) int64 {
	switch pathOnly(path) {
	case api.PathManifestHistory, api.PathKeys:
		return maxListAnswer
	}
	return maxJSONAnswer
}

// Retry defaults (Config.Retries, Config.MaxRetryWait).
const (
	defaultRetries      = 4
	defaultMaxRetryWait = 30 * time.Second
	firstBackoff        = 250 * time.Millisecond
)

// ErrRedirect is the error (inside a *TransportError) for an answer that
// redirects: a kbs client never follows one. A broker serves every path
// itself; a redirect could only lead a client away from the address it
// verified (over TLS, past the pinned key to plain HTTP or another host).
var ErrRedirect = errors.New("the server answered with a redirect, which kbs clients never follow")

func refuseRedirect(*http.Request, []*http.Request) error { return ErrRedirect }

// New returns a client of the broker at cfg.Addr. It does not connect.
func New(cfg Config) (*Client, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Retries == 0 {
		cfg.Retries = defaultRetries
	}
	if cfg.MaxRetryWait <= 0 {
		cfg.MaxRetryWait = defaultMaxRetryWait
	}
	if cfg.Now == nil {
		cfg.Now = clock.Now
	}
	if cfg.Checkpoints == nil {
		cfg.Checkpoints = &tlog.MemStore{}
	}
	c := &Client{cfg: cfg, pin: strings.ToLower(cfg.TLSPin)}
	switch {
	case strings.HasPrefix(cfg.Addr, "unix://"):
		path := strings.TrimPrefix(cfg.Addr, "unix://")
		if path == "" {
			return nil, fmt.Errorf("client: address %q has no socket path", cfg.Addr)
		}
		tr := &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
			// A local socket gains nothing from compression, and both
			// ends pay for it on every tile of an audit.
			DisableCompression: true,
			// Keep a connection per tile fetch in flight (an audit
			// fetches several at once).
			MaxIdleConns:        16,
			MaxIdleConnsPerHost: 16,
			// Below kbsd's idle timeout, so that the client drops a
			// connection before the broker does.
			IdleConnTimeout: idleConnTimeout,
		}
		hc := &http.Client{Transport: tr, Timeout: cfg.Timeout, CheckRedirect: refuseRedirect}
		c.pinned, c.unpinned = hc, hc
		c.base = "http://kbs"
	case strings.HasPrefix(cfg.Addr, "https://"):
		u, err := url.Parse(cfg.Addr)
		if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return nil, fmt.Errorf("client: address %q: want https://HOST:PORT", cfg.Addr)
		}
		c.base = "https://" + u.Host
		c.pinned = c.tlsClient(c.checkPinned)
		c.unpinned = c.tlsClient(func(tls.ConnectionState) error { return nil })
	default:
		return nil, fmt.Errorf("client: address %q: want unix://PATH or https://HOST:PORT", cfg.Addr)
	}
	return c, nil
}

// tlsClient returns an HTTP client whose TLS connections are checked only
// by verify: the broker's certificate is self-signed and authenticated
// through the attestation binding, never through a CA.
func (c *Client) tlsClient(verify func(tls.ConnectionState) error) *http.Client {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{
			MinVersion: tls.VersionTLS13,
			// The chain is not checked against any CA on purpose; the
			// key is checked by VerifyConnection (pinned) or against the
			// attestation answer (VerifyBroker).
			InsecureSkipVerify: true,
			VerifyConnection:   verify,
		},
		ForceAttemptHTTP2: true,
		MaxIdleConns:      4,
		IdleConnTimeout:   idleConnTimeout,
	}
	return &http.Client{Transport: tr, Timeout: c.cfg.Timeout, CheckRedirect: refuseRedirect}
}

// idleConnTimeout is how long the client keeps an idle connection: less
// than kbsd's idle timeout (daemon/serve.go), so that a request is not sent
// on a connection the broker is closing.
const idleConnTimeout = 10 * time.Second

func (c *Client) checkPinned(cs tls.ConnectionState) error {
	pin := c.TLSPin()
	if pin == "" {
		if c.cfg.AllowUnpinned {
			return nil
		}
		return ErrNotPinned
	}
	got, err := peerSPKI(&cs)
	if err != nil {
		return err
	}
	if got != pin {
		return fmt.Errorf("%w: connection key %s, pinned %s", ErrPinMismatch, got, pin)
	}
	return nil
}

// peerSPKI returns the hex SHA-256 of the peer certificate's
// SubjectPublicKeyInfo.
func peerSPKI(cs *tls.ConnectionState) (string, error) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return "", errors.New("client: the broker presented no TLS certificate")
	}
	sum := sha256.Sum256(cs.PeerCertificates[0].RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:]), nil
}

// TLSPin returns the pinned hex SHA-256 of the broker's TLS key, or "" (no
// pin yet, or a unix socket).
func (c *Client) TLSPin() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pin
}

func (c *Client) setPin(p string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pin = p
}

// IsTLS reports whether the client talks TLS over TCP.
func (c *Client) IsTLS() bool { return strings.HasPrefix(c.base, "https://") }

// Addr returns the broker address.
func (c *Client) Addr() string { return c.cfg.Addr }

// HTTPClient returns the HTTP client used for every request but the
// attestation (pinned over TLS), for readers such as tlog.TileClient.
func (c *Client) HTTPClient() *http.Client { return c.pinned }

// LogURL returns the URL prefix of the C2SP tlog-tiles API.
func (c *Client) LogURL() string { return c.base + strings.TrimSuffix(api.PathLogPrefix, "/") }

// Tiles returns a tile client of the broker's log.
func (c *Client) Tiles() *tlog.TileClient { return tlog.NewTileClient(c.LogURL(), c.pinned) }

// do sends a request and decodes a JSON answer into out (when non-nil). A
// broker error answer becomes an *api.Error with its status. An answer
// that says to retry (retryAfter) is retried as Config.Retries says.
func (c *Client) do(ctx context.Context, hc *http.Client, method, path string, body, out any) (*http.Response, error) {
	var payload []byte
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("client: couldn't encode request: %w", err)
		}
		payload = b
	}
	for attempt := 0; ; attempt++ {
		resp, raw, err := c.roundTrip(ctx, hc, method, path, payload)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusOK {
			if out != nil {
				if err := json.Unmarshal(raw, out); err != nil {
					return nil, &NotBrokerError{Addr: c.cfg.Addr, Method: method, Path: pathOnly(path), Status: resp.StatusCode, Body: string(firstLine(raw)), Malformed: err}
				}
			}
			return resp, nil
		}
		var eb api.ErrorBody
		if json.Unmarshal(raw, &eb) != nil || eb.Error == nil || eb.Error.Code == "" {
			return nil, &NotBrokerError{Addr: c.cfg.Addr, Method: method, Path: pathOnly(path), Status: resp.StatusCode, Body: string(firstLine(raw))}
		}
		eb.Error.Status = resp.StatusCode
		after, ok := retryAfter(resp)
		if !ok || attempt >= c.cfg.Retries {
			return nil, eb.Error
		}
		wait := max(after, backoff(attempt))
		if wait > c.cfg.MaxRetryWait {
			return nil, eb.Error
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return nil, eb.Error
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, eb.Error
		case <-t.C:
		}
	}
}

// roundTrip sends one request and reads its answer: at most answerLimit
// bytes of a success, maxErrorAnswer of anything else.
func (c *Client) roundTrip(ctx context.Context, hc *http.Client, method, path string, payload []byte) (*http.Response, []byte, error) {
	var rd io.Reader
	if payload != nil {
		rd = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, nil, fmt.Errorf("client: %w", err)
	}
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, nil, &TransportError{Addr: c.cfg.Addr, Err: err}
	}
	defer resp.Body.Close()
	limit := answerLimit(path)
	if resp.StatusCode != http.StatusOK {
		limit = maxErrorAnswer
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, nil, &TransportError{Addr: c.cfg.Addr, Err: err}
	}
	if int64(len(raw)) > limit {
		if resp.StatusCode != http.StatusOK {
			return nil, nil, &NotBrokerError{Addr: c.cfg.Addr, Method: method, Path: pathOnly(path), Status: resp.StatusCode, Body: string(firstLine(raw))}
		}
		return nil, nil, &TransportError{Addr: c.cfg.Addr, Err: fmt.Errorf("%s %s: answer larger than %d bytes", method, pathOnly(path), limit)}
	}
	return resp, raw, nil
}

// retryAfter returns the wait an answer asks for: a 429 or 503 with a
// Retry-After header in seconds (kbsd sends it only when it did nothing).
func retryAfter(resp *http.Response) (time.Duration, bool) {
	if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable {
		return 0, false
	}
	v := resp.Header.Get("Retry-After")
	if v == "" {
		return 0, false
	}
	secs, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
	if err != nil {
		return 0, false
	}
	return time.Duration(secs) * time.Second, true
}

// backoff is the wait before retry attempt+1: 250 ms doubling, with
// jitter of up to half of it either way.
func backoff(attempt int) time.Duration {
	d := firstBackoff << min(attempt, 8)
	return d/2 + rand.N(d)
}

// pathOnly is path without its query.
func pathOnly(path string) string {
	p, _, _ := strings.Cut(path, "?")
	return p
}

// NotBrokerError reports an answer no kbs broker gives: an error status
// without kbs's JSON error body (every error of kbsd has one, even for
// unknown paths), or a success whose body is not the JSON the endpoint
// returns. The server at Addr is not a kbs broker, or a proxy in front of
// one answered instead.
type NotBrokerError struct {
	Addr         string
	Method, Path string
	Status       int
	// Body is the first line of the answer (at most 200 bytes).
	Body string
	// Malformed is the decoding error of a success answer (nil for an
	// error status).
	Malformed error
}

func (e *NotBrokerError) Error() string {
	what := fmt.Sprintf("%d %s without a kbs error body", e.Status, http.StatusText(e.Status))
	if e.Malformed != nil {
		what = fmt.Sprintf("%d %s and a body that is not a kbs answer (%v)", e.Status, http.StatusText(e.Status), e.Malformed)
	}
	return fmt.Sprintf("the server at %s answered %s %s with %s: this is not a kbs broker (or a proxy in front of it answered)", e.Addr, e.Method, e.Path, what)
}

func firstLine(b []byte) []byte {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	}
	if len(b) > 200 {
		b = b[:200]
	}
	return b
}

// TransportError reports that the broker could not be reached or the
// connection failed (including a TLS key that is not the pinned one).
type TransportError struct {
	Addr string
	Err  error
}

func (e *TransportError) Error() string { return fmt.Sprintf("client: %s: %v", e.Addr, e.Err) }
func (e *TransportError) Unwrap() error { return e.Err }

// Attestation fetches GET /v1/attestation with nonce and since (0: no
// consistency proof), and returns the answer with the TLS state of the
// connection it came on (nil on a unix socket). Nothing is verified; see
// VerifyBroker.
func (c *Client) Attestation(ctx context.Context, nonce []byte, since uint64) (*api.Attestation, *tls.ConnectionState, error) {
	q := url.Values{"nonce": {hex.EncodeToString(nonce)}}
	if since > 0 {
		q.Set("since", strconv.FormatUint(since, 10))
	}
	var a api.Attestation
	resp, err := c.do(ctx, c.unpinned, http.MethodGet, api.PathAttestation+"?"+q.Encode(), nil, &a)
	if err != nil {
		return nil, nil, err
	}
	return &a, resp.TLS, nil
}

// Manifest fetches the active manifest with its signatures.
func (c *Client) Manifest(ctx context.Context) (*api.Manifest, error) {
	var m api.Manifest
	_, err := c.do(ctx, c.pinned, http.MethodGet, api.PathManifest, nil, &m)
	return &m, err
}

// ManifestHistory fetches every manifest version the broker activated.
func (c *Client) ManifestHistory(ctx context.Context) (*api.ManifestHistory, error) {
	var h api.ManifestHistory
	_, err := c.do(ctx, c.pinned, http.MethodGet, api.PathManifestHistory, nil, &h)
	return &h, err
}

// PutManifest proposes a new manifest version with owner signatures.
func (c *Client) PutManifest(ctx context.Context, body []byte, sigs []string) (*api.Manifest, error) {
	var m api.Manifest
	_, err := c.do(ctx, c.pinned, http.MethodPut, api.PathManifest, &api.ManifestUpdate{Body: body, Signatures: sigs}, &m)
	return &m, err
}

// KeysPage fetches one page of key metadata: the keys whose ids start
// with prefix, sorted by id, after the id after, at most limit (0 for the
// broker's default of api.DefaultKeyListLimit). The answer's Next, when
// set, is the after of the next page.
func (c *Client) KeysPage(ctx context.Context, prefix, after string, limit int) (*api.KeyList, error) {
	q := url.Values{}
	if prefix != "" {
		q.Set(api.KeyListPrefix, prefix)
	}
	if after != "" {
		q.Set(api.KeyListAfter, after)
	}
	if limit != 0 {
		q.Set(api.KeyListLimit, strconv.Itoa(limit))
	}
	path := api.PathKeys
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var l api.KeyList
	_, err := c.do(ctx, c.pinned, http.MethodGet, path, nil, &l)
	if err == nil && l.Next != "" && (len(l.Keys) == 0 || l.Next <= after) {
		return nil, fmt.Errorf("client: GET %s: the page's next key %q does not follow %q", api.PathKeys, l.Next, after)
	}
	return &l, err
}

// Keys fetches the metadata of every key, page by page (KeysPage). It
// costs O(keys): to look up one key, use Key.
func (c *Client) Keys(ctx context.Context) (*api.KeyList, error) {
	return c.KeysWithPrefix(ctx, "")
}

// KeysWithPrefix fetches the metadata of every key whose id starts with
// prefix, page by page (KeysPage).
func (c *Client) KeysWithPrefix(ctx context.Context, prefix string) (*api.KeyList, error) {
	all := &api.KeyList{Keys: []api.KeyInfo{}}
	after := ""
	for {
		l, err := c.KeysPage(ctx, prefix, after, api.MaxKeyListLimit)
		if err != nil {
			return nil, err
		}
		all.Keys = append(all.Keys, l.Keys...)
		if l.Next == "" {
			return all, nil
		}
		after = l.Next
	}
}

// Key fetches the metadata of key id, deleted or not. A key the broker
// does not hold is an *api.Error with Code api.CodeNotFound.
func (c *Client) Key(ctx context.Context, id string) (*api.KeyInfo, error) {
	if err := api.ValidKeyID(id); err != nil {
		return nil, err
	}
	var k api.KeyInfo
	if _, err := c.do(ctx, c.pinned, http.MethodGet, api.PathKeys+"/"+id, nil, &k); err != nil {
		return nil, err
	}
	if k.ID != id {
		return nil, fmt.Errorf("client: GET %s/%s: the broker answered about key %q", api.PathKeys, id, k.ID)
	}
	return &k, nil
}

// UploadKey sends a sealed, signed key upload (see Broker.UploadKey for the
// verified path).
func (c *Client) UploadKey(ctx context.Context, req *api.KeyUpload) (*api.KeyUploadResult, error) {
	var r api.KeyUploadResult
	_, err := c.do(ctx, c.pinned, http.MethodPost, api.PathKeys, req, &r)
	return &r, err
}

// DeleteKey sends a signed key deletion.
func (c *Client) DeleteKey(ctx context.Context, id string, req *api.KeyDelete) (*api.KeyDeleteResult, error) {
	if err := api.ValidKeyID(id); err != nil {
		return nil, err
	}
	var r api.KeyDeleteResult
	_, err := c.do(ctx, c.pinned, http.MethodDelete, api.PathKeys+"/"+id, req, &r)
	return &r, err
}

// Challenge asks for a release nonce.
func (c *Client) Challenge(ctx context.Context) (*api.Challenge, error) {
	var ch api.Challenge
	_, err := c.do(ctx, c.pinned, http.MethodPost, api.PathChallenge, struct{}{}, &ch)
	return &ch, err
}

// Release sends a release request.
func (c *Client) Release(ctx context.Context, req *api.ReleaseRequest) (*api.Release, error) {
	var r api.Release
	_, err := c.do(ctx, c.pinned, http.MethodPost, api.PathRelease, req, &r)
	return &r, err
}

// InclusionProof fetches the inclusion proof of index in the tree of size.
func (c *Client) InclusionProof(ctx context.Context, index, size uint64) ([]tlog.Hash, error) {
	var p api.InclusionProof
	q := "?index=" + strconv.FormatUint(index, 10) + "&size=" + strconv.FormatUint(size, 10)
	if _, err := c.do(ctx, c.pinned, http.MethodGet, api.PathLogProof+q, nil, &p); err != nil {
		return nil, err
	}
	if p.Index != index || p.TreeSize != size {
		return nil, fmt.Errorf("client: asked for the proof of %d in %d, got %d in %d", index, size, p.Index, p.TreeSize)
	}
	return toHashes(p.Proof)
}

// ConsistencyProof fetches the consistency proof between two tree sizes.
// A Client is thus a tlog.ProofSource for tlog.Verifier.Advance, which
// checks every proof it gets.
func (c *Client) ConsistencyProof(ctx context.Context, oldSize, newSize uint64) ([]tlog.Hash, error) {
	if oldSize == 0 || oldSize == newSize {
		return []tlog.Hash{}, nil
	}
	var p api.ConsistencyProof
	q := "?old=" + strconv.FormatUint(oldSize, 10) + "&new=" + strconv.FormatUint(newSize, 10)
	if _, err := c.do(ctx, c.pinned, http.MethodGet, api.PathLogConsistency+q, nil, &p); err != nil {
		return nil, err
	}
	if p.Old != oldSize || p.New != newSize {
		return nil, fmt.Errorf("client: asked for consistency %d..%d, got %d..%d", oldSize, newSize, p.Old, p.New)
	}
	return toHashes(p.Proof)
}

// Checkpoint fetches the log's latest signed checkpoint note (unverified).
// A server that has no /log/checkpoint is a *NotBrokerError; one that
// cannot be reached a *TransportError.
func (c *Client) Checkpoint(ctx context.Context) ([]byte, error) {
	b, err := c.Tiles().Checkpoint(ctx)
	var ue *url.Error
	switch {
	case errors.Is(err, tlog.ErrOutOfRange):
		return nil, &NotBrokerError{Addr: c.cfg.Addr, Method: http.MethodGet, Path: api.PathLogPrefix + "checkpoint", Status: http.StatusNotFound}
	case errors.As(err, &ue):
		return nil, &TransportError{Addr: c.cfg.Addr, Err: ue}
	}
	return b, err
}

func toHashes(p [][]byte) ([]tlog.Hash, error) {
	if len(p) > 63 {
		return nil, fmt.Errorf("client: proof of %d hashes is too long", len(p))
	}
	out := make([]tlog.Hash, len(p))
	for i, h := range p {
		if len(h) != len(tlog.Hash{}) {
			return nil, fmt.Errorf("client: proof hash %d is %d bytes, want 32", i, len(h))
		}
		copy(out[i][:], h)
	}
	return out, nil
}

// Entry fetches the log entry at index from its entry bundle and checks it
// against the verified checkpoint cp with an inclusion proof (fetched from
// the broker, checked against cp's root). The returned bytes are therefore
// exactly what the log holds at index.
func (c *Client) Entry(ctx context.Context, cp tlog.SignedCheckpoint, index uint64) ([]byte, error) {
	p, err := c.InclusionProof(ctx, index, cp.Size)
	if err != nil {
		return nil, err
	}
	return c.entryWithProof(ctx, cp, index, p)
}

func (c *Client) entryWithProof(ctx context.Context, cp tlog.SignedCheckpoint, index uint64, p []tlog.Hash) ([]byte, error) {
	if index >= cp.Size {
		return nil, fmt.Errorf("client: entry %d is not in a tree of size %d", index, cp.Size)
	}
	n := index / 256
	w := int(min(cp.Size-n*256, 256))
	b, err := c.Tiles().Tile(ctx, tlog.TilePath{Entries: true, N: n, Width: w})
	if err != nil {
		return nil, err
	}
	es, err := tlog.DecodeBundle(b, w)
	if err != nil {
		return nil, err
	}
	e := es[index%256]
	if err := tlog.VerifyInclusion(cp, index, e, p); err != nil {
		return nil, &VerifyError{Step: "log entry", Err: inclusionError(cp, index, "the entry the broker serves", err)}
	}
	return bytes.Clone(e), nil
}

// inclusionError explains a failed inclusion proof of entry (what) at
// index in cp's tree: which entry is not in which tree, with both roots,
// instead of the proof library's byte arrays.
func inclusionError(cp tlog.SignedCheckpoint, index uint64, what string, err error) error {
	var rm proof.RootMismatchError
	if !errors.As(err, &rm) {
		return err
	}
	return fmt.Errorf("%s is not entry %d of log %s at tree size %d: its inclusion proof leads to root %s, the signed checkpoint's root is %s",
		what, index, cp.Origin, cp.Size, base64.StdEncoding.EncodeToString(rm.CalculatedRoot), base64.StdEncoding.EncodeToString(cp.Hash[:]))
}

// VerifyError reports that something the broker presented failed
// verification: evidence, a binding, a manifest, a proof, a receipt. Step
// names what was being checked.
type VerifyError struct {
	Step string
	Err  error
}

func (e *VerifyError) Error() string { return e.Step + ": " + e.Err.Error() }
func (e *VerifyError) Unwrap() error { return e.Err }

func verr(step string, format string, args ...any) error {
	return &VerifyError{Step: step, Err: fmt.Errorf(format, args...)}
}
