// Package audittest serves a log for tests of auditors: an embedded
// tlog/boltlog with the C2SP tiles and a manifest history, on a unix
// socket, as kbsd serves them. A test appends whatever entries it wants
// audited, consistent or not, and edits the history at will: every entry
// is correctly signed and served, so what an auditor finds is what the
// entries say.
package audittest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/boltlog"
)

// Origin is the log's origin.
const Origin = "kbs/bench"

// Time is the timestamp Append gives entries that have none.
var Time = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// A Log is a served test log.
type Log struct {
	// Addr is the unix:// address to give a client; NoteKey the log's note
	// verifier key.
	Addr, NoteKey string
	// Backend is the log itself, for appending raw bytes.
	Backend *boltlog.Log
	// Manifest is the fixture testdata/manifest/valid/snp.json: one owner
	// (testdata/manifest/keys/owner1), client "acme" writes "acme/*",
	// released to class "gpu-worker".
	Manifest *manifest.Manifest

	key     ed25519.PrivateKey
	mu      sync.Mutex
	history []api.Manifest
	serveCP func([]byte) []byte
}

// Testdata returns the path of name under the repository's testdata/.
func Testdata(name string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "testdata", name)
}

// New starts an empty log, served until the test ends.
func New(tb testing.TB) *Log {
	tb.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return newLog(tb, priv)
}

// Fork starts another empty log signed with l's key: what l's broker
// would show to a victim of a split view.
func (l *Log) Fork(tb testing.TB) *Log {
	tb.Helper()
	return newLog(tb, l.key)
}

func newLog(tb testing.TB, priv ed25519.PrivateKey) *Log {
	tb.Helper()
	dir := tb.TempDir()
	body, err := os.ReadFile(Testdata("manifest/valid/snp.json"))
	if err != nil {
		tb.Fatal(err)
	}
	m, err := manifest.Parse(body)
	if err != nil {
		tb.Fatal(err)
	}
	s, v, vkey, err := tlog.NewEd25519NoteKeys(Origin, priv)
	if err != nil {
		tb.Fatal(err)
	}
	cs, err := tlog.NewCheckpointSigner(Origin, s, v)
	if err != nil {
		tb.Fatal(err)
	}
	db, err := bbolt.Open(filepath.Join(dir, "log.db"), 0o600, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	bl, err := boltlog.New(db, boltlog.Config{Signer: cs})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { bl.Close() })
	l := &Log{NoteKey: vkey, Backend: bl, Manifest: m, key: priv}
	mux := http.NewServeMux()
	tiles := tlog.NewHandler(bl)
	mux.Handle("/log/", tiles)
	mux.HandleFunc("GET /log/checkpoint", func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		f := l.serveCP
		l.mu.Unlock()
		if f == nil {
			tiles.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		tiles.ServeHTTP(rec, r)
		w.Write(f(rec.Body.Bytes()))
	})
	mux.HandleFunc("GET "+api.PathManifestHistory, func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		defer l.mu.Unlock()
		json.NewEncoder(w).Encode(api.ManifestHistory{Manifests: l.history})
	})
	sock := filepath.Join(dir, "log.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		tb.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	tb.Cleanup(func() { srv.Close() })
	l.Addr = "unix://" + sock
	return l
}

// Append logs e (with Time if it has no time) and returns its index.
func (l *Log) Append(tb testing.TB, e *tlog.Entry) uint64 {
	tb.Helper()
	if e.Time.IsZero() {
		e.Time = Time
	}
	raw, err := tlog.EncodeEntry(e)
	if err != nil {
		tb.Fatal(err)
	}
	idx, _, err := l.Backend.Append(context.Background(), raw)
	if err != nil {
		tb.Fatal(err)
	}
	return idx
}

// AppendManifest logs version 1 (the fixture), naming its threshold of
// owners as signers, and lists it in the history without signatures.
func (l *Log) AppendManifest(tb testing.TB) {
	tb.Helper()
	m := l.Manifest
	l.AppendVersion(tb, m, nil, m.OwnerFingerprints()[:m.Threshold()])
}

