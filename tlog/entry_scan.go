package tlog

import (
	"encoding/base64"
	"strings"
	"time"
	"unicode/utf8"
)

// decodeCanonical is DecodeEntry's fast path. It accepts only the exact
// bytes EncodeEntry produces for a valid entry, in the fixed field order of
// the Go types, with every string in the form encoding/json writes without
// escapes. It never rejects: on anything else (an escape, a field that
// canonical encodings omit, a validation failure, an unexpected byte) it
// reports ok == false and DecodeEntry falls back to the reflective decoder,
// which decides and names the problem (and takes every lifecycle entry:
// handover, recovery-shares, recovery, a few per log). So the fast path can only make an
// accepted entry cheaper, never change a decision or a result;
// FuzzDecodeEntryFastPath checks that against the reflective decoder.
func decodeCanonical(b []byte) (e *Entry, ok bool) {
	// The entry's strings all share one copy of its bytes: one allocation
	// instead of one per field, and no more memory than separate copies
	// (the strings are most of an entry).
	s := scanner{b: b, s: string(b)}
	e = new(Entry)
	if !s.lit(`{"type":`) {
		return nil, false
	}
	e.Type, ok = s.str()
	if !ok || !s.lit(`,"time":`) {
		return nil, false
	}
	if e.Time, ok = s.time(); !ok || !s.lit(`,"`) {
		return nil, false
	}
	switch {
	case s.lit(`manifest":`):
		e.Manifest, ok = s.manifest()
	case s.lit(`identity":`):
		e.Identity, ok = s.identity()
	case s.lit(`key_upload":`):
		e.KeyUpload, ok = s.key()
	case s.lit(`key_delete":`):
		e.KeyDelete, ok = s.key()
	case s.lit(`release":`):
		e.Release, ok = s.release()
	default:
		return nil, false
	}
	if !ok || !s.lit("}") || s.i != len(b) {
		return nil, false
	}
	if e.validate() != nil {
		return nil, false
	}
	return e, true
}

// scanner reads canonical JSON from b at i. Every method either consumes
// what it expects and reports true, or reports false (with i undefined).
type scanner struct {
	b []byte
	s string // b's bytes, as a string
	i int
}

// lit consumes the literal l.
func (s *scanner) lit(l string) bool {
	if len(s.b)-s.i < len(l) || string(s.b[s.i:s.i+len(l)]) != l {
		return false
	}
	s.i += len(l)
	return true
}

// strBytes consumes a JSON string that encoding/json would write exactly so:
// no escapes, no control characters, none of the HTML characters it escapes
// (< > &), valid UTF-8 without U+2028 and U+2029. It returns the contents.
func (s *scanner) strBytes() ([]byte, bool) {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return nil, false
	}
	start := s.i + 1
	for j := start; j < len(s.b); {
		c := s.b[j]
		switch {
		case plainASCII[c]:
			j++
		case c == '"':
			s.i = j + 1
			return s.b[start:j], true
		case c < utf8.RuneSelf:
			return nil, false
		default:
			r, n := utf8.DecodeRune(s.b[j:])
			if r == utf8.RuneError || r == '\u2028' || r == '\u2029' {
				return nil, false
			}
			j += n
		}
	}
	return nil, false
}

// plainASCII marks the ASCII bytes encoding/json writes unescaped inside a
// string: printable, except the quote, the backslash and < > &.
var plainASCII = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = !strings.ContainsRune(`"\<>&`, rune(c))
	}
	return t
}()

func (s *scanner) str() (string, bool) {
	start := s.i + 1
	if _, ok := s.strBytes(); !ok {
		return "", false
	}
	return s.s[start : s.i-1], true
}

// optStr consumes `,"<name>":<non-empty string>` if it is there: the
// canonical form of an omitempty string field.
func (s *scanner) optStr(name string) (string, bool) {
	save := s.i
	if !s.lit(`,"`) || !s.lit(name) || !s.lit(`":`) {
		s.i = save
		return "", true
	}
	v, ok := s.str()
	return v, ok && v != ""
}

