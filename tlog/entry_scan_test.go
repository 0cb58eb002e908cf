package tlog

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// randomEntries returns n valid entries of every type with varied strings
// (ASCII, multi-byte UTF-8, characters encoding/json escapes), numbers,
// times and optional fields.
func randomEntries(n int, seed uint64) []*Entry {
	r := rand.New(rand.NewPCG(seed, seed))
	alphabet := []string{"a", "Z", "0", "/", "-", "_", " ", ".", "é", "鍵", "😀", "\"", "\\", "<", ">", "&", "\n", "\t", "\u2028", "\x01", "\x7f"}
	str := func() string {
		var b strings.Builder
		for range 1 + r.IntN(12) {
			// Mostly plain characters, sometimes one that needs an escape.
			if r.IntN(8) == 0 {
				b.WriteString(alphabet[r.IntN(len(alphabet))])
			} else {
				b.WriteString(alphabet[r.IntN(10)])
			}
		}
		return b.String()
	}
	opt := func() string {
		if r.IntN(2) == 0 {
			return ""
		}
		return str()
	}
	digest := func() string {
		var b [32]byte
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return "sha256:" + strings.ToLower(strings.TrimSpace(string(hexAppend(nil, b[:]))))
	}
	blob := func() []byte {
		b := make([]byte, 1+r.IntN(40))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	ver := func() uint64 {
		switch r.IntN(4) {
		case 0:
			return 1
		case 1:
			return 1<<64 - 1 - r.Uint64N(3)
		}
		return 1 + r.Uint64N(1e6)
	}
	tm := func() time.Time {
		t := time.Date(2000+r.IntN(8000), time.Month(1+r.IntN(12)), 1+r.IntN(28), r.IntN(24), r.IntN(60), r.IntN(60), 0, time.UTC)
		switch r.IntN(3) {
		case 1:
			t = t.Add(time.Duration(r.IntN(1e9)))
		case 2:
			t = t.Add(time.Duration(r.IntN(1000)) * time.Millisecond)
		}
		return t
	}
	platform := func() string { return []string{"snp", "tdx"}[r.IntN(2)] }
	var out []*Entry
	for len(out) < n {
		e := &Entry{Time: tm()}
		switch r.IntN(5) {
		case 0:
			m := &ManifestEntry{Version: ver(), Hash: digest(), Body: blob()}
			if m.Version > 1 {
				m.Previous = digest()
			}
			n := 1 + r.IntN(3)
			if m.Version == 1 {
				n = r.IntN(3) // version 1 may name no signers
			}
			for range n {
				m.Signers = append(m.Signers, digest())
			}
			e.Type, e.Manifest = TypeManifest, m
		case 1:
			e.Type, e.Identity = TypeIdentity, &IdentityEntry{NoteKey: str(), HPKEPublicKey: blob(),
				TLSSPKISHA256: strings.TrimPrefix(digest(), "sha256:"), Platform: platform(), Simulated: r.IntN(2) == 0, EvidenceDigest: digest()}
		case 2:
			e.Type, e.KeyUpload = TypeKeyUpload, &KeyEntry{ID: str(), Version: ver(), Client: str()}
			if r.IntN(2) == 0 {
				e.KeyUpload.SealedDigest = digest()
			}
		case 3:
			e.Type, e.KeyDelete = TypeKeyDelete, &KeyEntry{ID: str(), Version: ver(), Client: str()}
		case 4:
			re := &ReleaseEntry{WorkerClass: str(), Platform: platform(), Simulated: r.IntN(2) == 0, Measurement: str(),
				ChipID: opt(), TCB: opt(), EvidenceDigest: digest(), WorkerKeyDigest: digest(), ManifestHash: digest()}
			for range 1 + r.IntN(3) {
				re.Keys = append(re.Keys, KeyRef{ID: str(), Version: ver()})
			}
			e.Type, e.Release = TypeRelease, re
		}
		out = append(out, e)
	}
	return out
}

// sampleEntry returns the first of testEntries that match.
func sampleEntry(t *testing.T, match func(*Entry) bool) *Entry {
	t.Helper()
	for _, e := range testEntries() {
		if match(e) {
			return e
		}
	}
	t.Fatal("no such test entry")
	return nil
}

func hexAppend(dst, b []byte) []byte {
	const digits = "0123456789abcdef"
	for _, c := range b {
		dst = append(dst, digits[c>>4], digits[c&15])
	}
	return dst
}

// needsEscape reports whether encoding/json escapes something in b's
// strings, which the fast path leaves to the reflective decoder.
func needsEscape(b []byte) bool {
	return bytes.ContainsAny(b, `\`)
}

// TestDecodeCanonicalAgrees encodes many random valid entries and checks
// that the fast path accepts every one without escapes, with the same
// result as the reflective decoder, and declines the others.
func TestDecodeCanonicalAgrees(t *testing.T) {
	accepted := 0
	for i, e := range append(testEntries(), randomEntries(3000, 1)...) {
		b, err := EncodeEntry(e)
		if err != nil {
			t.Fatalf("entry %d: EncodeEntry: %v", i, err)
		}
		want, err := decodeEntryReflect(b)
		if err != nil {
			t.Fatalf("decodeEntryReflect(%s): %v", b, err)
		}
		got, ok := decodeCanonical(b)
		// Lifecycle entries are rare: the reflective decoder takes them.
		fast := !needsEscape(b) && e.Handover == nil && e.RecoveryShares == nil && e.Recovery == nil
		if ok != fast {
			t.Fatalf("decodeCanonical(%s) ok = %v, want %v", b, ok, fast)
		}
		if !ok {
			continue
		}
		accepted++
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("decodeCanonical(%s) = %+v, want %+v", b, got, want)
		}
	}
	if accepted < 1000 {
		t.Errorf("fast path accepted only %d entries", accepted)
	}
}

// TestDecodeCanonicalDeclines lists inputs near a canonical entry that the
// fast path must leave to the reflective decoder (which rejects or, for
// escapes, accepts them).
func TestDecodeCanonicalDeclines(t *testing.T) {
	rel, err := EncodeEntry(sampleEntry(t, func(e *Entry) bool { return e.Release != nil }))
	if err != nil {
		t.Fatal(err)
	}
	man, err := EncodeEntry(sampleEntry(t, func(e *Entry) bool { return e.Manifest != nil && e.Manifest.Version == 2 }))
	if err != nil {
		t.Fatal(err)
	}
	s, m := string(rel), string(man)
	for _, in := range []string{
		s + " ",
		" " + s,
		s + "\n",
		strings.Replace(s, `"type"`, `"Type"`, 1),
		strings.Replace(s, `"demo/a"`, `"demo\/a"`, 1),
		strings.Replace(s, `"demo/a"`, `"demo\u002fa"`, 1),
		strings.Replace(s, `"version":1`, `"version":01`, 1),
		strings.Replace(s, `"version":1`, `"version":1.0`, 1),
		strings.Replace(s, `"version":1`, `"version":18446744073709551616`, 1),
		strings.Replace(s, `"version":1`, `"version":0`, 1),
		strings.Replace(s, `"tcb":"bl=3,tee=0,snp=8,ucode=115"`, `"tcb":""`, 1),
		strings.Replace(s, `,"tcb":"bl=3,tee=0,snp=8,ucode=115"`, ``, 1) + "x",
		strings.Replace(s, `.123456789Z`, `.123456780Z`, 1),
		strings.Replace(s, `.123456789Z`, `.123456789+00:00`, 1),
		strings.Replace(s, `"simulated":false`, `"simulated":true `, 1),
		strings.Replace(s, `"platform":"tdx"`, `"platform":"sev"`, 1),
		strings.Replace(s, `"release":{`, `"release":{"keys":[],`, 1),
		strings.Replace(m, `"body":"e30K"`, `"body":"e30K\n"`, 1),
		strings.Replace(m, `"body":"e30K"`, `"body":"e31="`, 1),
		strings.Replace(m, `"body":"e30K"`, `"body":"e30"`, 1),
		strings.Replace(m, `"body":"e30K"`, `"body":""`, 1),
		strings.Replace(m, `"body":"e30K"`, `"body":null`, 1),
		strings.Replace(m, `"signers":[`, `"signers":[],"x":[`, 1),
		strings.Replace(m, `"signers":[`, `"signers":null,"x":[`, 1),
		m[:strings.Index(m, `"signers":[`)] + `"signers":[]}}`, // version 2 needs signers
		strings.Replace(m, `"signers":[`, `"signers":[ `, 1),
		strings.Replace(m, `"previous":"sha256:`, `"previous":"sha256:x`, 1),
		string([]byte{'{', 0xff}),
		s[:len(s)-1],
	} {
		if e, ok := decodeCanonical([]byte(in)); ok {
			t.Errorf("decodeCanonical(%q) = %+v, want decline", in, e)
		}
	}
}

// FuzzDecodeEntryFastPath checks the fast path against the reflective
// decoder on every input: whatever it accepts, the reflective decoder
// accepts with a deeply equal entry; and DecodeEntry (fast path, then
// fallback) decides exactly as the reflective decoder, with the same
// error or the same entry.
func FuzzDecodeEntryFastPath(f *testing.F) {
	for _, e := range append(testEntries(), randomEntries(30, 2)...) {
		b, _ := EncodeEntry(e)
		f.Add(b)
	}
	files, _ := filepath.Glob("testdata/entry-*.json")
	for _, fn := range files {
		b, _ := os.ReadFile(fn)
		f.Add(bytes.TrimSuffix(b, []byte("\n")))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > MaxEntrySize {
			return
		}
		want, wantErr := decodeEntryReflect(b)
		if fast, ok := decodeCanonical(b); ok {
			if wantErr != nil {
				t.Fatalf("fast path accepted %q, reflective decoder: %v", b, wantErr)
			}
			if !reflect.DeepEqual(fast, want) {
				t.Fatalf("fast path decoded %q as %+v, reflective decoder as %+v", b, fast, want)
			}
		}
		got, err := DecodeEntry(b)
		if (err == nil) != (wantErr == nil) || (err != nil && err.Error() != wantErr.Error()) {
			t.Fatalf("DecodeEntry(%q) error = %v, reflective decoder: %v", b, err, wantErr)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("DecodeEntry(%q) = %+v, reflective decoder: %+v", b, got, want)
		}
	})
}

// TestDecodeCanonicalTimes: for entries that differ only in their time
// string, the fast path accepts exactly what the reflective decoder
// accepts, with the same time.
func TestDecodeCanonicalTimes(t *testing.T) {
	good, err := EncodeEntry(sampleEntry(t, func(e *Entry) bool { return e.KeyUpload != nil }))
	if err != nil {
		t.Fatal(err)
	}
	for _, ts := range []string{
		"2026-11-27T03:00:00Z", "2026-11-27T03:00:00.1Z", "2026-11-27T03:00:00.10Z", "2026-11-27T03:00:00.123456789Z",
		"2026-11-27T03:00:00.1234567891Z", "2026-11-27T03:00:00.Z", "2026-11-27T03:00:00,1Z",
		"2000-02-29T00:00:00Z", "2100-02-29T00:00:00Z", "2400-02-29T23:59:59Z", "2025-02-29T00:00:00Z",
		"2026-04-31T00:00:00Z", "2026-12-31T23:59:59.999999999Z", "2026-13-01T00:00:00Z", "2026-00-01T00:00:00Z",
		"2026-01-00T00:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01T23:60:00Z", "2026-01-01T23:59:60Z",
		"2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00z", "2026-01-01t00:00:00Z", "2026-01-01 00:00:00Z",
		"1999-12-31T23:59:59Z", "9999-12-31T23:59:59Z", "0000-01-01T00:00:00Z", "+2026-01-01T00:00:00Z",
		"2026-1-01T00:00:00Z", "2026-01-01T00:00:0Z", "2026-01-01T00:00:00", "", "Z",
	} {
		b := bytes.Replace(good, []byte(`"2026-11-27T03:00:00.123456789Z"`), []byte(`"`+ts+`"`), 1)
		want, wantErr := decodeEntryReflect(b)
		got, ok := decodeCanonical(b)
		if ok != (wantErr == nil) {
			t.Errorf("time %q: fast path ok = %v, reflective decoder error = %v", ts, ok, wantErr)
			continue
		}
		if ok && !reflect.DeepEqual(got, want) {
			t.Errorf("time %q: fast path %v, reflective decoder %v", ts, got.Time, want.Time)
		}
	}
}

// BenchmarkDecodeEntryReflectRelease is BenchmarkDecodeEntryRelease through
// the reflective decoder alone (what DecodeEntry costs without its fast
// path).
func BenchmarkDecodeEntryReflectRelease(b *testing.B) {
	e, err := os.ReadFile("testdata/entry-release.json")
	if err != nil {
		b.Fatal(err)
	}
	e = bytes.TrimSuffix(e, []byte("\n"))
	b.SetBytes(int64(len(e)))
	for b.Loop() {
		if _, err := decodeEntryReflect(e); err != nil {
			b.Fatal(err)
		}
	}
}
