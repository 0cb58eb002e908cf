package tlog_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/internal/hostilebroker"
	"github.com/kbs-dev/kbs/tlog"
)

// hostileTiles serves l with h on path, over TCP (httptest), and returns a
// tile client of it.
func hostileTiles(t *testing.T, l *hostilebroker.Log, path string, h http.Handler) (*tlog.TileClient, *httptest.Server) {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("/", l.Handler(nil))
	if h != nil {
		mux.Handle(path, h)
	}
	mux.Handle("/elsewhere/", http.StripPrefix("/elsewhere", l.Handler(nil)))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return tlog.NewTileClient(srv.URL+"/log", nil), srv
}

// TestTileClientHostile: every answer a client cannot use is a
// *tlog.FetchError, never a verified result; redirects are not followed.
func TestTileClientHostile(t *testing.T) {
	l := hostilebroker.NewLog(t, 600, 1, hostilebroker.Malformed(50))
	ctx := context.Background()
	for _, tc := range []struct {
		name, path string
		h          http.Handler
		fetch      func(c *tlog.TileClient) error
		want       string
		status     int
	}{
		{"redirected checkpoint", "/log/checkpoint", hostilebroker.Redirect("/elsewhere/log/checkpoint", http.StatusFound),
			func(c *tlog.TileClient) error { _, err := c.Checkpoint(ctx); return err }, "redirect", 0},
		{"endless checkpoint", "/log/checkpoint", hostilebroker.Endless(http.StatusOK, "text/plain", "kbs/hostile\n"),
			func(c *tlog.TileClient) error { _, err := c.Checkpoint(ctx); return err }, "larger than 16384 bytes", 200},
		{"endless tile", "/log/tile/0/000", hostilebroker.Endless(http.StatusOK, "application/octet-stream", ""),
			func(c *tlog.TileClient) error {
				_, err := c.Tile(ctx, tlog.TilePath{N: 0, Width: 256})
				return err
			}, "larger than 8192 bytes", 200},
		{"endless bundle", "/log/tile/entries/000", hostilebroker.Endless(http.StatusOK, "application/octet-stream", ""),
			func(c *tlog.TileClient) error {
				_, err := c.Tile(ctx, tlog.TilePath{Entries: true, N: 0, Width: 256})
				return err
			}, "larger than", 200},
		{"error status", "/log/tile/0/000", hostilebroker.Body(http.StatusTeapot, "text/plain", []byte("no")),
			func(c *tlog.TileClient) error {
				_, err := c.Tile(ctx, tlog.TilePath{N: 0, Width: 256})
				return err
			}, "418", 418},
		{"redirected tile", "/log/tile/entries/001", hostilebroker.Redirect("http://127.0.0.1:1/log/tile/entries/001", http.StatusMovedPermanently),
			func(c *tlog.TileClient) error {
				_, err := c.Tile(ctx, tlog.TilePath{Entries: true, N: 1, Width: 256})
				return err
			}, "redirect", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := hostileTiles(t, l, tc.path, tc.h)
			err := tc.fetch(c)
			var fe *tlog.FetchError
			if !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a *tlog.FetchError saying %q", err, tc.want)
			}
			if fe.Status != tc.status && tc.status != 0 {
				t.Errorf("FetchError.Status = %d, want %d", fe.Status, tc.status)
			}
			if tc.want == "redirect" && !errors.Is(err, tlog.ErrRedirect) {
				t.Errorf("%v does not wrap ErrRedirect", err)
			}
		})
	}
}

