package kbs

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/tlogtest"
)

// entryOfKey matches the key-upload entry of id.
func entryOfKey(id string) func([]byte) bool {
	return func(entry []byte) bool {
		e, err := tlog.DecodeEntry(entry)
		return err == nil && e.Type == tlog.TypeKeyUpload && e.KeyUpload.ID == id
	}
}

// heldUploads holds the append of demo/first, queues uploads behind it,
// and returns their results once the first is let go. While the first is
// held, the others must wait (nothing of theirs reaches the log).
type heldUploads struct {
	e     *env
	first <-chan error
	p     *tlogtest.Pause
}

func holdFirstUpload(t *testing.T, e *env) *heldUploads {
	t.Helper()
	h := &heldUploads{e: e, p: e.gate.Pause(entryOfKey("demo/first"))}
	t.Cleanup(h.p.Resume)
	h.first = h.upload("demo/first", 1)
	<-h.p.Held()
	return h
}

func (h *heldUploads) upload(id string, version uint64) <-chan error {
	done := make(chan error, 1)
	req := h.e.uploadReq("demo-client", h.e.client, id, version, []byte("material of "+id))
	go func() {
		_, err := h.e.b.UploadKey(context.Background(), req)
		done <- err
	}()
	return done
}

// waitQueued waits until n uploads wait for the next batch.
func (h *heldUploads) waitQueued(t *testing.T, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		q := &h.e.b.uploads
		q.mu.Lock()
		got := len(q.jobs)
		q.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d uploads queued, want %d", got, n)
		}
	}
}

// TestUploadsShareBatches queues uploads behind one whose append is held
// and checks that they are then decided and appended together (all their
// appends are in flight at once, which one upload at a time never is),
// that two uploads of one key id are never in one batch (the second is
// decided after the first: a conflict), and that what the log says
// afterwards is what the broker serves, before and after a restart.
func TestUploadsShareBatches(t *testing.T) {
	e, err := newEnvSetup(t, nil, nil, func(e *env) { e.gate = tlogtest.NewGate(nil) })
	if err != nil {
		t.Fatal(err)
	}
	h := holdFirstUpload(t, e)
	const n = 8
	var held []*tlogtest.Pause
	var done []<-chan error
	for i := range n {
		id := fmt.Sprintf("demo/batch/%d", i)
		p := e.gate.Pause(entryOfKey(id))
		t.Cleanup(p.Resume)
		held = append(held, p)
		done = append(done, h.upload(id, 1))
	}
	same := []<-chan error{h.upload("demo/same", 1), h.upload("demo/same", 1)}
	h.waitQueued(t, n+2)
	waitBlocked(t, e, "an upload queued behind a held one", done[0])
	h.p.Resume()
	if err := <-h.first; err != nil {
		t.Fatal(err)
	}
	for i, p := range held {
		select {
		case <-p.Held():
		case <-time.After(10 * time.Second):
			t.Fatalf("the append of upload %d is not in flight together with the others of its batch", i)
		}
	}
	for _, p := range held {
		p.Resume()
	}
	for i, d := range done {
		if err := <-d; err != nil {
			t.Errorf("upload %d: %v", i, err)
		}
	}
	var ae *api.Error
	err0, err1 := <-same[0], <-same[1]
	if (err0 == nil) == (err1 == nil) || !errors.As(errors.Join(err0, err1), &ae) || ae.Code != api.CodeConflict {
		t.Fatalf("two uploads of demo/same version 1: %v and %v, want one success and one conflict", err0, err1)
	}
	checkDecisions(t, e)
	check := func() {
		t.Helper()
		var l api.KeyList
		e.mustOK(e.do("GET", api.PathKeys+"?prefix=demo/", nil, &l))
		if len(l.Keys) != n+2 {
			t.Fatalf("%d keys listed, want %d", len(l.Keys), n+2)
		}
		for _, k := range l.Keys {
			if k.Version != 1 || k.Deleted {
				t.Errorf("key %+v", k)
			}
		}
		if p, _ := e.keys.PendingChanges(); len(p) != 0 {
			t.Errorf("staged changes left: %+v", p)
		}
		w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
		e.mustOK2r(e.release(e.releaseReq(w, e.challenge(), "demo/first", "demo/batch/0", fmt.Sprintf("demo/batch/%d", n-1), "demo/same")))
	}
	check()
	e.close()
	e.open(t)
	check()
}

// TestUploadBatchFailures checks one batch in which one upload's append
// fails before it reaches the log and another's reaches the log with its
// answer lost: the others are answered with success; the failed one is
// unstaged and answered with the failure; the lost one halts the broker,
// and the next start commits it from the log.
func TestUploadBatchFailures(t *testing.T) {
	e, err := newEnvSetup(t, nil, nil, func(e *env) { e.gate = tlogtest.NewGate(nil) })
	if err != nil {
		t.Fatal(err)
	}
	h := holdFirstUpload(t, e)
	e.gate.Fail(entryOfKey("demo/fails"), false, errors.New("disk full"))
	e.gate.Fail(entryOfKey("demo/lost"), true, fmt.Errorf("connection reset: %w", tlog.ErrUnknownOutcome))
	ok1, fails, lost, ok2 := h.upload("demo/ok1", 1), h.upload("demo/fails", 1), h.upload("demo/lost", 1), h.upload("demo/ok2", 1)
	h.waitQueued(t, 4)
	h.p.Resume()
	if err := <-h.first; err != nil {
		t.Fatal(err)
	}
	for id, d := range map[string]<-chan error{"demo/ok1": ok1, "demo/ok2": ok2} {
		if err := <-d; err != nil {
			t.Errorf("upload of %s, in a batch with failures: %v", id, err)
		}
	}
	for id, d := range map[string]<-chan error{"demo/fails": fails, "demo/lost": lost} {
		var se *statusError
		if err := <-d; !errors.As(err, &se) || se.err.Code != api.CodeLogUnavailable {
			t.Errorf("upload of %s: %v, want log_unavailable", id, err)
		}
	}
	if e.b.HaltCause() == nil {
		t.Fatal("an upload of unknown outcome did not halt the broker")
	}
	if p, _ := e.keys.PendingChanges(); len(p) != 1 || p[0].ID != "demo/lost" {
		t.Fatalf("staged changes after the batch: %+v, want only demo/lost's", p)
	}
	e.close()
	e.open(t)
	for id, want := range map[string]int{"demo/ok1": 200, "demo/ok2": 200, "demo/lost": 200, "demo/fails": http.StatusNotFound} {
		if st, ae := e.do("GET", api.PathKeys+"/"+id, nil, nil); st != want {
			t.Errorf("GET %s after the restart: %d %+v, want %d", id, st, ae, want)
		}
	}
	w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	e.mustOK2r(e.release(e.releaseReq(w, e.challenge(), "demo/ok1", "demo/ok2", "demo/lost")))
	if n, _ := e.keys.NextVersion("demo/fails"); n != 1 {
		t.Errorf("NextVersion of the failed upload = %d, want 1", n)
	}
	checkDecisions(t, e)
}
