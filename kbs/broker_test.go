package kbs

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/bbolt"
	sumdb "golang.org/x/mod/sumdb/tlog"

	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// simPlatforms are the platforms every release test runs on.
func simPlatforms(t *testing.T, dir string) []attest.Platform {
	ps := []attest.Platform{attest.SNP, attest.TDX}
	for _, p := range ps {
		if _, err := sim.NewIssuer(dir, p, sim.Options{}); err != nil {
			t.Fatalf("simulated %s: %v", p, err)
		}
	}
	return ps
}

func TestUploadAndRelease(t *testing.T) {
	e := newEnv(t)
	material := []byte("0123456789abcdef0123456789abcdef")
	st, ae, up := e.upload("demo/a", 1, material)
	e.mustOK(st, ae)
	entry, idx, _ := verifyReceipt(t, e.id.NoteKey, up.Receipt)
	if entry.Type != tlog.TypeKeyUpload || entry.KeyUpload.ID != "demo/a" || entry.KeyUpload.Version != 1 || idx != up.LogIndex {
		t.Fatalf("upload receipt entry = %+v at %d, want key-upload demo/a v1 at %d", entry, idx, up.LogIndex)
	}
	for _, p := range simPlatforms(t, e.simDir) {
		for _, kem := range []uint16{api.KEMX25519, api.KEMMLKEM768X25519} {
			w := e.newWorker(p, sim.Options{}, kem)
			st, ae, rel := e.release(e.releaseReq(w, e.challenge(), "demo/a"))
			e.mustOK(st, ae)
			if len(rel.Keys) != 1 || rel.Class != "demo-worker" {
				t.Fatalf("%s/%#x: release = %+v", p, kem, rel)
			}
			k := rel.Keys[0]
			got, err := api.Open(w.sk, api.ReleaseInfo(k.ID, k.Version, rel.LogIndex), k.Sealed)
			if err != nil || !bytes.Equal(got, material) {
				t.Fatalf("%s/%#x: opened %q, %v", p, kem, got, err)
			}
			entry, idx, _ := verifyReceipt(t, e.id.NoteKey, rel.Receipt)
			r := entry.Release
			if entry.Type != tlog.TypeRelease || idx != rel.LogIndex || r.WorkerClass != "demo-worker" ||
				r.Platform != string(p) || !r.Simulated || len(r.Keys) != 1 || r.Keys[0] != (tlog.KeyRef{ID: "demo/a", Version: 1}) {
				t.Fatalf("%s: release entry = %+v at %d", p, r, idx)
			}
			if r.WorkerKeyDigest != digestString(sha256Sum(w.pub)) {
				t.Errorf("%s: worker key digest %s does not match the worker key", p, r.WorkerKeyDigest)
			}
			if hash, _ := e.b.ActiveManifest(); r.ManifestHash != hash {
				t.Errorf("%s: manifest hash %s, want %s", p, r.ManifestHash, hash)
			}
			// The sealed key is bound to its log index: another index fails.
			if _, err := api.Open(w.sk, api.ReleaseInfo(k.ID, k.Version, rel.LogIndex+1), k.Sealed); err == nil {
				t.Errorf("%s: sealed key opened under another log index", p)
			}
		}
	}
	// A second version is released from then on.
	e.mustOK2(e.upload("demo/a", 2, []byte("second version of the key......")))
	w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	st, ae, rel := e.release(e.releaseReq(w, e.challenge(), "demo/a"))
	e.mustOK(st, ae)
	if rel.Keys[0].Version != 2 {
		t.Errorf("released version %d, want 2", rel.Keys[0].Version)
	}
}

func (e *env) mustOK2(st int, ae *api.Error, _ *api.KeyUploadResult) { e.t.Helper(); e.mustOK(st, ae) }

// state is what a rejected request must not change.
type state struct {
	size uint64
	keys any
	man  string
}

func (e *env) state() state {
	e.t.Helper()
	list, err := e.keys.List()
	if err != nil {
		e.t.Fatal(err)
	}
	h, _ := e.b.ActiveManifest()
	return state{size: e.treeSize(), keys: list, man: h}
}

