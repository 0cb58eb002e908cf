package api

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Encrypted inference (kbs/inference) carries OpenAI API requests from a
// client proxy to a worker and the answers back, under a prompt key that
// both hold. Three formats cross the wire between them.
//
// The request: the worker receives, as the JSON body of a POST to the
// OpenAI path it serves (/v1/chat/completions, ...), an InferenceEnvelope:
//
//	{"model": "llama-3", "stream": true, "kbs_sealed": "<base64>"}
//
// whose model and stream are a clear copy for routers, and whose
// kbs_sealed is a sealed request: a text header followed by
// nonce || AES-256-GCM ciphertext || tag,
//
//	kbs-inference-v1\n
//	key-id: demo/prompt-key\n
//	key-version: 1\n
//	request-id: <32 hex digits: 16 random bytes>\n
//	time: <Unix seconds when the proxy sealed it>\n
//	worker: <32 hex digits: the worker instance it is meant for>\n
//	method: POST\n
//	path: /v1/chat/completions\n
//	model: llama-3\n
//	stream: true\n
//	\n
//
// The header is the additional data; the key is
// HKDF-SHA256(prompt key, salt = request id, info = "kbs-inference-v1
// request"), so every request has its own key. The plaintext is the
// application's OpenAI JSON body (empty for GET /v1/models), padded (see
// below).
//
// The answer: the worker answers 200 with a text/event-stream of frames,
// each event one line "data: <base64 frame>" and a blank line. A frame is
// one flag byte (0x01 on the last frame, else 0x00) followed by
// AES-256-GCM ciphertext || tag under the response key
// HKDF-SHA256(prompt key, salt = SHA-256 of the whole sealed request,
// info = "kbs-inference-v1 response"), with the frame's sequence number
// (0, 1, 2, ... as 12 big-endian bytes) as nonce and "kbs-inference-v1
// frame" plus the flag byte as additional data. Frame 0 holds an
// InferenceHead (the upstream's status and content type); every later
// frame a piece of the upstream's body (for event streams, exactly one
// event). So an answer opens only for the request it answers, and a
// dropped, repeated, reordered or truncated frame fails: the sequence
// number is implicit and the end is authenticated.
//
// Padding: every plaintext is a 4-byte big-endian length, the bytes, and
// zeros up to a multiple of 256 bytes, so that frame sizes do not give
// away the length of each streamed token.
const (
	inferenceMagic = "kbs-inference-v1"
	// MaxInferenceRequest bounds the plaintext of a request (the
	// application's JSON body).
	MaxInferenceRequest = 16 << 20
	// MaxInferenceFrame bounds the plaintext of one answer frame.
	MaxInferenceFrame = 1 << 20
	// MaxInferenceAnswer bounds a whole answer that is not an event
	// stream (the worker buffers it).
	MaxInferenceAnswer = 64 << 20
	// RequestIDSize and InstanceSize are the sizes of request ids and
	// worker instance ids.
	RequestIDSize = 16
	InstanceSize  = 16
	// HeaderWorkerInstance is the HTTP header in which a worker names its
	// instance id (hex) on every answer.
	HeaderWorkerInstance = "Kbs-Worker-Instance"

	maxInferenceHeader = 1024
	maxModelName       = 256
	maxInferencePath   = 128
	inferencePad       = 256
	gcmOverhead        = 16
	gcmNonce           = 12
)

// MaxSealedRequest bounds a sealed request: header, nonce, the padded
// plaintext and the tag.
const MaxSealedRequest = maxInferenceHeader + gcmNonce + MaxInferenceRequest + 4 + inferencePad + gcmOverhead

// MaxInferenceEnvelope bounds the JSON body a worker accepts: a sealed
// request in base64, a model name and the field names.
const MaxInferenceEnvelope = (MaxSealedRequest+2)/3*4 + 2*maxModelName + 256

// MaxFrameEvent bounds one event line of an answer ("data: " and the
// base64 of the largest frame).
const MaxFrameEvent = len("data: ") + (1+MaxInferenceFrame+4+inferencePad+gcmOverhead+2)/3*4

