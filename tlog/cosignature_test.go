package tlog_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/kbs-dev/kbs/tlog"
)

// fixedTime is the timestamp of the test cosignatures (any instant works:
// nothing compares it with the wall clock).
var fixedTime = time.Unix(1_700_000_000, 0)

// testCosigner returns a cosigner with a key derived from seed.
func testCosigner(t testing.TB, name, seed string, now time.Time) *tlog.Cosigner {
	t.Helper()
	s := sha256.Sum256([]byte(seed))
	c, err := tlog.NewCosigner(name, ed25519.NewKeyFromSeed(s[:]), func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// testLog returns a log note signer and verifier for origin.
func testLogKey(t testing.TB, origin string) (note.Signer, note.Verifier, string) {
	t.Helper()
	s := sha256.Sum256([]byte("log " + origin))
	signer, v, vkey, err := tlog.NewEd25519NoteKeys(origin, ed25519.NewKeyFromSeed(s[:]))
	if err != nil {
		t.Fatal(err)
	}
	return signer, v, vkey
}

func signCheckpoint(t testing.TB, origin string, r tlog.Root, signers ...note.Signer) []byte {
	t.Helper()
	msg, err := note.Sign(&note.Note{Text: string(tlog.FormatCheckpoint(origin, r))}, signers...)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// TestCosignatureSpecMessage checks the signed message against the
// tlog-cosignature spec text, byte for byte, with crypto/ed25519 alone.
func TestCosignatureSpecMessage(t *testing.T) {
	c := testCosigner(t, "witness.example.com/w1", "w1", time.Unix(1679315147, 0))
	text := "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
	sig, err := c.Sign([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if len(sig) != 72 {
		t.Fatalf("signature is %d bytes, want 8+64", len(sig))
	}
	if ts := binary.BigEndian.Uint64(sig); ts != 1679315147 {
		t.Errorf("timestamp = %d, want 1679315147", ts)
	}
	msg := "cosignature/v1\ntime 1679315147\n" + text
	v, err := tlog.NewCosignatureVerifier(c.VerifierKey())
	if err != nil {
		t.Fatal(err)
	}
	if !ed25519.Verify(v.PublicKey(), []byte(msg), sig[8:]) {
		t.Error("the signature is not an Ed25519 signature of the spec's message")
	}
	// Key ID: SHA-256(name || "\n" || 0x04 || key)[:4].
	h := sha256.Sum256(append([]byte("witness.example.com/w1\n\x04"), v.PublicKey()...))
	if got, want := v.KeyHash(), binary.BigEndian.Uint32(h[:4]); got != want {
		t.Errorf("KeyHash = %08x, want %08x", got, want)
	}
	if !v.Verify([]byte(text), sig) {
		t.Error("Verify rejects a good cosignature")
	}
	for name, bad := range map[string][]byte{
		"other text":      []byte(strings.Replace(text, "20852163", "20852164", 1)),
		"truncated sig":   nil,
		"flipped time":    nil,
		"time above 2^63": nil,
	} {
		s := bytes.Clone(sig)
		m := []byte(text)
		switch name {
		case "other text":
			m = bad
		case "truncated sig":
			s = s[:71]
		case "flipped time":
			s[7] ^= 1
		case "time above 2^63":
			s[0] |= 0x80
		}
		if v.Verify(m, s) {
			t.Errorf("Verify accepts %s", name)
		}
	}
}

// TestCosignedNoteWithXMod checks a cosigned checkpoint with
// golang.org/x/mod/sumdb/note: both the log's signature and the
// cosignature verify, and CosignatureTime reads the timestamp.
func TestCosignedNoteWithXMod(t *testing.T) {
	origin := "kbs/test"
	signer, logV, _ := testLogKey(t, origin)
	w := testCosigner(t, "witness.example/a", "a", fixedTime)
	r := tlog.Root{Size: 5, Hash: tlog.Hash{1}}
	msg := signCheckpoint(t, origin, r, signer, w)
	wv, err := tlog.NewCosignatureVerifier(w.VerifierKey())
	if err != nil {
		t.Fatal(err)
	}
	n, err := note.Open(msg, note.VerifierList(logV, wv))
	if err != nil {
		t.Fatalf("note.Open: %v", err)
	}
	if len(n.Sigs) != 2 {
		t.Fatalf("note.Open verified %d signatures, want 2", len(n.Sigs))
	}
	ts, err := tlog.CosignatureTime(n.Sigs[1])
	if err != nil || !ts.Equal(fixedTime) {
		t.Errorf("CosignatureTime = %v, %v; want %v", ts, err, fixedTime)
	}
	// The log's own checkpoint check ignores the cosignature.
	if _, err := tlog.OpenCheckpoint(msg, origin, logV); err != nil {
		t.Errorf("OpenCheckpoint of a cosigned checkpoint: %v", err)
	}
}

func TestParseVerifierKey(t *testing.T) {
	w := testCosigner(t, "witness.example/a", "a", fixedTime)
	good := w.VerifierKey()
	if v, err := tlog.NewCosignatureVerifier(good); err != nil || v.String() != good {
		t.Fatalf("NewCosignatureVerifier(%q) = %v, %v", good, v, err)
	}
	parts := strings.SplitN(good, "+", 3)
	name, hash, key := parts[0], parts[1], parts[2]
	raw, _ := base64.StdEncoding.DecodeString(key)
	_, _, logKey := testLogKey(t, "kbs/x")
	plain := append([]byte{0x01}, raw[1:]...)
	tests := []struct {
		vkey, want string
	}{
		{"", "malformed"},
		{name + "+" + hash, "malformed"},
		{name + "+" + strings.ToUpper(hash) + "+" + key, "lowercase"},
		{name + "+" + hash + "+" + key + "=", "base64"},
		{"a b+" + hash + "+" + key, "key name"},
		{name + "+00000000+" + key, "does not match"},
		{name + "+" + hash + "+" + base64.StdEncoding.EncodeToString(raw[:20]), "key bytes"},
		{logKey, "type 0x01"},
		{name + "+" + hash + "+" + base64.StdEncoding.EncodeToString(plain), "type 0x01"},
		{name + "+" + hash + "+" + base64.StdEncoding.EncodeToString(append([]byte{0x06}, raw[1:]...)), "ML-DSA"},
		{name + "+" + hash + "+" + base64.StdEncoding.EncodeToString(append([]byte{0x09}, raw[1:]...)), "type 0x09"},
	}
	for _, tt := range tests {
		_, err := tlog.NewCosignatureVerifier(tt.vkey)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewCosignatureVerifier(%q) = %v, want error containing %q", tt.vkey, err, tt.want)
		}
	}
}

func TestParseSignatureLines(t *testing.T) {
	w := testCosigner(t, "witness.example/a", "a", fixedTime)
	sig, _ := w.Sign([]byte("x\n"))
	var id [4]byte
	binary.BigEndian.PutUint32(id[:], w.KeyHash())
	b64 := base64.StdEncoding.EncodeToString(append(id[:], sig...))
	line := "— witness.example/a " + b64 + "\n"
	sigs, err := tlog.ParseSignatureLines([]byte(line + "— other.example/b AAAAAAE=\n"))
	if err != nil || len(sigs) != 2 || sigs[0].Name != "witness.example/a" || sigs[0].Hash != w.KeyHash() || sigs[1].Hash != 0 {
		t.Fatalf("ParseSignatureLines = %+v, %v", sigs, err)
	}
	if got := string(tlog.FormatSignatureLines(sigs)); got != line+"— other.example/b AAAAAAE=\n" {
		t.Errorf("FormatSignatureLines = %q", got)
	}
	bad := map[string]string{
		"empty":              "",
		"no newline":         strings.TrimSuffix(line, "\n"),
		"hyphen":             "- witness.example/a " + b64 + "\n",
		"no space":           "—witness.example/a " + b64 + "\n",
		"no signature":       "— witness.example/a\n",
		"plus in name":       "— witness+a " + b64 + "\n",
		"short":              "— a AAAA\n",
		"non-canonical b64":  "— a AAAAAAF=\n",
		"duplicate":          line + line,
		"blank line":         line + "\n",
		"control character":  "— a\tb " + b64 + "\n",
		"invalid UTF-8":      "— a\xff " + b64 + "\n",
		"trailing space":     "— a " + b64 + " \n",
		"too many lines":     strings.Repeat("— a AAAAAAE=\n", 1) + manyLines(tlog.MaxSignatureLines),
		"carriage return":    "— a " + b64 + "\r\n",
		"empty name":         "—  " + b64 + "\n",
		"signature with tab": "— a AAAA\tAAE=\n",
	}
	for name, in := range bad {
		if sigs, err := tlog.ParseSignatureLines([]byte(in)); err == nil {
			t.Errorf("ParseSignatureLines(%s) = %+v, want an error", name, sigs)
		}
	}
}

// manyLines returns n signature lines by distinct keys.
func manyLines(n int) string {
	var b strings.Builder
	for i := range n {
		var raw [5]byte
		binary.BigEndian.PutUint32(raw[:], uint32(i+1))
		b.WriteString("— k " + base64.StdEncoding.EncodeToString(raw[:]) + "\n")
	}
	return b.String()
}

func TestMergeSignatures(t *testing.T) {
	origin := "kbs/test"
	signer, logV, _ := testLogKey(t, origin)
	a1 := testCosigner(t, "witness.example/a", "a", fixedTime)
	a2 := testCosigner(t, "witness.example/a", "a", fixedTime.Add(time.Hour))
	b := testCosigner(t, "witness.example/b", "b", fixedTime)
	r := tlog.Root{Size: 7, Hash: tlog.Hash{7}}
	base := signCheckpoint(t, origin, r, signer)
	withA := signCheckpoint(t, origin, r, signer, a1)
	withB := signCheckpoint(t, origin, r, signer, b)
	_, sigsA, _ := tlog.SplitNote(withA)
	_, sigsB, _ := tlog.SplitNote(withB)

	merged, err := tlog.MergeSignatures(base, sigsA[1], sigsB[1])
	if err != nil {
		t.Fatal(err)
	}
	want := signCheckpoint(t, origin, r, signer, a1, b)
	if !bytes.Equal(merged, want) {
		t.Errorf("MergeSignatures =\n%s\nwant (as note.Sign writes it)\n%s", merged, want)
	}
	// A fresher cosignature by the same key replaces the old one.
	withA2 := signCheckpoint(t, origin, r, signer, a2)
	_, sigsA2, _ := tlog.SplitNote(withA2)
	again, err := tlog.MergeSignatures(merged, sigsA2[1])
	if err != nil {
		t.Fatal(err)
	}
	_, sigs, _ := tlog.SplitNote(again)
	if len(sigs) != 3 || sigs[0] != sigsA[0] || sigs[1] != sigsB[1] || sigs[2] != sigsA2[1] {
		t.Errorf("merging a fresher cosignature gave %+v", sigs)
	}
	av, _ := tlog.NewCosignatureVerifier(a1.VerifierKey())
	bv, _ := tlog.NewCosignatureVerifier(b.VerifierKey())
	if n, err := note.Open(again, note.VerifierList(logV, av, bv)); err != nil || len(n.Sigs) != 3 {
		t.Errorf("note.Open(merged) = %v, %v", n, err)
	}
	if ts, _ := tlog.CosignatureTime(sigs[2]); !ts.Equal(fixedTime.Add(time.Hour)) {
		t.Errorf("merged cosignature time = %v", ts)
	}
	if _, err := tlog.MergeSignatures(base, sigsA[1], sigsA2[1]); err == nil {
		t.Error("MergeSignatures accepted two new signatures by one key")
	}
	if _, err := tlog.MergeSignatures([]byte("no signatures\n"), sigsA[1]); err == nil {
		t.Error("MergeSignatures accepted a note without signatures")
	}
	bad := sigsA[1]
	bad.Name = "bad name"
	if _, err := tlog.MergeSignatures(base, bad); err == nil {
		t.Error("MergeSignatures accepted a signature with a bad key name")
	}
}

func TestSplitNoteRejects(t *testing.T) {
	origin := "kbs/test"
	signer, _, _ := testLogKey(t, origin)
	good := signCheckpoint(t, origin, tlog.Root{Size: 1, Hash: tlog.Hash{1}}, signer)
	if _, _, err := tlog.SplitNote(good); err != nil {
		t.Fatalf("SplitNote(good) = %v", err)
	}
	for name, msg := range map[string][]byte{
		"no blank line": bytes.Replace(good, []byte("\n\n"), []byte("\n"), 1),
		"control":       append([]byte("a\x01\n"), good...),
		"oversize":      append(bytes.Repeat([]byte("x"), 17<<10), good...),
		"bad utf-8":     append([]byte("\xff\n"), good...),
	} {
		if _, _, err := tlog.SplitNote(msg); err == nil {
			t.Errorf("SplitNote(%s) succeeded", name)
		}
	}
}

// FuzzParseSignatureLines: whatever parses formats back to the same bytes.
func FuzzParseSignatureLines(f *testing.F) {
	for _, s := range seedNotes(f) {
		if i := bytes.LastIndex(s, []byte("\n\n")); i >= 0 {
			f.Add(s[i+2:])
		}
	}
	f.Add([]byte("— a AAAAAAE=\n— b AAAAAAE=\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		sigs, err := tlog.ParseSignatureLines(b)
		if err != nil {
			return
		}
		if got := tlog.FormatSignatureLines(sigs); !bytes.Equal(got, b) {
			t.Fatalf("ParseSignatureLines(%q) formats back as %q", b, got)
		}
		for _, s := range sigs {
			tlog.CosignatureTime(s) // must not panic
		}
	})
}

// FuzzSplitNote: a note that splits rebuilds from its parts, and merging
// its own signatures back changes nothing.
func FuzzSplitNote(f *testing.F) {
	for _, s := range seedNotes(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		text, sigs, err := tlog.SplitNote(msg)
		if err != nil {
			return
		}
		rebuilt := append(append(bytes.Clone(text), '\n'), tlog.FormatSignatureLines(sigs)...)
		if !bytes.Equal(rebuilt, msg) {
			t.Fatalf("SplitNote(%q) rebuilds as %q", msg, rebuilt)
		}
		merged, err := tlog.MergeSignatures(msg, sigs...)
		if err != nil || !bytes.Equal(merged, msg) {
			t.Fatalf("MergeSignatures(msg, its own signatures) = %q, %v", merged, err)
		}
	})
}

// seedNotes returns the cosigned checkpoints in testdata/witness.
func seedNotes(f *testing.F) [][]byte {
	files, _ := filepath.Glob("testdata/witness/*.note")
	if len(files) == 0 {
		f.Fatal("no seed notes in testdata/witness")
	}
	var out [][]byte
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// TestOmniwitnessFixture checks a cosignature made by a real omniwitness
// (captured in testdata/witness, see gen.go) with our verifier, through
// x/mod's note.Open and through Quorum.Verify.
func TestOmniwitnessFixture(t *testing.T) {
	msg, err := os.ReadFile("testdata/witness/omniwitness.note")
	if err != nil {
		t.Fatal(err)
	}
	vkey, err := os.ReadFile("testdata/witness/omniwitness.vkey")
	if err != nil {
		t.Fatal(err)
	}
	_, origin, logV := fixtureQuorum(t)
	w, err := tlog.NewWitness("omniwitness", strings.TrimSpace(string(vkey)), "")
	if err != nil {
		t.Fatalf("omniwitness's verifier key: %v", err)
	}
	n, err := note.Open(msg, note.VerifierList(logV, w.Key))
	if err != nil || len(n.Sigs) != 2 {
		t.Fatalf("note.Open = %v, %v", n, err)
	}
	one, _ := tlog.NewQuorum(1, w)
	cp, err := one.Verify(msg, origin, logV)
	if err != nil {
		t.Fatalf("Quorum.Verify(omniwitness cosignature) = %v", err)
	}
	if ts := cp.Cosignatures[0].Time; ts.Unix() <= 0 {
		t.Errorf("cosignature time %v", ts)
	}
	// One bit of the timestamp changed: the signature no longer verifies.
	text, sigs, _ := tlog.SplitNote(msg)
	raw, _ := base64.StdEncoding.DecodeString(sigs[1].Base64)
	raw[11] ^= 1
	sigs[1].Base64 = base64.StdEncoding.EncodeToString(raw)
	bad := append(append(bytes.Clone(text), '\n'), tlog.FormatSignatureLines(sigs)...)
	if _, err := one.Verify(bad, origin, logV); err == nil {
		t.Error("Verify accepted a cosignature with another timestamp")
	}
}
