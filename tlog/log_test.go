package tlog_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/boltlog"
	tdproof "github.com/transparency-dev/formats/proof"
	"golang.org/x/mod/sumdb/note"
	sumdb "golang.org/x/mod/sumdb/tlog"
)

const origin = tlog.OriginPrefix + "test"

type testLog struct {
	*boltlog.Log
	v       note.Verifier
	vkey    string
	prefix  string // varies the entries between logs
	entries [][]byte
}

func newTestLog(t testing.TB, n int) *testLog {
	return newTestLogPrefix(t, "", n)
}

func newTestLogPrefix(t testing.TB, prefix string, n int) *testLog {
	t.Helper()
	s, v, vkey, err := tlog.NewEd25519NoteKeys(origin, ed25519.NewKeyFromSeed(make([]byte, 32)))
	if err != nil {
		t.Fatal(err)
	}
	cs, err := tlog.NewCheckpointSigner(origin, s, v)
	if err != nil {
		t.Fatal(err)
	}
	l, err := boltlog.Open(filepath.Join(t.TempDir(), "log.db"), boltlog.Config{Signer: cs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	tl := &testLog{Log: l, v: v, vkey: vkey, prefix: prefix}
	tl.add(t, n)
	return tl
}

// add appends n entries, concurrently in groups of up to 64 (so that group
// commit keeps tests fast), and returns the latest checkpoint.
func (tl *testLog) add(t testing.TB, n int) tlog.SignedCheckpoint {
	t.Helper()
	ctx := context.Background()
	for n > 0 {
		k := min(n, 64)
		base := len(tl.entries)
		tl.entries = append(tl.entries, make([][]byte, k)...)
		errs := make(chan error, k)
		for i := 0; i < k; i++ {
			go func(i int) {
				e := []byte(fmt.Sprintf("%sentry %d %s", tl.prefix, base+i, strings.Repeat("x", (base+i)%50)))
				idx, _, err := tl.Append(ctx, e)
				if err == nil && (idx < uint64(base) || idx >= uint64(base+k)) {
					err = fmt.Errorf("Append index %d outside [%d, %d)", idx, base, base+k)
				}
				if err == nil {
					tl.entries[idx] = e
				}
				errs <- err
			}(i)
		}
		for i := 0; i < k; i++ {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		n -= k
	}
	cp, err := tl.Checkpoint(ctx)
	if err != nil || cp.Size != uint64(len(tl.entries)) {
		t.Fatalf("Checkpoint = %d, %v; want size %d", cp.Size, err, len(tl.entries))
	}
	return cp
}

func TestReceipt(t *testing.T) {
	ctx := context.Background()
	l := newTestLog(t, 300)
	cp, _ := l.Checkpoint(ctx)
	for _, i := range []uint64{0, 1, 255, 256, 299} {
		r, err := tlog.NewReceipt(ctx, l, i, l.entries[i], cp)
		if err != nil {
			t.Fatal(err)
		}
		vr, err := tlog.VerifyReceipt(r, origin, l.v)
		if err != nil {
			t.Fatalf("VerifyReceipt(%d): %v\n%s", i, err, r)
		}
		if vr.Index != i || !bytes.Equal(vr.Entry, l.entries[i]) || vr.Checkpoint.Root != cp.Root {
			t.Fatalf("VerifyReceipt(%d) = %+v", i, vr)
		}
		// An independent tlog-proof parser reads the same fields.
		var p tdproof.TLogProof
		if err := p.Unmarshal(r); err != nil {
			t.Fatalf("formats/proof cannot parse our receipt: %v", err)
		}
		if p.Index != i || !bytes.Equal(p.ExtraData, l.entries[i]) || !bytes.Equal(p.Checkpoint, cp.Note) {
			t.Fatalf("formats/proof reads index %d, extra %q", p.Index, p.ExtraData)
		}
		// And its encoder produces our bytes.
		if !bytes.Equal(p.Marshal(), r) {
			t.Fatalf("formats/proof re-encodes the receipt differently:\n%s\n%s", p.Marshal(), r)
		}
		// The inclusion proof checks with x/mod/sumdb/tlog too.
		pr, _ := tlog.ParseReceipt(r)
		if err := sumdb.CheckRecord(pr.Proof, int64(cp.Size), cp.Hash, int64(i), sumdb.RecordHash(l.entries[i])); err != nil {
			t.Fatalf("sumdb.CheckRecord: %v", err)
		}
	}
	if _, err := tlog.NewReceipt(ctx, l, 3, []byte("not entry 3"), cp); err == nil {
		t.Error("NewReceipt with the wrong entry succeeded")
	}
}

func TestReceiptRejects(t *testing.T) {
	ctx := context.Background()
	l := newTestLog(t, 20)
	cp, _ := l.Checkpoint(ctx)
	good, err := tlog.NewReceipt(ctx, l, 7, l.entries[7], cp)
	if err != nil {
		t.Fatal(err)
	}
	_, otherV, _, _ := tlog.NewEd25519NoteKeys(origin, ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32)))
	if _, err := tlog.VerifyReceipt(good, origin, otherV); err == nil {
		t.Error("receipt verified with another log key")
	}
	if _, err := tlog.VerifyReceipt(good, "kbs/other", l.v); err == nil {
		t.Error("receipt verified for another origin")
	}
	// Every truncation is rejected.
	for i := 0; i < len(good); i++ {
		if _, err := tlog.VerifyReceipt(good[:i], origin, l.v); err == nil {
			t.Fatalf("receipt truncated to %d bytes verified", i)
		}
	}
	// Every single-bit change in the decoded content is rejected.
	r, _ := tlog.ParseReceipt(good)
	mutate := []func(r *tlog.Receipt){
		func(r *tlog.Receipt) { r.Index++ },
		func(r *tlog.Receipt) { r.Index = 20 },
		func(r *tlog.Receipt) { r.Extra = append(bytes.Clone(r.Extra), 'x') },
		func(r *tlog.Receipt) { r.Extra = nil },
		func(r *tlog.Receipt) { r.Proof = r.Proof[1:] },
		func(r *tlog.Receipt) { r.Proof = append(r.Proof, r.Proof[0]) },
	}
	for i := range r.Extra {
		mutate = append(mutate, func(r *tlog.Receipt) { r.Extra = bytes.Clone(r.Extra); r.Extra[i] ^= 1 })
	}
	for i := range r.Proof {
		mutate = append(mutate, func(r *tlog.Receipt) { r.Proof = append([]tlog.Hash(nil), r.Proof...); r.Proof[i][3] ^= 0x10 })
	}
	for i, m := range mutate {
		c := *r
		m(&c)
		if _, err := tlog.VerifyReceipt(c.Marshal(), origin, l.v); err == nil {
			t.Errorf("mutation %d verified", i)
		}
	}
	// Precise parse errors.
	s := string(good)
	bad := []struct{ in, want string }{
		{strings.Replace(s, "c2sp.org/tlog-proof@v1", "c2sp.org/tlog-proof@v2", 1), "first line"},
		{strings.Replace(s, "index 7", "index 07", 1), "bad index"},
		{strings.Replace(s, "index 7", "index -7", 1), "bad index"},
		{strings.Replace(s, "index 7", "idx 7", 1), "missing index"},
		{strings.Replace(s, "\nextra ", "\nextra !", 1), "extra data is not base64"},
		{strings.Replace(s, "\n\n", "\nAAAA\n\n", 1), "proof line"},
		{strings.SplitN(s, "\n\n", 2)[0] + "\n\n", "no checkpoint"},
		{strings.SplitN(s, "\n\n", 2)[0] + "\n", "truncated"},
		{s + strings.Repeat("x", tlog.MaxReceiptSize), "more than"},
	}
	for _, b := range bad {
		if _, err := tlog.ParseReceipt([]byte(b.in)); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("ParseReceipt(%.60q) = %v, want error containing %q", b.in, err, b.want)
		}
	}
	// A receipt without extra data parses but does not verify as a kbs receipt.
	r.Extra = nil
	if _, err := tlog.VerifyReceipt(r.Marshal(), origin, l.v); err == nil || !strings.Contains(err.Error(), "no entry") {
		t.Errorf("receipt without extra: %v", err)
	}
}