// AppendVersion logs manifest m as admitted by signers (fingerprints) and
// lists it in the history with the signatures sigs.
func (l *Log) AppendVersion(tb testing.TB, m *manifest.Manifest, sigs, signers []string) {
	tb.Helper()
	idx := l.Append(tb, &tlog.Entry{Type: tlog.TypeManifest, Manifest: &tlog.ManifestEntry{
		Version: m.Version(), Hash: m.Hash(), Previous: m.Previous(), Body: m.Bytes(), Signers: signers}})
	if sigs == nil {
		sigs = []string{}
	}
	l.EditHistory(func(h *[]api.Manifest) {
		*h = append(*h, api.Manifest{Version: m.Version(), Hash: m.Hash(), Body: m.Bytes(), Signatures: sigs, LogIndex: idx})
	})
}

// ServeCheckpoint makes the log serve f(checkpoint) instead of its latest
// signed checkpoint (nil f: the checkpoint as signed): a test adds
// witness cosignatures (tlog.MergeSignatures) or plays a broker that
// serves an old checkpoint.
func (l *Log) ServeCheckpoint(f func(note []byte) []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.serveCP = f
}

// Checkpoint returns the log's latest signed checkpoint.
func (l *Log) Checkpoint(tb testing.TB) []byte {
	tb.Helper()
	cp, err := l.Backend.Checkpoint(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return cp.Note
}

// EditHistory changes the manifest history the log serves.
func (l *Log) EditHistory(f func(*[]api.Manifest)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f(&l.history)
}

// Upload returns a key-upload entry.
func Upload(id string, version uint64, client string) *tlog.Entry {
	return &tlog.Entry{Type: tlog.TypeKeyUpload, KeyUpload: &tlog.KeyEntry{ID: id, Version: version, Client: client}}
}

// Delete returns a key-delete entry.
func Delete(id string, version uint64, client string) *tlog.Entry {
	return &tlog.Entry{Type: tlog.TypeKeyDelete, KeyDelete: &tlog.KeyEntry{ID: id, Version: version, Client: client}}
}

// Release returns a release entry of key id at version to a worker of
// class, on SNP, under the fixture manifest.
func (l *Log) Release(id string, version uint64, class string) *tlog.Entry {
	digest := "sha256:" + strings.Repeat("ab", 32)
	return &tlog.Entry{Type: tlog.TypeRelease, Time: Time, Release: &tlog.ReleaseEntry{
		Keys: []tlog.KeyRef{{ID: id, Version: version}}, WorkerClass: class, Platform: "snp",
		Measurement: strings.Repeat("cd", 48), ChipID: strings.Repeat("ef", 64), TCB: "reported_tcb=d516000000000004",
		EvidenceDigest: digest, WorkerKeyDigest: digest, ManifestHash: l.Manifest.Hash()}}
}

// AppendMany appends raw n times from 64 concurrent writers (group commit
// keeps big logs quick to build).
func (l *Log) AppendMany(tb testing.TB, raw []byte, n int) {
	tb.Helper()
	var wg sync.WaitGroup
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 64 {
				if _, _, err := l.Backend.Append(context.Background(), raw); err != nil {
					tb.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// NewBench starts a log of n+2 entries that audits clean: version 1 of the
// manifest, an upload of acme/model, and n releases of it.
func NewBench(tb testing.TB, n int) *Log {
	tb.Helper()
	l := New(tb)
	l.AppendManifest(tb)
	l.Append(tb, Upload("acme/model", 1, "acme"))
	rel, err := tlog.EncodeEntry(l.Release("acme/model", 1, "gpu-worker"))
	if err != nil {
		tb.Fatal(err)
	}
	l.AppendMany(tb, rel, n)
	return l
}

// CPUTime returns the process's user and system CPU time: benchmarks
// report CPU per entry, which other load on the machine does not change.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
