package tlog

import (
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

// TileHeight is the height of C2SP tlog-tiles tiles: 8 levels, 256 hashes.
const TileHeight = 8

// A TilePath names a C2SP tlog-tiles resource: the hash tile at Level and
// index N, or (Entries) the entry bundle N; Width 256 is a full tile, 1..255
// a partial one.
type TilePath struct {
	Entries bool
	Level   int
	N       uint64
	Width   int
}

// String returns the path of t relative to the log prefix, such as
// "tile/0/x001/x234/067.p/8" or "tile/entries/005".
func (t TilePath) String() string {
	var b strings.Builder
	b.WriteString("tile/")
	if t.Entries {
		b.WriteString("entries/")
	} else {
		b.WriteString(strconv.Itoa(t.Level) + "/")
	}
	b.WriteString(formatTileIndex(t.N))
	if t.Width < 256 {
		b.WriteString(".p/" + strconv.Itoa(t.Width))
	}
	return b.String()
}

func formatTileIndex(n uint64) string {
	s := fmt.Sprintf("%03d", n%1000)
	for n >= 1000 {
		n /= 1000
		s = fmt.Sprintf("x%03d/%s", n%1000, s)
	}
	return s
}

// ParseTilePath parses a tile or entry-bundle path relative to the log
// prefix ("tile/..."). It accepts only the canonical encoding: level
// 0..63 without leading zeroes, N in 3-digit groups with an "x" on all but
// the last and no leading "x000" group, and a partial width 1..255 without
// leading zeroes; and only tiles of trees up to MaxTreeSize (Check): a
// path beyond is an error wrapping ErrOutOfRange.
func ParseTilePath(p string) (TilePath, error) {
	rest, ok := strings.CutPrefix(p, "tile/")
	if !ok {
		return TilePath{}, fmt.Errorf("tlog: tile path %q does not start with tile/", p)
	}
	var t TilePath
	elems := strings.Split(rest, "/")
	if elems[0] == "entries" {
		t.Entries = true
	} else {
		l, err := parseSmallDecimal(elems[0], 63)
		if err != nil {
			return TilePath{}, fmt.Errorf("tlog: tile path %q: bad level: %v", p, err)
		}
		t.Level = l
	}
	elems = elems[1:]
	t.Width = 256
	if n := len(elems); n >= 2 && strings.HasSuffix(elems[n-2], ".p") {
		w, err := parseSmallDecimal(elems[n-1], 255)
		if err != nil || w == 0 {
			return TilePath{}, fmt.Errorf("tlog: tile path %q: bad partial width %q", p, elems[n-1])
		}
		t.Width = w
		elems[n-2] = strings.TrimSuffix(elems[n-2], ".p")
		elems = elems[:n-1]
	}
	if len(elems) == 0 || len(elems) > 7 {
		return TilePath{}, fmt.Errorf("tlog: tile path %q: bad tile index", p)
	}
	for i, e := range elems {
		last := i == len(elems)-1
		if !last {
			var ok bool
			if e, ok = strings.CutPrefix(e, "x"); !ok {
				return TilePath{}, fmt.Errorf("tlog: tile path %q: index element %q lacks its x prefix", p, e)
			}
		}
		if len(e) != 3 || e[0] < '0' || e[0] > '9' || e[1] < '0' || e[1] > '9' || e[2] < '0' || e[2] > '9' {
			return TilePath{}, fmt.Errorf("tlog: tile path %q: index element %q is not 3 digits", p, e)
		}
		if i == 0 && !last && e == "000" {
			return TilePath{}, fmt.Errorf("tlog: tile path %q: index has a leading zero group", p)
		}
		d := uint64((e[0]-'0'))*100 + uint64(e[1]-'0')*10 + uint64(e[2]-'0')
		if t.N > (1<<64-1-d)/1000 {
			return TilePath{}, fmt.Errorf("tlog: tile path %q: index overflows", p)
		}
		t.N = t.N*1000 + d
	}
	if t.Check() != nil {
		return TilePath{}, fmt.Errorf("%w: tile path %q lies beyond the largest tree (%d entries)", ErrOutOfRange, p, uint64(MaxTreeSize))
	}
	return t, nil
}

// Check reports whether t can be a tile of a tree of at most MaxTreeSize
// entries: its width is 1..256, its level at most 63, and the entries
// below its last hash (N*256+Width hashes, each of 256^Level entries for a
// hash tile at Level) end at or before MaxTreeSize. The error wraps
// ErrInvalidArgument.
func (t TilePath) Check() error {
	if t.Width < 1 || t.Width > 256 || t.Level < 0 || t.Level > 63 {
		return fmt.Errorf("%w: tile level %d, width %d", ErrInvalidArgument, t.Level, t.Width)
	}
	limit := uint64(MaxTreeSize) // hashes the tile's level can hold
	if !t.Entries {
		if 8*t.Level >= 64 {
			limit = 0
		} else {
			limit >>= 8 * t.Level
		}
	}
	if limit < uint64(t.Width) || t.N > (limit-uint64(t.Width))/256 {
		return fmt.Errorf("%w: tile %s lies beyond the largest tree (%d entries)", ErrInvalidArgument, t, uint64(MaxTreeSize))
	}
	return nil
}

func parseSmallDecimal(s string, max int) (int, error) {
	if s == "" || len(s) > 3 || (s[0] == '0' && len(s) > 1) {
		return 0, fmt.Errorf("%q is not a canonical decimal", s)
	}
	n := 0
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a canonical decimal", s)
		}
		n = n*10 + int(c-'0')
	}
	if n > max {
		return 0, fmt.Errorf("%d is above %d", n, max)
	}
	return n, nil
}