func TestReceiptTestdata(t *testing.T) {
	b, err := os.ReadFile("testdata/receipt.tlog-proof")
	if err != nil {
		t.Fatal(err)
	}
	vkey, err := os.ReadFile("testdata/receipt.vkey")
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(strings.TrimSpace(string(vkey)))
	if err != nil {
		t.Fatal(err)
	}
	vr, err := tlog.VerifyReceipt(b, origin, v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tlog.DecodeEntry(vr.Entry); err != nil {
		t.Errorf("receipt entry: %v", err)
	}
}

func FuzzParseReceipt(f *testing.F) {
	if b, err := os.ReadFile("testdata/receipt.tlog-proof"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("c2sp.org/tlog-proof@v1\nindex 0\n\no\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := tlog.ParseReceipt(b)
		if err != nil {
			return
		}
		// Accepted receipts are canonical: they encode back to their bytes.
		if m := r.Marshal(); !bytes.Equal(m, b) {
			t.Fatalf("round trip changed the receipt:\n%q\n%q", b, m)
		}
	})
}

// RFC 6962 vectors from testdata, checked with the client-side functions.
type vectors struct {
	Leaves    []string `json:"leaves"`
	Roots     []string `json:"roots"`
	Inclusion []struct {
		Index, Size uint64
		Proof       []string
	} `json:"inclusion"`
	Consistency []struct {
		Size1, Size2 uint64
		Proof        []string
	} `json:"consistency"`
}

func loadVectors(t *testing.T) *vectors {
	b, err := os.ReadFile("testdata/rfc6962.json")
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return &v
}

func hexHash(t *testing.T, s string) tlog.Hash {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		t.Fatalf("bad hash %q", s)
	}
	return tlog.Hash(b)
}

func hexHashes(t *testing.T, ss []string) []tlog.Hash {
	var out []tlog.Hash
	for _, s := range ss {
		out = append(out, hexHash(t, s))
	}
	return out
}

