package audit_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/internal/hostilebroker"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/audit"
	"github.com/kbs-dev/kbs/kbs/audit/audittest"
	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/tlog"
)

// hostileClient returns a client of s and the verifier of l's log over a
// fresh checkpoint store.
func hostileClient(t *testing.T, s *hostilebroker.Server, l *hostilebroker.Log) (*client.Client, *tlog.Verifier) {
	t.Helper()
	c, err := client.New(client.Config{Addr: s.Addr, Checkpoints: client.State{Dir: t.TempDir()}.Checkpoints()})
	if err != nil {
		t.Fatal(err)
	}
	lv, err := c.LogVerifier(l.NoteKey)
	if err != nil {
		t.Fatal(err)
	}
	return c, lv
}

// TestAuditErrorKinds: what a hostile broker serves ends the audit with a
// verification failure (a *client.VerifyError or *tlog.ForkError) only
// when data that arrived does not verify; a failure to get the data is
// audit.IsTransport, never a VerifyError.
func TestAuditErrorKinds(t *testing.T) {
	l := hostilebroker.NewLog(t, 700, 3, hostilebroker.Malformed(40))
	other := hostilebroker.NewLog(t, 700, 3, hostilebroker.Malformed(41))
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		cp        []byte // the checkpoint served (nil: the log's)
		path      string // a path answered with h
		h         http.Handler
		transport bool
		want      string
	}{
		{"a checkpoint of size 2^62", l.Sign(1<<62, l.Root), "", nil, false, "above the largest"},
		{"a checkpoint of size 2^64-1", l.Sign(1<<64-1, l.Root), "", nil, false, "above the largest"},
		{"a checkpoint of the largest size, with tiles of nothing", l.Sign(tlog.MaxTreeSize, l.Root), "", nil, false, "log tiles"},
		{"a root that is not the tree's", l.Sign(700, other.Root), "", nil, false, "log tiles"},
		{"an endless checkpoint", nil, "/log/checkpoint", hostilebroker.Endless(http.StatusOK, "text/plain", ""), true, "larger than"},
		{"a redirected checkpoint", nil, "/log/checkpoint", hostilebroker.Redirect("/elsewhere", http.StatusFound), true, "redirect"},
		{"an endless entry bundle", nil, "/log/tile/entries/001", hostilebroker.Endless(http.StatusOK, "application/octet-stream", ""), true, "larger than"},
		{"an entry bundle that fails", nil, "/log/tile/entries/002.p/188", hostilebroker.Body(http.StatusBadGateway, "text/plain", nil), true, "502"},
		{"an endless history", nil, api.PathManifestHistory, hostilebroker.Endless(http.StatusOK, "application/json", `{"manifests":["`), true, "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := hostilebroker.Serve(t, l.Handler(tc.cp))
			if tc.h != nil {
				s.Override(tc.path, tc.h)
			}
			c, lv := hostileClient(t, s, l)
			r, err := audit.Audit(ctx, audit.Config{Client: c, Log: lv})
			if err == nil {
				t.Fatalf("audit completed: ok %v", r.OK())
			}
			var ve *client.VerifyError
			if got := audit.IsTransport(err); got != tc.transport || got == errors.As(err, &ve) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("audit = %v; IsTransport %v, want %v, saying %q", err, got, tc.transport, tc.want)
			}
		})
	}
}

// TestAuditDeadline: a broker that answers slowly, each answer well within
// a request's timeout, cannot stretch an audit past Config.Timeout.
func TestAuditDeadline(t *testing.T) {
	l := hostilebroker.NewLog(t, 300, 3, hostilebroker.Malformed(40))
	s := hostilebroker.Serve(t, l.Handler(nil))
	s.Override("/log/tile/entries/001.p/44", hostilebroker.Slow("application/octet-stream", make([]byte, 44*42), 100*time.Millisecond))
	c, lv := hostileClient(t, s, l)
	start := time.Now()
	_, err := audit.Audit(context.Background(), audit.Config{Client: c, Log: lv, Timeout: time.Second})
	if !audit.IsTransport(err) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("audit = %v, want its deadline exceeded", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("an audit with a 1 s deadline took %v", d)
	}
}

// TestAuditLimits: the bounds an auditor sets on a log (its size, its
// growth since the stored checkpoint, its key ids and manifest versions)
// stop the audit with a *LimitError, which stores nothing.
func TestAuditLimits(t *testing.T) {
	ctx := context.Background()
	l := audittest.New(t)
	l.AppendManifest(t)
	for i := range 20 {
		l.Append(t, audittest.Upload("acme/k"+string(rune('a'+i)), 1, "acme"))
	}
	dir := t.TempDir()
	c, lv := newClient(t, l, dir)
	for _, tc := range []struct {
		name string
		cfg  audit.Config
		want string
	}{
		{"entries", audit.Config{MaxEntries: 20}, "21 entries, more than the 20"},
		{"growth", audit.Config{MaxGrowth: 10}, "21 entries beyond the stored checkpoint of size 0, more than the 10"},
		{"key ids", audit.Config{Limits: audit.Limits{MaxKeyIDs: 5}}, "6 key ids, more than the 5 this audit accepts (at entry 6)"},
	} {
		tc.cfg.Client, tc.cfg.Log = c, lv
		_, err := audit.Audit(ctx, tc.cfg)
		var le *audit.LimitError
		if !errors.As(err, &le) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: audit = %v, want a LimitError saying %q", tc.name, err, tc.want)
		}
		if _, ok, _ := lv.Latest(); ok {
			t.Fatalf("%s: a checkpoint was stored", tc.name)
		}
	}
	// Within the limits: stored; then the growth is counted from there.
	if r, err := audit.Audit(ctx, audit.Config{Client: c, Log: lv, MaxEntries: 21, MaxGrowth: 21}); err != nil || !r.Stored {
		t.Fatalf("audit within the limits = %v", err)
	}
	for i := range 5 {
		l.Append(t, audittest.Upload("acme/z"+string(rune('a'+i)), 1, "acme"))
	}
	if _, err := audit.Audit(ctx, audit.Config{Client: c, Log: lv, MaxGrowth: 4}); err == nil || !strings.Contains(err.Error(), "5 entries beyond the stored checkpoint of size 21") {
		t.Errorf("audit of 5 more entries with MaxGrowth 4 = %v", err)
	}
	if _, err := audit.Audit(ctx, audit.Config{Client: c, Log: lv, MaxGrowth: 5}); err != nil {
		t.Errorf("audit of 5 more entries with MaxGrowth 5 = %v", err)
	}
	// Manifest entries.
	m := audittest.New(t)
	for range 4 {
		m.AppendManifest(t)
	}
	mc, mlv := newClient(t, m, t.TempDir())
	_, err := audit.Audit(ctx, audit.Config{Client: mc, Log: mlv, Limits: audit.Limits{MaxManifests: 3}})
	var le *audit.LimitError
	if !errors.As(err, &le) || le.What != "manifest entries" || le.Index != 3 {
		t.Errorf("audit of 4 manifest entries with MaxManifests 3 = %v", err)
	}
}
