package kbs

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
)

// addSeeds adds every file of testdata/requests to the corpus.
func addSeeds(f *testing.F) {
	files, err := filepath.Glob("testdata/requests/*.json")
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed requests: %v", err)
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// roundTrip checks that a decoded request re-encodes to bytes that decode
// to the same value: the strict decoder accepts exactly what the encoder
// produces and loses nothing.
func roundTrip[T any](t *testing.T, v *T) {
	t.Helper()
	enc, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("re-encoding an accepted request: %v", err)
	}
	var again T
	if err := decodeJSON(enc, &again); err != nil {
		t.Fatalf("re-encoded request %s rejected: %v", enc, err)
	}
	if !reflect.DeepEqual(normalize(v), normalize(&again)) {
		t.Fatalf("round trip changed the request: %+v -> %+v", v, again)
	}
}

// normalize maps empty and nil slices to the same JSON.
func normalize(v any) string {
	b, _ := json.Marshal(v)
	return string(bytes.ReplaceAll(b, []byte("null"), []byte("[]")))
}

func FuzzDecodeReleaseRequest(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		var req api.ReleaseRequest
		if err := decodeJSON(body, &req); err != nil {
			if ae, ok := err.(*api.Error); !ok || ae.Code != api.CodeBadRequest {
				t.Fatalf("decode error %v is not a bad_request API error", err)
			}
			return
		}
		roundTrip(t, &req)
		// Validation is a function of the request alone.
		err1 := checkReleaseRequest(&req)
		err2 := checkReleaseRequest(&req)
		if (err1 == nil) != (err2 == nil) {
			t.Fatal("validation is not deterministic")
		}
		if err1 == nil {
			if _, err := api.ParsePublicKey(req.HPKEPublicKey); err == nil {
				for _, id := range req.KeyIDs {
					if api.ValidKeyID(id) != nil {
						t.Fatalf("accepted invalid key id %q", id)
					}
				}
			}
		}
	})
}

func FuzzDecodeKeyUpload(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		var req api.KeyUpload
		if decodeJSON(body, &req) != nil {
			return
		}
		roundTrip(t, &req)
		// The signed statement is a function of the fields alone.
		a := api.UploadStatement(req.Client, req.ID, req.Version, []byte("k"), req.Sealed)
		b := api.UploadStatement(req.Client, req.ID, req.Version, []byte("k"), req.Sealed)
		if !bytes.Equal(a, b) {
			t.Fatal("statement is not deterministic")
		}
	})
}

func FuzzDecodeKeyDelete(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		var req api.KeyDelete
		if decodeJSON(body, &req) != nil {
			return
		}
		roundTrip(t, &req)
	})
}

func FuzzDecodeManifestUpdate(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		var req api.ManifestUpdate
		if decodeJSON(body, &req) != nil {
			return
		}
		roundTrip(t, &req)
	})
}