func TestRFC6962VectorsVerifier(t *testing.T) {
	v := loadVectors(t)
	if tlog.EmptyRoot != hexHash(t, v.Roots[0]) {
		t.Fatalf("EmptyRoot = %x", tlog.EmptyRoot)
	}
	leaf := func(i uint64) []byte {
		b, err := hex.DecodeString(v.Leaves[i])
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cp := func(n uint64) tlog.SignedCheckpoint {
		return tlog.SignedCheckpoint{Origin: origin, Root: tlog.Root{Size: n, Hash: hexHash(t, v.Roots[n])}}
	}
	for _, c := range v.Inclusion {
		p := hexHashes(t, c.Proof)
		if err := tlog.VerifyInclusion(cp(c.Size), c.Index, leaf(c.Index), p); err != nil {
			t.Errorf("VerifyInclusion(%d, %d): %v", c.Index, c.Size, err)
		}
		if c.Size > 1 {
			if err := tlog.VerifyInclusion(cp(c.Size), c.Index, append(leaf(c.Index), 0), p); err == nil {
				t.Errorf("VerifyInclusion(%d, %d) of another leaf succeeded", c.Index, c.Size)
			}
		}
	}
	for _, c := range v.Consistency {
		p := hexHashes(t, c.Proof)
		if err := tlog.CheckConsistency(cp(c.Size1), cp(c.Size2), p); err != nil {
			t.Errorf("CheckConsistency(%d, %d): %v", c.Size1, c.Size2, err)
		}
		if len(p) > 0 {
			p[0][0] ^= 1
			var fe *tlog.ForkError
			if err := tlog.CheckConsistency(cp(c.Size1), cp(c.Size2), p); !errors.As(err, &fe) {
				t.Errorf("CheckConsistency(%d, %d) with a bad proof = %v, want *ForkError", c.Size1, c.Size2, err)
			}
		}
	}
}

func TestTilePaths(t *testing.T) {
	tests := []struct {
		path string
		t    tlog.TilePath
	}{
		{"tile/0/000", tlog.TilePath{Level: 0, N: 0, Width: 256}},
		{"tile/0/x001/x234/067", tlog.TilePath{Level: 0, N: 1234067, Width: 256}},
		{"tile/1/005.p/17", tlog.TilePath{Level: 1, N: 5, Width: 17}},
		{"tile/2/x001/000.p/255", tlog.TilePath{Level: 2, N: 1000, Width: 255}},
		{"tile/entries/x001/x234/067.p/1", tlog.TilePath{Entries: true, N: 1234067, Width: 1}},
		{"tile/entries/999", tlog.TilePath{Entries: true, N: 999, Width: 256}},
		// The last tiles of a tree of MaxTreeSize entries, at each level.
		{"tile/0/x004/x294/x967/295", tlog.TilePath{N: tlog.MaxTreeSize/256 - 1, Width: 256}},
		{"tile/entries/x004/x294/x967/295", tlog.TilePath{Entries: true, N: tlog.MaxTreeSize/256 - 1, Width: 256}},
		{"tile/1/x016/x777/215", tlog.TilePath{Level: 1, N: tlog.MaxTreeSize>>16 - 1, Width: 256}},
		{"tile/4/000", tlog.TilePath{Level: 4, N: 0, Width: 256}},
		{"tile/5/000.p/1", tlog.TilePath{Level: 5, N: 0, Width: 1}},
	}
	for _, tt := range tests {
		got, err := tlog.ParseTilePath(tt.path)
		if err != nil || got != tt.t {
			t.Errorf("ParseTilePath(%q) = %+v, %v; want %+v", tt.path, got, err, tt.t)
		}
		if s := tt.t.String(); s != tt.path {
			t.Errorf("%+v.String() = %q, want %q", tt.t, s, tt.path)
		}
	}
	bad := []struct{ path, want string }{
		{"tiles/0/000", "does not start"},
		{"tile/64/000", "bad level"},
		{"tile/00/000", "bad level"},
		{"tile/-1/000", "bad level"},
		{"tile/0/00", "3 digits"},
		{"tile/0/0000", "3 digits"},
		{"tile/0/x000/001", "leading zero group"},
		{"tile/0/001/002", "x prefix"},
		{"tile/0/x001", "3 digits"},
		{"tile/0/000.p/0", "partial width"},
		{"tile/0/000.p/256", "partial width"},
		{"tile/0/000.p/08", "partial width"},
		{"tile/0/000.p/", "partial width"},
		{"tile/0/000.p", "3 digits"},
		{"tile/0/000/", "x prefix"},
		{"tile/0/", "3 digits"},
		{"tile/0", "bad tile index"},
		{"tile/entries/", "3 digits"},
		{"tile/0/x018/x446/x744/x073/x709/x551/616", "overflows"},
		{"tile/0/x018/x446/x744/x073/x709/x551/615", "beyond the largest tree"},
		{"tile/0/x004/x294/x967/296.p/1", "beyond the largest tree"},
		{"tile/entries/x004/x294/x967/296.p/1", "beyond the largest tree"},
		{"tile/entries/x004/x294/x967/295.p/255", ""}, // valid: below
		{"tile/1/x016/x777/216.p/1", "beyond the largest tree"},
		{"tile/4/001.p/1", "beyond the largest tree"},
		{"tile/5/000.p/2", "beyond the largest tree"},
		{"tile/6/000.p/1", "beyond the largest tree"},
		{"tile/63/x001/000.p/255", "beyond the largest tree"},
		{"tile/0/x001/x001/x001/x001/x001/x001/x001/001", "bad tile index"},
		{"tile/0/0a0", "3 digits"},
	}
	for _, b := range bad {
		if b.want == "" {
			if _, err := tlog.ParseTilePath(b.path); err != nil {
				t.Errorf("ParseTilePath(%q) = %v, want a tile", b.path, err)
			}
			continue
		}
		if got, err := tlog.ParseTilePath(b.path); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("ParseTilePath(%q) = %+v, %v; want error containing %q", b.path, got, err, b.want)
		}
	}
}

// FuzzParseTilePath checks round trips, and that every tile it accepts
// lies within a tree of MaxTreeSize entries, seeded with the tiles at and
// around that limit at every level.
func FuzzParseTilePath(f *testing.F) {
	for _, s := range []string{"tile/0/000", "tile/0/x001/x234/067", "tile/1/005.p/17", "tile/entries/x001/000.p/3", "tile/63/999"} {
		f.Add(s)
	}
	for l := 0; l <= 6; l++ {
		for _, entries := range []bool{false, true} {
			if entries && l > 0 {
				continue
			}
			// The last full tile below the limit, the first beyond it, and
			// partial ones around the boundary.
			last := uint64(tlog.MaxTreeSize) >> (8 * (l + 1))
			for _, n := range []uint64{last - 1, last, last + 1, 1<<62/256 - 1, 1 << 56} {
				for _, w := range []int{1, 255, 256} {
					f.Add(tlog.TilePath{Entries: entries, Level: l, N: n, Width: w}.String())
				}
			}
		}
	}
	f.Fuzz(func(t *testing.T, p string) {
		tp, err := tlog.ParseTilePath(p)
		if err != nil {
			return
		}
		if s := tp.String(); s != p {
			t.Fatalf("ParseTilePath(%q) = %+v, which formats as %q", p, tp, s)
		}
		// Entries (or leaves, for a hash tile) up to the tile's last hash.
		end := new(big.Int).SetUint64(tp.N*256 + uint64(tp.Width))
		if !tp.Entries {
			end.Lsh(end, uint(8*tp.Level))
		}
		if end.Cmp(big.NewInt(tlog.MaxTreeSize)) > 0 {
			t.Fatalf("ParseTilePath(%q) = %+v, which reaches entry %v, beyond MaxTreeSize", p, tp, end)
		}
		if err := tp.Check(); err != nil {
			t.Fatalf("ParseTilePath(%q) accepted a tile that Check refuses: %v", p, err)
		}
	})
}

