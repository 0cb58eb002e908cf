// Package hostilebroker is a test fixture: a kbs broker that lies, for
// tests that show clients and auditors surviving one (issue 19). It serves,
// on a unix socket, answers no honest broker gives: checkpoints of any
// size signed with the log's key (2^62 and around it), logs of millions of
// generated entries whose tiles verify (malformed entries at scale),
// endless and slow bodies, redirects, error statuses; and for everything
// it does not override, a real kbsd behind it (Proxy).
//
// It is imported by tests only: kbsd and kbsctl never link it (see
// TestNotLinked).
package hostilebroker

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	sumdb "golang.org/x/mod/sumdb/tlog"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// Origin is the origin of the logs NewLog makes.
const Origin = tlog.OriginPrefix + "hostile"

// A Log is a log of generated entries: entry i is Entry(i), computed
// again each time it is served, and every hash of its tree is kept in
// memory (64 bytes per entry), so a test can serve a log of millions of
// entries whose tiles and proofs verify against its signed checkpoint.
// Its key signs whatever checkpoint a test asks for.
type Log struct {
	// NoteKey is the log's note verifier key.
	NoteKey string
	// Size is the number of entries; Root the tree's root hash.
	Size uint64
	Root tlog.Hash
	// Entry returns entry i.
	Entry func(i uint64) []byte

	signer   note.Signer
	hashes   []sumdb.Hash // stored hashes, sumdb's layout
	manifest []byte       // version 1 at entry 0 (NewManifestLog), or nil
}

// NewLog builds the tree of size entries made by entry, signed by a key
// derived from seed.
func NewLog(tb testing.TB, size uint64, seed byte, entry func(i uint64) []byte) *Log {
	tb.Helper()
	priv := ed25519.NewKeyFromSeed(append(make([]byte, 31), seed))
	s, _, vkey, err := tlog.NewEd25519NoteKeys(Origin, priv)
	if err != nil {
		tb.Fatal(err)
	}
	l := &Log{NoteKey: vkey, Size: size, Entry: entry, signer: s}
	l.hashes = make([]sumdb.Hash, 0, 2*size)
	r := sumdb.HashReaderFunc(l.readHashes)
	for i := range size {
		hs, err := sumdb.StoredHashes(int64(i), entry(i), r)
		if err != nil {
			tb.Fatal(err)
		}
		l.hashes = append(l.hashes, hs...)
	}
	root, err := sumdb.TreeHash(int64(size), r)
	if err != nil {
		tb.Fatal(err)
	}
	l.Root = tlog.Hash(root)
	return l
}

func (l *Log) readHashes(idx []int64) ([]sumdb.Hash, error) {
	out := make([]sumdb.Hash, len(idx))
	for i, x := range idx {
		if x < 0 || x >= int64(len(l.hashes)) {
			return nil, fmt.Errorf("hostilebroker: no stored hash %d", x)
		}
		out[i] = l.hashes[x]
	}
	return out, nil
}

// RootAt returns the root hash of the tree of the first n entries.
func (l *Log) RootAt(n uint64) tlog.Hash {
	h, err := sumdb.TreeHash(int64(n), sumdb.HashReaderFunc(l.readHashes))
	if err != nil {
		panic(err)
	}
	return tlog.Hash(h)
}

// Checkpoint returns the log's signed checkpoint.
func (l *Log) Checkpoint() []byte { return l.Sign(l.Size, l.Root) }

// Sign returns a checkpoint of any size and root, signed with the log's
// key: a hostile broker holds its key. It writes the note itself, so
// sizes that kbs's own signer refuses (above tlog.MaxTreeSize) are signed
// all the same.
func (l *Log) Sign(size uint64, root tlog.Hash) []byte {
	text := fmt.Sprintf("%s\n%d\n%s\n", Origin, size, encodeHash(root))
	msg, err := note.Sign(&note.Note{Text: text}, l.signer)
	if err != nil {
		panic(err) // an Ed25519 signer does not fail
	}
	return msg
}

func encodeHash(h tlog.Hash) string { return base64.StdEncoding.EncodeToString(h[:]) }

