package kbs

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/policy"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/witnesstest"
)

// Tests of the broker as a witness client, against in-process fake
// witnesses (tlog/witnesstest.Fake); daemon/witness_test.go runs the same
// story against real omniwitness and litewitness processes.

// fastWitnesses are witness options for tests: quick retries, a refresh
// that never comes during a test, a bounded wait.
var fastWitnesses = WitnessOptions{Timeout: 2 * time.Second, Retry: 20 * time.Millisecond, Refresh: time.Hour, Wait: 5 * time.Second}

// witnessPolicy is the policy of threshold out of fakes, named a, b, c...
func witnessPolicy(threshold int, fakes []*witnesstest.Fake) *manifest.WitnessPolicy {
	p := &manifest.WitnessPolicy{Threshold: threshold}
	for i, f := range fakes {
		p.List = append(p.List, manifest.Witness{Name: string(rune('a' + i)), Key: f.Cosigner.VerifierKey(), URL: f.URL})
	}
	return p
}

// newFakes starts n fake witnesses, each with its own key.
func newFakes(t testing.TB, n int) []*witnesstest.Fake {
	t.Helper()
	var fakes []*witnesstest.Fake
	for i := range n {
		name := string(rune('a' + i))
		fakes = append(fakes, witnesstest.NewFake(t, "witness.example/"+name, t.Name()+name, nil))
	}
	return fakes
}