// InferenceEnvelope is the JSON body a worker receives. Model and Stream
// repeat the sealed header's fields in clear, for routers; the worker
// refuses a body where they differ.
type InferenceEnvelope struct {
	Model  string `json:"model"`
	Stream bool   `json:"stream"`
	Sealed []byte `json:"kbs_sealed"`
}

// InferenceHead is the first frame of an answer: the status and the
// content type of the upstream server's answer (or of the worker's own
// error answer when the upstream failed).
type InferenceHead struct {
	Status      int    `json:"status"`
	ContentType string `json:"content_type"`
}

// InferenceRequest is the authenticated header of a sealed request.
type InferenceRequest struct {
	KeyID      string
	KeyVersion uint64
	// ID is the request id: fresh random bytes for every request.
	ID [RequestIDSize]byte
	// Time is when the request was sealed, in Unix seconds.
	Time int64
	// Worker is the id of the worker instance the request is for.
	Worker [InstanceSize]byte
	// Method is GET or POST; Path the OpenAI path (/v1/...).
	Method string
	Path   string
	// Model is the request's model ("" for GET /v1/models); Stream
	// whether it asks for a streamed answer.
	Model  string
	Stream bool
}

// Marshal returns the header's exact bytes, blank line included.
func (h *InferenceRequest) Marshal() []byte {
	var b strings.Builder
	b.WriteString(inferenceMagic + "\n")
	b.WriteString("key-id: " + h.KeyID + "\n")
	b.WriteString("key-version: " + strconv.FormatUint(h.KeyVersion, 10) + "\n")
	b.WriteString("request-id: " + hex.EncodeToString(h.ID[:]) + "\n")
	b.WriteString("time: " + strconv.FormatInt(h.Time, 10) + "\n")
	b.WriteString("worker: " + hex.EncodeToString(h.Worker[:]) + "\n")
	b.WriteString("method: " + h.Method + "\n")
	b.WriteString("path: " + h.Path + "\n")
	b.WriteString("model: " + h.Model + "\n")
	b.WriteString("stream: " + strconv.FormatBool(h.Stream) + "\n\n")
	return []byte(b.String())
}

// check validates the fields Marshal writes, so that Marshal's output
// always parses.
func (h *InferenceRequest) check() error {
	if err := ValidKeyID(h.KeyID); err != nil {
		return err
	}
	if h.KeyVersion == 0 {
		return errors.New("key version 0")
	}
	if h.Time < 0 {
		return fmt.Errorf("time %d before 1970", h.Time)
	}
	if h.Method != "GET" && h.Method != "POST" {
		return fmt.Errorf("method %q: want GET or POST", h.Method)
	}
	if err := ValidInferencePath(h.Path); err != nil {
		return err
	}
	return ValidModelName(h.Model)
}

// ValidModelName checks a model name for a sealed header: at most 256
// printable ASCII characters other than space ("" is allowed: requests
// without a model).
func ValidModelName(m string) error {
	if len(m) > maxModelName {
		return fmt.Errorf("model name is %d bytes, more than %d", len(m), maxModelName)
	}
	for i := 0; i < len(m); i++ {
		if m[i] <= ' ' || m[i] > '~' {
			return fmt.Errorf("model name %q: only printable ASCII without spaces", m)
		}
	}
	return nil
}

// ValidInferencePath checks an OpenAI path for a sealed header: "/v1/"
// followed by letters, digits, '/', '.', '_' and '-', at most 128 bytes,
// without empty, "." or ".." segments.
func ValidInferencePath(p string) error {
	rest, ok := strings.CutPrefix(p, "/v1/")
	if !ok || len(p) > maxInferencePath {
		return fmt.Errorf("path %q: want /v1/... of at most %d bytes", p, maxInferencePath)
	}
	for _, seg := range strings.Split(rest, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("path %q: empty or dot segment", p)
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
				return fmt.Errorf("path %q: character %q", p, c)
			}
		}
	}
	return nil
}

