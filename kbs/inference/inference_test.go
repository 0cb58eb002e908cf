package inference

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
)

func TestRequestFields(t *testing.T) {
	for _, tc := range []struct {
		body   string
		model  string
		stream bool
		err    string
	}{
		{`{"model":"m","messages":[]}`, "m", false, ""},
		{`{"stream":true,"model":"m"}`, "m", true, ""},
		{` {"model":"m","stream":null} `, "m", false, ""},
		{`{"model":"m","stream":false,"x":{"stream":true,"model":"n"}}`, "m", false, ""},
		{`{"model":"m","stream":1}`, "", false, "boolean"},
		{`{"model":1}`, "", false, "string"},
		{`{"model":""}`, "", false, "no \"model\""},
		{`{"messages":[]}`, "", false, "no \"model\""},
		{`{"model":"m","model":"n"}`, "", false, "repeats"},
		{`{"model":"m","stream":true,"stream":false}`, "", false, "repeats"},
		{`{"model":"m"}{}`, "", false, "after its JSON object"},
		{`{"model":"m"`, "", false, "not valid JSON"},
		{`["model"]`, "", false, "not a JSON object"},
		{``, "", false, "not a JSON object"},
	} {
		m, s, err := RequestFields([]byte(tc.body))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("RequestFields(%s) error = %v, want %q", tc.body, err, tc.err)
			}
			continue
		}
		if err != nil || m != tc.model || s != tc.stream {
			t.Errorf("RequestFields(%s) = %q, %v, %v, want %q, %v", tc.body, m, s, err, tc.model, tc.stream)
		}
	}
}