func TestRejections(t *testing.T) {
	e := newEnv(t)
	e.mustOK2(e.upload("demo/a", 1, []byte("material-a......................")))
	e.mustOK2(e.upload("secret/s", 1, []byte("material-s......................")))
	good := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	replayUpload := e.uploadReq("demo-client", e.client, "demo/b", 1, []byte("b"))
	e.mustOK(e.do("POST", api.PathKeys, replayUpload, nil))

	// Nonce consumed by a successful release, to be replayed.
	usedNonce := e.challenge()
	usedReq := e.releaseReq(good, usedNonce, "demo/a")
	e.mustOK2r(e.release(usedReq))

	stranger := newKey(t)
	tests := []struct {
		name   string
		status int
		code   string
		send   func() (int, *api.Error)
	}{
		{"wrong measurement", 403, api.CodePolicyDenied, func() (int, *api.Error) {
			w := e.newWorker(attest.SNP, sim.Options{Measurement: bytes.Repeat([]byte{7}, 48)}, api.KEMX25519)
			st, ae, _ := e.release(e.releaseReq(w, e.challenge(), "demo/a"))
			return st, ae
		}},
		{"debug policy", 403, api.CodeEvidenceRejected, func() (int, *api.Error) {
			w := e.newWorker(attest.SNP, sim.Options{Debug: true}, api.KEMX25519)
			st, ae, _ := e.release(e.releaseReq(w, e.challenge(), "demo/a"))
			return st, ae
		}},
		{"wrong TDX MRTD", 403, api.CodePolicyDenied, func() (int, *api.Error) {
			w := e.newWorker(attest.TDX, sim.Options{Measurement: bytes.Repeat([]byte{7}, 48)}, api.KEMX25519)
			st, ae, _ := e.release(e.releaseReq(w, e.challenge(), "demo/a"))
			return st, ae
		}},
		{"TDX debug attribute", 403, api.CodeEvidenceRejected, func() (int, *api.Error) {
			w := e.newWorker(attest.TDX, sim.Options{Debug: true}, api.KEMX25519)
			st, ae, _ := e.release(e.releaseReq(w, e.challenge(), "demo/a"))
			return st, ae
		}},
		{"TDX evidence bound to another worker key", 403, api.CodeEvidenceRejected, func() (int, *api.Error) {
			w := e.newWorker(attest.TDX, sim.Options{}, api.KEMX25519)
			req := e.releaseReq(w, e.challenge(), "demo/a")
			req.HPKEPublicKey = good.pub
			st, ae, _ := e.release(req)
			return st, ae
		}},
		{"replayed nonce", 401, api.CodeNonceInvalid, func() (int, *api.Error) {
			st, ae, _ := e.release(usedReq)
			return st, ae
		}},
		{"unknown nonce", 401, api.CodeNonceInvalid, func() (int, *api.Error) {
			n := make([]byte, 32)
			rand.Read(n)
			st, ae, _ := e.release(e.releaseReq(good, n, "demo/a"))
			return st, ae
		}},
		{"expired nonce", 401, api.CodeNonceInvalid, func() (int, *api.Error) {
			n := e.challenge()
			e.clock.Advance(2 * time.Minute)
			st, ae, _ := e.release(e.releaseReq(good, n, "demo/a"))
			return st, ae
		}},
		{"evidence bound to another worker key", 403, api.CodeEvidenceRejected, func() (int, *api.Error) {
			req := e.releaseReq(good, e.challenge(), "demo/a")
			other := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
			req.HPKEPublicKey = other.pub
			st, ae, _ := e.release(req)
			return st, ae
		}},
		{"evidence bound to another nonce", 403, api.CodeEvidenceRejected, func() (int, *api.Error) {
			req := e.releaseReq(good, e.challenge(), "demo/a")
			req.Nonce = e.challenge()
			st, ae, _ := e.release(req)
			return st, ae
		}},
		{"evidence of the other platform", 403, api.CodeEvidenceRejected, func() (int, *api.Error) {
			req := e.releaseReq(good, e.challenge(), "demo/a")
			req.Platform = "tdx"
			st, ae, _ := e.release(req)
			return st, ae
		}},
		{"corrupted evidence signature", 403, api.CodeEvidenceRejected, func() (int, *api.Error) {
			req := e.releaseReq(good, e.challenge(), "demo/a")
			req.Evidence[0x2a0] ^= 1 // inside the report's signature
			st, ae, _ := e.release(req)
			return st, ae
		}},
		{"key not allowed for the class", 403, api.CodePolicyDenied, func() (int, *api.Error) {
			st, ae, _ := e.release(e.releaseReq(good, e.challenge(), "secret/s"))
			return st, ae
		}},
		{"one key of two not allowed", 403, api.CodePolicyDenied, func() (int, *api.Error) {
			st, ae, _ := e.release(e.releaseReq(good, e.challenge(), "demo/a", "secret/s"))
			return st, ae
		}},
		{"unknown key", 404, api.CodeNotFound, func() (int, *api.Error) {
			st, ae, _ := e.release(e.releaseReq(good, e.challenge(), "demo/nope"))
			return st, ae
		}},
		{"upload without a valid client signature", 401, api.CodeUnauthorized, func() (int, *api.Error) {
			req := e.uploadReq("demo-client", stranger, "demo/c", 1, []byte("c"))
			return e.do("POST", api.PathKeys, req, nil)
		}},
		{"upload by an unknown client", 401, api.CodeUnauthorized, func() (int, *api.Error) {
			req := e.uploadReq("mallory", stranger, "demo/c", 1, []byte("c"))
			return e.do("POST", api.PathKeys, req, nil)
		}},
		{"upload with a swapped sealed key", 401, api.CodeUnauthorized, func() (int, *api.Error) {
			req := e.uploadReq("demo-client", e.client, "demo/c", 1, []byte("c"))
			other := e.uploadReq("demo-client", e.client, "demo/c", 1, []byte("evil"))
			req.Sealed = other.Sealed
			return e.do("POST", api.PathKeys, req, nil)
		}},
		{"upload of a key the client may not write", 403, api.CodeForbidden, func() (int, *api.Error) {
			req := e.uploadReq("demo-client", e.client, "other/c", 1, []byte("c"))
			return e.do("POST", api.PathKeys, req, nil)
		}},
		{"replayed upload", 409, api.CodeConflict, func() (int, *api.Error) {
			return e.do("POST", api.PathKeys, replayUpload, nil)
		}},
		{"upload skipping a version", 409, api.CodeConflict, func() (int, *api.Error) {
			st, ae, _ := e.upload("demo/a", 5, []byte("x"))
			return st, ae
		}},
		{"upload sealed for another version", 400, api.CodeBadRequest, func() (int, *api.Error) {
			req := e.uploadReq("demo-client", e.client, "demo/a", 3, []byte("x"))
			req.Version = 2
			sig, _ := api.SignStatement(e.client, api.UploadStatement("demo-client", "demo/a", 2, e.id.HPKEPublicKey, req.Sealed))
			req.Signature = sig
			return e.do("POST", api.PathKeys, req, nil)
		}},
		{"delete with a stale version", 409, api.CodeConflict, func() (int, *api.Error) {
			sig, _ := api.SignStatement(e.client, api.DeleteStatement("demo-client", "demo/b", 7, e.id.HPKEPublicKey))
			return e.do("DELETE", api.PathKeys+"/demo/b", api.KeyDelete{Client: "demo-client", Version: 7, Signature: sig}, nil)
		}},
		{"delete signed by a stranger", 401, api.CodeUnauthorized, func() (int, *api.Error) {
			sig, _ := api.SignStatement(stranger, api.DeleteStatement("demo-client", "demo/b", 1, e.id.HPKEPublicKey))
			return e.do("DELETE", api.PathKeys+"/demo/b", api.KeyDelete{Client: "demo-client", Version: 1, Signature: sig}, nil)
		}},
		{"manifest update under threshold", 401, api.CodeUnauthorized, func() (int, *api.Error) {
			body := e.nextManifest(t)
			return e.do("PUT", api.PathManifest, api.ManifestUpdate{Body: body, Signatures: signAll(t, body, e.owners[0])}, nil)
		}},
		{"manifest update signed twice by one owner", 401, api.CodeUnauthorized, func() (int, *api.Error) {
			body := e.nextManifest(t)
			return e.do("PUT", api.PathManifest, api.ManifestUpdate{Body: body, Signatures: signAll(t, body, e.owners[0], e.owners[0])}, nil)
		}},
		{"manifest update by strangers", 401, api.CodeUnauthorized, func() (int, *api.Error) {
			body := e.nextManifest(t)
			return e.do("PUT", api.PathManifest, api.ManifestUpdate{Body: body, Signatures: signAll(t, body, stranger, newKey(t))}, nil)
		}},
		{"manifest replay of version 1", 409, api.CodeConflict, func() (int, *api.Error) {
			return e.do("PUT", api.PathManifest, api.ManifestUpdate{Body: e.manifest, Signatures: signAll(t, e.manifest, e.owners...)}, nil)
		}},
		{"manifest that this broker does not match", 409, api.CodeConflict, func() (int, *api.Error) {
			m, _ := manifest.Parse(e.nextManifest(t))
			d := m.Document()
			for i := range d.Service.SNP {
				d.Service.SNP[i].Measurement = manifest.Hexes(otherMeasurement)
			}
			body, err := manifest.Encode(d)
			if err != nil {
				t.Fatal(err)
			}
			return e.do("PUT", api.PathManifest, api.ManifestUpdate{Body: body, Signatures: signAll(t, body, e.owners...)}, nil)
		}},
		{"malformed manifest", 400, api.CodeBadRequest, func() (int, *api.Error) {
			return e.do("PUT", api.PathManifest, api.ManifestUpdate{Body: []byte(`{"schema":"kbs-manifest/v1"}`)}, nil)
		}},
		{"malformed release body", 400, api.CodeBadRequest, func() (int, *api.Error) {
			return e.do("POST", api.PathRelease, []byte(`{"platform":"snp",`), nil)
		}},
		{"release body with unknown field", 400, api.CodeBadRequest, func() (int, *api.Error) {
			return e.do("POST", api.PathRelease, []byte(`{"platform":"snp","keys":["demo/a"]}`), nil)
		}},
		{"release body with trailing data", 400, api.CodeBadRequest, func() (int, *api.Error) {
			return e.do("POST", api.PathRelease, append(mustJSON(e.releaseReq(good, e.challenge(), "demo/a")), []byte(` {}`)...), nil)
		}},
		{"release with a bad worker key", 400, api.CodeBadRequest, func() (int, *api.Error) {
			req := e.releaseReq(good, e.challenge(), "demo/a")
			req.HPKEPublicKey = []byte{0, 0x20, 1}
			st, ae, _ := e.release(req)
			return st, ae
		}},
		{"release with a bad key id", 400, api.CodeBadRequest, func() (int, *api.Error) {
			st, ae, _ := e.release(e.releaseReq(good, e.challenge(), "demo/../a"))
			return st, ae
		}},
		{"oversized release body", 413, api.CodeTooLarge, func() (int, *api.Error) {
			return e.do("POST", api.PathRelease, bytes.Repeat([]byte(" "), api.MaxReleaseBody+1), nil)
		}},
		{"oversized upload body", 413, api.CodeTooLarge, func() (int, *api.Error) {
			return e.do("POST", api.PathKeys, bytes.Repeat([]byte("x"), api.MaxKeyBody+1), nil)
		}},
		{"oversized manifest body", 413, api.CodeTooLarge, func() (int, *api.Error) {
			return e.do("PUT", api.PathManifest, bytes.Repeat([]byte("x"), api.MaxManifestBody+1), nil)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.state()
			st, ae := tt.send()
			if st != tt.status || ae == nil || ae.Code != tt.code {
				t.Fatalf("status %d %+v, want %d %s", st, ae, tt.status, tt.code)
			}
			if after := e.state(); !reflect.DeepEqual(before, after) {
				t.Errorf("state changed: before %+v, after %+v", before, after)
			}
			t.Logf("%d %s: %s", st, ae.Code, ae.Message)
		})
	}
}

