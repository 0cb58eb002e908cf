package tlog

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// Errors a WitnessClient returns, each wrapped in a *WitnessError. Callers
// branch on them with errors.Is.
var (
	// ErrWitnessUnavailable: the witness could not be reached, timed out,
	// throttled (429) or failed (5xx). It proves nothing about the log.
	ErrWitnessUnavailable = errors.New("witness unavailable")
	// ErrWitnessUnknownLog: the witness does not know the log's origin
	// (404): it is not configured for this log.
	ErrWitnessUnknownLog = errors.New("witness does not know the log")
	// ErrWitnessForbidden: the witness does not trust the checkpoint's
	// signature (403): it is configured with another log key.
	ErrWitnessForbidden = errors.New("witness does not trust the log's key")
	// ErrWitnessInconsistent: the witness refused the checkpoint as
	// inconsistent with the one it last cosigned (422): another root for
	// the same size, or a consistency proof that fails. Two views of the
	// log exist, or the log lost entries the witness saw.
	ErrWitnessInconsistent = errors.New("witness refuses the checkpoint as inconsistent with what it cosigned")
	// ErrWitnessAhead: the witness has cosigned a larger tree of the log
	// than the checkpoint submitted (409 with a larger size). The log is
	// behind what the witness saw: rolled back, or not the latest view.
	// WitnessError.WitnessSize holds the witness's size; it is the
	// witness's unsigned claim.
	ErrWitnessAhead = errors.New("witness has cosigned a larger tree")
	// ErrWitnessConflict: the old size submitted was not the size the
	// witness last cosigned (409); WitnessError.WitnessSize holds the
	// witness's size. Cosign retries with it.
	ErrWitnessConflict = errors.New("witness holds another old size")
	// ErrWitnessProtocol: the witness answered outside the protocol (a
	// malformed body, a missing or invalid cosignature, 400, another
	// status).
	ErrWitnessProtocol = errors.New("witness broke the tlog-witness protocol")
)

// A WitnessError is a witness's refusal or failure to cosign.
type WitnessError struct {
	// Witness is the witness's Name.
	Witness string
	// Status is the HTTP status, or 0 if there was no answer.
	Status int
	// WitnessSize is the tree size the witness says it cosigned last, from
	// a 409 Conflict answer.
	WitnessSize uint64
	// Err is one of the ErrWitness sentinels.
	Err error
	// Detail says more, for people.
	Detail string
}

