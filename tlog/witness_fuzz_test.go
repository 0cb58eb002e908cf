package tlog_test

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/kbs-dev/kbs/tlog"
)

// FuzzWitnessAnswer: a hostile witness answers an add-checkpoint request
// with any status, content type and body. WitnessClient.AddCheckpoint
// never panics; it succeeds only with a cosignature that verifies over
// the submitted checkpoint with the witness's key; every failure is a
// *WitnessError with one of the sentinels, and a 409 carries a size within
// the protocol's bounds. Seeded with a genuine cosignature, a 409, and the
// other statuses the protocol names.
func FuzzWitnessAnswer(f *testing.F) {
	origin := "kbs/witness-fuzz"
	signer, logV, _ := testLogKey(f, origin)
	l := openSignedLog(f, filepath.Join(f.TempDir(), "log.db"), origin, signer, logV)
	_, cp, err := l.Append(context.Background(), []byte("entry"))
	if err != nil {
		f.Fatal(err)
	}
	seed := sha256.Sum256([]byte("fuzz witness"))
	cs, err := tlog.NewCosigner("witness.example/fuzz", ed25519.NewKeyFromSeed(seed[:]), func() time.Time { return fixedTime })
	if err != nil {
		f.Fatal(err)
	}

	var mu sync.Mutex
	var answer struct {
		status      int
		contentType string
		body        []byte
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if answer.contentType != "" {
			w.Header().Set("Content-Type", answer.contentType)
		}
		w.WriteHeader(answer.status)
		w.Write(answer.body)
	}))
	f.Cleanup(srv.Close)
	w, err := tlog.NewWitness("fuzz", cs.VerifierKey(), srv.URL)
	if err != nil {
		f.Fatal(err)
	}
	c, err := tlog.NewWitnessClient(w, nil, 5*time.Second)
	if err != nil {
		f.Fatal(err)
	}

	// A genuine answer: the witness's signature line over the checkpoint.
	cosigned, err := note.Sign(&note.Note{Text: string(splitText(f, cp.Note))}, cs)
	if err != nil {
		f.Fatal(err)
	}
	sigs := cosigned[len(splitText(f, cosigned))+1:] // after the text and the blank line
	f.Add(200, "text/plain; charset=utf-8", sigs)
	f.Add(409, "text/x.tlog.size", []byte("7\n"))
	f.Add(409, "text/x.tlog.size", []byte("007\n"))
	f.Add(409, "text/plain", []byte("7\n"))
	f.Add(404, "text/plain", []byte("unknown log"))
	f.Add(403, "", []byte(nil))
	f.Add(422, "text/plain", []byte("inconsistent"))
	f.Add(429, "", []byte("slow down"))
	f.Add(503, "", []byte("\xff\xfe"))
	f.Add(302, "", []byte(nil))
	f.Add(200, "text/plain", []byte("— witness.example/fuzz AAAA\n"))

	set := func(status int, contentType string, body []byte) {
		mu.Lock()
		defer mu.Unlock()
		answer.status, answer.contentType, answer.body = status, contentType, body
	}
	set(200, "", sigs)
	if _, err := c.AddCheckpoint(context.Background(), 0, nil, cp); err != nil {
		f.Fatalf("the genuine answer is refused: %v", err)
	}
	changed := append([]byte{}, sigs...)
	changed[len(changed)-5] ^= 1
	set(200, "", changed)
	if _, err := c.AddCheckpoint(context.Background(), 0, nil, cp); err == nil {
		f.Fatal("a changed cosignature is accepted")
	}

	text := splitText(f, cp.Note)
	f.Fuzz(func(t *testing.T, status int, contentType string, body []byte) {
		if status < 200 || status > 599 {
			return // net/http refuses to write other codes
		}
		set(status, contentType, body)
		sig, err := c.AddCheckpoint(context.Background(), 0, nil, cp)
		if err == nil {
			v, verr := tlog.NewCosignatureVerifier(cs.VerifierKey())
			if verr != nil {
				t.Fatal(verr)
			}
			n, oerr := note.Open(append(append(append([]byte{}, text...), '\n'), []byte("— "+sig.Name+" "+sig.Base64+"\n")...), note.VerifierList(v))
			if oerr != nil || len(n.Sigs) != 1 {
				t.Fatalf("status %d: accepted a cosignature that does not verify: %+v (%v)", status, sig, oerr)
			}
			return
		}
		var we *tlog.WitnessError
		if !errors.As(err, &we) {
			t.Fatalf("status %d: %v is not a *WitnessError", status, err)
		}
		switch {
		case errors.Is(we.Err, tlog.ErrWitnessConflict), errors.Is(we.Err, tlog.ErrWitnessAhead):
			if status != 409 || we.WitnessSize > 1<<62 {
				t.Fatalf("status %d: %+v", status, we)
			}
		case errors.Is(we.Err, tlog.ErrWitnessProtocol), errors.Is(we.Err, tlog.ErrWitnessUnavailable),
			errors.Is(we.Err, tlog.ErrWitnessUnknownLog), errors.Is(we.Err, tlog.ErrWitnessForbidden),
			errors.Is(we.Err, tlog.ErrWitnessInconsistent):
		default:
			t.Fatalf("status %d: unknown kind %v", status, we.Err)
		}
	})
}

// splitText returns the text of a signed note (ending in a newline).
func splitText(t testing.TB, msg []byte) []byte {
	t.Helper()
	text, _, err := tlog.SplitNote(msg)
	if err != nil {
		t.Fatal(err)
	}
	return text
}