// EncodeBundle returns a C2SP entry bundle: each entry preceded by its
// length as a big-endian uint16.
func EncodeBundle(entries [][]byte) ([]byte, error) {
	n := 0
	for _, e := range entries {
		if len(e) > MaxEntrySize {
			return nil, fmt.Errorf("%w: entry of %d bytes does not fit a bundle", ErrInvalidArgument, len(e))
		}
		n += 2 + len(e)
	}
	out := make([]byte, 0, n)
	for _, e := range entries {
		out = binary.BigEndian.AppendUint16(out, uint16(len(e)))
		out = append(out, e...)
	}
	return out, nil
}

// DecodeBundle splits an entry bundle of exactly want entries (1..256).
func DecodeBundle(b []byte, want int) ([][]byte, error) {
	var out [][]byte
	for i := 0; len(b) > 0; i++ {
		if i == want {
			return nil, fmt.Errorf("tlog: entry bundle has more than %d entries", want)
		}
		if len(b) < 2 {
			return nil, fmt.Errorf("tlog: entry bundle truncated in the length of entry %d", i)
		}
		n := int(binary.BigEndian.Uint16(b))
		if len(b) < 2+n {
			return nil, fmt.Errorf("tlog: entry bundle truncated in entry %d (%d of %d bytes)", i, len(b)-2, n)
		}
		out = append(out, b[2:2+n:2+n])
		b = b[2+n:]
	}
	if len(out) != want {
		return nil, fmt.Errorf("tlog: entry bundle has %d entries, want %d", len(out), want)
	}
	return out, nil
}

// NewHandler returns an http.Handler serving the C2SP tlog-tiles API of b
// under /log/: /log/checkpoint, /log/tile/<L>/<N>[.p/<W>] and
// /log/tile/entries/<N>[.p/<W>]. Mount it at "/log/". Tiles and bundles
// are immutable and served with long-lived cache headers; the checkpoint is
// not cached. Malformed paths get 400, resources beyond the latest
// checkpoint 404, backend failures 503, each with a JSON error body.
func NewHandler(b Backend, opts ...HandlerOption) http.Handler {
	h := &handler{b: b}
	for _, o := range opts {
		o(h)
	}
	return h
}

// A HandlerOption configures NewHandler.
type HandlerOption func(*handler)

// WithErrorLog makes the handler report backend failures (the 503s, whose
// details the client does not see) to f.
func WithErrorLog(f func(r *http.Request, err error)) HandlerOption {
	return func(h *handler) { h.logf = f }
}

type handler struct {
	b    Backend
	logf func(*http.Request, error)
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "only GET and HEAD are allowed")
		return
	}
	p, ok := strings.CutPrefix(r.URL.Path, "/log/")
	if !ok {
		writeError(w, http.StatusNotFound, "not_found", "no such log resource")
		return
	}
	ctx := r.Context()
	if p == "checkpoint" {
		cp, err := h.b.Checkpoint(ctx)
		if err != nil {
			h.backendError(w, r, err)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		w.Write(cp.Note)
		return
	}
	if !strings.HasPrefix(p, "tile/") {
		writeError(w, http.StatusNotFound, "not_found", "no such log resource")
		return
	}
	t, err := ParseTilePath(p)
	if errors.Is(err, ErrOutOfRange) {
		writeError(w, http.StatusNotFound, "not_found", err.Error())
		return
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_path", err.Error())
		return
	}
	data, err := h.read(ctx, t)
	if err != nil {
		h.backendError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	if t.Entries && strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Vary", "Accept-Encoding")
		zw := gzipWriters.Get().(*gzip.Writer)
		zw.Reset(w)
		zw.Write(data)
		zw.Close()
		gzipWriters.Put(zw)
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.Write(data)
}

var gzipWriters = sync.Pool{New: func() any {
	zw, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed)
	return zw
}}

func (h *handler) read(ctx context.Context, t TilePath) ([]byte, error) {
	if !t.Entries {
		return h.b.HashTile(ctx, t.Level, t.N, t.Width)
	}
	start := t.N * 256 // ParseTilePath checked that it is at most MaxTreeSize
	es, err := h.b.Entries(ctx, start, start+uint64(t.Width))
	if err != nil {
		return nil, err
	}
	return EncodeBundle(es)
}

func (h *handler) backendError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, ErrOutOfRange):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, ErrInvalidArgument):
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		writeError(w, http.StatusServiceUnavailable, "unavailable", "request canceled")
	default:
		if h.logf != nil {
			h.logf(r, err)
		}
		writeError(w, http.StatusServiceUnavailable, "log_unavailable", "the log could not be read")
	}
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}