// TestTileClientTreeSizes: a checkpoint of a size beyond MaxTreeSize,
// though signed by the log's key, is refused at once (issue 19's 2^62);
// a tile beyond it is refused without a request.
func TestTileClientTreeSizes(t *testing.T) {
	l := hostilebroker.NewLog(t, 10, 1, hostilebroker.Malformed(50))
	ctx := context.Background()
	for _, size := range []uint64{1<<62 - 1, 1 << 62, 1<<62 + 1, 1<<64 - 1, tlog.MaxTreeSize + 1} {
		srv := httptest.NewServer(l.Handler(l.Sign(size, l.Root)))
		c := tlog.NewTileClient(srv.URL+"/log", nil)
		v, err := tlog.NewVerifier(hostilebroker.Origin, l.NoteKey, nil)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { _, err := c.Sync(ctx, v); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "above the largest") {
				t.Errorf("Sync of a checkpoint of size %d = %v, want a refusal", size, err)
			}
		case <-time.After(time.Minute):
			t.Fatalf("Sync of a checkpoint of size %d did not end", size)
		}
		srv.Close()
	}
	c := tlog.NewTileClient("http://127.0.0.1:1/log", nil)
	if _, err := c.Tile(ctx, tlog.TilePath{N: tlog.MaxTreeSize / 256, Width: 1}); !errors.Is(err, tlog.ErrInvalidArgument) {
		t.Errorf("Tile beyond MaxTreeSize = %v, want ErrInvalidArgument", err)
	}
}

// TestTileClientUnverified: tiles that arrive but do not verify against
// the checkpoint are not a FetchError.
func TestTileClientUnverified(t *testing.T) {
	l := hostilebroker.NewLog(t, 600, 1, hostilebroker.Malformed(50))
	other := hostilebroker.NewLog(t, 600, 1, hostilebroker.Malformed(51))
	srv := httptest.NewServer(l.Handler(nil))
	defer srv.Close()
	c := tlog.NewTileClient(srv.URL+"/log", nil)
	v, _ := tlog.NewVerifier(hostilebroker.Origin, l.NoteKey, nil)
	cp, err := v.VerifyCheckpoint(l.Sign(600, other.Root))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Entries(context.Background(), cp, 0, func(uint64, []byte) error { return nil })
	var fe *tlog.FetchError
	if err == nil || errors.As(err, &fe) {
		t.Fatalf("Entries against another root = %v, want a verification error", err)
	}
}

// TestEntriesBuffer: Entries holds at most SetMaxBuffered bytes of bundles
// ahead of the one it delivers, however slowly the caller takes them.
func TestEntriesBuffer(t *testing.T) {
	const size, entry = 2048, 16 << 10 // 8 bundles of 4 MiB
	l := hostilebroker.NewLog(t, size, 2, hostilebroker.Malformed(entry))
	srv := httptest.NewServer(l.Handler(nil))
	defer srv.Close()
	c := tlog.NewTileClient(srv.URL+"/log", nil)
	c.SetMaxBuffered(1 << 20)
	v, _ := tlog.NewVerifier(hostilebroker.Origin, l.NoteKey, nil)
	cp, err := v.VerifyCheckpoint(l.Checkpoint())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	err = c.Entries(context.Background(), cp, 0, func(i uint64, e []byte) error {
		if i%256 == 0 {
			time.Sleep(20 * time.Millisecond) // let the fetchers run ahead
		}
		n++
		return nil
	})
	if err != nil || n != size {
		t.Fatalf("Entries: %d entries, %v", n, err)
	}
	// The bundle being delivered comes on top of the budget, in a buffer
	// of up to twice its size (a body of unannounced length is read into
	// a buffer that doubles).
	bundle := int64(256 * (2 + entry))
	if peak := tlog.PeakBuffered(c); peak > 1<<20+2*bundle+64<<10 || peak < bundle {
		t.Errorf("Entries held %d bytes at most, want between one bundle (%d) and 1 MiB + two bundles", peak, bundle)
	} else {
		t.Logf("Entries held %d bytes at most (bundles of %d bytes, budget 1 MiB)", peak, bundle)
	}
}

func TestWithDefaultTimeout(t *testing.T) {
	ctx, cancel := tlog.WithDefaultTimeout(context.Background(), time.Hour)
	defer cancel()
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > time.Hour || time.Until(dl) < 59*time.Minute {
		t.Errorf("deadline %v, %v; want in an hour", dl, ok)
	}
	short, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	ctx3, cancel3 := tlog.WithDefaultTimeout(short, time.Hour)
	defer cancel3()
	if dl, _ := ctx3.Deadline(); time.Until(dl) > time.Minute {
		t.Errorf("an earlier deadline was extended to %v", dl)
	}
}
