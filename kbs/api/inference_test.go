package api

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// inferenceFixtures returns testdata's key, sealed request and the frames
// of its answer (testdata/gen_inference.go made them).
func inferenceFixtures(t testing.TB) (*KeyFile, []byte, [][]byte) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "prompt.key"))
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParseKeyFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	req, err := os.ReadFile(filepath.Join("testdata", "inference-request.bin"))
	if err != nil {
		t.Fatal(err)
	}
	ans, err := os.ReadFile(filepath.Join("testdata", "inference-answer.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var frames [][]byte
	for _, ev := range strings.Split(strings.TrimSuffix(string(ans), "\n\n"), "\n\n") {
		f, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(ev, "data: "))
		if err != nil {
			t.Fatal(err)
		}
		frames = append(frames, f)
	}
	return k, req, frames
}

// TestInferenceGolden opens a request and an answer sealed by an earlier
// build: the wire format has not changed.
func TestInferenceGolden(t *testing.T) {
	k, req, frames := inferenceFixtures(t)
	h, body, err := OpenInferenceRequest(k, req)
	if err != nil {
		t.Fatal(err)
	}
	if h.Path != "/v1/chat/completions" || h.Model != "kbs-echo" || !h.Stream || h.Time != 1767225600 || string(h.ID[:]) != "fixture-request!" || !strings.Contains(string(body), `"content":"hello"`) {
		t.Fatalf("request %+v %s", h, body)
	}
	got, ended, err := openAll(k, req, frames)
	if err != nil || !ended || len(got) != 4 || !strings.Contains(got[1], "HELLO") || got[2] != "data: [DONE]\n\n" {
		t.Fatalf("answer %q, ended %v, %v", got, ended, err)
	}
	if hd, err := ParseInferenceHead([]byte(got[0])); err != nil || hd.Status != 200 {
		t.Fatalf("head %+v, %v", hd, err)
	}
}

func testInferenceKey(version uint64) *KeyFile {
	return &KeyFile{ID: "demo/prompt-key", Version: version, Material: bytes.Repeat([]byte{byte(version)}, 32)}
}

func testInferenceHeader() *InferenceRequest {
	h := &InferenceRequest{Time: 1767225600, Method: "POST", Path: "/v1/chat/completions", Model: "meta-llama/Llama-3.1-8B-Instruct", Stream: true}
	copy(h.ID[:], "0123456789abcdef")
	copy(h.Worker[:], "worker-instance!")
	return h
}

func TestInferenceRequestRoundTrip(t *testing.T) {
	k := testInferenceKey(1)
	body := []byte(`{"model":"meta-llama/Llama-3.1-8B-Instruct","stream":true,"messages":[{"role":"user","content":"secret"}]}`)
	msg, err := SealInferenceRequest(k, testInferenceHeader(), body)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(msg, []byte("secret")) {
		t.Fatal("the sealed request holds plaintext")
	}
	h, pt, err := OpenInferenceRequest(k, msg)
	if err != nil || !bytes.Equal(pt, body) || *h != *func() *InferenceRequest {
		w := testInferenceHeader()
		w.KeyID, w.KeyVersion = k.ID, k.Version
		return w
	}() {
		t.Fatalf("OpenInferenceRequest = %+v, %q, %v", h, pt, err)
	}
	// Padding hides the length within 256 bytes.
	short, _ := SealInferenceRequest(k, testInferenceHeader(), []byte("{}"))
	longer, _ := SealInferenceRequest(k, testInferenceHeader(), bytes.Repeat([]byte("x"), 200))
	if len(short) != len(longer) {
		t.Fatalf("sealed sizes %d and %d differ for plaintexts of 2 and 200 bytes", len(short), len(longer))
	}
	// Another key, or the same id and version with other bytes, fails.
	if _, _, err := OpenInferenceRequest(testInferenceKey(2), msg); err == nil {
		t.Fatal("opened under another version")
	}
	other := &KeyFile{ID: k.ID, Version: 1, Material: bytes.Repeat([]byte{9}, 32)}
	if _, _, err := OpenInferenceRequest(other, msg); err == nil {
		t.Fatal("opened under other key material")
	}
	// Every header line is authenticated: relabelling any field fails.
	for _, r := range []struct{ from, to string }{
		{"request-id: 3031", "request-id: 3131"},
		{"time: 1767225600", "time: 1767225601"},
		{"worker: 776f", "worker: 776e"},
		{"method: POST", "method: GET\x00"[:11]},
		{"path: /v1/chat/completions", "path: /v1/completions"},
		{"model: meta-llama", "model: xeta-llama"},
		{"stream: true", "stream: fals"},
	} {
		bad := bytes.Replace(msg, []byte(r.from), []byte(r.to), 1)
		if bytes.Equal(bad, msg) {
			t.Fatalf("%q not in the header", r.from)
		}
		if _, _, err := OpenInferenceRequest(k, bad); err == nil {
			t.Errorf("relabelled %q -> %q: opened", r.from, r.to)
		}
	}
	flipped := bytes.Clone(msg)
	flipped[len(flipped)-20] ^= 1
	if _, _, err := OpenInferenceRequest(k, flipped); err == nil {
		t.Fatal("a flipped ciphertext bit opened")
	}
}

