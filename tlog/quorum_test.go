package tlog_test

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/kbs-dev/kbs/tlog"
)

func mustWitness(t testing.TB, name string, c *tlog.Cosigner, url string) tlog.Witness {
	t.Helper()
	w, err := tlog.NewWitness(name, c.VerifierKey(), url)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func TestNewQuorum(t *testing.T) {
	a := testCosigner(t, "witness.example/a", "a", fixedTime)
	b := testCosigner(t, "witness.example/b", "b", fixedTime)
	sameKey := testCosigner(t, "witness.example/other-name", "a", fixedTime)
	wa, wb := mustWitness(t, "a", a, ""), mustWitness(t, "b", b, "")
	if q, err := tlog.NewQuorum(0); err != nil || q.Threshold() != 0 || len(q.Witnesses()) != 0 {
		t.Errorf("NewQuorum(0) = %v, %v; want the empty policy", q, err)
	}
	if q, err := tlog.NewQuorum(2, wa, wb); err != nil || q.Threshold() != 2 {
		t.Errorf("NewQuorum(2, a, b) = %v, %v", q, err)
	}
	tests := []struct {
		name      string
		threshold int
		ws        []tlog.Witness
		want      string
	}{
		{"zero of two", 0, []tlog.Witness{wa, wb}, "not in 1..2"},
		{"three of two", 3, []tlog.Witness{wa, wb}, "not in 1..2"},
		{"one of none", 1, nil, "not in 1..0"},
		{"same name", 1, []tlog.Witness{wa, mustWitness(t, "a", b, "")}, `two witnesses named "a"`},
		{"same key", 1, []tlog.Witness{wa, mustWitness(t, "c", sameKey, "")}, "same public key"},
		{"no key", 1, []tlog.Witness{{Name: "x"}}, "no key"},
	}
	for _, tt := range tests {
		if _, err := tlog.NewQuorum(tt.threshold, tt.ws...); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: NewQuorum = %v, want error containing %q", tt.name, err, tt.want)
		}
	}
	for _, u := range []string{"ftp://w.example", "https://", "https://user@w.example", "https://w.example/?q", "https://w.example/#f", "w.example", "https:w.example"} {
		if _, err := tlog.NewWitness("a", a.VerifierKey(), u); err == nil {
			t.Errorf("NewWitness(url %q) succeeded", u)
		}
	}
	if w, err := tlog.NewWitness("a", a.VerifierKey(), "https://w.example/prefix/"); err != nil || w.URL != "https://w.example/prefix" {
		t.Errorf("NewWitness(url with slash) = %+v, %v", w, err)
	}
	if _, err := tlog.NewWitness("bad\nname", a.VerifierKey(), ""); err == nil {
		t.Error("NewWitness accepted a name with a newline")
	}
}