func (e *env) mustOK2r(st int, ae *api.Error, _ *api.Release) { e.t.Helper(); e.mustOK(st, ae) }

// nextManifest returns version 2 of the test manifest: the same document
// with a new key rule.
func (e *env) nextManifest(t testing.TB) []byte {
	t.Helper()
	m, err := manifest.Parse(e.manifest)
	if err != nil {
		t.Fatal(err)
	}
	d := m.Document()
	d.Version = 2
	d.Previous = m.Hash()
	d.Keys = append(d.Keys, manifest.KeyRule{Match: "shared/*", ReleaseTo: []string{"demo-worker", "other-worker"}})
	d.Clients[0].Keys = append(d.Clients[0].Keys, "shared/*")
	body, err := manifest.Encode(d)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func TestManifestUpdate(t *testing.T) {
	e := newEnv(t)
	body := e.nextManifest(t)
	size := e.treeSize()
	var got api.Manifest
	e.mustOK(e.do("PUT", api.PathManifest, api.ManifestUpdate{Body: body, Signatures: signAll(t, body, e.owners...)}, &got))
	if got.Version != 2 || got.Hash != manifest.HashOf(body) || got.LogIndex != size {
		t.Fatalf("PUT answer = version %d hash %s index %d; want 2 %s %d", got.Version, got.Hash, got.LogIndex, manifest.HashOf(body), size)
	}
	entries, err := e.log.Entries(context.Background(), got.LogIndex, got.LogIndex+1)
	if err != nil {
		t.Fatal(err)
	}
	ent, err := tlog.DecodeEntry(entries[0])
	if err != nil || ent.Type != tlog.TypeManifest || !bytes.Equal(ent.Manifest.Body, body) || len(ent.Manifest.Signers) != 2 {
		t.Fatalf("log entry = %+v, %v", ent, err)
	}
	var cur api.Manifest
	e.mustOK(e.do("GET", api.PathManifest, nil, &cur))
	if !bytes.Equal(cur.Body, body) || len(cur.Signatures) != 2 {
		t.Fatalf("GET manifest = version %d", cur.Version)
	}
	var hist api.ManifestHistory
	e.mustOK(e.do("GET", api.PathManifestHistory, nil, &hist))
	if len(hist.Manifests) != 2 || hist.Manifests[0].Version != 1 || hist.Manifests[1].Version != 2 {
		t.Fatalf("history = %+v", hist)
	}
	// The new rule is in force.
	e.mustOK2(e.upload("shared/x", 1, []byte("shared")))
	w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	e.mustOK2r(e.release(e.releaseReq(w, e.challenge(), "shared/x")))

	// After a restart the chain comes back, and a different version 1 in
	// the configuration is refused.
	e.close()
	e.open(t)
	if h, v := e.b.ActiveManifest(); v != 2 || h != manifest.HashOf(body) {
		t.Fatalf("after restart: active version %d %s", v, h)
	}
	// Another version 1 in the configuration is refused.
	e.close()
	e.manifest = append(append([]byte(nil), e.manifest...), ' ')
	defer func() { e.manifest = e.manifest[:len(e.manifest)-1] }()
	if err := e.tryOpen(t); err == nil || !strings.Contains(err.Error(), "not the version 1") {
		t.Fatalf("restart with another version 1: %v", err)
	}
}

func TestDeleteShreds(t *testing.T) {
	e := newEnv(t)
	e.mustOK2(e.upload("demo/d", 1, []byte("to be shredded")))
	sig, _ := api.SignStatement(e.client, api.DeleteStatement("demo-client", "demo/d", 1, e.id.HPKEPublicKey))
	var res api.KeyDeleteResult
	e.mustOK(e.do("DELETE", api.PathKeys+"/demo/d", api.KeyDelete{Client: "demo-client", Version: 1, Signature: sig}, &res))
	entry, _, _ := verifyReceipt(t, e.id.NoteKey, res.Receipt)
	if entry.Type != tlog.TypeKeyDelete || entry.KeyDelete.ID != "demo/d" {
		t.Fatalf("delete entry = %+v", entry)
	}
	// Replaying the delete fails; the key is gone for workers; versions are
	// not reused.
	if st, ae := e.do("DELETE", api.PathKeys+"/demo/d", api.KeyDelete{Client: "demo-client", Version: 1, Signature: sig}, nil); st != 404 {
		t.Errorf("replayed delete: %d %+v, want 404", st, ae)
	}
	w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	if st, ae, _ := e.release(e.releaseReq(w, e.challenge(), "demo/d")); st != 404 {
		t.Errorf("release of a deleted key: %d %+v, want 404", st, ae)
	}
	if st, ae, _ := e.upload("demo/d", 1, []byte("again")); st != 409 {
		t.Errorf("re-upload of version 1: %d %+v, want 409", st, ae)
	}
	e.mustOK2(e.upload("demo/d", 2, []byte("new life")))
	var list api.KeyList
	e.mustOK(e.do("GET", api.PathKeys, nil, &list))
	if len(list.Keys) != 1 || list.Keys[0].ID != "demo/d" || list.Keys[0].Version != 2 || list.Keys[0].Deleted {
		t.Fatalf("key list = %+v", list)
	}
}

// TestAttestation checks the broker's answer the way a client does:
// evidence bound to nonce, keys and checkpoint; inclusion proof of the
// active manifest; consistency proof from an older size.
func TestAttestation(t *testing.T) {
	e := newEnv(t)
	old := e.treeSize()
	e.mustOK2(e.upload("demo/a", 1, []byte("a")))
	e.mustOK2(e.upload("demo/b", 1, []byte("b")))
	nonce := make([]byte, 32)
	rand.Read(nonce)
	var att api.Attestation
	e.mustOK(e.do("GET", api.PathAttestation+"?nonce="+hex.EncodeToString(nonce)+"&since="+itoa(old), nil, &att))
	rd := api.ReportData(api.BrokerBinding(nonce, att.NoteKey, att.HPKEPublicKey, att.TLSSPKISHA256, att.Checkpoint))
	c, err := e.verifier.Verify(context.Background(), attest.Evidence{Platform: attest.Platform(att.Platform), Data: att.Evidence}, rd)
	if err != nil {
		t.Fatalf("broker evidence: %v", err)
	}
	if !c.Simulated || !att.Simulated {
		t.Errorf("simulated = %v / %v", c.Simulated, att.Simulated)
	}
	m, _ := manifest.Parse(att.Manifest.Body)
	if r := m.MatchService(c); !r.OK() {
		t.Errorf("broker evidence does not match the service values: %s", r.Summary())
	}
	if !bytes.Equal(att.Manifest.Body, e.manifest) || !bytes.Equal(att.HPKEPublicKey, e.id.HPKEPublicKey) || att.NoteKey != e.id.NoteKey {
		t.Errorf("attestation does not carry the broker's manifest and keys")
	}
	cp, err := tlog.OpenCheckpoint([]byte(att.Checkpoint), e.id.Origin(), e.id.Checkpoints.Verifier())
	if err != nil {
		t.Fatal(err)
	}
	var proof sumdb.RecordProof
	for _, h := range att.Manifest.InclusionProof {
		proof = append(proof, sumdb.Hash(h))
	}
	ents, _ := e.log.Entries(context.Background(), att.Manifest.LogIndex, att.Manifest.LogIndex+1)
	if err := sumdb.CheckRecord(proof, int64(cp.Size), cp.Hash, int64(att.Manifest.LogIndex), sumdb.RecordHash(ents[0])); err != nil {
		t.Errorf("manifest inclusion proof: %v", err)
	}
	oldRoot := e.treeHash(t, old)
	var cons sumdb.TreeProof
	for _, h := range att.ConsistencyProof {
		cons = append(cons, sumdb.Hash(h))
	}
	if err := sumdb.CheckTree(cons, int64(cp.Size), cp.Hash, int64(old), oldRoot); err != nil {
		t.Errorf("consistency proof from %d: %v", old, err)
	}
	// A since beyond the log means the client saw another (or a longer) log.
	if st, ae := e.do("GET", api.PathAttestation+"?nonce="+hex.EncodeToString(nonce)+"&since=999", nil, nil); st != 409 {
		t.Errorf("since beyond the log: %d %+v", st, ae)
	}
	for _, q := range []string{"", "?nonce=zz", "?nonce=00", "?nonce=" + hex.EncodeToString(nonce) + "&since=-1"} {
		if st, _ := e.do("GET", api.PathAttestation+q, nil, nil); st != 400 {
			t.Errorf("GET attestation%s: %d, want 400", q, st)
		}
	}
}

// treeHash computes the RFC 6962 root of the first n entries of the log
// with golang.org/x/mod, independently of the backend.
func (e *env) treeHash(t *testing.T, n uint64) sumdb.Hash {
	t.Helper()
	ents, err := e.log.Entries(context.Background(), 0, n)
	if err != nil {
		t.Fatal(err)
	}
	var stored memHashes
	for i, en := range ents {
		hs, err := sumdb.StoredHashes(int64(i), en, stored)
		if err != nil {
			t.Fatal(err)
		}
		stored = append(stored, hs...)
	}
	h, err := sumdb.TreeHash(int64(n), stored)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

type memHashes []sumdb.Hash

func (m memHashes) ReadHashes(idx []int64) ([]sumdb.Hash, error) {
	out := make([]sumdb.Hash, len(idx))
	for i, x := range idx {
		if x >= int64(len(m)) {
			return nil, io.ErrUnexpectedEOF
		}
		out[i] = m[x]
	}
	return out, nil
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }

func TestChallengeTableBounded(t *testing.T) {
	e := newEnv(t)
	for i := 0; i < 64; i++ {
		e.challenge()
	}
	if st, ae := e.do("POST", api.PathChallenge, nil, nil); st != 429 || ae.Code != api.CodeRateLimited {
		t.Fatalf("challenge beyond the table: %d %+v, want 429", st, ae)
	}
	e.clock.Advance(2 * time.Minute)
	e.challenge() // expired ones make room
	if n := e.b.nonces.len(); n != 1 {
		t.Errorf("pending nonces after expiry = %d, want 1", n)
	}
}

func TestHTTPEdges(t *testing.T) {
	e := newEnv(t)
	for _, tt := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/v1/nope", 404},
		{"POST", api.PathAttestation, 405},
		{"GET", api.PathRelease, 405},
		{"GET", "/log/tile/0/x001", 400},
		{"GET", "/log/tile/entries/000.p/300", 400},
		{"GET", "/log/tile/entries/001", 404},
		{"GET", "/log/other", 404},
		{"GET", api.PathLogProof + "?index=99", 400},
		{"GET", api.PathLogProof, 400},
		{"GET", api.PathLogConsistency + "?old=5&new=2", 400},
		{"POST", api.PathWitnesses, 405},
		{"GET", api.PathWitnesses + "?x=%zz&y=" + strings.Repeat("a", 4000), 200},
		{"PUT", api.PathLogPrefix + "checkpoint", 405},
		{"GET", api.PathLogPrefix + "checkpoint?since=1", 200},
	} {
		if st, _ := e.do(tt.method, tt.path, nil, nil); st != tt.status {
			t.Errorf("%s %s = %d, want %d", tt.method, tt.path, st, tt.status)
		}
	}
	var ip api.InclusionProof
	e.mustOK(e.do("GET", api.PathLogProof+"?index=0", nil, &ip))
	if ip.TreeSize != e.treeSize() {
		t.Errorf("proof tree size %d", ip.TreeSize)
	}
	resp, err := http.Get(e.srv.URL + "/log/tile/entries/000.p/2")
	if err != nil {
		t.Fatal(err)
	}
	bundle, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	ents, _ := e.log.Entries(context.Background(), 0, 2)
	var want []byte
	for _, en := range ents {
		want = append(want, byte(len(en)>>8), byte(len(en)))
		want = append(want, en...)
	}
	if !bytes.Equal(bundle, want) {
		t.Errorf("entry bundle differs from the log's entries")
	}
	resp, err = http.Get(e.srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(metrics, []byte("kbs_log_tree_size 2\n")) || !bytes.Contains(metrics, []byte(`kbs_http_requests_total{route="log_proof",code="ok"} 1`)) {
		t.Errorf("metrics:\n%s", metrics)
	}
	resp, err = http.Get(e.srv.URL + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	e.b.Close()
	resp, _ = http.Get(e.srv.URL + "/healthz")
	if resp.StatusCode != 503 {
		t.Errorf("healthz while closing = %d", resp.StatusCode)
	}
}

func TestRestartKeepsIdentityAndKeys(t *testing.T) {
	e := newEnv(t)
	e.mustOK2(e.upload("demo/a", 1, []byte("kept")))
	noteKey, hpkePub, spki := e.id.NoteKey, e.id.HPKEPublicKey, e.id.TLSSPKISHA256
	size := e.treeSize()
	e.close()
	e.open(t)
	if e.id.NoteKey != noteKey || !bytes.Equal(e.id.HPKEPublicKey, hpkePub) || e.id.TLSSPKISHA256 != spki {
		t.Fatal("identity changed across a restart")
	}
	if got := e.treeSize(); got != size {
		t.Fatalf("restart appended entries: size %d -> %d", size, got)
	}
	w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	st, ae, rel := e.release(e.releaseReq(w, e.challenge(), "demo/a"))
	e.mustOK(st, ae)
	got, err := api.Open(w.sk, api.ReleaseInfo("demo/a", 1, rel.LogIndex), rel.Keys[0].Sealed)
	if err != nil || string(got) != "kept" {
		t.Fatalf("after restart: %q %v", got, err)
	}
}

// TestAttestationRateLimited: attestations beyond their budget are 429,
// and spend nothing of the challenges' budget.
func TestAttestationRateLimited(t *testing.T) {
	e := newEnv(t)
	e.b.budgets = newBudgets(Config{AttestationRate: 1, AttestationBurst: 2, ChallengeRate: 1, ChallengeBurst: 2,
		ManifestRate: 1, ManifestBurst: 1, PeerShare: 1, Now: e.clock.Now})
	nonce := hex.EncodeToString(bytes.Repeat([]byte{1}, 32))
	for i := 0; i < 2; i++ {
		e.mustOK(e.do("GET", api.PathAttestation+"?nonce="+nonce, nil, nil))
	}
	if st, ae := e.do("GET", api.PathAttestation+"?nonce="+nonce, nil, nil); st != 429 || ae.Code != api.CodeRateLimited {
		t.Fatalf("third attestation in a burst of 2: %d %+v, want 429", st, ae)
	}
	for i := 0; i < 2; i++ {
		e.mustOK(e.do("POST", api.PathChallenge, nil, nil))
	}
	if st, ae := e.do("POST", api.PathChallenge, nil, nil); st != 429 {
		t.Fatalf("challenge with an empty bucket: %d %+v, want 429", st, ae)
	}
	e.clock.Advance(time.Second)
	e.mustOK(e.do("GET", api.PathAttestation+"?nonce="+nonce, nil, nil))
}

// TestPendingManifest simulates a crash between the durable manifest entry
// and the activation (and one before the entry): the next start activates
// the logged version and drops the unlogged one.
func TestPendingManifest(t *testing.T) {
	for _, logged := range []bool{true, false} {
		e := newEnv(t)
		body := e.nextManifest(t)
		next, err := manifest.Parse(body)
		if err != nil {
			t.Fatal(err)
		}
		size := e.treeSize()
		sigs := signAll(t, body, e.owners...)
		pending := pendingRecord{SizeFrom: size, Manifest: manifestRecord{Version: 2, Hash: next.Hash(), Body: body, Signatures: sigs}}
		if err := e.db.Update(func(tx *bbolt.Tx) error {
			return tx.Bucket(bucketBroker).Put(keyPending, mustJSON(&pending))
		}); err != nil {
			t.Fatal(err)
		}
		if logged {
			fps := e.b.active.Load().m.OwnerFingerprints()
			entry, err := tlog.EncodeEntry(&tlog.Entry{Type: tlog.TypeManifest, Time: clock.Now(), Manifest: &tlog.ManifestEntry{
				Version: 2, Hash: next.Hash(), Previous: next.Previous(), Body: body, Signers: fps,
			}})
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := e.log.Append(context.Background(), entry); err != nil {
				t.Fatal(err)
			}
		}
		e.close()
		e.open(t)
		want := uint64(1)
		if logged {
			want = 2
		}
		if _, v := e.b.ActiveManifest(); v != want {
			t.Errorf("logged=%v: active version %d after restart, want %d", logged, v, want)
		}
		if logged {
			var m api.Manifest
			e.mustOK(e.do("GET", api.PathManifest, nil, &m))
			if m.LogIndex != size {
				t.Errorf("recovered manifest log index %d, want %d", m.LogIndex, size)
			}
		}
		e.db.View(func(tx *bbolt.Tx) error {
			if tx.Bucket(bucketBroker).Get(keyPending) != nil {
				t.Errorf("logged=%v: pending record left after restart", logged)
			}
			return nil
		})
	}
}

// TestTamperedManifestState checks that a manifest record written into the
// database by the host (not logged, not signed) stops the broker at start.
func TestTamperedManifestState(t *testing.T) {
	e := newEnv(t)
	body := e.nextManifest(t)
	rec := manifestRecord{Version: 2, Hash: manifest.HashOf(body), Body: body, Signatures: nil, LogIndex: 1}
	if err := e.db.Update(func(tx *bbolt.Tx) error { return putManifestRecord(tx.Bucket(bucketBroker), &rec) }); err != nil {
		t.Fatal(err)
	}
	e.close()
	if err := e.tryOpen(t); err == nil || !strings.Contains(err.Error(), "does not check out") {
		t.Fatalf("start with a forged manifest record: %v", err)
	}
}

// failingLog is a log whose appends fail on demand.
type failingLog struct {
	tlog.Backend
	fail atomic.Bool
}

func (f *failingLog) Append(ctx context.Context, entry []byte) (uint64, tlog.SignedCheckpoint, error) {
	if f.fail.Load() {
		return 0, tlog.SignedCheckpoint{}, errors.New("disk on fire")
	}
	return f.Backend.Append(ctx, entry)
}

// TestLogFailureReleasesNothing: when the log cannot be written, a valid
// release gets 503 and no key, uploads and manifest updates do nothing,
// and the health check fails until an append succeeds again.
func TestLogFailureReleasesNothing(t *testing.T) {
	e := newEnv(t)
	e.mustOK2(e.upload("demo/a", 1, []byte("never leaves")))
	fl := &failingLog{Backend: e.log}
	e.srv.Close()
	if err := e.b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	b, err := New(context.Background(), Config{DB: e.db, Log: fl, Keys: e.keys, Identity: e.id,
		Issuer: e.b.cfg.Issuer, Verifier: e.verifier, Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	e.b = b
	e.srv = httptest.NewServer(b.Handler())
	fl.fail.Store(true)
	w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	before := e.state()
	if st, ae, rel := e.release(e.releaseReq(w, e.challenge(), "demo/a")); st != 503 || ae.Code != api.CodeLogUnavailable || rel.Keys != nil {
		t.Fatalf("release with a failing log: %d %+v %+v", st, ae, rel)
	}
	if st, ae, _ := e.upload("demo/a", 2, []byte("x")); st != 503 || ae.Code != api.CodeLogUnavailable {
		t.Fatalf("upload with a failing log: %d %+v", st, ae)
	}
	body := e.nextManifest(t)
	if st, ae := e.do("PUT", api.PathManifest, api.ManifestUpdate{Body: body, Signatures: signAll(t, body, e.owners...)}, nil); st != 503 {
		t.Fatalf("manifest update with a failing log: %d %+v", st, ae)
	}
	if after := e.state(); !reflect.DeepEqual(before, after) {
		t.Fatalf("state changed: %+v -> %+v", before, after)
	}
	if resp, err := http.Get(e.srv.URL + "/healthz"); err != nil || resp.StatusCode != 503 {
		t.Fatalf("healthz with failing appends: %v %v", resp, err)
	}
	fl.fail.Store(false)
	e.mustOK2r(e.release(e.releaseReq(w, e.challenge(), "demo/a")))
	if resp, err := http.Get(e.srv.URL + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz after recovery: %v %v", resp, err)
	}
}

func TestSNPTCBString(t *testing.T) {
	for _, tt := range []struct {
		product string
		tcb     uint64
		want    string
	}{
		{"Milan", 0xd516000000000004, "bl=4,tee=0,snp=22,ucode=213"},
		{"Genoa", 0x0803000000000102, "bl=2,tee=1,snp=3,ucode=8"},
		{"Turin", 0x0102, "fmc=2,bl=1,tee=0,snp=0,ucode=0"},
		{"Turin", 0x00_01_0000_00_00_00_00, "reported_tcb=0001000000000000"}, // reserved byte 6 set
	} {
		if got := snpTCB(tt.product, tt.tcb); got != tt.want {
			t.Errorf("snpTCB(%s, %#x) = %q, want %q", tt.product, tt.tcb, got, tt.want)
		}
	}
}

// TestStartWarnsWhenNotDescribed: a broker whose evidence its active
// manifest does not describe starts, and says loudly that clients will
// refuse it.
func TestStartWarnsWhenNotDescribed(t *testing.T) {
	var buf bytes.Buffer
	logger := hclog.New(&hclog.LoggerOptions{Output: &syncWriter{w: &buf}, Level: hclog.Info})
	e := newEnvWith(t, func(d *manifest.Document) {
		for i := range d.Service.SNP {
			d.Service.SNP[i].Measurement = manifest.Hexes(otherMeasurement)
		}
	}, logger)
	if _, v := e.b.ActiveManifest(); v != 1 {
		t.Fatalf("active version %d", v)
	}
	if !strings.Contains(buf.String(), "clients will refuse it") {
		t.Errorf("no warning in the log:\n%s", buf.String())
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// TestStagedKeyChangesSettled simulates crashes between staging a key
// change and committing it: at the next start, changes whose entry is in
// the log are committed and the others dropped; a staged key is never
// released and a key whose deletion is staged no longer is.
func TestStagedKeyChangesSettled(t *testing.T) {
	e := newEnv(t)
	e.mustOK2(e.upload("demo/del-logged", 1, []byte("x")))
	e.mustOK2(e.upload("demo/del-lost", 1, []byte("y")))
	ctx := context.Background()
	now := clock.Now()
	size := e.treeSize()
	logEntry := func(typ string, id string, v uint64) {
		k := &tlog.KeyEntry{ID: id, Version: v, Client: "demo-client"}
		ent := &tlog.Entry{Type: typ, Time: now}
		if typ == tlog.TypeKeyUpload {
			ent.KeyUpload = k
		} else {
			ent.KeyDelete = k
		}
		raw, err := tlog.EncodeEntry(ent)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := e.log.Append(ctx, raw); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	staged := func(_ string, err error) {
		t.Helper()
		must(err)
	}
	staged(e.keys.PreparePut("demo/put-logged", 1, "demo-client", []byte("logged"), size, now))
	staged(e.keys.PreparePut("demo/put-lost", 1, "demo-client", []byte("lost"), size, now))
	must(e.keys.PrepareDelete("demo/del-logged", 1, size, now))
	must(e.keys.PrepareDelete("demo/del-lost", 1, size, now))
	logEntry(tlog.TypeKeyUpload, "demo/put-logged", 1)
	logEntry(tlog.TypeKeyDelete, "demo/del-logged", 1)

	// Before the restart: nothing staged is released, and neither is a key
	// whose deletion is staged.
	w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	for _, id := range []string{"demo/put-logged", "demo/put-lost", "demo/del-logged", "demo/del-lost"} {
		if st, ae, _ := e.release(e.releaseReq(w, e.challenge(), id)); st != 404 {
			t.Errorf("release of %s while staged: %d %+v, want 404", id, st, ae)
		}
	}
	e.close()
	e.open(t)
	if p, _ := e.keys.PendingChanges(); len(p) != 0 {
		t.Fatalf("staged changes left after restart: %+v", p)
	}
	for id, want := range map[string]int{"demo/put-logged": 200, "demo/put-lost": 404, "demo/del-logged": 404, "demo/del-lost": 200} {
		if st, ae, _ := e.release(e.releaseReq(w, e.challenge(), id)); st != want {
			t.Errorf("release of %s after restart: %d %+v, want %d", id, st, ae, want)
		}
	}
	if n, _ := e.keys.NextVersion("demo/put-lost"); n != 1 {
		t.Errorf("NextVersion of a dropped upload = %d, want 1", n)
	}
}