func TestBundles(t *testing.T) {
	es := [][]byte{{}, []byte("a"), bytes.Repeat([]byte("b"), tlog.MaxEntrySize)}
	b, err := tlog.EncodeBundle(es)
	if err != nil {
		t.Fatal(err)
	}
	got, err := tlog.DecodeBundle(b, 3)
	if err != nil || len(got) != 3 || !bytes.Equal(got[2], es[2]) || len(got[0]) != 0 {
		t.Fatalf("DecodeBundle: %v", err)
	}
	for i := 0; i < len(b); i++ {
		if _, err := tlog.DecodeBundle(b[:i], 3); err == nil {
			t.Fatalf("bundle truncated to %d bytes accepted", i)
		}
	}
	if _, err := tlog.DecodeBundle(b, 2); err == nil || !strings.Contains(err.Error(), "more than 2") {
		t.Errorf("DecodeBundle(want 2) = %v", err)
	}
	if _, err := tlog.DecodeBundle(b, 4); err == nil || !strings.Contains(err.Error(), "has 3 entries, want 4") {
		t.Errorf("DecodeBundle(want 4) = %v", err)
	}
	if _, err := tlog.EncodeBundle([][]byte{make([]byte, tlog.MaxEntrySize+1)}); err == nil {
		t.Error("oversized entry encoded")
	}
}

func FuzzDecodeBundle(f *testing.F) {
	b, _ := tlog.EncodeBundle([][]byte{[]byte("a"), {}, []byte("ccc")})
	f.Add(b, 3)
	f.Fuzz(func(t *testing.T, b []byte, n int) {
		if n < 1 || n > 256 {
			return
		}
		es, err := tlog.DecodeBundle(b, n)
		if err != nil {
			return
		}
		if b2, err := tlog.EncodeBundle(es); err != nil || !bytes.Equal(b2, b) {
			t.Fatalf("bundle round trip differs: %v", err)
		}
	})
}