func TestQuorumVerify(t *testing.T) {
	origin := "kbs/test"
	signer, logV, _ := testLogKey(t, origin)
	a := testCosigner(t, "witness.example/a", "a", fixedTime)
	b := testCosigner(t, "witness.example/b", "b", fixedTime)
	c := testCosigner(t, "witness.example/c", "c", fixedTime)
	stranger := testCosigner(t, "witness.example/stranger", "s", fixedTime)
	q, err := tlog.NewQuorum(2, mustWitness(t, "a", a, ""), mustWitness(t, "b", b, ""), mustWitness(t, "c", c, ""))
	if err != nil {
		t.Fatal(err)
	}
	r := tlog.Root{Size: 3, Hash: tlog.Hash{3}}

	msg := signCheckpoint(t, origin, r, signer, c, stranger, a)
	cp, err := q.Verify(msg, origin, logV)
	if err != nil {
		t.Fatalf("Verify(a, c and a stranger) = %v", err)
	}
	if cp.Root != r || len(cp.Cosignatures) != 2 || cp.Cosignatures[0].Witness != "a" || cp.Cosignatures[1].Witness != "c" || !cp.Cosignatures[0].Time.Equal(fixedTime) {
		t.Errorf("Verify = %+v", cp)
	}

	// Too few: the error names the missing witnesses.
	msg = signCheckpoint(t, origin, r, signer, b, stranger)
	_, err = q.Verify(msg, origin, logV)
	var qe *tlog.QuorumError
	if !errors.As(err, &qe) || qe.Threshold != 2 || len(qe.Cosigned) != 1 || qe.Cosigned[0] != "b" || strings.Join(qe.Missing, ",") != "a,c" {
		t.Fatalf("Verify(b only) = %v, want a QuorumError missing a and c", err)
	}
	if s := err.Error(); !strings.Contains(s, `missing: "a", "c"`) || !strings.Contains(s, "1 of the 2") {
		t.Errorf("QuorumError text = %q", s)
	}
	// None at all.
	if _, err := q.Verify(signCheckpoint(t, origin, r, signer), origin, logV); !errors.As(err, &qe) || len(qe.Missing) != 3 {
		t.Errorf("Verify(no cosignatures) = %v", err)
	}

	// A cosignature that claims a quorum key but does not verify rejects the note.
	good := signCheckpoint(t, origin, r, signer, a, b)
	text, sigs, _ := tlog.SplitNote(good)
	forged := sigs[2]
	forged.Base64 = signatureOf(t, b, "kbs/test\n4\nAwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
	bad := append(append(bytes.Clone(text), '\n'), tlog.FormatSignatureLines([]note.Signature{sigs[0], sigs[1], forged})...)
	if _, err := q.Verify(bad, origin, logV); err == nil || !strings.Contains(err.Error(), `invalid cosignature for witness "b"`) {
		t.Errorf("Verify(forged cosignature) = %v", err)
	}

	// Without the log's signature nothing counts.
	if _, err := q.Verify(signCheckpoint(t, origin, r, a, b, c), origin, logV); err == nil {
		t.Error("Verify accepted a checkpoint the log did not sign")
	}
	// Another origin.
	if _, err := q.Verify(good, "kbs/other", logV); err == nil {
		t.Error("Verify accepted another origin")
	}
	// The empty policy needs only the log.
	none, _ := tlog.NewQuorum(0)
	if cp, err := none.Verify(signCheckpoint(t, origin, r, signer), origin, logV); err != nil || len(cp.Cosignatures) != 0 {
		t.Errorf("empty quorum Verify = %v, %v", cp, err)
	}
}

// signatureOf returns the base64 signature field of c's cosignature of text.
func signatureOf(t testing.TB, c *tlog.Cosigner, text string) string {
	t.Helper()
	msg, err := note.Sign(&note.Note{Text: text}, c)
	if err != nil {
		t.Fatal(err)
	}
	_, sigs, err := tlog.SplitNote(msg)
	if err != nil {
		t.Fatal(err)
	}
	return sigs[0].Base64
}

// TestQuorumVerifyFixtures checks the generated fixtures: 0..3
// cosignatures against a 2-of-3 quorum.
func TestQuorumVerifyFixtures(t *testing.T) {
	q, origin, logV := fixtureQuorum(t)
	for i, want := range []bool{false, false, true, true} {
		msg, err := os.ReadFile("testdata/witness/cosigned-" + string(rune('0'+i)) + ".note")
		if err != nil {
			t.Fatal(err)
		}
		_, err = q.Verify(msg, origin, logV)
		if (err == nil) != want {
			t.Errorf("cosigned-%d.note: Verify = %v, want success %v", i, err, want)
		}
	}
}

// fixtureQuorum returns the 2-of-3 quorum of testdata/witness/keys.txt.
func fixtureQuorum(t testing.TB) (*tlog.Quorum, string, note.Verifier) {
	t.Helper()
	b, err := os.ReadFile("testdata/witness/keys.txt")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(string(b))
	logV, err := note.NewVerifier(lines[0])
	if err != nil {
		t.Fatal(err)
	}
	var ws []tlog.Witness
	for i, k := range lines[1:] {
		w, err := tlog.NewWitness(string(rune('a'+i)), k, "")
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	q, err := tlog.NewQuorum(2, ws...)
	if err != nil {
		t.Fatal(err)
	}
	return q, logV.Name(), logV
}

// FuzzVerifyQuorum: Verify never panics, and what it accepts carries at
// least the threshold of verified cosignatures.
func FuzzVerifyQuorum(f *testing.F) {
	for _, s := range seedNotes(f) {
		f.Add(s)
	}
	q, origin, logV := fixtureQuorum(f)
	f.Fuzz(func(t *testing.T, msg []byte) {
		cp, err := q.Verify(msg, origin, logV)
		if err != nil {
			return
		}
		if len(cp.Cosignatures) < q.Threshold() {
			t.Fatalf("Verify accepted %d cosignatures", len(cp.Cosignatures))
		}
		ws := q.Witnesses()
		vs := []note.Verifier{logV}
		for _, w := range ws {
			vs = append(vs, w.Key)
		}
		if n, err := note.Open(msg, note.VerifierList(vs...)); err != nil || len(n.Sigs) < 1+q.Threshold() {
			t.Fatalf("note.Open disagrees: %v", err)
		}
	})
}

func TestQuorumCheckFresh(t *testing.T) {
	origin := "kbs/test"
	signer, logV, _ := testLogKey(t, origin)
	a := testCosigner(t, "witness.example/a", "a", fixedTime)
	b := testCosigner(t, "witness.example/b", "b", fixedTime.Add(-2*time.Hour))
	c := testCosigner(t, "witness.example/c", "c", fixedTime.Add(3*time.Minute))
	q, _ := tlog.NewQuorum(2, mustWitness(t, "a", a, ""), mustWitness(t, "b", b, ""), mustWitness(t, "c", c, ""))
	msg := signCheckpoint(t, origin, tlog.Root{Size: 9, Hash: tlog.Hash{9}}, signer, a, b)
	cp, err := q.Verify(msg, origin, logV)
	if err != nil {
		t.Fatal(err)
	}
	// Two cosignatures, b's two hours old: not fresh at 10 minutes.
	err = q.CheckFresh(cp, fixedTime.Add(time.Minute), 10*time.Minute)
	var qe *tlog.QuorumError
	if !errors.As(err, &qe) || strings.Join(qe.Missing, ",") != "b,c" || qe.Reasons["b"] == nil || qe.Reasons["c"] != nil {
		t.Fatalf("CheckFresh = %v", err)
	}
	if !strings.Contains(err.Error(), `"b" (its cosignature is from`) {
		t.Errorf("error text %q", err)
	}
	if err := q.CheckFresh(cp, fixedTime, 3*time.Hour); err != nil {
		t.Errorf("CheckFresh(3h) = %v", err)
	}
	// c's clock runs 3 minutes ahead: fine within 10 minutes.
	msg = signCheckpoint(t, origin, tlog.Root{Size: 9, Hash: tlog.Hash{9}}, signer, a, c)
	cp, _ = q.Verify(msg, origin, logV)
	if err := q.CheckFresh(cp, fixedTime, 10*time.Minute); err != nil {
		t.Errorf("CheckFresh(c ahead by 3m) = %v", err)
	}
	if err := q.CheckFresh(cp, fixedTime, time.Minute); err == nil {
		t.Error("CheckFresh accepted a cosignature 3 minutes in the future at 1 minute")
	}
}
