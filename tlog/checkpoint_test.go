package tlog

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"strings"
	"testing"

	tdlog "github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"
	sumdb "golang.org/x/mod/sumdb/tlog"
)

const testOrigin = OriginPrefix + "test"

func testKeys(t testing.TB, seed byte) (note.Signer, note.Verifier, string) {
	t.Helper()
	s, v, vkey, err := NewEd25519NoteKeys(testOrigin, ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	return s, v, vkey
}

func TestNewEd25519NoteKeys(t *testing.T) {
	s, v, vkey := testKeys(t, 1)
	msg, err := note.Sign(&note.Note{Text: "hello\n"}, s)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatalf("note.NewVerifier(%q): %v", vkey, err)
	}
	for _, v := range []note.Verifier{v, v2} {
		if _, err := note.Open(msg, note.VerifierList(v)); err != nil {
			t.Errorf("note signed with the derived signer does not verify: %v", err)
		}
	}
	if !strings.HasPrefix(vkey, testOrigin+"+") {
		t.Errorf("vkey = %q, want name %q", vkey, testOrigin)
	}
}

func TestParseCheckpoint(t *testing.T) {
	root := Root{Size: 20852163, Hash: sumdb.RecordHash([]byte("x"))}
	text := FormatCheckpoint("example.com/log", root)
	o, r, err := ParseCheckpoint(text)
	if err != nil || o != "example.com/log" || r != root {
		t.Fatalf("ParseCheckpoint(FormatCheckpoint) = %q, %v, %v", o, r, err)
	}
	// An independent parser agrees.
	var c tdlog.Checkpoint
	if rest, err := c.Unmarshal(text); err != nil || len(rest) != 0 || c.Size != root.Size || !bytes.Equal(c.Hash, root.Hash[:]) || c.Origin != "example.com/log" {
		t.Fatalf("formats/log parses %q as %+v, %v", text, c, err)
	}
	if _, _, err := ParseCheckpoint(append(bytes.Clone(text), "ext\n"...)); err != nil {
		t.Errorf("extension line rejected: %v", err)
	}
	h := "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
	bad := []struct{ in, want string }{
		{"", "newline"},
		{"o\n1\n" + h, "newline"},
		{"o\n1\n", "lines"},
		{"\n1\n" + h + "\n", "empty origin"},
		{"o\n01\n" + h + "\n", "tree size"},
		{"o\n+1\n" + h + "\n", "tree size"},
		{"o\n-1\n" + h + "\n", "tree size"},
		{"o\n1 \n" + h + "\n", "tree size"},
		{"o\n99999999999999999999\n" + h + "\n", "tree size"},
		{"o\n1\n" + h[:40] + "\n", "root hash"},
		{"o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2J=\n", "root hash"}, // non-canonical padding bits
		{"o\n1\n" + h + "\n\n", "empty extension"},
	}
	for _, b := range bad {
		if _, _, err := ParseCheckpoint([]byte(b.in)); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("ParseCheckpoint(%q) = %v, want error containing %q", b.in, err, b.want)
		}
	}
}

// TestTreeSizeLimit is issue 19's first finding: a signed checkpoint of
// size 2^62 made the auditor spin forever in golang.org/x/mod/sumdb/tlog.
// Sizes up to MaxTreeSize parse and sign; above it, nothing does.
func TestTreeSizeLimit(t *testing.T) {
	h := sumdb.RecordHash([]byte("x"))
	s, v, _ := testKeys(t, 1)
	cs, err := NewCheckpointSigner(testOrigin, s, v)
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []uint64{MaxTreeSize - 1, MaxTreeSize} {
		if _, r, err := ParseCheckpoint(FormatCheckpoint("o", Root{Size: size, Hash: h})); err != nil || r.Size != size {
			t.Errorf("ParseCheckpoint(size %d) = %v, %v", size, r, err)
		}
		if _, err := cs.Sign(nil, Root{Size: size, Hash: h}, nil); err != nil {
			t.Errorf("Sign(size %d) = %v", size, err)
		}
	}
	for _, size := range []uint64{MaxTreeSize + 1, 1<<62 - 1, 1 << 62, 1<<62 + 1, 1 << 63, 1<<64 - 1} {
		text := FormatCheckpoint("o", Root{Size: size, Hash: h})
		if _, _, err := ParseCheckpoint(text); err == nil || !strings.Contains(err.Error(), "above the largest") {
			t.Errorf("ParseCheckpoint(size %d) = %v, want an error", size, err)
		}
		if _, err := cs.Sign(nil, Root{Size: size, Hash: h}, nil); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("Sign(size %d) = %v, want ErrInvalidArgument", size, err)
		}
		// Signed by the log key all the same: refused.
		msg, err := note.Sign(&note.Note{Text: string(FormatCheckpoint(testOrigin, Root{Size: size, Hash: h}))}, s)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := OpenCheckpoint(msg, testOrigin, v); err == nil {
			t.Errorf("OpenCheckpoint(signed, size %d) accepted", size)
		}
	}
}

