package kbs

import (
	"bytes"
	"context"
	"crypto/hpke"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/keystore"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/boltlog"
)

// handoverReq builds a newcomer's request: evidence of opts bound to
// nonce, the key pub and the note key noteKey.
func (e *env) handoverReq(opts sim.Options, nonce, pub []byte, noteKey string) *api.HandoverRequest {
	e.t.Helper()
	iss, err := sim.NewIssuer(e.simDir, attest.SNP, opts)
	if err != nil {
		e.t.Fatal(err)
	}
	ev, err := iss.Issue(context.Background(), api.ReportData(api.HandoverBinding(nonce, pub, noteKey)))
	if err != nil {
		e.t.Fatal(err)
	}
	return &api.HandoverRequest{Platform: "snp", Nonce: nonce, Evidence: ev.Data, HPKEPublicKey: pub}
}

func (e *env) handoverNonce() []byte {
	e.t.Helper()
	var ch api.Challenge
	e.mustOK(e.do("POST", api.PathHandoverChallenge, nil, &ch))
	return ch.Nonce
}

// TestHandoverRefusals sends malformed, oversized and hostile handover
// requests: each is refused with its code and changes nothing (log, keys,
// manifest); a valid one logs the handover entry before the master key is
// returned, sealed to the newcomer's key; from then on the broker decides
// nothing, also after a restart; the snapshot token works once.
func TestHandoverRefusals(t *testing.T) {
	e := newEnv(t)
	e.mustOK2(e.upload("demo/a", 1, []byte("material-a")))
	sk, err := api.GenerateKey(api.KEMMLKEM768X25519)
	if err != nil {
		t.Fatal(err)
	}
	pub := api.MarshalPublicKey(sk.PublicKey())
	other, _ := api.GenerateKey(api.KEMX25519)
	otherPub := api.MarshalPublicKey(other.PublicKey())
	nk := e.id.NoteKey
	for _, tt := range []struct {
		name string
		req  func() any
		code string
	}{
		{"bad platform", func() any {
			r := e.handoverReq(sim.Options{}, e.handoverNonce(), pub, nk)
			r.Platform = "sev"
			return r
		}, api.CodeBadRequest},
		{"short nonce", func() any {
			r := e.handoverReq(sim.Options{}, e.handoverNonce(), pub, nk)
			r.Nonce = r.Nonce[:8]
			return r
		}, api.CodeBadRequest},
		{"no evidence", func() any { r := e.handoverReq(sim.Options{}, e.handoverNonce(), pub, nk); r.Evidence = nil; return r }, api.CodeBadRequest},
		{"bad key", func() any {
			r := e.handoverReq(sim.Options{}, e.handoverNonce(), pub, nk)
			r.HPKEPublicKey = []byte{0, 0x20, 1}
			return r
		}, api.CodeBadRequest},
		{"unknown nonce", func() any { return e.handoverReq(sim.Options{}, bytes.Repeat([]byte{7}, 32), pub, nk) }, api.CodeNonceInvalid},
		{"release nonce", func() any { return e.handoverReq(sim.Options{}, e.challenge(), pub, nk) }, api.CodeNonceInvalid},
		{"evidence bound to another key", func() any {
			r := e.handoverReq(sim.Options{}, e.handoverNonce(), otherPub, nk)
			r.HPKEPublicKey = pub
			return r
		}, api.CodeEvidenceRejected},
		{"evidence bound to another log", func() any { return e.handoverReq(sim.Options{}, e.handoverNonce(), pub, "kbs/other+01234567+AAAA") }, api.CodeEvidenceRejected},
		{"release evidence", func() any {
			n := e.handoverNonce()
			w := &worker{platform: attest.SNP, pub: pub}
			r := e.releaseReq(w, n, "demo/a")
			return &api.HandoverRequest{Platform: "snp", Nonce: n, Evidence: r.Evidence, HPKEPublicKey: pub}
		}, api.CodeEvidenceRejected},
		{"measurement not in the manifest", func() any {
			return e.handoverReq(sim.Options{Measurement: bytes.Repeat([]byte{0xb7}, 48)}, e.handoverNonce(), pub, nk)
		}, api.CodePolicyDenied},
		{"debug guest", func() any { return e.handoverReq(sim.Options{Debug: true}, e.handoverNonce(), pub, nk) }, api.CodeEvidenceRejected},
		{"unknown field", func() any {
			b := mustJSON(e.handoverReq(sim.Options{}, e.handoverNonce(), pub, nk))
			return append(bytes.TrimSuffix(b, []byte("}")), []byte(`,"x":1}`)...)
		}, api.CodeBadRequest},
		{"oversized", func() any { return bytes.Repeat([]byte("a"), api.MaxHandoverBody+1) }, api.CodeTooLarge},
	} {
		before := e.state()
		var ans api.Handover
		st, ae := e.do("POST", api.PathHandover, tt.req(), &ans)
		if st == 200 || ae == nil || ae.Code != tt.code {
			t.Errorf("%s: %d %+v, want %s", tt.name, st, ae, tt.code)
		}
		if after := e.state(); !reflect.DeepEqual(before, after) {
			t.Errorf("%s: the refused request changed the state", tt.name)
		}
		if _, fenced := e.b.HandedOver(); fenced {
			t.Fatalf("%s: the refused request fenced the broker", tt.name)
		}
	}

	// The real thing.
	size := e.treeSize()
	nonce := e.handoverNonce()
	req := e.handoverReq(sim.Options{}, nonce, pub, nk)
	var ans api.Handover
	e.mustOK(e.do("POST", api.PathHandover, req, &ans))
	if ans.LogIndex != size || e.treeSize() != size+1 {
		t.Fatalf("handover logged at %d, log %d -> %d", ans.LogIndex, size, e.treeSize())
	}
	entry, idx, _ := verifyReceipt(t, nk, ans.Receipt)
	if idx != ans.LogIndex || entry.Type != tlog.TypeHandover || entry.Handover.KeyDigest != digestString(sha256Of(pub)) {
		t.Fatalf("receipt entry %d: %+v", idx, entry)
	}
	master, err := api.Open(sk, api.HandoverInfo(ans.LogIndex), ans.SealedMaster)
	if err != nil || !bytes.Equal(master, e.keys.MasterKey()) {
		t.Fatalf("the sealed master key: %v", err)
	}
	if _, err := api.Open(sk, api.HandoverInfo(ans.LogIndex+1), ans.SealedMaster); err == nil {
		t.Fatal("the master key opens for another entry")
	}
	// Replayed: refused, nothing logged.
	if st, ae := e.do("POST", api.PathHandover, req, nil); st != http.StatusUnauthorized || ae.Code != api.CodeNonceInvalid {
		t.Fatalf("replayed handover: %d %+v", st, ae)
	}
	// The snapshot: once, with the token.
	get := func(q string) (int, []byte) {
		resp, err := http.Get(e.srv.URL + api.PathHandoverSnapshot + q)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	if st, _ := get("?token=zz"); st != http.StatusBadRequest {
		t.Errorf("snapshot with a malformed token: %d", st)
	}
	if st, _ := get("?token=" + strings.Repeat("00", 32)); st != http.StatusUnauthorized {
		t.Errorf("snapshot with a wrong token: %d", st)
	}
	st, snap := get("?token=" + hex.EncodeToString(ans.SnapshotToken))
	if st != 200 {
		t.Fatalf("snapshot: %d", st)
	}
	// The snapshot is the database, with the log up to the handover entry.
	snapFile := filepath.Join(t.TempDir(), "kbs.db")
	if err := os.WriteFile(snapFile, snap, 0o600); err != nil {
		t.Fatal(err)
	}
	sdb, err := bbolt.Open(snapFile, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	ro, err := ReadOnlySigner(nk)
	if err != nil {
		t.Fatal(err)
	}
	slog, err := boltlog.New(sdb, boltlog.Config{Signer: ro})
	if err != nil {
		t.Fatal(err)
	}
	if cp, err := slog.Checkpoint(context.Background()); err != nil || cp.Size != ans.LogIndex+1 {
		t.Fatalf("the snapshot's log: %+v, %v", cp, err)
	}
	slog.Close()
	sdb.Close()
	if st, _ := get("?token=" + hex.EncodeToString(ans.SnapshotToken)); st != http.StatusUnauthorized {
		t.Errorf("snapshot token used twice: %d", st)
	}

	// Fenced: every decision refused, also after a restart.
	fenced := func() {
		t.Helper()
		for _, c := range []struct{ method, path string }{
			{"POST", api.PathChallenge}, {"POST", api.PathHandoverChallenge},
		} {
			if st, ae := e.do(c.method, c.path, nil, nil); st != http.StatusGone || ae.Code != api.CodeHandedOver {
				t.Errorf("%s %s after the handover: %d %+v", c.method, c.path, st, ae)
			}
		}
		if st, ae, _ := e.upload("demo/a", 2, []byte("v2")); st != http.StatusGone || ae.Code != api.CodeHandedOver {
			t.Errorf("upload after the handover: %d %+v", st, ae)
		}
		var att api.Attestation
		e.mustOK(e.do("GET", api.PathAttestation+"?nonce="+strings.Repeat("ab", 32), nil, &att))
		if !att.HandedOver {
			t.Error("the attestation does not say handed_over")
		}
	}
	fenced()
	size = e.treeSize()
	e.close()
	e.open(t)
	fenced()
	if e.treeSize() != size {
		t.Fatalf("a fenced broker's restart logged %d entries", e.treeSize()-size)
	}
}

func sha256Of(b []byte) [32]byte { return sha256.Sum256(b) }

// httpServer serves h for the test (closed by env.close once it is the
// env's server).
func httpServer(t testing.TB, h http.Handler) *httptest.Server { return httptest.NewServer(h) }

// holders returns n fresh recovery holders and their private keys.
func holders(t testing.TB, names ...string) ([]manifest.RecoveryHolder, map[string]hpke.PrivateKey) {
	keys := map[string]hpke.PrivateKey{}
	var hs []manifest.RecoveryHolder
	for _, n := range names {
		sk, err := api.GenerateKey(api.KEMX25519)
		if err != nil {
			t.Fatal(err)
		}
		keys[n] = sk
		hs = append(hs, manifest.RecoveryHolder{Name: n, PublicKey: base64.StdEncoding.EncodeToString(api.MarshalPublicKey(sk.PublicKey()))})
	}
	return hs, keys
}

// latestShares returns the log's latest recovery-shares entry.
func (e *env) latestShares() (uint64, *tlog.RecoverySharesEntry) {
	e.t.Helper()
	ents, err := e.log.Entries(context.Background(), 0, e.treeSize())
	if err != nil {
		e.t.Fatal(err)
	}
	for i := len(ents) - 1; i >= 0; i-- {
		if en, err := tlog.DecodeEntry(ents[i]); err == nil && en.Type == tlog.TypeRecoveryShares {
			return uint64(i), en.RecoveryShares
		}
	}
	return 0, nil
}

// TestRecoveryShares: the broker logs shares for the manifest's holders at
// its first start (any k of them give the master key back, k-1 do not),
// again when a version names other holders, not when the holders stay; a
// version that drops the recovery field is refused.
func TestRecoveryShares(t *testing.T) {
	hs, keys := holders(t, "alice", "bob", "carol")
	e := newEnvWith(t, func(d *manifest.Document) { d.Recovery = &manifest.RecoveryPolicy{Threshold: 2, Holders: hs} }, nil)
	idx, rs := e.latestShares()
	if rs == nil || rs.Threshold != 2 || len(rs.Shares) != 3 {
		t.Fatalf("recovery shares at start: %+v", rs)
	}
	open := func(rs *tlog.RecoverySharesEntry, version uint64, i int) keystore.Share {
		s := rs.Shares[i]
		share, err := api.Open(keys[s.Holder], api.ShareInfo(s.Holder, version), s.Sealed)
		if err != nil || api.ShareCommitment(s.Holder, share) != s.Commitment {
			t.Fatalf("share of %s: %v", s.Holder, err)
		}
		return share
	}
	master := e.keys.MasterKey()
	for _, pair := range [][2]int{{0, 1}, {1, 2}, {0, 2}} {
		got, err := keystore.Combine([]keystore.Share{open(rs, 1, pair[0]), open(rs, 1, pair[1])})
		if err != nil || !bytes.Equal(got, master) {
			t.Fatalf("shares %v do not give the master key back: %v", pair, err)
		}
	}
	if got, _ := keystore.Combine([]keystore.Share{open(rs, 1, 0)}); bytes.Equal(got, master) {
		t.Fatal("one share gives the master key")
	}
	// A restart logs nothing new.
	size := e.treeSize()
	e.close()
	e.open(t)
	if e.treeSize() != size {
		t.Fatalf("a restart logged %d entries", e.treeSize()-size)
	}
	next := func(edit func(*manifest.Document)) (int, *api.Error) {
		prev, err := manifest.Parse(e.currentManifest())
		if err != nil {
			t.Fatal(err)
		}
		d := prev.Document()
		d.Version, d.Previous = prev.Version()+1, prev.Hash()
		edit(d)
		body, err := manifest.Encode(d)
		if err != nil {
			t.Fatal(err)
		}
		return e.do("PUT", api.PathManifest, api.ManifestUpdate{Body: body, Signatures: signAll(t, body, e.owners...)}, nil)
	}
	// Same holders: no new shares.
	e.mustOK(next(func(d *manifest.Document) { d.Clients[0].Keys = append(d.Clients[0].Keys, "more/*") }))
	if i, _ := e.latestShares(); i != idx {
		t.Fatalf("new shares at %d for the same holders", i)
	}
	// Dropping the field: refused, nothing logged.
	before := e.state()
	if st, ae := next(func(d *manifest.Document) { d.Recovery = nil }); st != http.StatusBadRequest || !strings.Contains(ae.Message, `"recovery": "none"`) {
		t.Fatalf("a version without the recovery field: %d %+v", st, ae)
	}
	if !reflect.DeepEqual(before, e.state()) {
		t.Fatal("the refused version changed the state")
	}
	// Other holders: new shares, for them.
	hs2, keys2 := holders(t, "dave")
	for n, k := range keys2 {
		keys[n] = k
	}
	e.mustOK(next(func(d *manifest.Document) {
		d.Recovery = &manifest.RecoveryPolicy{Threshold: 1, Holders: append(hs[:1], hs2...)}
	}))
	i2, rs2 := e.latestShares()
	if i2 <= idx || rs2.Threshold != 1 || len(rs2.Shares) != 2 || rs2.Shares[1].Holder != "dave" {
		t.Fatalf("shares for the new holders: %d %+v", i2, rs2)
	}
	if got, _ := keystore.Combine([]keystore.Share{open(rs2, 3, 1)}); !bytes.Equal(got, master) {
		t.Fatal("dave's share (threshold 1) is not the master key")
	}
}

func (e *env) currentManifest() []byte {
	e.t.Helper()
	var m api.Manifest
	e.mustOK(e.do("GET", api.PathManifest, nil, &m))
	return m.Body
}

// TestRecoveryIntake runs a Recovery on a broker's database: its
// attestation says recovering and binds keys of the recovery only; shares
// that do not open, of unknown holders, of another holder, or oversized
// are refused and count nothing; k genuine shares restore the master key,
// which opens the store.
func TestRecoveryIntake(t *testing.T) {
	hs, keys := holders(t, "alice", "bob", "carol")
	e := newEnvWith(t, func(d *manifest.Document) { d.Recovery = &manifest.RecoveryPolicy{Threshold: 2, Holders: hs} }, nil)
	master := e.keys.MasterKey()
	idx, rs := e.latestShares()
	noteKey := e.id.NoteKey
	e.close()
	r, db, lg, vkey := e.newRecovery(t, filepath.Join(e.dir, "kbs.db"), WitnessOptions{})
	if vkey != noteKey {
		t.Fatalf("LoggedNoteKey = %q, want %q", vkey, noteKey)
	}
	if _, _, err := lg.Append(context.Background(), []byte(`{}`)); err == nil {
		t.Fatal("a read-only log appended")
	}
	srv := httpServer(t, r.Handler())
	do := func(method, path string, body, out any) (int, *api.Error) {
		e.srv = srv
		return e.do(method, path, body, out)
	}
	var att api.Attestation
	if st, ae := do("GET", api.PathAttestation+"?nonce="+strings.Repeat("ab", 32), nil, &att); st != 200 || !att.Recovering || att.NoteKey != noteKey || bytes.Equal(att.HPKEPublicKey, e.id.HPKEPublicKey) {
		t.Fatalf("recovery attestation: %d %+v recovering %v", st, ae, att.Recovering)
	}
	if st, ae := do("POST", api.PathChallenge, nil, nil); st != http.StatusServiceUnavailable || ae.Code != api.CodeRecovering {
		t.Fatalf("challenge while recovering: %d %+v", st, ae)
	}
	share := func(i int) []byte {
		s := rs.Shares[i]
		sh, err := api.Open(keys[s.Holder], api.ShareInfo(s.Holder, 1), s.Sealed)
		if err != nil {
			t.Fatal(err)
		}
		return sh
	}
	seal := func(holder string, sh []byte, sharesIndex uint64) []byte {
		b, err := api.Seal(att.HPKEPublicKey, api.ShareReturnInfo(holder, sharesIndex), sh)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	status := func() *api.RecoveryStatus {
		var st api.RecoveryStatus
		if code, ae := do("GET", api.PathRecovery, nil, &st); code != 200 {
			t.Fatalf("status: %d %+v", code, ae)
		}
		return &st
	}
	for _, tt := range []struct {
		name string
		body any
		code string
	}{
		{"unknown holder", api.RecoveryShare{Holder: "mallory", Sealed: seal("mallory", share(0), idx)}, api.CodeNotFound},
		{"does not open", api.RecoveryShare{Holder: "alice", Sealed: []byte("garbage")}, api.CodeBadRequest},
		{"sealed for another entry", api.RecoveryShare{Holder: "alice", Sealed: seal("alice", share(0), idx+1)}, api.CodeBadRequest},
		{"another holder's share", api.RecoveryShare{Holder: "alice", Sealed: seal("alice", share(1), idx)}, api.CodeForbidden},
		{"a changed share", api.RecoveryShare{Holder: "alice", Sealed: seal("alice", append(share(0)[:32:32], 0), idx)}, api.CodeForbidden},
		{"unknown field", []byte(`{"holder":"alice","sealed":"","x":1}`), api.CodeBadRequest},
		{"oversized", bytes.Repeat([]byte("a"), api.MaxShareBody+1), api.CodeTooLarge},
	} {
		if st, ae := do("POST", api.PathRecoveryShare, tt.body, nil); st == 200 || ae.Code != tt.code {
			t.Errorf("%s: %d %+v, want %s", tt.name, st, ae, tt.code)
		}
	}
	for _, h := range status().Holders {
		if h.Received {
			t.Fatalf("refused shares counted: %+v", status())
		}
	}
	var res api.RecoveryShareResult
	e.mustOK(do("POST", api.PathRecoveryShare, api.RecoveryShare{Holder: "bob", Sealed: seal("bob", share(1), idx)}, &res))
	if res.Received != 1 || res.Restored {
		t.Fatalf("one share: %+v", res)
	}
	e.mustOK(do("POST", api.PathRecoveryShare, api.RecoveryShare{Holder: "carol", Sealed: seal("carol", share(2), idx)}, &res))
	if !res.Restored {
		t.Fatalf("two shares: %+v", res)
	}
	got, err := r.Wait(context.Background())
	if err != nil || !bytes.Equal(got.Master, master) || got.Recovered.SharesIndex != idx || strings.Join(got.Recovered.Holders, ",") != "bob,carol" {
		t.Fatalf("Wait = %+v, %v", got, err)
	}
	if st, ae := do("POST", api.PathRecoveryShare, api.RecoveryShare{Holder: "alice", Sealed: seal("alice", share(0), idx)}, nil); st != http.StatusConflict {
		t.Fatalf("a share after the restore: %d %+v", st, ae)
	}
	if _, err := keystore.OpenWithMaster(context.Background(), db, &keystore.SimSealer{Path: filepath.Join(e.dir, "new-sealing.key")}, got.Master); err != nil {
		t.Fatal(err)
	}
}

// newRecovery runs a Recovery on the broker database at path (e's broker
// closed), as kbsd does for a broker that cannot unseal its master key:
// the log opened read-only under the note key the database records. It
// returns the Recovery, the database, the log and that note key; all are
// closed when the test ends.
func (e *env) newRecovery(t testing.TB, path string, wopts WitnessOptions) (*Recovery, *bbolt.DB, tlog.Backend, string) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	vkey, err := LoggedNoteKey(db)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ReadOnlySigner(vkey)
	if err != nil {
		t.Fatal(err)
	}
	lg, err := boltlog.New(db, boltlog.Config{Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lg.Close() })
	issuer, err := sim.NewIssuer(e.simDir, attest.SNP, sim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRecovery(context.Background(), RecoveryConfig{DB: db, Log: lg, NoteKey: vkey, Issuer: issuer, Simulated: true, Witnesses: wopts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r, db, lg, vkey
}

// FuzzHandoverHandler sends arbitrary bodies to POST /v1/handover and POST
// /v1/recovery/share of a live broker (seeded with a valid handover
// request whose nonce the broker issued): no answer is a 5xx, a decoded
// request re-encodes to itself, and a refused request changes nothing. A
// handover that succeeds grows the log by exactly its entry (and the
// broker is then fenced for the rest of the run, which the target allows).
func FuzzHandoverHandler(f *testing.F) {
	e := newEnv(f)
	sk, _ := api.GenerateKey(api.KEMX25519)
	pub := api.MarshalPublicKey(sk.PublicKey())
	f.Add(false, mustJSON(e.handoverReq(sim.Options{}, e.handoverNonce(), pub, e.id.NoteKey)))
	f.Add(false, mustJSON(e.handoverReq(sim.Options{Debug: true}, e.handoverNonce(), pub, e.id.NoteKey)))
	f.Add(true, []byte(`{"holder":"alice","sealed":"AAAA"}`))
	files, _ := filepath.Glob("testdata/requests/*.json")
	for _, file := range files {
		b, _ := os.ReadFile(file)
		f.Add(false, b)
	}
	f.Fuzz(func(t *testing.T, share bool, body []byte) {
		e.t = t
		var req api.HandoverRequest
		if decodeJSON(body, &req) == nil {
			roundTrip(t, &req)
		}
		before := e.state()
		path := api.PathHandover
		if share {
			path = api.PathRecoveryShare
		}
		st, ae := e.do("POST", path, body, nil)
		if st == 200 {
			if share || e.treeSize() != before.size+1 {
				t.Fatalf("POST %s answered 200, log %d -> %d", path, before.size, e.treeSize())
			}
			return
		}
		if st >= 500 {
			t.Fatalf("status %d: %+v", st, ae)
		}
		if after := e.state(); !reflect.DeepEqual(before, after) {
			t.Fatalf("rejected request (%d %s) changed state", st, ae.Code)
		}
	})
}