// uint consumes a canonical unsigned integer that fits in a uint64.
func (s *scanner) uint() (uint64, bool) {
	j := s.i
	for j < len(s.b) && s.b[j] >= '0' && s.b[j] <= '9' {
		j++
	}
	d := s.b[s.i:j]
	if len(d) == 0 || len(d) > 20 || (len(d) > 1 && d[0] == '0') {
		return 0, false
	}
	var v uint64
	for _, c := range d {
		n := v*10 + uint64(c-'0')
		if v > (1<<64-1)/10 || n < v*10 {
			return 0, false
		}
		v = n
	}
	s.i = j
	return v, true
}

func (s *scanner) bool() (bool, bool) {
	switch {
	case s.lit("true"):
		return true, true
	case s.lit("false"):
		return false, true
	}
	return false, false
}

// time consumes a time in the form time.Time.MarshalJSON writes for a UTC
// time: "YYYY-MM-DDTHH:MM:SS", a fraction of 1 to 9 digits not ending in 0
// if the time has one, and "Z".
func (s *scanner) time() (time.Time, bool) {
	v, ok := s.strBytes()
	if !ok || len(v) < len("2006-01-02T15:04:05Z") || v[len(v)-1] != 'Z' {
		return time.Time{}, false
	}
	num := func(b []byte) (int, bool) {
		n := 0
		for _, c := range b {
			if c < '0' || c > '9' {
				return 0, false
			}
			n = n*10 + int(c-'0')
		}
		return n, true
	}
	year, ok1 := num(v[0:4])
	month, ok2 := num(v[5:7])
	day, ok3 := num(v[8:10])
	hour, ok4 := num(v[11:13])
	minute, ok5 := num(v[14:16])
	sec, ok6 := num(v[17:19])
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || !ok6 ||
		v[4] != '-' || v[7] != '-' || v[10] != 'T' || v[13] != ':' || v[16] != ':' ||
		month < 1 || month > 12 || day < 1 || day > daysIn(month, year) ||
		hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, false
	}
	nsec := 0
	if frac := v[19 : len(v)-1]; len(frac) > 0 {
		// ".d" to ".ddddddddd", no trailing zero.
		if len(frac) < 2 || len(frac) > 10 || frac[0] != '.' || frac[len(frac)-1] == '0' {
			return time.Time{}, false
		}
		n, ok := num(frac[1:])
		if !ok {
			return time.Time{}, false
		}
		for range 10 - len(frac) {
			n *= 10
		}
		nsec = n
	}
	return time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC), true
}

// daysIn returns the number of days in month of year.
func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// bytes consumes a non-empty standard, padded base64 string.
func (s *scanner) bytes() ([]byte, bool) {
	v, ok := s.strBytes()
	if !ok || len(v) == 0 || len(v)%4 != 0 {
		return nil, false
	}
	// Strict decoding still skips CR and LF, which strBytes refused;
	// with them gone, it accepts exactly the strings EncodeToString writes.
	out := make([]byte, base64.StdEncoding.DecodedLen(len(v)))
	n, err := base64.StdEncoding.Strict().Decode(out, v)
	if err != nil {
		return nil, false
	}
	return out[:n], true
}

// strs consumes an array of strings; [] is an empty, non-nil slice, as
// encoding/json decodes it. (null is left to the reflective decoder.)
func (s *scanner) strs() ([]string, bool) {
	if !s.lit("[") {
		return nil, false
	}
	if s.lit("]") {
		return []string{}, true
	}
	var out []string
	for {
		v, ok := s.str()
		if !ok {
			return nil, false
		}
		out = append(out, v)
		if s.lit("]") {
			return out, true
		}
		if !s.lit(",") {
			return nil, false
		}
	}
}