func TestParseInferenceRequestStrict(t *testing.T) {
	k := testInferenceKey(1)
	good, _ := SealInferenceRequest(k, testInferenceHeader(), []byte("{}"))
	for _, tc := range []struct{ from, to, want string }{
		{"kbs-inference-v1\n", "kbs-inference-v2\n", "bad header"},
		{"key-id: demo/prompt-key", "key-id: ../x", "bad header"},
		{"key-version: 1\n", "key-version: 01\n", "key-version"},
		{"key-version: 1\n", "key-version: 0\n", "key version 0"},
		{"request-id: 30", "request-id: 3", "request-id"},
		{"request-id: 30", "request-id: 3A", "request-id"},
		{"time: 1767225600", "time: -1", "before 1970"},
		{"time: 1767225600", "time: +1767225600", "time"},
		{"method: POST", "method: PUT", "method"},
		{"path: /v1/chat/completions", "path: /v1/../keys", "dot segment"},
		{"path: /v1/chat/completions", "path: /v2/chat", "want /v1/"},
		{"model: meta", "model: me ta", "printable"},
		{"stream: true", "stream: yes", "stream"},
		{"stream: true\n", "stream: true\nextra: 1\n", "bad header"},
		{"key-id:", "key_id:", "want key-id"},
	} {
		bad := bytes.Replace(good, []byte(tc.from), []byte(tc.to), 1)
		if _, _, _, err := ParseInferenceRequest(bad); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q -> %q: error %v, want %q", tc.from, tc.to, err, tc.want)
		}
	}
	if _, _, _, err := ParseInferenceRequest(good[:bytes.Index(good, []byte("\n\n"))+2+10]); err == nil {
		t.Error("a truncated body parsed")
	}
	if _, _, _, err := ParseInferenceRequest(append(bytes.Clone(good), make([]byte, MaxSealedRequest)...)); err == nil {
		t.Error("an oversized request parsed")
	}
	h := testInferenceHeader()
	h.Model = strings.Repeat("m", maxModelName+1)
	if _, err := SealInferenceRequest(k, h, nil); err == nil {
		t.Error("sealed a header that does not parse")
	}
	if _, err := SealInferenceRequest(k, testInferenceHeader(), make([]byte, MaxInferenceRequest+1)); err == nil {
		t.Error("sealed an oversized request")
	}
}

// frames seals payloads as one answer and returns the frames.
func frames(t testing.TB, k *KeyFile, req []byte, payloads ...string) [][]byte {
	s, err := NewResponseSealer(k, req)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	h, _ := s.SealHead(InferenceHead{Status: 200, ContentType: "text/event-stream"})
	out = append(out, h)
	for i, p := range payloads {
		f, err := s.Seal([]byte(p), i == len(payloads)-1)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, f)
	}
	if _, err := s.Seal(nil, false); err == nil {
		t.Fatal("sealed after the final frame")
	}
	return out
}

// openAll opens fs in order and returns the payloads and whether the last
// was final.
func openAll(k *KeyFile, req []byte, fs [][]byte) ([]string, bool, error) {
	o, _ := NewResponseOpener(k, req)
	var out []string
	for _, f := range fs {
		p, _, err := o.Open(f)
		if err != nil {
			return out, o.Ended(), err
		}
		out = append(out, string(p))
	}
	return out, o.Ended(), nil
}