func (e *WitnessError) Error() string {
	s := fmt.Sprintf("witness %q: %v", e.Witness, e.Err)
	if e.Status != 0 {
		s += fmt.Sprintf(" (HTTP %d)", e.Status)
	}
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

func (e *WitnessError) Unwrap() error { return e.Err }

// A ProveFunc returns the RFC 6962 consistency proof between the log's
// trees of sizes oldSize and newSize. Backend.ConsistencyProof is one.
type ProveFunc func(ctx context.Context, oldSize, newSize uint64) ([]Hash, error)

// Bounds of what a WitnessClient sends and reads.
const (
	// maxWitnessResponse bounds a 200 answer: signature lines, room for 16
	// ML-DSA-44 cosignatures (about 3.3 KB each) from multi-key witnesses.
	maxWitnessResponse = 64 << 10
	// maxSizeResponse bounds a 409 answer: a decimal size and a newline.
	maxSizeResponse = 32
	// maxErrorResponse bounds the body of other answers kept for errors.
	maxErrorResponse = 512
	// maxWitnessAttempts bounds add-checkpoint requests per Cosign call
	// (each 409 costs one more).
	maxWitnessAttempts = 3
)

// DefaultWitnessTimeout is how long a WitnessClient waits for one
// add-checkpoint answer unless told otherwise.
const DefaultWitnessTimeout = 10 * time.Second

// A WitnessClient submits one log's checkpoints to one witness over the
// C2SP tlog-witness add-checkpoint protocol and returns the witness's
// cosignature, verified against the witness's key before it is returned.
//
// It remembers the size the witness last cosigned (learned from its own
// successes and from 409 answers) so that a submission usually takes one
// request; a client that starts fresh costs one extra round trip. Cosign
// calls are serialized: submit checkpoints in increasing size.
//
// A WitnessClient is safe for concurrent use.
type WitnessClient struct {
	w       Witness
	hc      *http.Client
	timeout time.Duration

	mu   sync.Mutex
	size uint64 // the witness's last cosigned size, as far as we know
}

// NewWitnessClient returns a client of the witness w, which must have a
// URL. hc may be nil for a client with no overall timeout of its own;
// timeout bounds each request (0 means DefaultWitnessTimeout).
func NewWitnessClient(w Witness, hc *http.Client, timeout time.Duration) (*WitnessClient, error) {
	if w.Key == nil {
		return nil, fmt.Errorf("tlog: witness %q has no key", w.Name)
	}
	if err := CheckWitnessURL(w.URL); err != nil {
		return nil, fmt.Errorf("tlog: witness %q: %w", w.Name, err)
	}
	if hc == nil {
		hc = &http.Client{}
	}
	if timeout <= 0 {
		timeout = DefaultWitnessTimeout
	}
	return &WitnessClient{w: w, hc: hc, timeout: timeout}, nil
}

// Witness returns the witness the client submits to.
func (c *WitnessClient) Witness() Witness { return c.w }

// Cosign gets the witness's cosignature of cp, a checkpoint of the log
// whose consistency proofs prove returns. It submits cp with the old size
// the witness is believed to hold; on 409 Conflict it retries once more
// with the size the witness reports and a proof from it, unless that size
// is larger than cp's (ErrWitnessAhead). The returned signature verifies
// over cp's text with the witness's key, and its timestamp is not zero.
// Every failure is a *WitnessError.
func (c *WitnessClient) Cosign(ctx context.Context, cp SignedCheckpoint, prove ProveFunc) (note.Signature, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := min(c.size, cp.Size)
	for attempt := 1; ; attempt++ {
		var proof []Hash
		if old > 0 && old < cp.Size {
			var err error
			if proof, err = prove(ctx, old, cp.Size); err != nil {
				return note.Signature{}, fmt.Errorf("tlog: couldn't prove size %d consistent with %d for witness %q: %w", cp.Size, old, c.w.Name, err)
			}
		}
		sig, err := c.AddCheckpoint(ctx, old, proof, cp)
		if err == nil {
			c.size = cp.Size
			return sig, nil
		}
		var we *WitnessError
		if !errors.As(err, &we) || !(errors.Is(err, ErrWitnessConflict) || errors.Is(err, ErrWitnessAhead)) {
			return note.Signature{}, err
		}
		c.size = we.WitnessSize
		if we.WitnessSize > cp.Size {
			we.Err = ErrWitnessAhead
			we.Detail = fmt.Sprintf("it cosigned size %d, the log's checkpoint has size %d", we.WitnessSize, cp.Size)
			return note.Signature{}, we
		}
		if attempt == maxWitnessAttempts {
			we.Err = ErrWitnessConflict
			we.Detail = fmt.Sprintf("still in conflict after %d attempts (witness size %d)", attempt, we.WitnessSize)
			return note.Signature{}, we
		}
		old = we.WitnessSize
	}
}

// AddCheckpoint makes one add-checkpoint request: cp, with the old size
// oldSize and the consistency proof from it to cp's size. On success it
// returns the witness's cosignature of cp, verified. A 409 Conflict is a
// *WitnessError with Status 409 and WitnessSize set (Err is
// ErrWitnessConflict, or ErrWitnessAhead if the size is larger than cp's);
// Cosign handles it.
func (c *WitnessClient) AddCheckpoint(ctx context.Context, oldSize uint64, proof []Hash, cp SignedCheckpoint) (note.Signature, error) {
	fail := func(status int, kind error, detail string, args ...any) (note.Signature, error) {
		return note.Signature{}, &WitnessError{Witness: c.w.Name, Status: status, Err: kind, Detail: fmt.Sprintf(detail, args...)}
	}
	if len(proof) > 63 {
		return fail(0, ErrWitnessProtocol, "a consistency proof of %d hashes (at most 63)", len(proof))
	}
	if oldSize > cp.Size {
		return fail(0, ErrWitnessProtocol, "old size %d above the checkpoint's size %d", oldSize, cp.Size)
	}
	text, _, err := SplitNote(cp.Note)
	if err != nil {
		return note.Signature{}, fmt.Errorf("tlog: checkpoint to submit: %w", err)
	}
	var body bytes.Buffer
	fmt.Fprintf(&body, "old %d\n", oldSize)
	for _, h := range proof {
		body.WriteString(base64.StdEncoding.EncodeToString(h[:]) + "\n")
	}
	body.WriteString("\n")
	body.Write(cp.Note)

	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.w.URL+"/add-checkpoint", &body)
	if err != nil {
		return note.Signature{}, fmt.Errorf("tlog: witness %q: %w", c.w.Name, err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fail(0, ErrWitnessUnavailable, "%v", err)
	}
	defer resp.Body.Close()
	limit := maxErrorResponse
	switch resp.StatusCode {
	case http.StatusOK:
		limit = maxWitnessResponse
	case http.StatusConflict:
		limit = maxSizeResponse
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, int64(limit)+1))
	if err != nil {
		return fail(resp.StatusCode, ErrWitnessUnavailable, "reading the answer: %v", err)
	}
	tooLong := len(b) > limit
	switch code := resp.StatusCode; {
	case code == http.StatusOK:
		if tooLong {
			return fail(code, ErrWitnessProtocol, "answer larger than %d bytes", limit)
		}
		return c.checkCosignature(code, text, b)
	case code == http.StatusConflict:
		size, err := parseSizeAnswer(resp.Header.Get("Content-Type"), b, tooLong)
		if err != nil {
			return fail(code, ErrWitnessProtocol, "409 Conflict: %v", err)
		}
		kind := ErrWitnessConflict
		if size > cp.Size {
			kind = ErrWitnessAhead
		}
		return note.Signature{}, &WitnessError{Witness: c.w.Name, Status: code, WitnessSize: size, Err: kind,
			Detail: fmt.Sprintf("it cosigned size %d, the request said %d", size, oldSize)}
	case code == http.StatusNotFound:
		return fail(code, ErrWitnessUnknownLog, "origin %q%s", cp.Origin, bodyDetail(b))
	case code == http.StatusForbidden:
		return fail(code, ErrWitnessForbidden, "checkpoint signature for %q not accepted%s", cp.Origin, bodyDetail(b))
	case code == http.StatusUnprocessableEntity:
		return fail(code, ErrWitnessInconsistent, "checkpoint of size %d from old size %d%s", cp.Size, oldSize, bodyDetail(b))
	case code == http.StatusTooManyRequests || code >= 500:
		return fail(code, ErrWitnessUnavailable, "%s%s", http.StatusText(code), bodyDetail(b))
	default:
		return fail(code, ErrWitnessProtocol, "unexpected status %s%s", http.StatusText(code), bodyDetail(b))
	}
}