func (s *scanner) manifest() (*ManifestEntry, bool) {
	m := new(ManifestEntry)
	var ok bool
	if !s.lit(`{"version":`) {
		return nil, false
	}
	if m.Version, ok = s.uint(); !ok || !s.lit(`,"hash":`) {
		return nil, false
	}
	if m.Hash, ok = s.str(); !ok {
		return nil, false
	}
	if m.Previous, ok = s.optStr("previous"); !ok || !s.lit(`,"body":`) {
		return nil, false
	}
	if m.Body, ok = s.bytes(); !ok || !s.lit(`,"signers":`) {
		return nil, false
	}
	if m.Signers, ok = s.strs(); !ok || !s.lit("}") {
		return nil, false
	}
	return m, true
}

func (s *scanner) identity() (*IdentityEntry, bool) {
	id := new(IdentityEntry)
	var ok bool
	if !s.lit(`{"note_key":`) {
		return nil, false
	}
	if id.NoteKey, ok = s.str(); !ok || !s.lit(`,"hpke_public_key":`) {
		return nil, false
	}
	if id.HPKEPublicKey, ok = s.bytes(); !ok || !s.lit(`,"tls_spki_sha256":`) {
		return nil, false
	}
	if id.TLSSPKISHA256, ok = s.str(); !ok || !s.lit(`,"platform":`) {
		return nil, false
	}
	if id.Platform, ok = s.str(); !ok || !s.lit(`,"simulated":`) {
		return nil, false
	}
	if id.Simulated, ok = s.bool(); !ok || !s.lit(`,"evidence_digest":`) {
		return nil, false
	}
	if id.EvidenceDigest, ok = s.str(); !ok || !s.lit("}") {
		return nil, false
	}
	return id, true
}

func (s *scanner) key() (*KeyEntry, bool) {
	k := new(KeyEntry)
	var ok bool
	if !s.lit(`{"id":`) {
		return nil, false
	}
	if k.ID, ok = s.str(); !ok || !s.lit(`,"version":`) {
		return nil, false
	}
	if k.Version, ok = s.uint(); !ok || !s.lit(`,"client":`) {
		return nil, false
	}
	if k.Client, ok = s.str(); !ok {
		return nil, false
	}
	if k.SealedDigest, ok = s.optStr("sealed_digest"); !ok || !s.lit("}") {
		return nil, false
	}
	return k, true
}

func (s *scanner) release() (*ReleaseEntry, bool) {
	r := new(ReleaseEntry)
	var ok bool
	if !s.lit(`{"keys":[`) {
		return nil, false
	}
	for {
		var k KeyRef
		if !s.lit(`{"id":`) {
			return nil, false
		}
		if k.ID, ok = s.str(); !ok || !s.lit(`,"version":`) {
			return nil, false
		}
		if k.Version, ok = s.uint(); !ok || !s.lit("}") {
			return nil, false
		}
		r.Keys = append(r.Keys, k)
		if s.lit("]") {
			break
		}
		if !s.lit(",") {
			return nil, false
		}
	}
	if !s.lit(`,"worker_class":`) {
		return nil, false
	}
	if r.WorkerClass, ok = s.str(); !ok || !s.lit(`,"platform":`) {
		return nil, false
	}
	if r.Platform, ok = s.str(); !ok || !s.lit(`,"simulated":`) {
		return nil, false
	}
	if r.Simulated, ok = s.bool(); !ok || !s.lit(`,"measurement":`) {
		return nil, false
	}
	if r.Measurement, ok = s.str(); !ok {
		return nil, false
	}
	if r.ChipID, ok = s.optStr("chip_id"); !ok {
		return nil, false
	}
	if r.TCB, ok = s.optStr("tcb"); !ok || !s.lit(`,"evidence_digest":`) {
		return nil, false
	}
	if r.EvidenceDigest, ok = s.str(); !ok || !s.lit(`,"worker_key_digest":`) {
		return nil, false
	}
	if r.WorkerKeyDigest, ok = s.str(); !ok || !s.lit(`,"manifest_hash":`) {
		return nil, false
	}
	if r.ManifestHash, ok = s.str(); !ok || !s.lit("}") {
		return nil, false
	}
	return r, true
}
