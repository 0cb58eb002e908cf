package tlog_test

// Process-level tests against real witnesses from the ecosystem:
// transparency-dev's omniwitness and torchwood's litewitness (see
// tlog/witnesstest for how they are built and run). `make test-witness`
// (which CI runs) runs them; `make test` skips them to stay fast.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/boltlog"
	"github.com/kbs-dev/kbs/tlog/witnesstest"
)

// realWitnessEnv is a boltlog log and a real witness for it.
type realWitnessEnv struct {
	impl    witnesstest.Impl
	bin     string
	dir     string
	wdir    string
	origin  string
	signer  note.Signer
	logV    note.Verifier
	logVKey string
	log     *boltlog.Log
	w       *witnesstest.Running
	witness tlog.Witness
	client  *tlog.WitnessClient
}

func newRealWitnessEnv(t testing.TB, impl witnesstest.Impl, bin string) *realWitnessEnv {
	t.Helper()
	e := &realWitnessEnv{impl: impl, bin: bin, dir: t.TempDir(), origin: "kbs/0123456789abcdef0123456789abcdef"}
	e.signer, e.logV, e.logVKey = testLogKey(t, e.origin)
	e.log = e.openLog(t, "kbs.db")
	e.wdir = filepath.Join(e.dir, "w")
	if err := os.Mkdir(e.wdir, 0o700); err != nil {
		t.Fatal(err)
	}
	e.w = impl.Start(t, bin, e.wdir, e.origin, e.logVKey, "")
	var err error
	if e.witness, err = tlog.NewWitness(impl.Name, e.w.VKey, e.w.URL); err != nil {
		t.Fatalf("the witness's own verifier key %q: %v", e.w.VKey, err)
	}
	if e.client, err = tlog.NewWitnessClient(e.witness, nil, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return e
}

// restartWitness stops the witness and starts it again on its state.
func (e *realWitnessEnv) restartWitness(t testing.TB) {
	t.Helper()
	e.w.Stop()
	e.w = e.impl.Start(t, e.bin, e.wdir, e.origin, e.logVKey, "")
	e.witness.URL = e.w.URL
	var err error
	if e.client, err = tlog.NewWitnessClient(e.witness, nil, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

func (e *realWitnessEnv) openLog(t testing.TB, name string) *boltlog.Log {
	t.Helper()
	return openSignedLog(t, filepath.Join(e.dir, name), e.origin, e.signer, e.logV)
}

func appendEntries(t testing.TB, l *boltlog.Log, tag string, n int) tlog.SignedCheckpoint {
	t.Helper()
	cp, err := l.Checkpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, cp, err = l.Append(context.Background(), fmt.Appendf(nil, `{"type":"test","tag":%q,"i":%d}`, tag, i)); err != nil {
			t.Fatal(err)
		}
	}
	return cp
}

// checkCosigned verifies a checkpoint cosigned by the real witness three
// ways: with our Quorum, with golang.org/x/mod/sumdb/note given the log's
// key and the witness's own verifier key, and by the cosigned message
// rebuilt from the spec.
func (e *realWitnessEnv) checkCosigned(t testing.TB, cp tlog.SignedCheckpoint, sig note.Signature) []byte {
	t.Helper()
	msg, err := tlog.MergeSignatures(cp.Note, sig)
	if err != nil {
		t.Fatal(err)
	}
	q, _ := tlog.NewQuorum(1, e.witness)
	got, err := q.Verify(msg, e.origin, e.logV)
	if err != nil {
		t.Fatalf("Quorum.Verify(cosigned by %s): %v\n%s", e.impl.Name, err, msg)
	}
	if got.Root != cp.Root || len(got.Cosignatures) != 1 {
		t.Fatalf("Quorum.Verify = %+v", got)
	}
	logV, err := note.NewVerifier(e.logVKey)
	if err != nil {
		t.Fatal(err)
	}
	n, err := note.Open(msg, note.VerifierList(logV, e.witness.Key))
	if err != nil || len(n.Sigs) != 2 || n.Sigs[1].Name != e.witness.Key.Name() {
		t.Fatalf("x/mod note.Open(log key, witness vkey %s) = %+v, %v", e.w.VKey, n, err)
	}
	// Someone else's key with the witness's name does not verify it.
	other := testCosigner(t, e.witness.Key.Name(), "impostor", fixedTime)
	ov, _ := tlog.NewCosignatureVerifier(other.VerifierKey())
	if n, err := note.Open(msg, note.VerifierList(ov)); err == nil {
		t.Fatalf("the cosignature verified with another key: %+v", n)
	}
	return msg
}

func TestRealWitnessCosignsBoltlog(t *testing.T) {
	witnesstest.ForEach(t, testRealWitnessCosignsBoltlog)
}

func testRealWitnessCosignsBoltlog(t *testing.T, impl witnesstest.Impl, bin string) {
	e := newRealWitnessEnv(t, impl, bin)
	ctx := t.Context()
	// The empty tree, then growing trees across tile boundaries: each
	// needs a consistency proof from the last cosigned size.
	var cps []tlog.SignedCheckpoint
	cp, _ := e.log.Checkpoint(ctx)
	cps = append(cps, cp)
	for _, n := range []int{1, 2, 5, 250, 300} {
		cps = append(cps, appendEntries(t, e.log, "grow", n))
	}
	var last []byte
	for _, cp := range cps {
		sig, err := e.client.Cosign(ctx, cp, e.log.ConsistencyProof)
		if err != nil {
			t.Fatalf("Cosign(size %d) with %s: %v\n%s", cp.Size, impl.Name, err, e.w.Out)
		}
		last = e.checkCosigned(t, cp, sig)
		ts, _ := tlog.CosignatureTime(sig)
		if d := time.Since(ts); d < -time.Minute || d > time.Minute {
			t.Errorf("cosignature timestamp %v is not about now", ts)
		}
	}
	if !bytes.HasPrefix(last, cps[len(cps)-1].Note) {
		t.Errorf("the cosigned note does not start with the log's note")
	}

	// A log restarting with no memory of the witness's size: 409, then a
	// proof from the witness's size.
	cp = appendEntries(t, e.log, "restart", 3)
	fresh, _ := tlog.NewWitnessClient(e.witness, nil, 10*time.Second)
	_, err := fresh.AddCheckpoint(ctx, 0, nil, cp)
	var we *tlog.WitnessError
	if !errors.As(err, &we) || !errors.Is(err, tlog.ErrWitnessConflict) || we.WitnessSize != cps[len(cps)-1].Size {
		t.Fatalf("AddCheckpoint(old 0) to a witness at %d = %v", cps[len(cps)-1].Size, err)
	}
	sig, err := fresh.Cosign(ctx, cp, e.log.ConsistencyProof)
	if err != nil {
		t.Fatalf("Cosign after a restart: %v", err)
	}
	e.checkCosigned(t, cp, sig)
	// The same checkpoint again: cosigned again, with the same root.
	if _, err := fresh.Cosign(ctx, cp, e.log.ConsistencyProof); err != nil {
		t.Errorf("Cosign(same checkpoint again): %v", err)
	}

	// A checkpoint the witness does not trust: another log key, same origin.
	otherSigner, _, _ := testLogKey(t, "kbs/0123456789abcdef0123456789abcdef-other")
	bad, err := note.Sign(&note.Note{Text: string(tlog.FormatCheckpoint(e.origin, cp.Root))}, otherSigner)
	if err != nil {
		t.Fatal(err)
	}
	// The spec says 403 for this and 404 for an unknown log; each
	// implementation's answer is in witnesstest.Impls.
	_, err = fresh.AddCheckpoint(ctx, cp.Size, nil, tlog.SignedCheckpoint{Origin: e.origin, Root: cp.Root, Note: bad})
	if !impl.Untrusted(err) {
		t.Errorf("AddCheckpoint(signed by another key) = %v", err)
	}
	// A log the witness does not know.
	uSigner, _, _ := testLogKey(t, "kbs/unknown")
	unknown, _ := note.Sign(&note.Note{Text: string(tlog.FormatCheckpoint("kbs/unknown", cp.Root))}, uSigner)
	_, err = fresh.AddCheckpoint(ctx, 0, nil, tlog.SignedCheckpoint{Origin: "kbs/unknown", Root: cp.Root, Note: unknown})
	if !impl.UnknownLog(err) {
		t.Errorf("AddCheckpoint(unknown origin) = %v", err)
	}
	// A wrong proof.
	next := appendEntries(t, e.log, "bad proof", 7)
	p, _ := e.log.ConsistencyProof(ctx, cp.Size, next.Size)
	p[0][0] ^= 1
	if _, err := fresh.AddCheckpoint(ctx, cp.Size, p, next); !errors.Is(err, tlog.ErrWitnessInconsistent) {
		t.Errorf("AddCheckpoint(bad proof) = %v, want ErrWitnessInconsistent", err)
	}
}

// TestRealWitnessSplitView: two logs with the same key and origin but
// different entries (two brokers presenting different trees) reach the
// same witness: it cosigns the first and refuses the other, at the same
// size and at a larger one.
func TestRealWitnessSplitView(t *testing.T) {
	witnesstest.ForEach(t, func(t *testing.T, impl witnesstest.Impl, bin string) {
		testRealWitnessSplitView(t, newRealWitnessEnv(t, impl, bin))
	})
}

func testRealWitnessSplitView(t *testing.T, e *realWitnessEnv) {
	ctx := t.Context()
	honest := appendEntries(t, e.log, "honest", 20)
	if _, err := e.client.Cosign(ctx, honest, e.log.ConsistencyProof); err != nil {
		t.Fatalf("Cosign(honest): %v", err)
	}
	fork := e.openLog(t, "fork.db")
	forked := appendEntries(t, fork, "forked", 20)
	if forked.Hash == honest.Hash {
		t.Fatal("the fork has the honest root")
	}
	// The other broker's own client, as a second kbsd would have.
	other, _ := tlog.NewWitnessClient(e.witness, nil, 10*time.Second)
	_, err := other.Cosign(ctx, forked, fork.ConsistencyProof)
	var we *tlog.WitnessError
	if !errors.As(err, &we) || !errors.Is(err, tlog.ErrWitnessInconsistent) || we.Status != http.StatusUnprocessableEntity {
		t.Fatalf("Cosign(split view, same size) = %v, want ErrWitnessInconsistent (422)", err)
	}
	forked = appendEntries(t, fork, "forked more", 30)
	if _, err := other.Cosign(ctx, forked, fork.ConsistencyProof); !errors.Is(err, tlog.ErrWitnessInconsistent) {
		t.Fatalf("Cosign(split view, larger) = %v, want ErrWitnessInconsistent", err)
	}
	// The honest log goes on being cosigned.
	honest = appendEntries(t, e.log, "honest", 5)
	sig, err := e.client.Cosign(ctx, honest, e.log.ConsistencyProof)
	if err != nil {
		t.Fatalf("Cosign(honest, after the fork was refused): %v", err)
	}
	e.checkCosigned(t, honest, sig)
	// The witness kept the evidence: both checkpoints in its log.
	if out := e.w.Out.String(); e.impl.SplitViewLog != "" && !strings.Contains(out, e.impl.SplitViewLog) {
		t.Errorf("%s did not report the split view:\n%s", e.impl.Name, out)
	}
}

// TestRealWitnessRollback: the host copies the log's whole store, lets the
// log grow and get cosigned, then restores the copy (a restored snapshot).
// The witness refuses the restored log's checkpoints: it cosigned a larger
// tree (409, ErrWitnessAhead); and once the restored log grows past the
// witness's size, its tree is not an extension of what the witness saw
// (422, ErrWitnessInconsistent). The witness keeps this across its own
// restart (SQLite state).
func TestRealWitnessRollback(t *testing.T) {
	witnesstest.ForEach(t, func(t *testing.T, impl witnesstest.Impl, bin string) {
		testRealWitnessRollback(t, newRealWitnessEnv(t, impl, bin))
	})
}

func testRealWitnessRollback(t *testing.T, e *realWitnessEnv) {
	ctx := t.Context()
	old := appendEntries(t, e.log, "before snapshot", 10)
	oldSig, err := e.client.Cosign(ctx, old, e.log.ConsistencyProof)
	if err != nil {
		t.Fatal(err)
	}
	oldNote := e.checkCosigned(t, old, oldSig)
	if err := e.log.Close(); err != nil {
		t.Fatal(err)
	}
	snapshot, err := os.ReadFile(filepath.Join(e.dir, "kbs.db"))
	if err != nil {
		t.Fatal(err)
	}
	e.log = e.openLog(t, "kbs.db")
	newer := appendEntries(t, e.log, "after snapshot", 10)
	if _, err := e.client.Cosign(ctx, newer, e.log.ConsistencyProof); err != nil {
		t.Fatal(err)
	}
	e.log.Close()
	if err := os.WriteFile(filepath.Join(e.dir, "restored.db"), snapshot, 0o600); err != nil {
		t.Fatal(err)
	}
	// The witness restarts too: its refusal rests on its stored state.
	e.restartWitness(t)
	restored := e.openLog(t, "restored.db")
	cp, _ := restored.Checkpoint(ctx)
	if cp.Root != old.Root {
		t.Fatalf("restored log at %d, want %d", cp.Size, old.Size)
	}
	client, _ := tlog.NewWitnessClient(e.witness, nil, 10*time.Second)
	_, err = client.Cosign(ctx, cp, restored.ConsistencyProof)
	var we *tlog.WitnessError
	if !errors.As(err, &we) || !errors.Is(err, tlog.ErrWitnessAhead) || we.WitnessSize != newer.Size {
		t.Fatalf("Cosign(restored snapshot at %d) = %v, want ErrWitnessAhead at %d", cp.Size, err, newer.Size)
	}
	// An old checkpoint replayed to the witness: same answer.
	if _, err := client.Cosign(ctx, old, restored.ConsistencyProof); !errors.Is(err, tlog.ErrWitnessAhead) {
		t.Errorf("Cosign(old checkpoint replayed) = %v, want ErrWitnessAhead", err)
	}
	// The restored log grows past the witness's size with other entries.
	grown := appendEntries(t, restored, "rewritten history", 15)
	_, err = client.Cosign(ctx, grown, restored.ConsistencyProof)
	if !errors.Is(err, tlog.ErrWitnessInconsistent) {
		t.Fatalf("Cosign(restored log grown past the witness) = %v, want ErrWitnessInconsistent", err)
	}
	// And a quorum built on this witness reports the log as behind.
	q, _ := tlog.NewQuorum(1, e.witness)
	g, _ := tlog.NewWitnessGroup(q, nil, 10*time.Second)
	res, err := g.Cosign(ctx, cp, restored.ConsistencyProof)
	var qe *tlog.QuorumError
	if !errors.As(err, &qe) || !slices.Equal(qe.Missing, []string{e.impl.Name}) || len(res.Behind(q)) != 1 {
		t.Errorf("WitnessGroup.Cosign(restored) = %v; Behind = %v", err, res.Behind(q))
	}
	// All the restored broker can show a client with no stored state is
	// its old checkpoint with the old cosignature: valid, but not fresh
	// once the client's freshness window has passed (the honest broker
	// refreshes its cosignatures every minute; this one cannot).
	cosigned, err := q.Verify(oldNote, e.origin, e.logV)
	if err != nil {
		t.Fatalf("the old cosigned checkpoint: %v", err)
	}
	later := cosigned.Cosignatures[0].Time.Add(11 * time.Minute)
	if err := q.CheckFresh(cosigned, later, 10*time.Minute); !errors.As(err, &qe) || !strings.Contains(err.Error(), e.impl.Name) {
		t.Errorf("CheckFresh(old cosignature, 11 minutes later) = %v, want a QuorumError naming the witness", err)
	}
	// The broker's start-up check on the restored store halts.
	wit, err := tlog.NewWitnessing(tlog.WitnessingConfig{Group: g, Log: restored})
	if err != nil {
		t.Fatal(err)
	}
	var be *tlog.BehindError
	if err := wit.Check(ctx); !errors.As(err, &be) || wit.Halted() == nil {
		t.Errorf("Witnessing.Check(restored store) = %v, want a *BehindError", err)
	}
}

// TestRealWitnessDown: a witness that is not running is reported
// unavailable, and a group without it lacks a quorum.
func TestRealWitnessDown(t *testing.T) {
	witnesstest.ForEach(t, func(t *testing.T, impl witnesstest.Impl, bin string) {
		testRealWitnessDown(t, newRealWitnessEnv(t, impl, bin))
	})
}

func testRealWitnessDown(t *testing.T, e *realWitnessEnv) {
	cp := appendEntries(t, e.log, "x", 2)
	e.w.Stop()
	_, err := e.client.Cosign(t.Context(), cp, e.log.ConsistencyProof)
	if !errors.Is(err, tlog.ErrWitnessUnavailable) {
		t.Fatalf("Cosign(witness down) = %v, want ErrWitnessUnavailable", err)
	}
}

// reportLatency reports the p50 and p99 of lat.
func reportLatency(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// BenchmarkRealWitnessCosign measures the time from a signed checkpoint to
// the real witness's verified cosignature, one new entry per checkpoint
// (so each request carries a consistency proof): the latency a log pays
// per witness, on loopback. It reports p50 and p99.
func BenchmarkRealWitnessCosign(b *testing.B) {
	witnesstest.ForEachB(b, func(b *testing.B, impl witnesstest.Impl, bin string) {
		e := newRealWitnessEnv(b, impl, bin)
		ctx := context.Background()
		cp := appendEntries(b, e.log, "warm", 100)
		if _, err := e.client.Cosign(ctx, cp, e.log.ConsistencyProof); err != nil {
			b.Fatal(err)
		}
		var lat []time.Duration
		for b.Loop() {
			b.StopTimer()
			cp := appendEntries(b, e.log, "bench", 1)
			b.StartTimer()
			start := time.Now()
			if _, err := e.client.Cosign(ctx, cp, e.log.ConsistencyProof); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(start))
		}
		reportLatency(b, lat)
	})
}

// BenchmarkRealWitnessAppendToCosigned measures, with 1 and 3 real
// witnesses (quorum: all of them), the time from a durable append to a
// checkpoint that contains the entry and carries the quorum's
// cosignatures, through Witnessing (Notify, then WaitCosigned): what a
// release would wait for if it waited for witnesses. Appends are
// sequential, one entry per checkpoint.
func BenchmarkRealWitnessAppendToCosigned(b *testing.B) {
	witnesstest.ForEachB(b, func(b *testing.B, impl witnesstest.Impl, bin string) {
		for _, n := range []int{1, 3} {
			b.Run(fmt.Sprintf("witnesses=%d", n), func(b *testing.B) {
				e := newRealWitnessEnv(b, impl, bin)
				ws := []tlog.Witness{e.witness}
				for i := 1; i < n; i++ {
					dir := filepath.Join(e.dir, fmt.Sprintf("w%d", i))
					if err := os.Mkdir(dir, 0o700); err != nil {
						b.Fatal(err)
					}
					rw := impl.Start(b, bin, dir, e.origin, e.logVKey, "")
					w, err := tlog.NewWitness(fmt.Sprintf("%s-%d", impl.Name, i), rw.VKey, rw.URL)
					if err != nil {
						b.Fatal(err)
					}
					ws = append(ws, w)
				}
				q, err := tlog.NewQuorum(n, ws...)
				if err != nil {
					b.Fatal(err)
				}
				g, _ := tlog.NewWitnessGroup(q, nil, 10*time.Second)
				wit, _ := tlog.NewWitnessing(tlog.WitnessingConfig{Group: g, Log: e.log})
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				go wit.Run(ctx)
				var lat []time.Duration
				for b.Loop() {
					start := time.Now()
					_, cp, err := e.log.Append(ctx, []byte(`{"type":"bench"}`))
					if err != nil {
						b.Fatal(err)
					}
					wit.Notify()
					if _, err := wit.WaitCosigned(ctx, cp.Size); err != nil {
						b.Fatal(err)
					}
					lat = append(lat, time.Since(start))
				}
				reportLatency(b, lat)
			})
		}
	})
}