// checkCosignature finds the witness's signature among the lines of a 200
// answer and verifies it over text. Lines by other keys are ignored
// (tlog-witness: clients ignore cosignatures from unknown keys).
func (c *WitnessClient) checkCosignature(status int, text, body []byte) (note.Signature, error) {
	sigs, err := ParseSignatureLines(body)
	if err != nil {
		return note.Signature{}, &WitnessError{Witness: c.w.Name, Status: status, Err: ErrWitnessProtocol, Detail: err.Error()}
	}
	for _, s := range sigs {
		if s.Name != c.w.Key.Name() || s.Hash != c.w.Key.KeyHash() {
			continue
		}
		raw, _ := base64.StdEncoding.DecodeString(s.Base64) // ParseSignatureLines checked it
		if !c.w.Key.Verify(text, raw[4:]) {
			return note.Signature{}, &WitnessError{Witness: c.w.Name, Status: status, Err: ErrWitnessProtocol, Detail: "its cosignature does not verify with its key"}
		}
		if t, _ := CosignatureTime(s); t.Unix() == 0 {
			return note.Signature{}, &WitnessError{Witness: c.w.Name, Status: status, Err: ErrWitnessProtocol, Detail: "its cosignature has a zero timestamp"}
		}
		return s, nil
	}
	return note.Signature{}, &WitnessError{Witness: c.w.Name, Status: status, Err: ErrWitnessProtocol,
		Detail: fmt.Sprintf("no cosignature by its key %s+%08x in the answer", c.w.Key.Name(), c.w.Key.KeyHash())}
}