func TestOpenCheckpoint(t *testing.T) {
	s, v, _ := testKeys(t, 1)
	_, otherV, _ := testKeys(t, 2)
	root := Root{Size: 3, Hash: sumdb.RecordHash([]byte("x"))}
	msg, err := note.Sign(&note.Note{Text: string(FormatCheckpoint(testOrigin, root))}, s)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := OpenCheckpoint(msg, testOrigin, v)
	if err != nil || cp.Root != root || cp.Origin != testOrigin || !bytes.Equal(cp.Note, msg) {
		t.Fatalf("OpenCheckpoint = %+v, %v", cp, err)
	}
	// formats/log agrees.
	if c, _, _, err := tdlog.ParseCheckpoint(msg, testOrigin, v); err != nil || c.Size != 3 {
		t.Fatalf("formats/log.ParseCheckpoint: %v", err)
	}
	// A cosignature by an unknown key is ignored.
	wsk, _, err := note.GenerateKey(rand.Reader, "witness.example")
	if err != nil {
		t.Fatal(err)
	}
	ws, _ := note.NewSigner(wsk)
	cosigned, err := note.Sign(&note.Note{Text: string(FormatCheckpoint(testOrigin, root))}, s, ws)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenCheckpoint(cosigned, testOrigin, v); err != nil {
		t.Errorf("cosigned checkpoint rejected: %v", err)
	}
	var unverified *note.UnverifiedNoteError
	if _, err := OpenCheckpoint(msg, testOrigin, otherV); !errors.As(err, &unverified) {
		t.Errorf("OpenCheckpoint with another key: err = %v, want *note.UnverifiedNoteError", err)
	}
	if _, err := OpenCheckpoint(msg, "kbs/other", v); err == nil || !strings.Contains(err.Error(), "origin") {
		t.Errorf("OpenCheckpoint with another origin: err = %v", err)
	}
	bad := bytes.Clone(msg)
	bad[len(bad)-5] ^= 1
	if _, err := OpenCheckpoint(bad, testOrigin, v); err == nil {
		t.Error("corrupt signature accepted")
	}
	for i := 0; i < len(msg); i++ {
		if _, err := OpenCheckpoint(msg[:i], testOrigin, v); err == nil {
			t.Fatalf("checkpoint truncated to %d bytes accepted", i)
		}
	}
	// The fixture's checkpoint (the fuzz seed) verifies.
	_, v0, _ := testKeys(t, 0)
	if _, err := OpenCheckpoint(testdataCheckpoint(t), testOrigin, v0); err != nil {
		t.Errorf("testdata checkpoint: %v", err)
	}
	// A note whose text is signed but is not a checkpoint.
	junk, _ := note.Sign(&note.Note{Text: testOrigin + "\nnot a size\n"}, s)
	if _, err := OpenCheckpoint(junk, testOrigin, v); err == nil || !strings.Contains(err.Error(), "malformed checkpoint") {
		t.Errorf("signed non-checkpoint: err = %v", err)
	}
}

// testTree is an in-memory tree built with x/mod/sumdb/tlog.
type testTree struct{ hashes []Hash }