func get(t *testing.T, h http.Handler, method, path string, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func TestHandler(t *testing.T) {
	ctx := context.Background()
	l := newTestLog(t, 70000/100) // 700 entries: 2 full level-0 tiles and a partial one
	h := tlog.NewHandler(l)
	cp, _ := l.Checkpoint(ctx)

	w := get(t, h, "GET", "/log/checkpoint")
	if w.Code != 200 || !bytes.Equal(w.Body.Bytes(), cp.Note) || w.Header().Get("Content-Type") != "text/plain; charset=utf-8" || w.Header().Get("Cache-Control") != "no-cache" {
		t.Fatalf("GET /log/checkpoint = %d %q %v", w.Code, w.Body, w.Header())
	}
	for _, p := range []string{"/log/tile/0/000", "/log/tile/0/002.p/188", "/log/tile/0/001.p/3", "/log/tile/1/000.p/2"} {
		w := get(t, h, "GET", p)
		tp, _ := tlog.ParseTilePath(strings.TrimPrefix(p, "/log/"))
		want, _ := l.HashTile(ctx, tp.Level, tp.N, tp.Width)
		if w.Code != 200 || !bytes.Equal(w.Body.Bytes(), want) || len(want) != 32*tp.Width {
			t.Errorf("GET %s = %d, %d bytes", p, w.Code, w.Body.Len())
		}
		if cc := w.Header().Get("Cache-Control"); !strings.Contains(cc, "immutable") || w.Header().Get("Content-Type") != "application/octet-stream" {
			t.Errorf("GET %s headers %v", p, w.Header())
		}
	}
	w = get(t, h, "GET", "/log/tile/entries/002.p/188")
	es, err := tlog.DecodeBundle(w.Body.Bytes(), 188)
	if w.Code != 200 || err != nil || !bytes.Equal(es[187], l.entries[699]) {
		t.Fatalf("GET entries bundle = %d, %v", w.Code, err)
	}
	w = get(t, h, "GET", "/log/tile/entries/001", "Accept-Encoding", "gzip")
	zr, err := gzip.NewReader(w.Body)
	if err != nil || w.Header().Get("Content-Encoding") != "gzip" {
		t.Fatalf("gzip bundle: %v %v", err, w.Header())
	}
	raw, _ := io.ReadAll(zr)
	if es, err := tlog.DecodeBundle(raw, 256); err != nil || !bytes.Equal(es[0], l.entries[256]) {
		t.Fatalf("gzip bundle content: %v", err)
	}
	w = get(t, h, "HEAD", "/log/tile/0/000")
	if w.Code != 200 {
		t.Errorf("HEAD = %d", w.Code)
	}

	errs := []struct {
		method, path string
		code         int
	}{
		{"POST", "/log/checkpoint", 405},
		{"GET", "/log/", 404},
		{"GET", "/log/foo", 404},
		{"GET", "/logx", 404},
		{"GET", "/log/tile/0/002", 404},       // full tile beyond the tree
		{"GET", "/log/tile/0/002.p/189", 404}, // wider than the tree
		{"GET", "/log/tile/0/003.p/1", 404},
		{"GET", "/log/tile/2/000.p/1", 404},
		{"GET", "/log/tile/entries/002", 404},
		{"GET", "/log/tile/entries/x018/x446/x744/x073/x709/x551/615", 404},
		{"GET", "/log/tile/0/x018/x446/x744/x073/x709/x551/615", 404},
		{"GET", "/log/tile/0/2", 400},
		{"GET", "/log/tile/0/000.p/0", 400},
		{"GET", "/log/tile/64/000", 400},
		{"GET", "/log/tile/0/x000/002", 400},
	}
	for _, e := range errs {
		w := get(t, h, e.method, e.path)
		var body struct {
			Error struct{ Code, Message string }
		}
		if w.Code != e.code || json.Unmarshal(w.Body.Bytes(), &body) != nil || body.Error.Code == "" {
			t.Errorf("%s %s = %d %q, want %d with a JSON error", e.method, e.path, w.Code, w.Body, e.code)
		}
	}
}

// TestTilesInterop reads the log over HTTP with x/mod/sumdb/tlog's
// TileHashReader, which authenticates every tile against the checkpoint,
// and checks proofs built from the tiles with sumdb's CheckRecord and
// CheckTree.
func TestTilesInterop(t *testing.T) {
	ctx := context.Background()
	l := newTestLog(t, 600)
	srv := httptest.NewServer(tlog.NewHandler(l))
	defer srv.Close()
	c := tlog.NewTileClient(srv.URL+"/log/", nil)
	msg, err := c.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := tlog.OpenCheckpoint(msg, origin, l.v)
	if err != nil {
		t.Fatal(err)
	}
	hr := c.HashReader(ctx, cp)
	tree := sumdb.Tree{N: int64(cp.Size), Hash: cp.Hash}
	for _, i := range []int64{0, 1, 255, 256, 511, 512, 599} {
		p, err := sumdb.ProveRecord(tree.N, i, hr)
		if err != nil {
			t.Fatalf("ProveRecord(%d) from tiles: %v", i, err)
		}
		if err := sumdb.CheckRecord(p, tree.N, tree.Hash, i, sumdb.RecordHash(l.entries[i])); err != nil {
			t.Fatalf("CheckRecord(%d): %v", i, err)
		}
		bp, _ := l.InclusionProof(ctx, uint64(i), cp.Size)
		if fmt.Sprint(bp) != fmt.Sprint([]tlog.Hash(p)) {
			t.Fatalf("proof from tiles differs from the backend's proof for %d", i)
		}
	}
	for _, n := range []int64{1, 100, 256, 257, 599} {
		p, err := sumdb.ProveTree(tree.N, n, hr)
		if err != nil {
			t.Fatal(err)
		}
		old, err := sumdb.TreeHash(n, hr)
		if err != nil {
			t.Fatal(err)
		}
		if err := sumdb.CheckTree(p, tree.N, tree.Hash, n, old); err != nil {
			t.Fatalf("CheckTree(%d): %v", n, err)
		}
		cpf, err := c.ConsistencyProof(ctx, cp, uint64(n))
		if err != nil || fmt.Sprint(cpf) != fmt.Sprint([]tlog.Hash(p)) {
			t.Fatalf("TileClient.ConsistencyProof(%d) = %v", n, err)
		}
	}
}

func TestTileClientEntries(t *testing.T) {
	ctx := context.Background()
	l := newTestLog(t, 700)
	srv := httptest.NewServer(tlog.NewHandler(l))
	defer srv.Close()
	c := tlog.NewTileClient(srv.URL+"/log", nil)
	cp, _ := l.Checkpoint(ctx)
	for _, start := range []uint64{0, 1, 255, 256, 699, 700} {
		next := start
		err := c.Entries(ctx, cp, start, func(i uint64, e []byte) error {
			if i != next || !bytes.Equal(e, l.entries[i]) {
				return fmt.Errorf("got entry %d, want %d", i, next)
			}
			next++
			return nil
		})
		if err != nil || next != 700 {
			t.Fatalf("Entries from %d: %v (stopped at %d)", start, err, next)
		}
	}
	// An older checkpoint reads only its own entries, and partial tiles of
	// its size.
	old, _ := l.Checkpoint(ctx)
	l.add(t, 10)
	n := 0
	if err := c.Entries(ctx, old, 600, func(uint64, []byte) error { n++; return nil }); err != nil || n != 100 {
		t.Fatalf("Entries of the old checkpoint: %d, %v", n, err)
	}
	stop := errors.New("stop")
	if err := c.Entries(ctx, cp, 0, func(i uint64, _ []byte) error {
		if i == 300 {
			return stop
		}
		return nil
	}); err != stop {
		t.Fatalf("Entries did not return f's error: %v", err)
	}
}

// tamper serves the log but flips a bit at off in the response for path,
// or (off < 0) cuts the response short by -off bytes.
type tamper struct {
	h    http.Handler
	path string
	off  int
}

func (tp *tamper) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := httptest.NewRecorder()
	r.Header.Del("Accept-Encoding")
	tp.h.ServeHTTP(rec, r)
	b := rec.Body.Bytes()
	if r.URL.Path == tp.path {
		if tp.off < 0 {
			b = b[:len(b)+tp.off]
		} else if tp.off < len(b) {
			b[tp.off] ^= 1
		}
	}
	w.WriteHeader(rec.Code)
	w.Write(b)
}