// ParseInferenceRequest splits a sealed request into its header, the
// header's exact bytes and the sealed body (nonce, ciphertext, tag). It
// accepts only the exact form Marshal writes and checks nothing
// cryptographic (OpenInferenceRequest does).
func ParseInferenceRequest(msg []byte) (*InferenceRequest, []byte, []byte, error) {
	if len(msg) > MaxSealedRequest {
		return nil, nil, nil, fmt.Errorf("sealed request is %d bytes, more than %d", len(msg), MaxSealedRequest)
	}
	end := bytes.Index(msg[:min(len(msg), maxInferenceHeader)], []byte("\n\n"))
	if end < 0 {
		return nil, nil, nil, errors.New("not a sealed kbs inference request: no header")
	}
	lines := strings.Split(string(msg[:end]), "\n")
	names := []string{"", "key-id", "key-version", "request-id", "time", "worker", "method", "path", "model", "stream"}
	if len(lines) != len(names) || lines[0] != inferenceMagic {
		return nil, nil, nil, errors.New("not a sealed kbs inference request: bad header")
	}
	v := make([]string, len(names))
	for i := 1; i < len(names); i++ {
		var ok bool
		if v[i], ok = strings.CutPrefix(lines[i], names[i]+": "); !ok {
			return nil, nil, nil, fmt.Errorf("bad header: line %d: want %s", i+1, names[i])
		}
	}
	h := &InferenceRequest{KeyID: v[1], Method: v[6], Path: v[7], Model: v[8]}
	var err error
	if h.KeyVersion, err = strconv.ParseUint(v[2], 10, 64); err != nil || strconv.FormatUint(h.KeyVersion, 10) != v[2] {
		return nil, nil, nil, fmt.Errorf("bad header: key-version %q", v[2])
	}
	if err := decodeHexField(h.ID[:], v[3]); err != nil {
		return nil, nil, nil, fmt.Errorf("bad header: request-id: %w", err)
	}
	if h.Time, err = strconv.ParseInt(v[4], 10, 64); err != nil || strconv.FormatInt(h.Time, 10) != v[4] {
		return nil, nil, nil, fmt.Errorf("bad header: time %q", v[4])
	}
	if err := decodeHexField(h.Worker[:], v[5]); err != nil {
		return nil, nil, nil, fmt.Errorf("bad header: worker: %w", err)
	}
	switch v[9] {
	case "true":
		h.Stream = true
	case "false":
	default:
		return nil, nil, nil, fmt.Errorf("bad header: stream %q", v[9])
	}
	if err := h.check(); err != nil {
		return nil, nil, nil, fmt.Errorf("bad header: %w", err)
	}
	body := msg[end+2:]
	if len(body) < gcmNonce+gcmOverhead {
		return nil, nil, nil, errors.New("sealed request is truncated")
	}
	return h, msg[:end+2], body, nil
}

// decodeHexField decodes exactly len(dst) bytes of lower-case hex.
func decodeHexField(dst []byte, s string) error {
	if len(s) != 2*len(dst) || strings.ToLower(s) != s {
		return fmt.Errorf("want %d lower-case hex digits", 2*len(dst))
	}
	_, err := hex.Decode(dst, []byte(s))
	return err
}