func (tt *testTree) add(entry []byte) {
	hs, err := sumdb.StoredHashes(int64(tt.size()), entry, tt)
	if err != nil {
		panic(err)
	}
	tt.hashes = append(tt.hashes, hs...)
}

func (tt *testTree) size() uint64 {
	n := uint64(0)
	for sumdb.StoredHashCount(int64(n)) < int64(len(tt.hashes)) {
		n++
	}
	return n
}

func (tt *testTree) ReadHashes(idx []int64) ([]Hash, error) {
	out := make([]Hash, len(idx))
	for i, x := range idx {
		out[i] = tt.hashes[x]
	}
	return out, nil
}

func (tt *testTree) root(n uint64) Root {
	if n == 0 {
		return Root{Hash: EmptyRoot}
	}
	h, err := sumdb.TreeHash(int64(n), tt)
	if err != nil {
		panic(err)
	}
	return Root{Size: n, Hash: h}
}

func (tt *testTree) consistency(n, m uint64) []Hash {
	if n == 0 || n == m {
		return nil
	}
	p, err := sumdb.ProveTree(int64(m), int64(n), tt)
	if err != nil {
		panic(err)
	}
	return p
}

func TestCheckpointSigner(t *testing.T) {
	s, v, _ := testKeys(t, 1)
	if _, err := NewCheckpointSigner("kbs/other", s, v); err == nil {
		t.Error("signer whose key name differs from the origin accepted")
	}
	cs, err := NewCheckpointSigner(testOrigin, s, v)
	if err != nil {
		t.Fatal(err)
	}
	tt := &testTree{}
	for i := 0; i < 20; i++ {
		tt.add([]byte{byte(i)})
	}
	empty, err := cs.Sign(nil, tt.root(0), nil)
	if err != nil {
		t.Fatal(err)
	}
	cp5, err := cs.Sign(&empty, tt.root(5), nil)
	if err != nil {
		t.Fatalf("Sign(5) after empty: %v", err)
	}
	cp10, err := cs.Sign(&cp5, tt.root(10), tt.consistency(5, 10))
	if err != nil {
		t.Fatalf("Sign(10) after 5: %v", err)
	}
	if _, err := OpenCheckpoint(cp10.Note, testOrigin, v); err != nil {
		t.Fatal(err)
	}
	if again, err := cs.Sign(&cp10, tt.root(10), nil); err != nil || !bytes.Equal(again.Note, cp10.Note) {
		t.Errorf("re-signing the same root: %v", err)
	}

	other := &testTree{}
	for i := 0; i < 20; i++ {
		other.add([]byte{byte(i), 1})
	}
	conflicts := []struct {
		name  string
		next  Root
		proof []Hash
	}{
		{"smaller", tt.root(9), nil},
		{"same size other root", other.root(10), nil},
		{"not an extension", other.root(12), other.consistency(10, 12)},
		{"missing proof", tt.root(12), nil},
		{"wrong proof", tt.root(12), tt.consistency(10, 13)},
		{"empty with a root", Root{Size: 0, Hash: tt.root(1).Hash}, nil},
	}
	for _, c := range conflicts {
		if _, err := cs.Sign(&cp10, c.next, c.proof); !errors.Is(err, ErrConflict) {
			t.Errorf("%s: Sign = %v, want ErrConflict", c.name, err)
		}
	}
	// A fresh signer (as after a restart) must check the persisted
	// checkpoint's signature, and refuse one signed by another key.
	cs2, _ := NewCheckpointSigner(testOrigin, s, v)
	if _, err := cs2.Sign(&cp10, tt.root(9), nil); !errors.Is(err, ErrConflict) {
		t.Errorf("after restart, smaller size: %v", err)
	}
	s3, v3, _ := testKeys(t, 3)
	cs3, _ := NewCheckpointSigner(testOrigin, s3, v3)
	if _, err := cs3.Sign(&cp10, tt.root(12), tt.consistency(10, 12)); err == nil {
		t.Error("last checkpoint signed by another key accepted")
	}
	forged := cp10
	forged.Root = tt.root(11)
	if _, err := cs2.Sign(&forged, tt.root(12), tt.consistency(11, 12)); err == nil {
		t.Error("last checkpoint whose fields differ from its note accepted")
	}
}