func TestResponseFrames(t *testing.T) {
	k := testInferenceKey(1)
	req, _ := SealInferenceRequest(k, testInferenceHeader(), []byte("{}"))
	fs := frames(t, k, req, "data: a\n\n", "data: b\n\n", "data: [DONE]\n\n", "")
	got, ended, err := openAll(k, req, fs)
	if err != nil || !ended || len(got) != 5 || got[1] != "data: a\n\n" || got[4] != "" {
		t.Fatalf("open = %q, %v, %v", got, ended, err)
	}
	if h, err := ParseInferenceHead([]byte(got[0])); err != nil || h.Status != 200 || h.ContentType != "text/event-stream" {
		t.Fatalf("head = %+v, %v", h, err)
	}
	for _, f := range fs {
		if (len(f)-1-16)%256 != 0 {
			t.Fatalf("frame of %d bytes is not padded", len(f))
		}
	}
	other, _ := SealInferenceRequest(k, testInferenceHeader(), []byte("{}"))
	swap := func(i int) [][]byte { c := append([][]byte(nil), fs...); c[i], c[i+1] = c[i+1], c[i]; return c }
	drop := func(i int) [][]byte { return append(append([][]byte(nil), fs[:i]...), fs[i+1:]...) }
	flip := func(i int) [][]byte {
		c := append([][]byte(nil), fs...)
		c[i] = bytes.Clone(c[i])
		c[i][5] ^= 1
		return c
	}
	unfinal := func() [][]byte {
		c := append([][]byte(nil), fs...)
		c[4] = bytes.Clone(c[4])
		c[4][0] = 0
		return c
	}
	for name, bad := range map[string][][]byte{
		"swapped": swap(1), "dropped": drop(2), "dropped head": drop(0), "flipped": flip(3),
		"repeated":           append(append([][]byte(nil), fs[:2]...), fs[1:]...),
		"after the end":      append(append([][]byte(nil), fs...), fs[4]),
		"final flag cleared": unfinal(),
	} {
		if _, _, err := openAll(k, req, bad); !errors.Is(err, ErrFrame) {
			t.Errorf("%s: error %v, want ErrFrame", name, err)
		}
	}
	// Cut short: everything opens, but the answer has not ended.
	if _, ended, err := openAll(k, req, fs[:4]); err != nil || ended {
		t.Errorf("cut: ended %v, %v", ended, err)
	}
	// The answer to another request, even with the same key, fails.
	if _, _, err := openAll(k, other, fs); !errors.Is(err, ErrFrame) {
		t.Errorf("answer of another request: %v", err)
	}
	for _, b := range []string{`{"status":99,"content_type":""}`, `{"status":200,"content_type":"a\nb"}`, `{"status":200,"x":1}`, `{"status":200} {}`, `[]`} {
		if _, err := ParseInferenceHead([]byte(b)); err == nil {
			t.Errorf("ParseInferenceHead(%s) succeeded", b)
		}
	}
}

func TestPadding(t *testing.T) {
	for _, n := range []int{0, 1, 251, 252, 253, 1000} {
		p := pad(make([]byte, n))
		if len(p)%inferencePad != 0 || len(p) < n+4 || len(p)-n-4 >= inferencePad {
			t.Fatalf("pad(%d) = %d bytes", n, len(p))
		}
		if b, err := unpad(p); err != nil || len(b) != n {
			t.Fatalf("unpad(pad(%d)) = %d, %v", n, len(b), err)
		}
	}
	p := pad([]byte("abc"))
	p[10] = 1
	if _, err := unpad(p); err == nil {
		t.Fatal("non-zero padding accepted")
	}
	p = pad(make([]byte, 300)) // 512 bytes
	p[2], p[3] = 0, 4          // claims 4 bytes: 504 bytes of padding
	if _, err := unpad(p); err == nil {
		t.Fatal("padding of more than a block accepted")
	}
}

func FuzzParseInferenceRequest(f *testing.F) {
	_, golden, _ := inferenceFixtures(f)
	f.Add(golden)
	k := testInferenceKey(1)
	for _, body := range []string{"", "{}", `{"model":"m"}`} {
		msg, _ := SealInferenceRequest(k, testInferenceHeader(), []byte(body))
		f.Add(msg)
	}
	h := testInferenceHeader()
	h.Method, h.Path, h.Model, h.Stream = "GET", "/v1/models", "", false
	msg, _ := SealInferenceRequest(k, h, nil)
	f.Add(msg)
	f.Add([]byte("kbs-inference-v1\n\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, hdr, body, err := ParseInferenceRequest(b)
		if err != nil {
			return
		}
		// Only the exact form Marshal writes parses.
		if !bytes.Equal(h.Marshal(), hdr) || !bytes.Equal(append(bytes.Clone(hdr), body...), b) {
			t.Fatalf("header %q re-marshals as %q", hdr, h.Marshal())
		}
		// Opening checks, never panics; only genuine requests open.
		if _, pt, err := OpenInferenceRequest(k, b); err == nil {
			re, _ := SealInferenceRequest(k, h, pt)
			if len(re) != len(b) {
				t.Fatalf("an opened request of %d bytes re-seals as %d", len(b), len(re))
			}
		}
	})
}

func FuzzResponseOpener(f *testing.F) {
	k := testInferenceKey(1)
	req, _ := SealInferenceRequest(k, testInferenceHeader(), []byte("{}"))
	fs := frames(f, k, req, "data: x\n\n", "")
	for _, fr := range fs {
		f.Add(fr)
	}
	f.Add([]byte{2})
	_, _, golden := inferenceFixtures(f)
	for _, fr := range golden {
		f.Add(fr)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		o, _ := NewResponseOpener(k, req)
		p, _, err := o.Open(frame)
		if err == nil {
			// Only the genuine head opens as frame 0.
			if !bytes.Equal(frame, fs[0]) {
				t.Fatalf("a forged frame 0 opened: %q", p)
			}
			if _, err := ParseInferenceHead(p); err != nil {
				t.Fatal(err)
			}
		}
		ParseInferenceHead(frame)
	})
}