// inferenceAEAD returns AES-256-GCM under HKDF-SHA256(k, salt, info).
func inferenceAEAD(k *KeyFile, salt []byte, info string) (cipher.AEAD, error) {
	if len(k.Material) != 32 {
		return nil, fmt.Errorf("key %s is %d bytes; AES-256-GCM needs 32", k.ID, len(k.Material))
	}
	key, err := hkdf.Key(sha256.New, k.Material, salt, info, 32)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// pad returns the padded plaintext of b: 4-byte length, b, zeros to a
// multiple of inferencePad.
func pad(b []byte) []byte {
	n := 4 + len(b)
	n += (inferencePad - n%inferencePad) % inferencePad
	out := make([]byte, n)
	binary.BigEndian.PutUint32(out, uint32(len(b)))
	copy(out[4:], b)
	return out
}

// unpad reverses pad, strictly: the length fits and the padding is zeros
// and shorter than inferencePad.
func unpad(p []byte) ([]byte, error) {
	if len(p) < 4 || len(p)%inferencePad != 0 {
		return nil, errors.New("bad padding")
	}
	n := binary.BigEndian.Uint32(p)
	if uint64(n) > uint64(len(p)-4) || len(p)-4-int(n) >= inferencePad {
		return nil, errors.New("bad padding length")
	}
	for _, c := range p[4+n:] {
		if c != 0 {
			return nil, errors.New("bad padding bytes")
		}
	}
	return p[4 : 4+n], nil
}

// NewRequestID returns a fresh random request id.
func NewRequestID() [RequestIDSize]byte {
	var id [RequestIDSize]byte
	rand.Read(id[:])
	return id
}

// SealInferenceRequest seals body (the application's JSON, at most
// MaxInferenceRequest bytes) under k with the header h, whose key id and
// version are set from k.
func SealInferenceRequest(k *KeyFile, h *InferenceRequest, body []byte) ([]byte, error) {
	if len(body) > MaxInferenceRequest {
		return nil, fmt.Errorf("request is %d bytes, more than %d", len(body), MaxInferenceRequest)
	}
	h.KeyID, h.KeyVersion = k.ID, k.Version
	if err := h.check(); err != nil {
		return nil, fmt.Errorf("couldn't seal the request: %w", err)
	}
	aead, err := inferenceAEAD(k, h.ID[:], inferenceMagic+" request")
	if err != nil {
		return nil, err
	}
	hdr := h.Marshal()
	nonce := make([]byte, gcmNonce)
	rand.Read(nonce)
	p := pad(body)
	out := make([]byte, 0, len(hdr)+gcmNonce+len(p)+gcmOverhead)
	out = append(append(out, hdr...), nonce...)
	return aead.Seal(out, nonce, p, hdr), nil
}

// OpenInferenceRequest authenticates and decrypts a sealed request under
// k, whose id and version the header must name.
func OpenInferenceRequest(k *KeyFile, msg []byte) (*InferenceRequest, []byte, error) {
	h, hdr, body, err := ParseInferenceRequest(msg)
	if err != nil {
		return nil, nil, err
	}
	if h.KeyID != k.ID || h.KeyVersion != k.Version {
		return nil, nil, fmt.Errorf("request is for key %s version %d, not %s version %d", h.KeyID, h.KeyVersion, k.ID, k.Version)
	}
	aead, err := inferenceAEAD(k, h.ID[:], inferenceMagic+" request")
	if err != nil {
		return nil, nil, err
	}
	p, err := aead.Open(nil, body[:gcmNonce], body[gcmNonce:], hdr)
	if err != nil {
		return nil, nil, errors.New("decryption failed: wrong key or tampered request")
	}
	pt, err := unpad(p)
	if err != nil {
		return nil, nil, fmt.Errorf("authenticated request with %v", err)
	}
	return h, pt, nil
}

// frameAD is the additional data of a frame with flag f.
func frameAD(f byte) []byte { return append([]byte(inferenceMagic+" frame"), f) }

func frameNonce(seq uint64) []byte {
	n := make([]byte, gcmNonce)
	binary.BigEndian.PutUint64(n[4:], seq)
	return n
}

func responseAEAD(k *KeyFile, sealedRequest []byte) (cipher.AEAD, error) {
	sum := sha256.Sum256(sealedRequest)
	return inferenceAEAD(k, sum[:], inferenceMagic+" response")
}

// A ResponseSealer seals the frames of the answer to one request, in
// order. It is not safe for concurrent use.
type ResponseSealer struct {
	aead cipher.AEAD
	seq  uint64
	done bool
}

// NewResponseSealer returns the sealer of the answer to sealedRequest (the
// exact bytes received) under k.
func NewResponseSealer(k *KeyFile, sealedRequest []byte) (*ResponseSealer, error) {
	a, err := responseAEAD(k, sealedRequest)
	if err != nil {
		return nil, err
	}
	return &ResponseSealer{aead: a}, nil
}

// Seal returns the next frame, holding payload (at most
// MaxInferenceFrame bytes); final marks the last one. Sealing after the
// last frame is an error.
func (s *ResponseSealer) Seal(payload []byte, final bool) ([]byte, error) {
	if s.done {
		return nil, errors.New("answer already ended")
	}
	if len(payload) > MaxInferenceFrame {
		return nil, fmt.Errorf("frame of %d bytes, more than %d", len(payload), MaxInferenceFrame)
	}
	var f byte
	if final {
		f, s.done = 1, true
	}
	p := pad(payload)
	out := make([]byte, 1, 1+len(p)+gcmOverhead)
	out[0] = f
	out = s.aead.Seal(out, frameNonce(s.seq), p, frameAD(f))
	s.seq++
	return out, nil
}

// SealHead returns frame 0: the head of the answer.
func (s *ResponseSealer) SealHead(h InferenceHead) ([]byte, error) {
	if s.seq != 0 {
		return nil, errors.New("the head is frame 0")
	}
	b, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	return s.Seal(b, false)
}

// A ResponseOpener opens the frames of the answer to one request, in
// order: each frame must be the next one, and after the final frame no
// frame opens. It is not safe for concurrent use.
type ResponseOpener struct {
	aead   cipher.AEAD
	seq    uint64
	ended  bool
	failed error
}

// NewResponseOpener returns the opener of the answer to sealedRequest (the
// exact bytes sent) under k.
func NewResponseOpener(k *KeyFile, sealedRequest []byte) (*ResponseOpener, error) {
	a, err := responseAEAD(k, sealedRequest)
	if err != nil {
		return nil, err
	}
	return &ResponseOpener{aead: a}, nil
}

// ErrFrame reports a frame that does not authenticate as the next frame
// of this answer: tampered, dropped, repeated, reordered, from another
// answer, or after the end.
var ErrFrame = errors.New("answer frame fails authentication (tampered, dropped, reordered, or from another answer)")

// Open authenticates and decrypts the next frame. After an error the
// opener stays failed.
func (o *ResponseOpener) Open(frame []byte) (payload []byte, final bool, err error) {
	switch {
	case o.failed != nil:
		return nil, false, o.failed
	case o.ended:
		o.failed = fmt.Errorf("%w: a frame after the last one", ErrFrame)
		return nil, false, o.failed
	}
	if len(frame) < 1+gcmOverhead || len(frame) > 1+4+MaxInferenceFrame+inferencePad+gcmOverhead || frame[0] > 1 {
		o.failed = fmt.Errorf("%w: frame %d is malformed", ErrFrame, o.seq)
		return nil, false, o.failed
	}
	p, err := o.aead.Open(nil, frameNonce(o.seq), frame[1:], frameAD(frame[0]))
	if err != nil {
		o.failed = fmt.Errorf("%w: frame %d", ErrFrame, o.seq)
		return nil, false, o.failed
	}
	pt, err := unpad(p)
	if err != nil {
		o.failed = fmt.Errorf("%w: frame %d: %v", ErrFrame, o.seq, err)
		return nil, false, o.failed
	}
	o.seq++
	o.ended = frame[0] == 1
	return pt, o.ended, nil
}

// Ended reports whether the final frame was opened.
func (o *ResponseOpener) Ended() bool { return o.ended && o.failed == nil }

// Seq returns the number of frames opened.
func (o *ResponseOpener) Seq() uint64 { return o.seq }

// ParseInferenceHead decodes frame 0's payload strictly: one JSON object
// with a status from 100 to 599 and a content type of printable ASCII.
func ParseInferenceHead(b []byte) (InferenceHead, error) {
	var h InferenceHead
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&h); err != nil {
		return h, fmt.Errorf("answer head: %w", err)
	}
	if d.More() {
		return h, errors.New("answer head: trailing data")
	}
	if h.Status < 100 || h.Status > 599 {
		return h, fmt.Errorf("answer head: status %d", h.Status)
	}
	if len(h.ContentType) > 256 {
		return h, errors.New("answer head: content type too long")
	}
	for i := 0; i < len(h.ContentType); i++ {
		if c := h.ContentType[i]; c < ' ' || c > '~' {
			return h, errors.New("answer head: content type is not printable ASCII")
		}
	}
	return h, nil
}
