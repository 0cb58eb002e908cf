package tlog_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/boltlog"
	"github.com/kbs-dev/kbs/tlog/witnesstest"
)

// openSignedLog opens the boltlog at path, signing checkpoints for origin
// with signer; the log is closed when the test ends.
func openSignedLog(t testing.TB, path, origin string, signer note.Signer, v note.Verifier) *boltlog.Log {
	t.Helper()
	cs, err := tlog.NewCheckpointSigner(origin, signer, v)
	if err != nil {
		t.Fatal(err)
	}
	l, err := boltlog.Open(path, boltlog.Config{Signer: cs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// newFake starts a fake witness of e's log named name, with a key derived
// from name, cosigning at fixedTime.
func newFake(t *testing.T, e *witnessEnv, name string) *witnesstest.Fake {
	t.Helper()
	f := witnesstest.NewFake(t, "witness.example/"+name, name, func() time.Time { return fixedTime })
	f.AddLog(e.origin, e.logV)
	return f
}

// fakeWitnesses starts one fake witness of e's log per name.
func fakeWitnesses(t *testing.T, e *witnessEnv, names ...string) ([]tlog.Witness, []*witnesstest.Fake) {
	t.Helper()
	var ws []tlog.Witness
	var fakes []*witnesstest.Fake
	for _, name := range names {
		f := newFake(t, e, name)
		ws = append(ws, f.Witness(t, name))
		fakes = append(fakes, f)
	}
	return ws, fakes
}

// fakeGroup returns a 2-of-3 witness group of e's log over fake witnesses
// a, b and c.
func fakeGroup(t *testing.T, e *witnessEnv) (*tlog.WitnessGroup, *tlog.Quorum, []*witnesstest.Fake) {
	t.Helper()
	ws, fakes := fakeWitnesses(t, e, "a", "b", "c")
	q, err := tlog.NewQuorum(2, ws...)
	if err != nil {
		t.Fatal(err)
	}
	g, err := tlog.NewWitnessGroup(q, nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return g, q, fakes
}

type witnessEnv struct {
	log     *boltlog.Log
	logV    note.Verifier
	origin  string
	fake    *witnesstest.Fake
	witness tlog.Witness
	client  *tlog.WitnessClient
}

func newWitnessEnv(t *testing.T, name string) *witnessEnv {
	t.Helper()
	origin := "kbs/witness-test"
	signer, logV, _ := testLogKey(t, origin)
	l := openSignedLog(t, filepath.Join(t.TempDir(), "log.db"), origin, signer, logV)
	e := &witnessEnv{log: l, logV: logV, origin: origin}
	e.fake = newFake(t, e, name)
	e.witness = e.fake.Witness(t, name)
	c, err := tlog.NewWitnessClient(e.witness, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	e.client = c
	return e
}

func (e *witnessEnv) append(t *testing.T, n int) tlog.SignedCheckpoint {
	t.Helper()
	var cp tlog.SignedCheckpoint
	for i := range n {
		var err error
		if _, cp, err = e.log.Append(t.Context(), fmt.Appendf(nil, "entry %d %d", i, time.Now().UnixNano())); err != nil {
			t.Fatal(err)
		}
	}
	return cp
}

func TestWitnessClientCosign(t *testing.T) {
	e := newWitnessEnv(t, "a")
	ctx := t.Context()
	for round, n := range []int{3, 0, 1, 300} {
		cp := e.append(t, n)
		if n == 0 {
			var err error
			if cp, err = e.log.Checkpoint(ctx); err != nil {
				t.Fatal(err)
			}
		}
		sig, err := e.client.Cosign(ctx, cp, e.log.ConsistencyProof)
		if err != nil {
			t.Fatalf("round %d: Cosign(size %d) = %v", round, cp.Size, err)
		}
		msg, err := tlog.MergeSignatures(cp.Note, sig)
		if err != nil {
			t.Fatal(err)
		}
		q, _ := tlog.NewQuorum(1, e.witness)
		if _, err := q.Verify(msg, e.origin, e.logV); err != nil {
			t.Fatalf("round %d: cosigned checkpoint does not verify: %v", round, err)
		}
	}
	// One request per checkpoint once the client knows the witness's size.
	if e.fake.Requests() != 4 {
		t.Errorf("witness saw %d requests for 4 checkpoints, want 4", e.fake.Requests())
	}
}

// TestWitnessClientConflict: a client that starts without knowing the
// witness's size (a restarted log) gets 409 with the size, and retries
// with a proof from it.
func TestWitnessClientConflict(t *testing.T) {
	e := newWitnessEnv(t, "a")
	ctx := t.Context()
	cp := e.append(t, 10)
	if _, err := e.client.Cosign(ctx, cp, e.log.ConsistencyProof); err != nil {
		t.Fatal(err)
	}
	fresh, err := tlog.NewWitnessClient(e.witness, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	cp = e.append(t, 5)
	before := e.fake.Requests()
	if _, err := fresh.Cosign(ctx, cp, e.log.ConsistencyProof); err != nil {
		t.Fatalf("Cosign after a restart = %v", err)
	}
	if got := e.fake.Requests() - before; got != 2 {
		t.Errorf("Cosign after a restart took %d requests, want 2 (409, then success)", got)
	}
	// AddCheckpoint alone reports the conflict with the witness's size.
	_, err = fresh.AddCheckpoint(ctx, 3, nil, cp)
	var we *tlog.WitnessError
	if !errors.As(err, &we) || !errors.Is(err, tlog.ErrWitnessConflict) || we.WitnessSize != 15 || we.Status != 409 {
		t.Errorf("AddCheckpoint(old 3) = %v, want a conflict at 15", err)
	}
}

// TestWitnessClientRollback: a log restored from an old copy submits a
// smaller checkpoint than the witness cosigned; the witness says how far
// it got and the client reports ErrWitnessAhead.
func TestWitnessClientRollback(t *testing.T) {
	e := newWitnessEnv(t, "a")
	ctx := t.Context()
	small := e.append(t, 4)
	if _, err := e.client.Cosign(ctx, small, e.log.ConsistencyProof); err != nil {
		t.Fatal(err)
	}
	big := e.append(t, 4)
	if _, err := e.client.Cosign(ctx, big, e.log.ConsistencyProof); err != nil {
		t.Fatal(err)
	}
	restarted, _ := tlog.NewWitnessClient(e.witness, nil, 0)
	_, err := restarted.Cosign(ctx, small, e.log.ConsistencyProof)
	var we *tlog.WitnessError
	if !errors.As(err, &we) || !errors.Is(err, tlog.ErrWitnessAhead) || we.WitnessSize != 8 {
		t.Fatalf("Cosign(older checkpoint) = %v, want ErrWitnessAhead at 8", err)
	}
	if !strings.Contains(err.Error(), `witness "a"`) || !strings.Contains(err.Error(), "size 8") {
		t.Errorf("error text %q does not name the witness and its size", err)
	}
}

// TestWitnessClientSplitView: a second log with the same key but another
// tree is refused by the witness (422), reported as inconsistent.
func TestWitnessClientSplitView(t *testing.T) {
	e := newWitnessEnv(t, "a")
	ctx := t.Context()
	cp := e.append(t, 6)
	if _, err := e.client.Cosign(ctx, cp, e.log.ConsistencyProof); err != nil {
		t.Fatal(err)
	}
	// The same log key over other entries (a forked copy of the store).
	signer, logV, _ := testLogKey(t, e.origin)
	fork := openSignedLog(t, filepath.Join(t.TempDir(), "fork.db"), e.origin, signer, logV)
	var fcp tlog.SignedCheckpoint
	var err error
	for i := range 6 {
		if _, fcp, err = fork.Append(ctx, fmt.Appendf(nil, "other %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	_, err = e.client.Cosign(ctx, fcp, fork.ConsistencyProof)
	if !errors.Is(err, tlog.ErrWitnessInconsistent) {
		t.Errorf("Cosign(same size, other root) = %v, want ErrWitnessInconsistent", err)
	}
	for range 3 {
		fork.Append(ctx, []byte("more"))
	}
	fcp, _ = fork.Checkpoint(ctx)
	_, err = e.client.Cosign(ctx, fcp, fork.ConsistencyProof)
	if !errors.Is(err, tlog.ErrWitnessInconsistent) {
		t.Errorf("Cosign(larger fork) = %v, want ErrWitnessInconsistent", err)
	}
}

// TestWitnessClientHostile answers with every kind of bad or hostile
// response; each is a clear *WitnessError and nothing is returned as a
// cosignature.
func TestWitnessClientHostile(t *testing.T) {
	e := newWitnessEnv(t, "a")
	other := testCosigner(t, "witness.example/a", "not a", fixedTime)
	zero := testCosigner(t, "witness.example/a", "a", time.Unix(0, 0))
	cp := e.append(t, 2)
	text := string(tlog.FormatCheckpoint(cp.Origin, cp.Root))
	lineBy := func(c *tlog.Cosigner, text string) string {
		msg, _ := note.Sign(&note.Note{Text: text}, c)
		return string(msg[bytes.LastIndex(msg, []byte("\n\n"))+2:])
	}
	good := lineBy(e.fake.Cosigner, text)
	tests := []struct {
		name   string
		status int
		ctype  string
		body   string
		want   error
		detail string
	}{
		{"404", 404, "", "", tlog.ErrWitnessUnknownLog, ""},
		{"403", 403, "", "", tlog.ErrWitnessForbidden, ""},
		{"422", 422, "", "", tlog.ErrWitnessInconsistent, ""},
		{"400", 400, "", "", tlog.ErrWitnessProtocol, "unexpected status"},
		{"429", 429, "", "", tlog.ErrWitnessUnavailable, ""},
		{"503", 503, "", "busy", tlog.ErrWitnessUnavailable, `"busy"`},
		{"302", 302, "", "", tlog.ErrWitnessProtocol, ""},
		{"409 without type", 409, "text/plain", "5\n", tlog.ErrWitnessProtocol, "content type"},
		{"409 leading zero", 409, "text/x.tlog.size", "05\n", tlog.ErrWitnessProtocol, "not a tree size"},
		{"409 no newline", 409, "text/x.tlog.size", "5", tlog.ErrWitnessProtocol, "not a tree size"},
		{"409 huge", 409, "text/x.tlog.size", strings.Repeat("9", 40) + "\n", tlog.ErrWitnessProtocol, "not a tree size"},
		{"409 ahead", 409, "text/x.tlog.size", "99\n", tlog.ErrWitnessAhead, "size 99"},
		{"empty 200", 200, "", "", tlog.ErrWitnessProtocol, "no signature lines"},
		{"garbage 200", 200, "", "hello\n", tlog.ErrWitnessProtocol, "malformed"},
		{"oversized 200", 200, "", strings.Repeat(good, 1000), tlog.ErrWitnessProtocol, "larger than"},
		{"other key only", 200, "", "— witness.example/b AAAAAAE=\n", tlog.ErrWitnessProtocol, "no cosignature by its key"},
		{"same name other key", 200, "", lineBy(other, text), tlog.ErrWitnessProtocol, "no cosignature by its key"},
		{"cosignature of another tree", 200, "", lineBy(e.fake.Cosigner, strings.Replace(text, "\n2\n", "\n3\n", 1)), tlog.ErrWitnessProtocol, "does not verify"},
		{"zero timestamp", 200, "", lineBy(zero, text), tlog.ErrWitnessProtocol, "zero timestamp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.fake.SetFault(func(w http.ResponseWriter, _ []byte) bool {
				if tt.ctype != "" {
					w.Header().Set("Content-Type", tt.ctype)
				}
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
				return true
			})
			sig, err := e.client.Cosign(t.Context(), cp, e.log.ConsistencyProof)
			var we *tlog.WitnessError
			if !errors.As(err, &we) || !errors.Is(err, tt.want) || we.Witness != "a" {
				t.Fatalf("Cosign = %+v, %v; want a *WitnessError wrapping %v", sig, err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.detail) {
				t.Errorf("error %q does not contain %q", err, tt.detail)
			}
		})
	}
	// An answer with the witness's line among unknown ones is fine.
	e.fake.SetFault(func(w http.ResponseWriter, _ []byte) bool {
		io.WriteString(w, "— witness.example/b AAAAAAE=\n"+good)
		return true
	})
	if _, err := e.client.Cosign(t.Context(), cp, e.log.ConsistencyProof); err != nil {
		t.Errorf("Cosign(answer with an unknown line first) = %v", err)
	}
	// A witness that keeps answering 409 with sizes below ours is given up
	// on after a bounded number of requests.
	n := 0
	e.fake.SetFault(func(w http.ResponseWriter, _ []byte) bool {
		n++
		w.Header().Set("Content-Type", "text/x.tlog.size")
		w.WriteHeader(409)
		fmt.Fprintf(w, "%d\n", n%2)
		return true
	})
	if _, err := e.client.Cosign(t.Context(), cp, e.log.ConsistencyProof); !errors.Is(err, tlog.ErrWitnessConflict) || n != 3 {
		t.Errorf("Cosign(endless 409) = %v after %d requests, want ErrWitnessConflict after 3", err, n)
	}
}

// TestWitnessClientTimeout: a witness that does not answer costs at most
// the client's timeout, and is reported unavailable.
func TestWitnessClientTimeout(t *testing.T) {
	e := newWitnessEnv(t, "a")
	cp := e.append(t, 1)
	release := make(chan struct{})
	defer close(release)
	e.fake.SetFault(func(w http.ResponseWriter, _ []byte) bool {
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		return true
	})
	c, _ := tlog.NewWitnessClient(e.witness, nil, 100*time.Millisecond)
	_, err := c.Cosign(t.Context(), cp, e.log.ConsistencyProof)
	if !errors.Is(err, tlog.ErrWitnessUnavailable) {
		t.Errorf("Cosign(silent witness) = %v, want ErrWitnessUnavailable", err)
	}
	// A cancelled context too.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := e.client.Cosign(ctx, cp, e.log.ConsistencyProof); !errors.Is(err, tlog.ErrWitnessUnavailable) {
		t.Errorf("Cosign(cancelled) = %v", err)
	}
}

// TestWitnessClientRequest checks the request body against the spec:
// "old N", proof lines, an empty line, the checkpoint note.
func TestWitnessClientRequest(t *testing.T) {
	e := newWitnessEnv(t, "a")
	ctx := t.Context()
	first := e.append(t, 5)
	if _, err := e.client.Cosign(ctx, first, e.log.ConsistencyProof); err != nil {
		t.Fatal(err)
	}
	cp := e.append(t, 8)
	var got []byte
	e.fake.SetFault(func(w http.ResponseWriter, body []byte) bool {
		got = body
		return false
	})
	if _, err := e.client.Cosign(ctx, cp, e.log.ConsistencyProof); err != nil {
		t.Fatal(err)
	}
	p, _ := e.log.ConsistencyProof(ctx, 5, 13)
	want := "old 5\n"
	for _, h := range p {
		want += base64.StdEncoding.EncodeToString(h[:]) + "\n"
	}
	want += "\n" + string(cp.Note)
	if string(got) != want {
		t.Errorf("request body =\n%s\nwant\n%s", got, want)
	}
}

func TestWitnessGroup(t *testing.T) {
	base := newWitnessEnv(t, "x")
	g, q, fakes := fakeGroup(t, base)
	ctx := t.Context()
	cp := base.append(t, 4)
	res, err := g.Cosign(ctx, cp, base.log.ConsistencyProof)
	if err != nil || len(res.Cosignatures) != 3 {
		t.Fatalf("Cosign = %+v, %v", res, err)
	}
	got, err := q.Verify(res.Note, base.origin, base.logV)
	if err != nil || len(got.Cosignatures) != 3 {
		t.Fatalf("the merged note does not verify: %v", err)
	}

	// c is down: 2 of 3 is still a quorum; the failure is reported.
	fakes[2].SetFault(witnesstest.Down)
	cp = base.append(t, 1)
	res, err = g.Cosign(ctx, cp, base.log.ConsistencyProof)
	if err != nil || len(res.Cosignatures) != 2 || !errors.Is(res.Failures["c"], tlog.ErrWitnessUnavailable) {
		t.Fatalf("Cosign with c down = %+v, %v", res, err)
	}
	if len(res.Behind(q)) != 0 {
		t.Errorf("an unreachable witness counted as evidence: %v", res.Behind(q))
	}
	// b down too: no quorum; the error names both and says why.
	fakes[1].SetFault(witnesstest.Down)
	cp = base.append(t, 1)
	res, err = g.Cosign(ctx, cp, base.log.ConsistencyProof)
	var qe *tlog.QuorumError
	if !errors.As(err, &qe) || strings.Join(qe.Missing, ",") != "b,c" || !strings.Contains(err.Error(), "unavailable") {
		t.Fatalf("Cosign with b and c down = %v", err)
	}
	if _, err := q.Verify(res.Note, base.origin, base.logV); !errors.As(err, &qe) {
		t.Errorf("a note with 1 of 2 cosignatures verified: %v", err)
	}

	// A witness that saw more than the log shows: Behind reports it.
	fakes[1].SetFault(nil)
	fakes[2].SetFault(nil)
	fakes[0].SetSize(base.origin, fakes[0].Size(base.origin)+100)
	cp = base.append(t, 1)
	res, err = g.Cosign(ctx, cp, base.log.ConsistencyProof)
	if err != nil {
		t.Fatalf("b and c still make a quorum: %v", err)
	}
	behind := res.Behind(q)
	if len(behind) != 1 || !errors.Is(behind[0], tlog.ErrWitnessAhead) {
		t.Errorf("Behind = %v, want a's ErrWitnessAhead", behind)
	}
}