// Handler serves the log as kbsd does: /log/checkpoint, the tiles and
// entry bundles, GET /v1/log/consistency (proofs up to Size) and an empty
// manifest history. checkpoint, if not nil, replaces the served
// checkpoint (a size the tree does not have, say); tiles of a tree larger
// than Size are then served as random bytes, which verify against no root.
func (l *Log) Handler(checkpoint []byte) http.Handler {
	if checkpoint == nil {
		checkpoint = l.Checkpoint()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /log/checkpoint", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write(checkpoint)
	})
	mux.HandleFunc("GET /log/tile/", func(w http.ResponseWriter, r *http.Request) {
		t, err := tlog.ParseTilePath(strings.TrimPrefix(r.URL.Path, "/log/"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		data, err := l.tile(t)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(data)
	})
	mux.HandleFunc("GET "+api.PathLogConsistency, func(w http.ResponseWriter, r *http.Request) {
		old, _ := strconv.ParseUint(r.URL.Query().Get("old"), 10, 64)
		nw, _ := strconv.ParseUint(r.URL.Query().Get("new"), 10, 64)
		if old == 0 || old > nw || nw > l.Size {
			writeJSON(w, http.StatusBadRequest, api.ErrorBody{Error: &api.Error{Code: api.CodeBadRequest, Message: "bad sizes"}})
			return
		}
		p, err := sumdb.ProveTree(int64(nw), int64(old), sumdb.HashReaderFunc(l.readHashes))
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, api.ErrorBody{Error: &api.Error{Code: api.CodeInternal, Message: err.Error()}})
			return
		}
		ans := api.ConsistencyProof{Old: old, New: nw}
		for _, h := range p {
			ans.Proof = append(ans.Proof, h[:])
		}
		writeJSON(w, http.StatusOK, ans)
	})
	mux.HandleFunc("GET "+api.PathLogProof, func(w http.ResponseWriter, r *http.Request) {
		idx, _ := strconv.ParseUint(r.URL.Query().Get("index"), 10, 64)
		size, _ := strconv.ParseUint(r.URL.Query().Get("size"), 10, 64)
		if idx >= size || size > l.Size {
			writeJSON(w, http.StatusBadRequest, api.ErrorBody{Error: &api.Error{Code: api.CodeBadRequest, Message: "bad index or size"}})
			return
		}
		p, err := sumdb.ProveRecord(int64(size), int64(idx), sumdb.HashReaderFunc(l.readHashes))
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, api.ErrorBody{Error: &api.Error{Code: api.CodeInternal, Message: err.Error()}})
			return
		}
		ans := api.InclusionProof{Index: idx, TreeSize: size, Proof: [][]byte{}}
		for _, h := range p {
			ans.Proof = append(ans.Proof, h[:])
		}
		writeJSON(w, http.StatusOK, ans)
	})
	mux.HandleFunc("GET "+api.PathManifestHistory, func(w http.ResponseWriter, r *http.Request) {
		h := api.ManifestHistory{Manifests: []api.Manifest{}}
		if l.manifest != nil {
			h.Manifests = append(h.Manifests, api.Manifest{Version: 1, Hash: manifest.HashOf(l.manifest), Body: l.manifest, Signatures: []string{}, LogIndex: 0})
		}
		writeJSON(w, http.StatusOK, h)
	})
	return mux
}

// NewManifestLog is NewLog with entry 0 the manifest entry of version 1
// body (unsigned: trusted as a version 1 is), which the log's Handler
// lists as its manifest history: clients that find the witness policy in
// the log (log verify, log checkpoint) get past it to what the test
// serves.
func NewManifestLog(tb testing.TB, size uint64, seed byte, body []byte, entry func(i uint64) []byte) *Log {
	tb.Helper()
	m, err := manifest.Parse(body)
	if err != nil {
		tb.Fatal(err)
	}
	first, err := tlog.EncodeEntry(&tlog.Entry{Type: tlog.TypeManifest, Time: time.Unix(1.7e9, 0).UTC(),
		Manifest: &tlog.ManifestEntry{Version: 1, Hash: m.Hash(), Body: body}})
	if err != nil {
		tb.Fatal(err)
	}
	l := NewLog(tb, size, seed, func(i uint64) []byte {
		if i == 0 {
			return first
		}
		return entry(i)
	})
	l.manifest = body
	return l
}

