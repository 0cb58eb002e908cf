package report_test

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/internal/testbin"
	"github.com/kbs-dev/kbs/kbs/audit"
)

// cdp speaks the Chrome DevTools Protocol with a Chromium started with
// --remote-debugging-pipe: JSON messages separated by NUL bytes, written
// to its fd 3 and read from its fd 4.
type cdp struct {
	t    *testing.T
	w    io.Writer
	mu   sync.Mutex
	next int
	wait map[int]chan cdpMessage
	// events receives every event, in order.
	events chan cdpMessage
}

type cdpMessage struct {
	ID        int             `json:"id,omitempty"`
	Method    string          `json:"method,omitempty"`
	Params    json.RawMessage `json:"params,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *struct {
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

// startChromium runs headless Chromium with a fresh profile in dir and
// returns a protocol client.
func startChromium(t *testing.T, bin, dir string) *cdp {
	t.Helper()
	toChrome, ours, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	theirs, fromChrome, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := testbin.Command(t, bin, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
		"--user-data-dir="+filepath.Join(dir, "profile"), "--remote-debugging-pipe", "about:blank")
	cmd.ExtraFiles = []*os.File{toChrome, fromChrome} // fds 3 and 4
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	toChrome.Close()
	fromChrome.Close()
	t.Cleanup(func() {
		ours.Close()
		testbin.KillGroup(cmd)
		cmd.Wait()
		if t.Failed() {
			t.Logf("chromium stderr:\n%s", stderr.String())
		}
	})
	c := &cdp{t: t, w: ours, wait: map[int]chan cdpMessage{}, events: make(chan cdpMessage, 4096)}
	go func() {
		r := bufio.NewReader(theirs)
		for {
			b, err := r.ReadBytes(0)
			if err != nil {
				close(c.events)
				return
			}
			var m cdpMessage
			if json.Unmarshal(b[:len(b)-1], &m) != nil {
				continue
			}
			if m.ID != 0 {
				c.mu.Lock()
				ch := c.wait[m.ID]
				delete(c.wait, m.ID)
				c.mu.Unlock()
				if ch != nil {
					ch <- m
				}
				continue
			}
			select {
			case c.events <- m:
			default: // a flood of events: the test fails on the missing ones
			}
		}
	}()
	return c
}

// call sends a command and returns its result.
func (c *cdp) call(session, method string, params any, result any) {
	c.t.Helper()
	c.mu.Lock()
	c.next++
	id := c.next
	ch := make(chan cdpMessage, 1)
	c.wait[id] = ch
	c.mu.Unlock()
	p, _ := json.Marshal(params)
	b, _ := json.Marshal(cdpMessage{ID: id, Method: method, Params: p, SessionID: session})
	if _, err := c.w.Write(append(b, 0)); err != nil {
		c.t.Fatalf("%s: %v", method, err)
	}
	select {
	case m := <-ch:
		if m.Error != nil {
			c.t.Fatalf("%s: %s", method, m.Error.Message)
		}
		if result != nil {
			if err := json.Unmarshal(m.Result, result); err != nil {
				c.t.Fatalf("%s: %v", method, err)
			}
		}
	case <-time.After(60 * time.Second):
		c.t.Fatalf("%s: no answer from chromium", method)
	}
}

// pageLoad is what loading a page in Chromium showed.
type pageLoad struct {
	Text     string   // document.body.innerText
	Console  []string // console messages, exceptions, log entries of level warning or error
	Requests []string // URLs requested other than the page itself
	PNG      []byte   // a screenshot of the whole page
}

// load opens file in a new tab and collects what happened.
func (c *cdp) load(file string) pageLoad {
	c.t.Helper()
	var target struct{ TargetID string }
	c.call("", "Target.createTarget", map[string]any{"url": "about:blank"}, &target)
	var att struct{ SessionID string }
	c.call("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att)
	s := att.SessionID
	for _, d := range []string{"Page.enable", "Runtime.enable", "Log.enable", "Network.enable"} {
		c.call(s, d, map[string]any{}, nil)
	}
	u := (&url.URL{Scheme: "file", Path: file}).String()
	c.call(s, "Page.navigate", map[string]any{"url": u}, nil)
	var out pageLoad
	deadline := time.After(60 * time.Second)
	for loaded := false; !loaded; {
		select {
		case m, ok := <-c.events:
			if !ok {
				c.t.Fatal("chromium exited")
			}
			out.note(m, u)
			loaded = m.Method == "Page.loadEventFired" && m.SessionID == s
		case <-deadline:
			c.t.Fatal("the page did not load within 60 s")
		}
	}
	var ev struct {
		Result struct {
			Value string `json:"value"`
		} `json:"result"`
	}
	c.call(s, "Runtime.evaluate", map[string]any{"expression": "document.body.innerText", "returnByValue": true}, &ev)
	out.Text = ev.Result.Value
	var shot struct {
		Data string `json:"data"`
	}
	c.call(s, "Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true}, &shot)
	out.PNG, _ = base64.StdEncoding.DecodeString(shot.Data)
	// Events that arrived meanwhile.
	for {
		select {
		case m, ok := <-c.events:
			if !ok {
				return out
			}
			out.note(m, u)
		case <-time.After(500 * time.Millisecond):
			return out
		}
	}
}

func (p *pageLoad) note(m cdpMessage, page string) {
	var v struct {
		Type    string `json:"type"`
		Request struct {
			URL string `json:"url"`
		} `json:"request"`
		Entry struct {
			Level string `json:"level"`
			Text  string `json:"text"`
			URL   string `json:"url"`
		} `json:"entry"`
		Args []struct {
			Value any `json:"value"`
		} `json:"args"`
		ExceptionDetails struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	json.Unmarshal(m.Params, &v)
	switch m.Method {
	case "Network.requestWillBeSent":
		if v.Request.URL != page {
			p.Requests = append(p.Requests, v.Request.URL)
		}
	case "Runtime.consoleAPICalled":
		p.Console = append(p.Console, fmt.Sprintf("console.%s %v", v.Type, v.Args))
	case "Runtime.exceptionThrown":
		p.Console = append(p.Console, "exception: "+v.ExceptionDetails.Text)
	case "Log.entryAdded":
		if v.Entry.Level == "error" || v.Entry.Level == "warning" {
			p.Console = append(p.Console, fmt.Sprintf("%s: %s %s", v.Entry.Level, v.Entry.Text, v.Entry.URL))
		}
	}
}

// TestChromium opens the report in headless Chromium (Debian's chromium
// package: 'make test-report' installs it and sets KBS_CHROMIUM): the page
// loads with no console messages, no exceptions and no request but its
// own, and its visible text holds every number of the JSON audit of the
// same log. KBS_REPORT_OUT, if set, names a directory that receives the
// page and its screenshot.
func TestChromium(t *testing.T) {
	bin := os.Getenv("KBS_CHROMIUM")
	if bin == "" {
		t.Skip("KBS_CHROMIUM is not set: 'make test-report' runs this test with Debian's chromium")
	}
	l := richLog(t)
	dir := t.TempDir()
	c := startChromium(t, bin, dir)

	// A control page shows that the checks see what they look for: a
	// console message and a request for an image on loopback.
	control := filepath.Join(dir, "control.html")
	os.WriteFile(control, []byte(`<!DOCTYPE html><html><body><script>console.error("control")</script><img src="http://127.0.0.1:9/x.png">control</body></html>`), 0o644)
	if got := c.load(control); len(got.Console) == 0 || len(got.Requests) == 0 || got.Text != "control" {
		t.Fatalf("control page: console %q, requests %q, text %q: the checks below would see nothing", got.Console, got.Requests, got.Text)
	}
	for _, tc := range []struct {
		name string
		page func() ([]byte, []string)
	}{
		{"report", func() ([]byte, []string) { p, plain := render(t, l, nil); return p, expectedNumbers(plain) }},
		{"report-class", func() ([]byte, []string) {
			p, plain := render(t, l, &audit.Filter{Class: "cpu-worker"})
			return p, expectedNumbers(plain)
		}},
	} {
		page, want := tc.page()
		file := filepath.Join(dir, tc.name+".html")
		if err := os.WriteFile(file, page, 0o644); err != nil {
			t.Fatal(err)
		}
		got := c.load(file)
		if len(got.Console) > 0 {
			t.Errorf("console: %q", got.Console)
		}
		if len(got.Requests) > 0 {
			t.Errorf("network requests: %q", got.Requests)
		}
		txt := spaceRE.ReplaceAllString(got.Text, " ")
		for _, w := range want {
			if !strings.Contains(txt, w) {
				t.Errorf("the visible text lacks %q", w)
			}
		}
		if len(got.PNG) < 1000 || string(got.PNG[1:4]) != "PNG" {
			t.Errorf("screenshot of %d bytes", len(got.PNG))
		}
		if out := os.Getenv("KBS_REPORT_OUT"); out != "" {
			os.WriteFile(filepath.Join(out, tc.name+".html"), page, 0o644)
			os.WriteFile(filepath.Join(out, tc.name+".png"), got.PNG, 0o644)
		}
	}
}