func TestTileClientDetectsTampering(t *testing.T) {
	ctx := context.Background()
	l := newTestLog(t, 600)
	cp, _ := l.Checkpoint(ctx)
	cases := []struct {
		path string
		off  int
		want string
	}{
		{"/log/tile/entries/001", 10, "does not match"},
		{"/log/tile/entries/002.p/88", 2 + 5, "does not match"},
		{"/log/tile/entries/000", 0, "bundle"},
		{"/log/tile/0/001", 40, "does not verify"},
		{"/log/tile/0/002.p/88", 0, "does not verify"},
		{"/log/tile/1/000.p/2", 33, "does not verify"},
		{"/log/tile/0/001", -1, "tile is 8191 bytes, want 8192"},
		{"/log/tile/0/000", -32, "tile is 8160 bytes, want 8192"},
		{"/log/tile/entries/001", -1, "truncated in entry 255"},
		{"/log/tile/entries/002.p/88", -300, "truncated"},
		{"/log/tile/1/000.p/2", -1, "tile is 63 bytes, want 64"},
	}
	for _, tc := range cases {
		srv := httptest.NewServer(&tamper{h: tlog.NewHandler(l), path: tc.path, off: tc.off})
		c := tlog.NewTileClient(srv.URL+"/log", nil)
		err := c.Entries(ctx, cp, 0, func(uint64, []byte) error { return nil })
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("tampered %s: err = %v, want %q", tc.path, err, tc.want)
		}
		srv.Close()
	}
}