func FuzzRequestFields(f *testing.F) {
	for _, s := range []string{`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`, `{"model":"m","stream":null}`, `{"model":"a","model":"b"}`, `{}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, s, err := RequestFields(b)
		if err != nil {
			return
		}
		// What the inference server reads (encoding/json, last key wins,
		// like Python's json) is what travels in clear.
		var v struct {
			Model  string `json:"model"`
			Stream *bool  `json:"stream"`
		}
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatalf("RequestFields accepted %q, json.Unmarshal: %v", b, err)
		}
		if v.Model != m || (v.Stream != nil && *v.Stream) != s || m == "" {
			t.Fatalf("RequestFields(%q) = %q, %v; json reads %q, %v", b, m, s, v.Model, v.Stream)
		}
	})
}

func TestReplayCache(t *testing.T) {
	now := time.Unix(1767225600, 0)
	c := NewReplayCache(time.Minute, 3)
	id := func(b byte) [api.RequestIDSize]byte { return [api.RequestIDSize]byte{b} }
	if err := c.Add(id(1), now.Unix(), now); err != nil {
		t.Fatal(err)
	}
	if err := c.Add(id(1), now.Unix(), now); !errors.Is(err, ErrReplayed) {
		t.Fatalf("replay: %v", err)
	}
	for _, d := range []time.Duration{-61 * time.Second, 61 * time.Second} {
		if err := c.Add(id(2), now.Add(d).Unix(), now); !errors.Is(err, ErrStale) {
			t.Fatalf("time %v from now: %v", d, err)
		}
	}
	// Within the window in both directions (clock skew).
	if err := c.Add(id(2), now.Add(50*time.Second).Unix(), now); err != nil {
		t.Fatal(err)
	}
	if err := c.Add(id(3), now.Add(-50*time.Second).Unix(), now); err != nil {
		t.Fatal(err)
	}
	if err := c.Add(id(4), now.Unix(), now); !errors.Is(err, ErrCacheFull) {
		t.Fatalf("full: %v", err)
	}
	if c.Len() != 3 {
		t.Fatalf("Len = %d", c.Len())
	}
	// 20 s later id 3 (sealed 70 s ago) is outside the window: forgotten,
	// and a replay of it is stale.
	later := now.Add(20 * time.Second)
	if err := c.Add(id(4), later.Unix(), later); err != nil {
		t.Fatal(err)
	}
	if err := c.Add(id(3), now.Add(-50*time.Second).Unix(), later); !errors.Is(err, ErrStale) {
		t.Fatalf("replay of a forgotten id: %v", err)
	}
	// The one sealed in the future is held until its own time leaves the
	// window.
	if err := c.Add(id(2), now.Add(50*time.Second).Unix(), now.Add(100*time.Second)); !errors.Is(err, ErrReplayed) {
		t.Fatalf("replay of a future id: %v", err)
	}
}

func TestEventReader(t *testing.T) {
	in := "data: a\n\ndata: b\r\n\r\n: comment\ndata: c\rdata: d\r\r\n\n\ndata: e"
	r := NewEventReader(strings.NewReader(in), 0)
	var got []string
	for {
		ev, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(ev))
	}
	want := []string{"data: a\n\n", "data: b\n\n", ": comment\ndata: c\ndata: d\n\n", "data: e\n\n"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("events %q, want %q", got, want)
	}
	r = NewEventReader(strings.NewReader("data: "+strings.Repeat("x", 100)+"\n\n"), 64)
	if _, err := r.Next(); !errors.Is(err, ErrEventTooLarge) {
		t.Fatalf("large event: %v", err)
	}
	r = NewEventReader(strings.NewReader(strings.Repeat("data: x\n", 20)+"\n"), 64)
	if _, err := r.Next(); !errors.Is(err, ErrEventTooLarge) {
		t.Fatalf("event of many lines: %v", err)
	}
}

func FuzzEventReader(f *testing.F) {
	f.Add([]byte("data: {\"a\":1}\n\ndata: [DONE]\n\n"))
	f.Add([]byte("event: x\r\ndata: y\r\n\r\n"))
	f.Add([]byte("data: a\rdata: b\r\r"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewEventReader(bytes.NewReader(b), 256)
		total := 0
		for {
			ev, err := r.Next()
			if err != nil {
				return
			}
			if len(ev) > 256 || !bytes.HasSuffix(ev, []byte("\n\n")) || bytes.Contains(ev[:len(ev)-1], []byte("\n\n")) || bytes.IndexByte(ev, '\r') >= 0 {
				t.Fatalf("event %q", ev)
			}
			total += len(ev)
			if total > 2*len(b)+2 {
				t.Fatalf("%d bytes of events from %d bytes", total, len(b))
			}
		}
	})
}

func TestFrameReader(t *testing.T) {
	var buf bytes.Buffer
	w := NewFrameWriter(&buf)
	for _, f := range [][]byte{{0, 1, 2}, bytes.Repeat([]byte{7}, 70000), {1}} {
		if err := w.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	stream := ": keep-alive\n" + buf.String()
	r := NewFrameReader(strings.NewReader(stream))
	var n []int
	for {
		f, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n = append(n, len(f))
	}
	if len(n) != 3 || n[0] != 3 || n[1] != 70000 || n[2] != 1 {
		t.Fatalf("frames of %v bytes", n)
	}
	for _, bad := range []string{
		"data: AAE=\n", "data: AAE=\ndata: AAE=\n\n", "event: x\n\n", "data: AAE\n\n", "data: AAE=\r\n\r\n", "data: AA", "data: A=E=\n\n",
	} {
		r := NewFrameReader(strings.NewReader(bad))
		if _, err := r.Next(); !errors.Is(err, ErrFraming) {
			t.Errorf("%q: error %v, want ErrFraming", bad, err)
		}
	}
}

func FuzzFrameReader(f *testing.F) {
	// A worker's answer sealed by an earlier build (kbs/api/testdata).
	if b, err := os.ReadFile(filepath.Join("..", "api", "testdata", "inference-answer.txt")); err == nil {
		f.Add(b)
	} else {
		f.Fatal(err)
	}
	var buf bytes.Buffer
	NewFrameWriter(&buf).Write([]byte("frame"))
	f.Add(buf.Bytes())
	f.Add([]byte(": ping\ndata: AAE=\n\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewFrameReader(bytes.NewReader(b))
		var out bytes.Buffer
		w := NewFrameWriter(&out)
		for {
			fr, err := r.Next()
			if err != nil {
				break
			}
			w.Write(fr)
		}
		// Every frame read is one a FrameWriter writes back as the same
		// event: the input, minus comments, begins with what was read.
		var in bytes.Buffer
		for _, l := range bytes.SplitAfter(b, []byte("\n")) {
			if !bytes.HasPrefix(l, []byte(":")) {
				in.Write(l)
			}
		}
		if !bytes.HasPrefix(in.Bytes(), out.Bytes()) {
			t.Fatalf("read %q from %q", out.Bytes(), b)
		}
	})
}