// FuzzReleaseHandler sends arbitrary bodies to POST /v1/release of a live
// broker (seeded with valid requests) and checks the broker's promises:
// every answer is either a release or a 4xx error body, and a rejected
// request neither grows the log nor changes the key store.
func FuzzReleaseHandler(f *testing.F) {
	e := newEnv(f)
	e.mustOK2(e.upload("demo/a", 1, []byte("fuzz key")))
	w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	for i := 0; i < 3; i++ {
		f.Add(mustJSON(e.releaseReq(w, e.challenge(), "demo/a")))
	}
	addSeeds(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		e.t = t
		before := e.state()
		var rel api.Release
		st, ae := e.do("POST", api.PathRelease, body, &rel)
		if st == 200 {
			if len(rel.Keys) == 0 || e.treeSize() != before.size+1 {
				t.Fatalf("release answered 200 with %d keys, log %d -> %d", len(rel.Keys), before.size, e.treeSize())
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

// FuzzKeyHandlers sends arbitrary bodies to POST /v1/keys and DELETE
// /v1/keys/{id} of a live broker (seeded with valid, signed requests): an
// accepted request grows the log by exactly one entry; a rejected one is a
// 4xx error body and changes neither the log nor the key store.
func FuzzKeyHandlers(f *testing.F) {
	e := newEnv(f)
	e.mustOK2(e.upload("demo/f", 1, []byte("fuzz key")))
	f.Add(false, mustJSON(e.uploadReq("demo-client", e.client, "demo/f", 2, []byte("v2"))))
	f.Add(false, mustJSON(e.uploadReq("demo-client", e.client, "demo/g", 1, []byte("g"))))
	sig, _ := api.SignStatement(e.client, api.DeleteStatement("demo-client", "demo/f", 1, e.id.HPKEPublicKey))
	f.Add(true, mustJSON(api.KeyDelete{Client: "demo-client", Version: 1, Signature: sig}))
	files, _ := filepath.Glob("testdata/requests/*.json")
	for _, file := range files {
		b, _ := os.ReadFile(file)
		f.Add(false, b)
		f.Add(true, b)
	}
	f.Fuzz(func(t *testing.T, del bool, body []byte) {
		e.t = t
		before := e.state()
		method, path := "POST", api.PathKeys
		if del {
			method, path = "DELETE", api.PathKeys+"/demo/f"
		}
		st, ae := e.do(method, path, body, nil)
		if st == 200 {
			if after := e.treeSize(); after != before.size+1 {
				t.Fatalf("accepted %s grew the log %d -> %d", method, before.size, after)
			}
			return
		}
		if st >= 500 {
			t.Fatalf("status %d: %+v", st, ae)
		}
		if after := e.state(); !reflect.DeepEqual(before, after) {
			t.Fatalf("rejected %s (%d %s) changed state", method, st, ae.Code)
		}
	})
}

// FuzzReleaseFastDecode checks that decodeReleaseRequest (the release
// path's decoder, with its fast path for plain requests) answers exactly as
// the strict decodeJSON does: the same request, or the same error.
func FuzzReleaseFastDecode(f *testing.F) {
	addSeeds(f)
	for _, s := range []string{
		`{"platform":"snp","nonce":"AAEC","evidence":"","hpke_public_key":"AQ==","key_ids":["a","b"]}`,
		` {"key_ids":[],"platform":"tdx"} `,
		`{"platform":"snp","nonce":"AA\/C"}`,
		`{"Platform":"snp"}`,
		`{"platform":"snp","platform":"tdx"}`,
		`{"platform":null,"nonce":null,"key_ids":null}`,
		`{"nonce":"AAE"}`,
		`{"nonce":"AA=="}x`,
		`{"key_ids":["a",]}`,
		`{"platform":"\u00e9"}`,
		`{"extra":1}`,
		"{\"platform\":\"snp\"}\n",
		"{\"nonce\":\"AA\r\nAA==\"}",
		"{\"evidence\":\"AA\xc3\xa9AA==\"}",
		`{"evidence":"AA\"AA=="}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var got, want api.ReleaseRequest
		errGot := decodeReleaseRequest(body, &got)
		errWant := decodeJSON(body, &want)
		if (errGot == nil) != (errWant == nil) || errGot != nil && errGot.Error() != errWant.Error() {
			t.Fatalf("decodeReleaseRequest error %v, decodeJSON error %v", errGot, errWant)
		}
		if errGot == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("decodeReleaseRequest = %#v, decodeJSON = %#v", got, want)
		}
	})
}

// TestReleaseFastDecodeTaken checks that the fast path takes the requests
// clients actually send (json.Marshal of an api.ReleaseRequest), so that
// the release path does not silently fall back to the slower decoder.
func TestReleaseFastDecodeTaken(t *testing.T) {
	in := api.ReleaseRequest{
		Platform:      "snp",
		Nonce:         bytes.Repeat([]byte{0xfb}, api.NonceSize),
		Evidence:      bytes.Repeat([]byte{0xff, 0x3e, 0}, 1900),
		HPKEPublicKey: bytes.Repeat([]byte{7}, 32),
		KeyIDs:        []string{"model-a", "model-b"},
	}
	body, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var got api.ReleaseRequest
	if !fastReleaseRequest(body, &got) {
		t.Fatalf("fast path refused %s", body)
	}
	if !reflect.DeepEqual(got, in) {
		t.Fatalf("fast path decoded %+v, want %+v", got, in)
	}
}