func TestVerifierUpdate(t *testing.T) {
	ctx := context.Background()
	l := newTestLog(t, 10)
	dir := t.TempDir()
	v, err := tlog.NewVerifier(origin, l.vkey, tlog.FileStore{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := v.Latest(); ok || err != nil {
		t.Fatalf("Latest on an empty store = %v, %v", ok, err)
	}
	cp10, _ := l.Checkpoint(ctx)
	if _, err := v.Update(cp10.Note, nil); err != nil {
		t.Fatalf("first Update: %v", err)
	}
	cp20 := l.add(t, 10)
	p, _ := l.ConsistencyProof(ctx, 10, 20)
	if _, err := v.Update(cp20.Note, p); err != nil {
		t.Fatalf("Update 10 → 20: %v", err)
	}
	// A new Verifier over the same store (another process) sees 20.
	v2, _ := tlog.NewVerifier(origin, l.vkey, tlog.FileStore{Dir: dir})
	if latest, ok, err := v2.Latest(); !ok || err != nil || latest.Size != 20 {
		t.Fatalf("Latest from the file store = %d, %v, %v", latest.Size, ok, err)
	}
	// The same checkpoint again is fine.
	if _, err := v2.Update(cp20.Note, nil); err != nil {
		t.Fatalf("Update with the same checkpoint: %v", err)
	}
	// Rollback: the log shows size 10 after 20.
	var fe *tlog.ForkError
	if _, err := v2.Update(cp10.Note, nil); !errors.As(err, &fe) || !fe.Rollback || fe.Old.Size != 20 || fe.New.Size != 10 ||
		!bytes.Equal(fe.Old.Note, cp20.Note) || !bytes.Equal(fe.New.Note, cp10.Note) {
		t.Fatalf("rollback: err = %v", err)
	}
	if !bytes.Contains(fe.Evidence(), cp20.Note) || !bytes.Contains(fe.Evidence(), cp10.Note) {
		t.Error("Evidence lacks a checkpoint")
	}
	// Fork: another log with the same key and different entries.
	forked := newTestLogPrefix(t, "forked ", 25)
	fcp, _ := forked.Checkpoint(ctx)
	fp, _ := forked.ConsistencyProof(ctx, 20, 25)
	if _, err := v2.Update(fcp.Note, fp); !errors.As(err, &fe) || fe.Rollback {
		t.Fatalf("fork: err = %v", err)
	}
	// The store still holds 20 after the rejected updates.
	if latest, _, _ := v2.Latest(); latest.Size != 20 || !bytes.Equal(latest.Note, cp20.Note) {
		t.Fatalf("stored checkpoint changed by a rejected update: %d", latest.Size)
	}
	// A bad signature is not a fork, just an error, and changes nothing.
	bad := bytes.Clone(cp20.Note)
	bad[len(bad)-20] ^= 1
	if _, err := v2.Update(bad, nil); err == nil || errors.As(err, &fe) {
		t.Fatalf("bad signature: err = %v", err)
	}
	// The last base64 character of the signature line carries two padding
	// bits; a note whose padding bits differ is a different text for the
	// same signature and is rejected too.
	bad = bytes.Clone(cp20.Note)
	last := bytes.LastIndexByte(bad[:len(bad)-1], '=') - 1
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	bad[last] = alphabet[strings.IndexByte(alphabet, bad[last])^1]
	if _, err := v2.Update(bad, nil); err == nil || !strings.Contains(err.Error(), "canonical") {
		t.Fatalf("non-canonical signature padding: err = %v", err)
	}
	// A stored file that was tampered with is reported.
	files, _ := filepath.Glob(filepath.Join(dir, "checkpoint-*"))
	var stored string
	for _, f := range files {
		if !strings.HasSuffix(f, ".lock") {
			stored = f
		}
	}
	if err := os.WriteFile(stored, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := v2.Update(cp20.Note, nil); err == nil || !strings.Contains(err.Error(), "stored checkpoint") {
		t.Fatalf("tampered store: err = %v", err)
	}
}

func TestVerifierSameSizeFork(t *testing.T) {
	ctx := context.Background()
	a := newTestLog(t, 5)
	b := newTestLogPrefix(t, "other ", 5)
	v, _ := tlog.NewVerifier(origin, a.vkey, nil)
	cpa, _ := a.Checkpoint(ctx)
	cpb, _ := b.Checkpoint(ctx)
	if _, err := v.Update(cpa.Note, nil); err != nil {
		t.Fatal(err)
	}
	var fe *tlog.ForkError
	if _, err := v.Update(cpb.Note, nil); !errors.As(err, &fe) || fe.Rollback || !strings.Contains(fe.Reason, "two roots") {
		t.Fatalf("same-size fork: %v", err)
	}
}

func TestReceiptFixture(t *testing.T) {
	if os.Getenv("KBS_UPDATE_TESTDATA") == "" {
		t.Skip("set KBS_UPDATE_TESTDATA=1 to regenerate the receipt fixture")
	}
	ctx := context.Background()
	l := newTestLog(t, 3)
	e, _ := os.ReadFile("testdata/entry-release.json")
	e = bytes.TrimSuffix(e, []byte("\n"))
	idx, cp, err := l.Append(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	l.entries = append(l.entries, e)
	l.add(t, 2)
	r, err := tlog.NewReceipt(ctx, l, idx, e, cp)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile("testdata/receipt.tlog-proof", r, 0o644)
	os.WriteFile("testdata/receipt.vkey", []byte(l.vkey+"\n"), 0o644)
}

func TestTileClientSync(t *testing.T) {
	ctx := context.Background()
	l := newTestLog(t, 300)
	srv := httptest.NewServer(tlog.NewHandler(l))
	defer srv.Close()
	c := tlog.NewTileClient(srv.URL+"/log", nil)
	v, _ := tlog.NewVerifier(origin, l.vkey, tlog.FileStore{Dir: t.TempDir()})
	if cp, err := c.Sync(ctx, v); err != nil || cp.Size != 300 {
		t.Fatalf("first Sync = %d, %v", cp.Size, err)
	}
	l.add(t, 333)
	if cp, err := c.Sync(ctx, v); err != nil || cp.Size != 633 {
		t.Fatalf("second Sync = %d, %v", cp.Size, err)
	}
	if latest, _, _ := v.Latest(); latest.Size != 633 {
		t.Fatalf("stored size %d", latest.Size)
	}
	// A forked log under the same key, larger than what v saw.
	forked := newTestLogPrefix(t, "fork ", 700)
	fsrv := httptest.NewServer(tlog.NewHandler(forked))
	defer fsrv.Close()
	var fe *tlog.ForkError
	if _, err := tlog.NewTileClient(fsrv.URL+"/log", nil).Sync(ctx, v); !errors.As(err, &fe) || fe.Old.Size != 633 || fe.New.Size != 700 {
		t.Fatalf("Sync with a forked log = %v, want *ForkError", err)
	}
}

type failingBackend struct{ tlog.Backend }

func (failingBackend) HashTile(context.Context, int, uint64, int) ([]byte, error) {
	return nil, errors.New("disk on fire")
}

func TestHandlerErrorLog(t *testing.T) {
	l := newTestLog(t, 3)
	var logged error
	h := tlog.NewHandler(failingBackend{l}, tlog.WithErrorLog(func(_ *http.Request, err error) { logged = err }))
	w := get(t, h, "GET", "/log/tile/0/000.p/3")
	if w.Code != 503 || strings.Contains(w.Body.String(), "fire") || logged == nil || !strings.Contains(logged.Error(), "fire") {
		t.Fatalf("backend failure: %d %q, logged %v", w.Code, w.Body, logged)
	}
}

// TestVerifierAdvance checks the one way a stored checkpoint moves: proofs
// come from a ProofSource only when needed, an older checkpoint is a
// rollback unless Older, DryRun stores nothing, a failing source or proof
// leaves the store alone, and a store moved by another process meanwhile
// makes Advance start over.
func TestVerifierAdvance(t *testing.T) {
	ctx := context.Background()
	l := newTestLog(t, 10)
	cp10, _ := l.Checkpoint(ctx)
	cp20 := l.add(t, 10)
	cp30 := l.add(t, 10)
	dir := t.TempDir()
	v, _ := tlog.NewVerifier(origin, l.vkey, tlog.FileStore{Dir: dir})
	var asked [][2]uint64
	src := tlog.ProofFunc(func(ctx context.Context, o, n uint64) ([]tlog.Hash, error) {
		asked = append(asked, [2]uint64{o, n})
		return l.ConsistencyProof(ctx, o, n)
	})
	stored := func() uint64 {
		t.Helper()
		cp, ok, err := v.Latest()
		if err != nil || !ok {
			t.Fatalf("Latest = %v, %v", ok, err)
		}
		return cp.Size
	}

	// First use: stored without a proof.
	res, err := v.Advance(ctx, cp20.Note, src, tlog.AdvanceOptions{})
	if err != nil || !res.Stored || res.Previous != nil || res.Checkpoint.Size != 20 || len(asked) != 0 {
		t.Fatalf("first Advance = %+v, %v (asked %v)", res, err, asked)
	}
	// DryRun of a newer one: checked with a proof, not stored.
	res, err = v.Advance(ctx, cp30.Note, src, tlog.AdvanceOptions{DryRun: true})
	if err != nil || res.Stored || res.Previous == nil || res.Previous.Size != 20 || stored() != 20 || len(asked) != 1 || asked[0] != [2]uint64{20, 30} {
		t.Fatalf("DryRun Advance = %+v, %v (asked %v), stored %d", res, err, asked, stored())
	}
	// An older checkpoint claimed as the latest is a rollback.
	var fe *tlog.ForkError
	if _, err := v.Advance(ctx, cp10.Note, src, tlog.AdvanceOptions{}); !errors.As(err, &fe) || !fe.Rollback || fe.Old.Size != 20 || fe.New.Size != 10 {
		t.Fatalf("Advance to an older checkpoint = %v, want a rollback", err)
	}
	// With Older it is checked as a prefix and the store stays.
	asked = nil
	res, err = v.Advance(ctx, cp10.Note, src, tlog.AdvanceOptions{Older: true})
	if err != nil || res.Stored || stored() != 20 || len(asked) != 1 || asked[0] != [2]uint64{10, 20} {
		t.Fatalf("Advance Older = %+v, %v (asked %v), stored %d", res, err, asked, stored())
	}
	// An older checkpoint of a fork is a fork even with Older.
	forked := newTestLogPrefix(t, "fork ", 15)
	fcp, _ := forked.Checkpoint(ctx)
	if _, err := v.Advance(ctx, fcp.Note, src, tlog.AdvanceOptions{Older: true}); !errors.As(err, &fe) || fe.Rollback || fe.Old.Size != 15 || fe.New.Size != 20 {
		t.Fatalf("Advance Older with a forked checkpoint = %v, want a fork", err)
	}
	// A source that fails, or lies, leaves the store alone.
	failing := tlog.ProofFunc(func(context.Context, uint64, uint64) ([]tlog.Hash, error) { return nil, errors.New("no proof today") })
	if _, err := v.Advance(ctx, cp30.Note, failing, tlog.AdvanceOptions{}); err == nil || !strings.Contains(err.Error(), "no proof today") || errors.As(err, &fe) {
		t.Fatalf("Advance with a failing source = %v", err)
	}
	if _, err := v.Advance(ctx, cp30.Note, nil, tlog.AdvanceOptions{}); err == nil {
		t.Fatal("Advance without a proof source succeeded")
	}
	p, _ := l.ConsistencyProof(ctx, 20, 30)
	p[0][0] ^= 1
	lying := tlog.KnownProof{OldSize: 20, NewSize: 30, Proof: p}
	if _, err := v.Advance(ctx, cp30.Note, lying, tlog.AdvanceOptions{}); !errors.As(err, &fe) || !strings.Contains(fe.Reason, "consistency proof failed") {
		t.Fatalf("Advance with a bad proof = %v, want a fork", err)
	}
	if stored() != 20 {
		t.Fatalf("rejected Advances moved the store to %d", stored())
	}
	// A proof in hand is used when it fits, the fallback otherwise.
	asked = nil
	p[0][0] ^= 1
	if res, err := v.Advance(ctx, cp30.Note, tlog.KnownProof{OldSize: 20, NewSize: 30, Proof: p, Else: src}, tlog.AdvanceOptions{}); err != nil || !res.Stored || len(asked) != 0 {
		t.Fatalf("Advance with a known proof = %+v, %v (asked %v)", res, err, asked)
	}
	if _, err := (tlog.KnownProof{OldSize: 20, NewSize: 30, Proof: p}).ConsistencyProof(ctx, 10, 30); err == nil {
		t.Fatal("KnownProof without Else proved another size")
	}
	// Another process advances the store while this one fetches a proof:
	// Advance starts over from the new stored checkpoint.
	cp40 := l.add(t, 10)
	cp50 := l.add(t, 10)
	other, _ := tlog.NewVerifier(origin, l.vkey, tlog.FileStore{Dir: dir})
	asked = nil
	racing := tlog.ProofFunc(func(ctx context.Context, o, n uint64) ([]tlog.Hash, error) {
		asked = append(asked, [2]uint64{o, n})
		if len(asked) == 1 {
			if _, err := other.Advance(ctx, cp40.Note, src, tlog.AdvanceOptions{}); err != nil {
				return nil, err
			}
		}
		return l.ConsistencyProof(ctx, o, n)
	})
	res, err = v.Advance(ctx, cp50.Note, racing, tlog.AdvanceOptions{})
	if err != nil || !res.Stored || res.Previous.Size != 40 || stored() != 50 {
		t.Fatalf("Advance racing another process = %+v, %v, stored %d", res, err, stored())
	}
	// 30→50 for v, 30→40 for the other process, 40→50 for v again.
	if fmt.Sprint(asked) != "[[30 50] [30 40] [40 50]]" {
		t.Fatalf("racing Advance asked for %v, want 30→50, 30→40, then 40→50", asked)
	}
}

// TestTileProver checks that tiles prove consistency into their own tree
// only.
func TestTileProver(t *testing.T) {
	ctx := context.Background()
	l := newTestLog(t, 300)
	cp, _ := l.Checkpoint(ctx)
	srv := httptest.NewServer(tlog.NewHandler(l))
	defer srv.Close()
	pr := tlog.NewTileClient(srv.URL+"/log", nil).Prover(cp)
	p, err := pr.ConsistencyProof(ctx, 100, 300)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := l.Log.ConsistencyProof(ctx, 100, 300)
	if fmt.Sprint(p) != fmt.Sprint(old) {
		t.Fatalf("tile proof %v differs from the backend's %v", p, old)
	}
	if _, err := pr.ConsistencyProof(ctx, 100, 200); err == nil {
		t.Fatal("tiles of size 300 proved size 200")
	}
}

// TestVerifierAdvanceConcurrent: many goroutines advancing one verifier
// to checkpoints of many sizes (receipts, in either order) all succeed,
// and the largest is stored.
func TestVerifierAdvanceConcurrent(t *testing.T) {
	ctx := context.Background()
	l := newTestLog(t, 1)
	var cps []tlog.SignedCheckpoint
	for range 16 {
		cps = append(cps, l.add(t, 3))
	}
	v, _ := tlog.NewVerifier(origin, l.vkey, tlog.FileStore{Dir: t.TempDir()})
	src := tlog.ProofFunc(l.ConsistencyProof)
	errs := make(chan error, 2*len(cps))
	for range 2 {
		for _, cp := range cps {
			go func() {
				_, err := v.Advance(ctx, cp.Note, src, tlog.AdvanceOptions{Older: true})
				errs <- err
			}()
		}
	}
	for range 2 * len(cps) {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if latest, _, _ := v.Latest(); latest.Size != cps[len(cps)-1].Size {
		t.Fatalf("stored size %d, want %d", latest.Size, cps[len(cps)-1].Size)
	}
}
