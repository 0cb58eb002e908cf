package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/boltlog"
)

// benchLog builds a log of n entries (a manifest, an upload, then
// releases) in an embedded boltlog, serves its tiles and a manifest history
// on a unix socket, and returns the address and the note key.
func benchLog(b *testing.B, n int) (addr, vkey string, size int) {
	b.Helper()
	dir := b.TempDir()
	body, err := os.ReadFile(filepath.Join("..", "..", "testdata", "manifest", "valid", "snp.json"))
	if err != nil {
		b.Fatal(err)
	}
	m, err := manifest.Parse(body)
	if err != nil {
		b.Fatal(err)
	}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, v, vkey, err := tlog.NewEd25519NoteKeys("kbs/bench", priv)
	if err != nil {
		b.Fatal(err)
	}
	cs, err := tlog.NewCheckpointSigner("kbs/bench", s, v)
	if err != nil {
		b.Fatal(err)
	}
	db, err := bbolt.Open(filepath.Join(dir, "log.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	l, err := boltlog.New(db, boltlog.Config{Signer: cs})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	ctx := context.Background()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	appendEntry := func(e *tlog.Entry) uint64 {
		raw, err := tlog.EncodeEntry(e)
		if err != nil {
			b.Fatal(err)
		}
		idx, _, err := l.Append(ctx, raw)
		if err != nil {
			b.Fatal(err)
		}
		return idx
	}
	mIdx := appendEntry(&tlog.Entry{Type: tlog.TypeManifest, Time: now, Manifest: &tlog.ManifestEntry{
		Version: 1, Hash: m.Hash(), Body: m.Bytes(), Signers: m.OwnerFingerprints()[:m.Threshold()]}})
	appendEntry(&tlog.Entry{Type: tlog.TypeKeyUpload, Time: now, KeyUpload: &tlog.KeyEntry{ID: "acme/model", Version: 1, Client: "acme"}})
	digest := "sha256:" + strings.Repeat("ab", 32)
	rel, err := tlog.EncodeEntry(&tlog.Entry{Type: tlog.TypeRelease, Time: now, Release: &tlog.ReleaseEntry{
		Keys: []tlog.KeyRef{{ID: "acme/model", Version: 1}}, WorkerClass: "gpu-worker", Platform: "snp",
		Measurement: strings.Repeat("cd", 48), ChipID: strings.Repeat("ef", 64), TCB: "reported_tcb=d516000000000004",
		EvidenceDigest: digest, WorkerKeyDigest: digest, ManifestHash: m.Hash()}})
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	per := (n - 2 + 63) / 64
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				if _, _, err := l.Append(ctx, rel); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	hist, _ := json.Marshal(api.ManifestHistory{Manifests: []api.Manifest{{Version: 1, Hash: m.Hash(), Body: m.Bytes(), Signatures: []string{}, LogIndex: mIdx}}})
	mux := http.NewServeMux()
	mux.Handle("/log/", tlog.NewHandler(l))
	mux.HandleFunc("GET "+api.PathManifestHistory, func(w http.ResponseWriter, r *http.Request) { w.Write(hist) })
	sock := filepath.Join(dir, "log.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return "unix://" + sock, vkey, 2 + 64*per
}

// BenchmarkAudit measures 'kbsctl audit' end to end on a log of 100k
// entries served over a unix socket: every tile and bundle fetched and
// verified against the checkpoint, every entry decoded and replayed.
func BenchmarkAudit(b *testing.B) {
	const n = 100_000
	addr, vkey, size := benchLog(b, n)
	var entries uint64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		state := b.TempDir()
		code := run(context.Background(), []string{"--addr", addr, "--state", state, "audit", "--note-key", vkey},
			strings.NewReader(""), io.Discard, io.Discard)
		if code != 0 {
			var errb strings.Builder
			run(context.Background(), []string{"--addr", addr, "--state", state, "audit", "--note-key", vkey}, strings.NewReader(""), io.Discard, &errb)
			b.Fatalf("audit exited %d: %s", code, errb.String())
		}
		cp, _ := os.ReadFile(filepath.Join(state, "checkpoints", "checkpoint-kbs%2Fbench"))
		if len(cp) == 0 {
			b.Fatal("audit stored no checkpoint")
		}
		entries += uint64(size)
	}
	b.ReportMetric(float64(entries)/b.Elapsed().Seconds(), "entries/s")
}