// newWitnessedEnv starts a broker whose version-1 manifest names threshold
// of fakes as witnesses.
func newWitnessedEnv(t testing.TB, threshold int, fakes []*witnesstest.Fake, opts WitnessOptions) *env {
	t.Helper()
	e, err := newEnvSetup(t, func(d *manifest.Document) { d.Witnesses = witnessPolicy(threshold, fakes) }, nil, func(e *env) {
		e.witnesses, e.witnessOpts = fakes, opts
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// status returns GET /v1/witnesses.
func (e *env) witnessStatus() api.WitnessesStatus {
	e.t.Helper()
	var st api.WitnessesStatus
	e.mustOK(e.do("GET", api.PathWitnesses, nil, &st))
	return st
}

// waitWitnessState waits until the broker's witness state is want.
func (e *env) waitWitnessState(want string) api.WitnessesStatus {
	e.t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st := e.witnessStatus()
		if st.State == want {
			return st
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("witness state %q, want %q: %+v", st.State, want, st)
		}
	}
}

// get returns the body of a GET of path, with its status.
func (e *env) get(path string) (int, []byte) {
	e.t.Helper()
	resp, err := http.Get(e.srv.URL + path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, b
}

// cosignedBy verifies a checkpoint note with golang.org/x/mod/sumdb/note,
// given the log's key and each fake's verifier key, and returns the names
// of the fakes whose cosignature it carries.
func (e *env) cosignedBy(t testing.TB, msg []byte, fakes []*witnesstest.Fake) []string {
	t.Helper()
	logV, err := note.NewVerifier(e.id.NoteKey)
	if err != nil {
		t.Fatal(err)
	}
	vs := []note.Verifier{logV}
	names := map[string]string{}
	for i, f := range fakes {
		v, err := tlog.NewCosignatureVerifier(f.Cosigner.VerifierKey())
		if err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
		names[fmt.Sprintf("%s+%08x", v.Name(), v.KeyHash())] = string(rune('a' + i))
	}
	n, err := note.Open(msg, note.VerifierList(vs...))
	if err != nil {
		t.Fatalf("note.Open(checkpoint, log key + witness keys): %v\n%s", err, msg)
	}
	var out []string
	for _, s := range n.Sigs {
		if name, ok := names[fmt.Sprintf("%s+%08x", s.Name, s.Hash)]; ok {
			out = append(out, name)
		}
	}
	return out
}

// quorumOf returns the quorum of the env's active manifest.
func (e *env) quorumOf(t testing.TB) *tlog.Quorum {
	t.Helper()
	q, err := policy.Witnesses(e.b.active.Load().m)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// TestWitnessedBroker: with a 2-of-3 witness policy, every receipt, the
// served checkpoint and the attestation's checkpoint carry a quorum of
// cosignatures that golang.org/x/mod/sumdb/note verifies with the
// witnesses' own keys; the attestation binds the cosigned note; status and
// metrics say who cosigned what.
func TestWitnessedBroker(t *testing.T) {
	fakes := newFakes(t, 3)
	e := newWitnessedEnv(t, 2, fakes, fastWitnesses)
	e.waitWitnessState("acting")
	q := e.quorumOf(t)
	origin := e.id.Checkpoints.Origin()
	logV := e.id.Checkpoints.Verifier()

	_, _, up := e.upload("demo/a", 1, []byte("material-a......................"))
	if up.Receipt == "" {
		t.Fatal("upload refused")
	}
	w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	st, ae, rel := e.release(e.releaseReq(w, e.challenge(), "demo/a"))
	e.mustOK(st, ae)
	for _, r := range []string{up.Receipt, rel.Receipt} {
		vr, err := tlog.VerifyReceipt([]byte(r), origin, logV)
		if err != nil {
			t.Fatal(err)
		}
		if got := e.cosignedBy(t, vr.Checkpoint.Note, fakes); len(got) < 2 {
			t.Errorf("receipt of entry %d cosigned by %v, want 2 of 3", vr.Index, got)
		}
		if _, err := q.Verify(vr.Checkpoint.Note, origin, logV); err != nil {
			t.Errorf("Quorum.Verify(receipt checkpoint) = %v", err)
		}
		verifyReceipt(t, e.id.NoteKey, r) // x/mod/sumdb/tlog: the inclusion proof
	}

	// /log/checkpoint is cosigned and contains the release.
	code, served := e.get(api.PathLogPrefix + "checkpoint")
	if code != 200 {
		t.Fatalf("/log/checkpoint: %d %s", code, served)
	}
	cc, err := q.Verify(served, origin, logV)
	if err != nil || cc.Size < rel.LogIndex+1 {
		t.Fatalf("/log/checkpoint = %v (size %d), want a witnessed checkpoint containing %d\n%s", err, cc.Size, rel.LogIndex, served)
	}

	// The attestation serves the same kind of note and binds it whole.
	var att api.Attestation
	nonce := bytes.Repeat([]byte{7}, api.NonceSize)
	e.mustOK(e.do("GET", api.PathAttestation+"?nonce="+fmt.Sprintf("%x", nonce), nil, &att))
	if _, err := q.Verify([]byte(att.Checkpoint), origin, logV); err != nil {
		t.Fatalf("attestation checkpoint: %v\n%s", err, att.Checkpoint)
	}
	rd := api.ReportData(api.BrokerBinding(nonce, att.NoteKey, att.HPKEPublicKey, att.TLSSPKISHA256, att.Checkpoint))
	if _, err := e.verifier.Verify(context.Background(), attest.Evidence{Platform: attest.Platform(att.Platform), Data: att.Evidence}, rd); err != nil {
		t.Errorf("the evidence does not bind the cosigned checkpoint: %v", err)
	}
	text, _, _ := tlog.SplitNote([]byte(att.Checkpoint))
	rdText := api.ReportData(api.BrokerBinding(nonce, att.NoteKey, att.HPKEPublicKey, att.TLSSPKISHA256, string(text)))
	if _, err := e.verifier.Verify(context.Background(), attest.Evidence{Platform: attest.Platform(att.Platform), Data: att.Evidence}, rdText); err == nil {
		t.Error("the evidence verified against the checkpoint text without its signatures")
	}

	ws := e.witnessStatus()
	if ws.Policy != "2 of 3" || ws.State != "acting" || ws.WitnessedSize < rel.LogIndex+1 || len(ws.Witnesses) != 3 || ws.Witnesses[0].CosignedAt == nil || ws.Witnesses[0].URL != fakes[0].URL {
		t.Errorf("/v1/witnesses = %+v", ws)
	}
	_, metrics := e.get(api.PathMetrics)
	for _, want := range []string{`kbs_witness_threshold 2`, `kbs_witness_checked 1`, `kbs_witness_halted 0`, `kbs_witness_up{witness="a"} 1`, `kbs_witness_cosigned_size{witness="c"} `, "kbs_log_witnessed_size ", "kbs_witness_wait_seconds_count 2", "kbs_witness_rounds_total "} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestWitnessesDownAtStart: a broker whose witnesses cannot be reached
// serves read-only endpoints and refuses every change before logging
// anything, naming the missing witnesses; once they answer, it acts.
func TestWitnessesDownAtStart(t *testing.T) {
	fakes := newFakes(t, 3)
	for _, f := range fakes {
		f.SetFault(witnesstest.Down)
	}
	e := newWitnessedEnv(t, 2, fakes, fastWitnesses)
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(e.witnessStatus().Reason, "unavailable"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no start-up check failed: %+v", e.witnessStatus())
		}
	}
	before := e.state()
	st, ae, _ := e.upload("demo/a", 1, []byte("material-a......................"))
	if st != 503 || ae.Code != api.CodeWitnessesUnavailable || !strings.Contains(ae.Message, `"a"`) || !strings.Contains(ae.Message, "nothing was done") {
		t.Fatalf("upload with the witnesses down = %d %+v", st, ae)
	}
	w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	if st, ae, _ := e.release(e.releaseReq(w, e.challenge(), "demo/a")); st != 503 || ae.Code != api.CodeWitnessesUnavailable {
		t.Errorf("release with the witnesses down = %d %+v", st, ae)
	}
	if after := e.state(); after.size != before.size {
		t.Errorf("refused requests logged entries: size %d -> %d", before.size, after.size)
	}
	if code, body := e.get(api.PathHealth); code != 503 || !strings.Contains(string(body), "witnesses") {
		t.Errorf("/healthz = %d %s", code, body)
	}
	// Reads work; the checkpoint served carries no cosignature.
	code, served := e.get(api.PathLogPrefix + "checkpoint")
	if _, err := e.quorumOf(t).Verify(served, e.id.Checkpoints.Origin(), e.id.Checkpoints.Verifier()); code != 200 || err == nil {
		t.Errorf("/log/checkpoint with no quorum yet = %d, Verify %v", code, err)
	}
	if ws := e.witnessStatus(); ws.State != "checking" || ws.WitnessedSize != 0 {
		t.Errorf("/v1/witnesses = %+v", ws)
	}
	// Two come back: a quorum.
	fakes[0].SetFault(nil)
	fakes[1].SetFault(nil)
	e.waitWitnessState("acting")
	e.mustOK2(e.upload("demo/a", 1, []byte("material-a......................")))
}

// TestWitnessOutage: witnesses that stop answering while the broker runs.
// A change whose round finds no quorum is logged but answered 503 saying
// so (it is in effect, without a witnessed receipt); from then on changes
// are refused before anything is logged, until a round has a quorum again.
func TestWitnessOutage(t *testing.T) {
	fakes := newFakes(t, 2)
	opts := fastWitnesses
	opts.Wait = 300 * time.Millisecond
	e := newWitnessedEnv(t, 2, fakes, opts)
	e.waitWitnessState("acting")
	e.mustOK2(e.upload("demo/a", 1, []byte("material-a......................")))
	fakes[1].SetFault(witnesstest.Down)
	st, ae, _ := e.upload("demo/b", 1, []byte("material-b......................"))
	if st != 503 || ae.Code != api.CodeWitnessesUnavailable || !strings.Contains(ae.Message, `"demo/b" version 1 was uploaded and logged at index`) || !strings.Contains(ae.Message, `"b"`) {
		t.Fatalf("upload during an outage = %d %+v", st, ae)
	}
	if ws := e.witnessStatus(); ws.State != "no_quorum" || !strings.Contains(ws.Reason, `"b"`) || ws.Witnesses[1].Error == "" {
		t.Errorf("/v1/witnesses during the outage = %+v", ws)
	}
	before := e.state()
	st, ae, _ = e.upload("demo/c", 1, []byte("material-c......................"))
	if st != 503 || ae.Code != api.CodeWitnessesUnavailable || !strings.Contains(ae.Message, "nothing was done") {
		t.Errorf("upload after a round without quorum = %d %+v", st, ae)
	}
	if e.state().size != before.size {
		t.Error("a refused upload was logged")
	}
	fakes[1].SetFault(nil)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, _, _ := e.upload("demo/c", 1, []byte("material-c......................"))
		if st == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("uploads still refused after the witness came back")
		}
	}
	// The upload that got 503 is in effect: its next version is 2.
	if st, ae, _ := e.upload("demo/b", 1, []byte("material-b......................")); st != 409 {
		t.Errorf("upload of demo/b version 1 again = %d %+v, want 409 (it was logged)", st, ae)
	}
}

// TestBehindWitnessesRollback plays the host restoring an old copy of the
// whole data directory: the restored broker's start-up check meets a
// witness that cosigned a larger tree, and it refuses every change,
// release included, saying why; reads still work, the status and metrics
// say so. A fresh look at /log/checkpoint finds no cosignature.
func TestBehindWitnessesRollback(t *testing.T) {
	fakes := newFakes(t, 1)
	e := newWitnessedEnv(t, 1, fakes, fastWitnesses)
	e.waitWitnessState("acting")
	e.mustOK2(e.upload("demo/a", 1, []byte("material-a......................")))
	e.close()
	snapshot := filepath.Join(t.TempDir(), "kbs.db")
	copyFile(t, filepath.Join(e.dir, "kbs.db"), snapshot)
	e.open(t)
	e.waitWitnessState("acting")
	e.mustOK2(e.upload("demo/a", 2, []byte("material-a, version 2..........")))
	cosigned := fakes[0].Size(e.id.Checkpoints.Origin())
	e.close()
	copyFile(t, snapshot, filepath.Join(e.dir, "kbs.db"))
	e.open(t)
	ws := e.waitWitnessState("behind")
	if !strings.Contains(ws.Reason, "larger tree") || !strings.Contains(ws.Reason, "latest copy") {
		t.Errorf("behind reason: %s", ws.Reason)
	}
	if ws.LogSize >= cosigned {
		t.Fatalf("the restored log has %d entries, the witness cosigned %d", ws.LogSize, cosigned)
	}
	w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	st, ae, rel := e.release(e.releaseReq(w, e.challenge(), "demo/a"))
	if st != 503 || ae.Code != api.CodeBehindWitnesses || len(rel.Keys) != 0 {
		t.Errorf("release on a restored copy = %d %+v", st, ae)
	}
	if st, ae, _ := e.upload("demo/b", 1, []byte("material-b......................")); st != 503 || ae.Code != api.CodeBehindWitnesses || !strings.Contains(ae.Message, "restarts it on the latest data directory") {
		t.Errorf("upload on a restored copy = %d %+v", st, ae)
	}
	body := e.nextManifest(t)
	if st, ae := e.do("PUT", api.PathManifest, api.ManifestUpdate{Body: body, Signatures: signAll(t, body, e.owners...)}, nil); st != 503 || ae.Code != api.CodeBehindWitnesses {
		t.Errorf("manifest change on a restored copy = %d %+v", st, ae)
	}
	if code, b := e.get(api.PathHealth); code != 503 || !strings.Contains(string(b), "behind its witnesses") {
		t.Errorf("/healthz = %d %s", code, b)
	}
	if _, m := e.get(api.PathMetrics); !strings.Contains(string(m), "kbs_witness_halted 1") || !strings.Contains(string(m), `kbs_witness_failures_total{witness="a",kind="ahead"}`) {
		t.Errorf("/metrics:\n%s", m)
	}
	_, served := e.get(api.PathLogPrefix + "checkpoint")
	if got := e.cosignedBy(t, served, fakes); len(got) != 0 {
		t.Errorf("the restored broker serves cosignatures by %v", got)
	}
}

// TestBehindWitnessesSplitView: two brokers started from copies of one
// data directory (the same log key) and the same witness. Each passes the
// start-up check (the witness has seen their common tree); once one has a
// change cosigned, the other's different change at the same size is
// refused by the witness (422), and that broker stops acting.
func TestBehindWitnessesSplitView(t *testing.T) {
	fakes := newFakes(t, 1)
	e := newWitnessedEnv(t, 1, fakes, fastWitnesses)
	e.waitWitnessState("acting")
	e.close()
	twin := e.clone(t)
	e.open(t)
	twin.open(t)
	e.waitWitnessState("acting")
	twin.waitWitnessState("acting")
	e.mustOK2(e.upload("demo/a", 1, []byte("material-a......................")))
	st, ae, _ := twin.upload("demo/z", 1, []byte("material-z......................"))
	if st != 503 || ae.Code != api.CodeBehindWitnesses {
		t.Fatalf("the twin's upload = %d %+v, want 503 behind_witnesses", st, ae)
	}
	ws := twin.waitWitnessState("behind")
	if !strings.Contains(ws.Reason, "inconsistent") {
		t.Errorf("twin's reason: %s", ws.Reason)
	}
	// The first broker goes on.
	e.mustOK2(e.upload("demo/b", 1, []byte("material-b......................")))
}

// clone returns a stopped env over a copy of e's data directory (e must be
// closed): the same identity, log and manifest.
func (e *env) clone(t testing.TB) *env {
	t.Helper()
	c := *e
	c.dir = t.TempDir()
	c.db, c.b, c.srv, c.log, c.keys = nil, nil, nil, nil, nil
	for _, f := range []string{"kbs.db", "sealing.key"} {
		copyFile(t, filepath.Join(e.dir, f), filepath.Join(c.dir, f))
	}
	t.Cleanup(c.close)
	return &c
}

// TestWitnessPolicyChange: owners add witnesses, change them and drop
// them through manifest versions, each taking effect through the log: a
// version whose witnesses do not cosign the log is refused, one that drops
// the "witnesses" field silently is refused, and checkpoints containing a
// version's entry carry its own quorum.
func TestWitnessPolicyChange(t *testing.T) {
	fakes := newFakes(t, 3)
	e, err := newEnvSetup(t, nil, nil, func(e *env) { e.witnesses, e.witnessOpts = fakes[:2], fastWitnesses })
	if err != nil {
		t.Fatal(err)
	}
	origin, logV := e.id.Checkpoints.Origin(), e.id.Checkpoints.Verifier()
	next := func(edit func(d *manifest.Document)) []byte {
		m := e.b.active.Load().m
		d := m.Document()
		d.Version, d.Previous = m.Version()+1, m.Hash()
		edit(d)
		body, err := manifest.Encode(d)
		if err != nil {
			t.Fatal(err)
		}
		return body
	}
	put := func(body []byte) (int, *api.Error) {
		return e.do("PUT", api.PathManifest, api.ManifestUpdate{Body: body, Signatures: signAll(t, body, e.owners...)}, nil)
	}
	// Version 2 names a and b, 1 of 2.
	e.mustOK(put(next(func(d *manifest.Document) { d.Witnesses = witnessPolicy(1, fakes[:2]) })))
	_, _, up := e.upload("demo/a", 1, []byte("material-a......................"))
	vr, err := tlog.VerifyReceipt([]byte(up.Receipt), origin, logV)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.cosignedBy(t, vr.Checkpoint.Note, fakes); len(got) == 0 {
		t.Errorf("receipt after version 2 is not cosigned:\n%s", vr.Checkpoint.Note)
	}
	_, served := e.get(api.PathLogPrefix + "checkpoint")
	if _, err := e.quorumOf(t).Verify(served, origin, logV); err != nil {
		t.Errorf("/log/checkpoint after version 2: %v", err)
	}

	// Version 3 requires a, b and c, which does not know the log: refused,
	// and the active version stays 2.
	size := e.treeSize()
	v3 := next(func(d *manifest.Document) { d.Witnesses = witnessPolicy(3, fakes) })
	if st, ae := put(v3); st != 409 || !strings.Contains(ae.Message, "do not cosign this log") || !strings.Contains(ae.Message, e.id.NoteKey) {
		t.Fatalf("PUT version naming a witness that does not know the log = %d %+v", st, ae)
	}
	if _, v := e.b.ActiveManifest(); v != 2 || e.treeSize() != size {
		t.Fatalf("refused version: active %d, log %d -> %d", v, size, e.treeSize())
	}
	// Once c knows the log, version 3 (3 of 3) is accepted, and the next
	// receipts carry the three cosignatures.
	fakes[2].AddLog(origin, logV)
	e.mustOK(put(v3))
	_, _, up = e.upload("demo/b", 1, []byte("material-b......................"))
	vr, err = tlog.VerifyReceipt([]byte(up.Receipt), origin, logV)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.cosignedBy(t, vr.Checkpoint.Note, fakes); len(got) != 3 {
		t.Errorf("receipt after version 3 cosigned by %v, want 3 of 3", got)
	}
	if ws := e.witnessStatus(); ws.Policy != "3 of 3" || ws.ManifestVersion != 3 {
		t.Errorf("/v1/witnesses after version 3 = %+v", ws)
	}

	// Dropping the field is refused; "none" is accepted.
	if st, ae := put(next(func(d *manifest.Document) { d.Witnesses = nil })); st != 400 || !strings.Contains(ae.Message, `"witnesses": "none"`) {
		t.Errorf("PUT version without the witnesses field = %d %+v", st, ae)
	}
	e.mustOK(put(next(func(d *manifest.Document) { d.Witnesses = manifest.NoWitnesses() })))
	for _, f := range fakes {
		f.SetFault(witnesstest.Down)
	}
	_, _, up = e.upload("demo/c", 1, []byte("material-c......................"))
	if up.Receipt == "" {
		t.Fatal("upload refused with no witnesses required")
	}
	if ws := e.witnessStatus(); ws.Policy != "none" || ws.State != "acting" || ws.WitnessedSize != ws.LogSize {
		t.Errorf("/v1/witnesses after none = %+v", ws)
	}
}

// TestRecoveryWitnessed: a recovering broker (Recovery) whose manifest
// names witnesses submits its log's checkpoint to them and attests with
// the cosigned checkpoint, so that holders, who require the quorum as any
// client does, can verify it. A copy of the database older than what the
// witness cosigned finds itself behind and attests with no cosignature.
func TestRecoveryWitnessed(t *testing.T) {
	fakes := newFakes(t, 1)
	hs, _ := holders(t, "alice", "bob")
	e, err := newEnvSetup(t, func(d *manifest.Document) {
		d.Witnesses = witnessPolicy(1, fakes)
		d.Recovery = &manifest.RecoveryPolicy{Threshold: 2, Holders: hs}
	}, nil, func(e *env) { e.witnesses, e.witnessOpts = fakes, fastWitnesses })
	if err != nil {
		t.Fatal(err)
	}
	e.waitWitnessState("acting")
	e.close()
	old := filepath.Join(t.TempDir(), "kbs.db")
	copyFile(t, filepath.Join(e.dir, "kbs.db"), old)
	e.open(t)
	e.waitWitnessState("acting")
	e.mustOK2(e.upload("demo/r", 1, []byte("material-r......................")))
	q := e.quorumOf(t)
	e.close()

	// recovering runs a Recovery on the database at path until the test
	// ends, and returns it and the checkpoint of its attestation once
	// cosigned or behind (done reports which it waits for).
	recovering := func(path string, done func(*Recovery, []byte) bool) []byte {
		t.Helper()
		r, _, _, _ := e.newRecovery(t, path, fastWitnesses)
		srv := httpServer(t, r.Handler())
		t.Cleanup(srv.Close)
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			e.srv = srv
			var att api.Attestation
			if st, ae := e.do("GET", api.PathAttestation+"?nonce="+strings.Repeat("ab", 32), nil, &att); st != 200 || !att.Recovering {
				t.Fatalf("recovery attestation: %d %+v", st, ae)
			}
			if done(r, []byte(att.Checkpoint)) {
				return []byte(att.Checkpoint)
			}
			if time.Now().After(deadline) {
				t.Fatalf("recovery witnesses: %v\n%s", r.b.wit.health(), att.Checkpoint)
			}
		}
	}

	cosigned := func(_ *Recovery, cp []byte) bool {
		_, err := q.Verify(cp, e.id.Checkpoints.Origin(), e.id.Checkpoints.Verifier())
		return err == nil
	}
	cp := recovering(filepath.Join(e.dir, "kbs.db"), cosigned)
	if got := e.cosignedBy(t, cp, fakes); len(got) != 1 {
		t.Errorf("the recovering broker's checkpoint is cosigned by %v", got)
	}

	behind := func(r *Recovery, _ []byte) bool {
		err := r.b.wit.health()
		return err != nil && strings.Contains(err.Error(), "behind")
	}
	cp = recovering(old, behind)
	if got := e.cosignedBy(t, cp, fakes); len(got) != 0 {
		t.Errorf("the recovering copy from before the upload serves cosignatures by %v", got)
	}
	if _, err := q.Verify(cp, e.id.Checkpoints.Origin(), e.id.Checkpoints.Verifier()); err == nil {
		t.Error("the quorum accepts the checkpoint of a recovering copy that is behind")
	}
}
