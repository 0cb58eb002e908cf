// Package witnesstest runs C2SP tlog-witnesses for tests and benchmarks:
// Fake, an in-process witness that follows the add-checkpoint rules for
// the logs it is told about (for `make test`, where speed matters), and the
// real witnesses of the ecosystem, transparency-dev's omniwitness and
// torchwood's litewitness, as processes (Impls, for `make test-witness`).
//
// It is a test double: production code never imports it (tlog's witness
// client and the broker are tested against it, as go-sev-guest keeps its
// fakes in testing/).
package witnesstest

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	sumdb "golang.org/x/mod/sumdb/tlog"

	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/tlog"
)

// A Fault answers an add-checkpoint request in the fake's place: it gets
// the request body and returns true if it wrote an answer. It runs without
// the fake's lock held.
type Fault func(w http.ResponseWriter, body []byte) bool

// Fake is a hand-written tlog-witness: for each log it knows (AddLog) it
// keeps the last checkpoint it cosigned and cosigns a new one only as the
// spec says (the old size must be its own, 409 with its size otherwise; a
// consistency proof from it; 422 for a different tree; 404 for an unknown
// origin; 403 for a checkpoint its log key does not verify). It serves
// POST <any prefix>/add-checkpoint. A Fake is safe for concurrent use.
type Fake struct {
	// Cosigner is the fake's witness key.
	Cosigner *tlog.Cosigner
	// URL is its submission prefix (what a manifest's witness URL names).
	URL string

	srv *httptest.Server

	mu       sync.Mutex
	logs     map[string]*fakeLog
	requests int
	fault    Fault
}

type fakeLog struct {
	v    note.Verifier
	size uint64
	root tlog.Hash
	seen bool
}

// NewFake starts a fake witness whose key is named keyName and derived
// from seed (the same seed gives the same key), timestamping its
// cosignatures with now (nil: the wall clock through internal/clock, so
// that under make test-future the fake is as far ahead as its clients).
// The server stops when the test ends.
func NewFake(t testing.TB, keyName, seed string, now func() time.Time) *Fake {
	t.Helper()
	if now == nil {
		now = clock.Now
	}
	s := sha256.Sum256([]byte(seed))
	cs, err := tlog.NewCosigner(keyName, ed25519.NewKeyFromSeed(s[:]), now)
	if err != nil {
		t.Fatal(err)
	}
	f := &Fake{Cosigner: cs, logs: map[string]*fakeLog{}}
	f.srv = httptest.NewServer(f)
	t.Cleanup(f.srv.Close)
	f.URL = f.srv.URL + "/w"
	return f
}

// Witness returns the fake as a witness named name, with its verifier key
// and URL.
func (f *Fake) Witness(t testing.TB, name string) tlog.Witness {
	t.Helper()
	w, err := tlog.NewWitness(name, f.Cosigner.VerifierKey(), f.URL)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// Close stops the fake's server: from then on it cannot be reached.
func (f *Fake) Close() { f.srv.CloseClientConnections(); f.srv.Close() }

// AddLog makes the fake a witness of the log origin whose checkpoints v
// verifies (trusting the first checkpoint it sees, as witnesses do).
func (f *Fake) AddLog(origin string, v note.Verifier) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.logs[origin]; !ok {
		f.logs[origin] = &fakeLog{v: v}
	}
}

// SetFault makes fault answer requests in the fake's place (nil: none).
func (f *Fake) SetFault(fault Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fault = fault
}

// Down is a Fault that answers 503, as a witness that is down behind a
// proxy would.
func Down(w http.ResponseWriter, _ []byte) bool {
	w.WriteHeader(http.StatusServiceUnavailable)
	return true
}

// Requests returns the number of requests the fake has received.
func (f *Fake) Requests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests
}

// Size returns the size of the last checkpoint of origin the fake
// cosigned (0 if none).
func (f *Fake) Size(origin string) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l := f.logs[origin]; l != nil {
		return l.size
	}
	return 0
}

// SetSize makes the fake claim that it last cosigned size for origin, as a
// witness that saw a larger (or another) tree would: it answers 409 with
// that size, and refuses a tree of that size whose root is not the one it
// holds.
func (f *Fake) SetSize(origin string, size uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l := f.logs[origin]; l != nil {
		l.size, l.seen = size, true
	}
}

func (f *Fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests++
	fault := f.fault
	f.mu.Unlock()
	if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/add-checkpoint") {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	body, _ := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if fault != nil && fault(w, body) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	br := bufio.NewReader(bytes.NewReader(body))
	line, _ := br.ReadString('\n')
	old, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(line, "old "), "\n"), 10, 64)
	if err != nil {
		http.Error(w, "bad old line", http.StatusBadRequest)
		return
	}
	var proof []tlog.Hash
	for {
		l, _ := br.ReadString('\n')
		if l == "\n" || l == "" {
			break
		}
		h, err := base64.StdEncoding.DecodeString(strings.TrimSuffix(l, "\n"))
		if err != nil || len(h) != 32 {
			http.Error(w, "bad proof", http.StatusBadRequest)
			return
		}
		proof = append(proof, tlog.Hash(h))
	}
	msg, _ := io.ReadAll(br)
	origin, _, _ := strings.Cut(string(msg), "\n")
	lg := f.logs[origin]
	if lg == nil {
		http.Error(w, "unknown log", http.StatusNotFound)
		return
	}
	cp, err := tlog.OpenCheckpoint(msg, origin, lg.v)
	if err != nil {
		http.Error(w, "untrusted checkpoint", http.StatusForbidden)
		return
	}
	if old > cp.Size {
		http.Error(w, "old size above the checkpoint's", http.StatusBadRequest)
		return
	}
	if old != lg.size {
		w.Header().Set("Content-Type", "text/x.tlog.size")
		w.WriteHeader(http.StatusConflict)
		fmt.Fprintf(w, "%d\n", lg.size)
		return
	}
	switch {
	case lg.seen && old == cp.Size && cp.Hash != lg.root:
		http.Error(w, "another tree of this size", http.StatusUnprocessableEntity)
		return
	case lg.seen && old > 0 && old < cp.Size:
		if err := sumdb.CheckTree(proof, int64(cp.Size), cp.Hash, int64(old), lg.root); err != nil {
			http.Error(w, "consistency proof fails", http.StatusUnprocessableEntity)
			return
		}
	case old == 0 && len(proof) > 0:
		http.Error(w, "a proof from size 0", http.StatusUnprocessableEntity)
		return
	}
	signed, err := note.Sign(&note.Note{Text: string(tlog.FormatCheckpoint(cp.Origin, cp.Root))}, f.Cosigner)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	lg.size, lg.root, lg.seen = cp.Size, cp.Hash, true
	w.Write(signed[bytes.LastIndex(signed, []byte("\n\n"))+2:])
}