// testdataCheckpoint returns the signed checkpoint of the receipt fixture
// (signed by testKeys(t, 0)).
func testdataCheckpoint(t testing.TB) []byte {
	b, err := os.ReadFile("testdata/receipt.tlog-proof")
	if err != nil {
		t.Fatal(err)
	}
	_, cp, ok := bytes.Cut(b, []byte("\n\n"))
	if !ok {
		t.Fatal("bad receipt fixture")
	}
	return cp
}

func FuzzParseCheckpoint(f *testing.F) {
	note := testdataCheckpoint(f)
	f.Add(note[:bytes.Index(note, []byte("\n\n"))+1])
	f.Add(FormatCheckpoint(testOrigin, Root{Size: 5, Hash: EmptyRoot}))
	f.Add([]byte("example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"))
	f.Add([]byte("o\n0\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\next\n"))
	// Sizes at and around the limit, and around 2^62, 2^63 and 2^64.
	for _, n := range []uint64{MaxTreeSize - 1, MaxTreeSize, MaxTreeSize + 1, 1<<62 - 1, 1 << 62, 1<<62 + 1, 1 << 63, 1<<64 - 1} {
		f.Add(FormatCheckpoint(testOrigin, Root{Size: n, Hash: EmptyRoot}))
	}
	f.Add([]byte("o\n18446744073709551616\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"))
	f.Fuzz(func(t *testing.T, text []byte) {
		o, r, err := ParseCheckpoint(text)
		if err != nil {
			return
		}
		if r.Size > MaxTreeSize {
			t.Fatalf("ParseCheckpoint(%q) accepted size %d, above MaxTreeSize", text, r.Size)
		}
		// The tiles that the last entry of such a tree touches are tiles
		// this package accepts, and sumdb's tile math on it ends.
		if r.Size > 0 {
			for _, tile := range sumdb.NewTiles(TileHeight, int64(r.Size-1), int64(r.Size)) {
				p := TilePath{Level: tile.L, N: uint64(tile.N), Width: tile.W}
				if err := p.Check(); err != nil {
					t.Fatalf("size %d: tile %s of its right edge: %v", r.Size, p, err)
				}
			}
		}
		// Without extension lines, the text is exactly the canonical form.
		if bytes.Count(text, []byte("\n")) == 3 && !bytes.Equal(FormatCheckpoint(o, r), text) {
			t.Fatalf("ParseCheckpoint(%q) = %q, %v; formats back as %q", text, o, r, FormatCheckpoint(o, r))
		}
		o2, r2, err := ParseCheckpoint(FormatCheckpoint(o, r))
		if err != nil || o2 != o || r2 != r {
			t.Fatalf("round trip of %q: %q, %v, %v", text, o2, r2, err)
		}
	})
}

func FuzzOpenCheckpoint(f *testing.F) {
	s, v, _ := testKeys(f, 0)
	f.Add(testdataCheckpoint(f))
	for _, n := range []uint64{0, 1, MaxTreeSize - 1, MaxTreeSize, MaxTreeSize + 1, 1 << 62, 1<<64 - 1} {
		msg, _ := note.Sign(&note.Note{Text: string(FormatCheckpoint(testOrigin, Root{Size: n, Hash: EmptyRoot}))}, s)
		f.Add(msg)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		cp, err := OpenCheckpoint(msg, testOrigin, v)
		if err != nil {
			return
		}
		// Anything accepted was signed by the key, so it parses to what was
		// signed; re-opening is deterministic.
		cp2, err := OpenCheckpoint(cp.Note, testOrigin, v)
		if err != nil || cp2.Root != cp.Root {
			t.Fatalf("re-opening an accepted checkpoint: %v", err)
		}
		n, err := note.Open(msg, note.VerifierList(v))
		if err != nil {
			t.Fatalf("note.Open disagrees: %v", err)
		}
		if o, r, err := ParseCheckpoint([]byte(n.Text)); err != nil || o != cp.Origin || r != cp.Root {
			t.Fatalf("note text %q parses as %q, %v, %v", n.Text, o, r, err)
		}
	})
}