// parseSizeAnswer parses the body of a 409 Conflict answer: a decimal tree
// size without leading zeroes and a newline, as text/x.tlog.size.
func parseSizeAnswer(contentType string, b []byte, tooLong bool) (uint64, error) {
	if mt, _, err := mime.ParseMediaType(contentType); err != nil || mt != "text/x.tlog.size" {
		return 0, fmt.Errorf("content type %q, want text/x.tlog.size", contentType)
	}
	s, ok := strings.CutSuffix(string(b), "\n")
	if tooLong || !ok || s == "" || (s[0] == '0' && len(s) > 1) || s[0] < '0' || s[0] > '9' {
		return 0, fmt.Errorf("body %q is not a tree size", clipDetail(b))
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > MaxTreeSize {
		return 0, fmt.Errorf("body %q is not a tree size", clipDetail(b))
	}
	return n, nil
}

// bodyDetail quotes the start of an error answer's body, if any.
func bodyDetail(b []byte) string {
	if len(bytes.TrimSpace(b)) == 0 {
		return ""
	}
	return fmt.Sprintf(": %q", clipDetail(b))
}

func clipDetail(b []byte) string {
	if len(b) > 120 {
		b = b[:120]
	}
	return strings.ToValidUTF8(string(b), "?")
}

// A WitnessGroup submits a log's checkpoints to all witnesses of a quorum
// at once and merges their cosignatures into the checkpoint: what a log
// does after it signs a checkpoint, and at start to learn whether it is
// behind what its witnesses cosigned.
type WitnessGroup struct {
	q       *Quorum
	clients []*WitnessClient
}

// NewWitnessGroup returns a group submitting to the witnesses of q; every
// witness needs a URL. hc and timeout are as for NewWitnessClient.
func NewWitnessGroup(q *Quorum, hc *http.Client, timeout time.Duration) (*WitnessGroup, error) {
	g := &WitnessGroup{q: q}
	for _, w := range q.witnesses {
		c, err := NewWitnessClient(w, hc, timeout)
		if err != nil {
			return nil, err
		}
		g.clients = append(g.clients, c)
	}
	return g, nil
}

// Quorum returns the group's quorum.
func (g *WitnessGroup) Quorum() *Quorum { return g.q }

// A CosignResult is the outcome of submitting a checkpoint to a group.
type CosignResult struct {
	// Note is the checkpoint's note with every cosignature obtained merged
	// in (and older ones by the same witnesses replaced).
	Note []byte
	// Cosignatures are the cosignatures obtained, in the quorum's order.
	Cosignatures []Cosignature
	// Failures maps the name of each witness that did not cosign to its
	// *WitnessError (or a proof error).
	Failures map[string]error
}

// Behind returns the failures that show the log is behind or apart from
// what a witness cosigned (ErrWitnessAhead, ErrWitnessInconsistent), in
// the quorum's order. A log that gets any must not act on its own view of
// itself until an operator has looked (docs/witnesses.md). Unreachable
// witnesses are not in the list: they show nothing.
func (r *CosignResult) Behind(q *Quorum) []error {
	var out []error
	for _, w := range q.witnesses {
		if err := r.Failures[w.Name]; errors.Is(err, ErrWitnessAhead) || errors.Is(err, ErrWitnessInconsistent) {
			out = append(out, err)
		}
	}
	return out
}

// Cosign submits cp to every witness of the group in parallel and merges
// the cosignatures obtained into cp's note. The result is returned even
// when err is not nil. err is a *QuorumError, with each missing witness's
// reason, when fewer than the threshold cosigned. With a quorum of no
// witnesses, Cosign returns cp's note unchanged.
func (g *WitnessGroup) Cosign(ctx context.Context, cp SignedCheckpoint, prove ProveFunc) (*CosignResult, error) {
	type answer struct {
		sig note.Signature
		err error
	}
	answers := make([]answer, len(g.clients))
	var wg sync.WaitGroup
	for i, c := range g.clients {
		wg.Go(func() {
			s, err := c.Cosign(ctx, cp, prove)
			answers[i] = answer{s, err}
		})
	}
	wg.Wait()
	res := &CosignResult{Failures: map[string]error{}}
	var sigs []note.Signature
	var cosigned, missing []string
	for i, a := range answers {
		name := g.clients[i].w.Name
		if a.err != nil {
			res.Failures[name] = a.err
			missing = append(missing, name)
			continue
		}
		t, _ := CosignatureTime(a.sig) // checked by the client
		res.Cosignatures = append(res.Cosignatures, Cosignature{Witness: name, Time: t, Signature: a.sig})
		sigs = append(sigs, a.sig)
		cosigned = append(cosigned, name)
	}
	res.Note = bytes.Clone(cp.Note)
	if len(sigs) > 0 {
		n, err := MergeSignatures(cp.Note, sigs...)
		if err != nil {
			return res, fmt.Errorf("tlog: couldn't merge cosignatures: %w", err)
		}
		res.Note = n
	}
	if len(cosigned) < g.q.threshold {
		return res, &QuorumError{Origin: cp.Origin, Size: cp.Size, Threshold: g.q.threshold, Cosigned: cosigned, Missing: missing, Reasons: res.Failures}
	}
	return res, nil
}