// tile returns a hash tile or entry bundle of the tree; beyond Size,
// random bytes of the tile's size.
func (l *Log) tile(t tlog.TilePath) ([]byte, error) {
	if t.Entries {
		start := t.N * 256
		if start+uint64(t.Width) > l.Size {
			return nil, fmt.Errorf("entry bundle %d beyond the log", t.N)
		}
		es := make([][]byte, t.Width)
		for i := range es {
			es[i] = l.Entry(start + uint64(i))
		}
		return tlog.EncodeBundle(es)
	}
	end := (t.N*256 + uint64(t.Width)) << (8 * t.Level)
	if end > l.Size {
		b := make([]byte, 32*t.Width)
		for i := range b {
			b[i] = byte(rand.Uint32())
		}
		return b, nil
	}
	return sumdb.ReadTileData(sumdb.Tile{H: tlog.TileHeight, L: t.Level, N: int64(t.N), W: t.Width}, sumdb.HashReaderFunc(l.readHashes))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// A Server serves a broker's API on a unix socket, with answers a test
// overrides path by path.
type Server struct {
	// Addr is the server's address for kbsctl and kbs/client
	// ("unix://PATH").
	Addr string

	mu        sync.Mutex
	next      http.Handler
	overrides map[string]http.Handler
	hits      map[string]int
}

// Serve starts a server in front of next (nil: 404 for everything not
// overridden), until the test ends.
func Serve(tb testing.TB, next http.Handler) *Server {
	tb.Helper()
	s := &Server{next: next, overrides: map[string]http.Handler{}, hits: map[string]int{}}
	sock := filepath.Join(tb.TempDir(), "hostile.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		tb.Fatal(err)
	}
	srv := &http.Server{Handler: s}
	go srv.Serve(ln)
	tb.Cleanup(func() { srv.Close() })
	s.Addr = "unix://" + sock
	return s
}

// Override makes the server answer requests for path (exact, without the
// query) with h.
func (s *Server) Override(path string, h http.Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.overrides[path] = h
}

// Hits returns how many requests for path the server got.
func (s *Server) Hits(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[path]
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	h := s.overrides[r.URL.Path]
	s.hits[r.URL.Path]++
	next := s.next
	s.mu.Unlock()
	switch {
	case h != nil:
		h.ServeHTTP(w, r)
	case next != nil:
		next.ServeHTTP(w, r)
	default:
		http.NotFound(w, r)
	}
}

// Proxy forwards requests to the kbsd listening on the unix socket sock,
// streaming answers as they come.
func Proxy(sock string) http.Handler {
	u, _ := url.Parse("http://kbsd")
	p := httputil.NewSingleHostReverseProxy(u)
	p.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	p.FlushInterval = -1
	return p
}

// Endless answers status with contentType and a body that never ends:
// prefix, then 'A' forever (until the client goes away).
func Endless(status int, contentType, prefix string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(status)
		io.WriteString(w, prefix)
		chunk := []byte(strings.Repeat("A", 64<<10))
		for r.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
}

// Slow answers 200 with contentType and body, one byte every interval:
// under any per-read timeout, over any sensible deadline.
func Slow(contentType string, body []byte, every time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		f, _ := w.(http.Flusher)
		for _, c := range body {
			if _, err := w.Write([]byte{c}); err != nil {
				return
			}
			if f != nil {
				f.Flush()
			}
			select {
			case <-r.Context().Done():
				return
			case <-time.After(every):
			}
		}
	})
}

// Redirect answers with a redirect to location.
func Redirect(location string, code int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, location, code)
	})
}

// Body answers with status, contentType and body.
func Body(status int, contentType string, body []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(status)
		w.Write(body)
	})
}

// Malformed returns an Entry function of malformed entries of n bytes
// each: what a broker that logs garbage serves. Entry i is not JSON and
// differs from every other one.
func Malformed(n int) func(i uint64) []byte {
	return func(i uint64) []byte {
		b := fmt.Appendf(make([]byte, 0, n), "not an entry %d ", i)
		for len(b) < n {
			b = append(b, 'x')
		}
		return b[:n]
	}
}
