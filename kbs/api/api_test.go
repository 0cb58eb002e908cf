package api

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"strconv"
	"strings"
	"testing"
)

func TestSealOpen(t *testing.T) {
	for _, id := range []uint16{KEMX25519, KEMMLKEM768X25519} {
		sk, err := GenerateKey(id)
		if err != nil {
			t.Fatal(err)
		}
		pub := MarshalPublicKey(sk.PublicKey())
		info := ReleaseInfo("demo/a", 3, 17)
		sealed, err := Seal(pub, info, []byte("secret key bytes"))
		if err != nil {
			t.Fatal(err)
		}
		pt, err := Open(sk, info, sealed)
		if err != nil || string(pt) != "secret key bytes" {
			t.Fatalf("KEM %#x: Open = %q, %v", id, pt, err)
		}
		for _, other := range []Info{
			ReleaseInfo("demo/b", 3, 17), ReleaseInfo("demo/a", 4, 17),
			ReleaseInfo("demo/a", 3, 18), UploadInfo("demo/a", 3),
		} {
			if _, err := Open(sk, other, sealed); err == nil {
				t.Errorf("KEM %#x: Open under %+v succeeded, want failure", id, other)
			}
		}
		// Round trip of the private key encoding.
		raw, err := MarshalPrivateKey(sk)
		if err != nil {
			t.Fatal(err)
		}
		sk2, err := ParsePrivateKey(raw)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(MarshalPublicKey(sk2.PublicKey()), pub) {
			t.Errorf("KEM %#x: private key round trip changed the public key", id)
		}
	}
}

func TestParsePublicKeyRejects(t *testing.T) {
	sk, _ := GenerateKey(KEMX25519)
	good := MarshalPublicKey(sk.PublicKey())
	for name, b := range map[string][]byte{
		"empty":     nil,
		"short":     {0x00},
		"wrong kem": append([]byte{0x00, 0x10}, good[2:]...),
		"truncated": good[:20],
		"long":      append(append([]byte{}, good...), 0),
	} {
		if _, err := ParsePublicKey(b); err == nil {
			t.Errorf("ParsePublicKey(%s) succeeded, want error", name)
		}
	}
}

func TestInfoBytes(t *testing.T) {
	for _, tt := range []struct {
		in   Info
		want string
	}{
		{UploadInfo("demo/a", 1), "kbs-hpke-v1\nupload\ndemo/a\n1\n-"},
		{ReleaseInfo("x", 2, 0), "kbs-hpke-v1\nrelease\nx\n2\n0"},
	} {
		if got := string(tt.in.Bytes()); got != tt.want {
			t.Errorf("%+v.Bytes() = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestBindings(t *testing.T) {
	nonce := bytes.Repeat([]byte{0xab}, 32)
	got := WorkerBinding(nonce, []byte{0, 0x20, 1, 2, 3})
	want := "kbs-release-v1\n" + hex.EncodeToString(nonce) + "\nACABAgM="
	if got != want {
		t.Errorf("WorkerBinding = %q, want %q", got, want)
	}
	b := BrokerBinding(nonce, "kbs/x+1234+AAAA", []byte{1}, "ff", "kbs/x\n1\nAAA=\n\n— sig\n")
	wantB := "kbs-attestation-v1\n" + hex.EncodeToString(nonce) + "\nkbs/x+1234+AAAA\nAQ==\nff\nkbs/x\n1\nAAA=\n\n— sig\n"
	if b != wantB {
		t.Errorf("BrokerBinding = %q, want %q", b, wantB)
	}
	if rd := ReportData(b); rd != sha512.Sum512([]byte(wantB)) {
		t.Errorf("ReportData is not SHA-512 of the binding")
	}
}

func TestValidKeyID(t *testing.T) {
	for _, tt := range []struct {
		id string
		ok bool
	}{
		{"demo/a", true}, {"a", true}, {"team-1/model_2/v.3", true},
		{"", false}, {"/a", false}, {"a/", false}, {"a//b", false}, {"a/../b", false},
		{".", false}, {"a b", false}, {"a\nb", false}, {"ä", false}, {"a*", false},
		{string(bytes.Repeat([]byte{'a'}, 257)), false},
	} {
		if err := ValidKeyID(tt.id); (err == nil) != tt.ok {
			t.Errorf("ValidKeyID(%q) = %v, want ok=%v", tt.id, err, tt.ok)
		}
	}
}

func TestStatements(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	stmt := UploadStatement("demo-client", "demo/a", 1, []byte("broker"), []byte("sealed"))
	for name, signer := range map[string]any{"ecdsa": ec, "ed25519": ed} {
		var sig []byte
		var err error
		switch s := signer.(type) {
		case *ecdsa.PrivateKey:
			sig, err = SignStatement(s, stmt)
			if err == nil {
				err = VerifyStatement(&s.PublicKey, stmt, sig)
			}
			if VerifyStatement(&s.PublicKey, UploadStatement("demo-client", "demo/a", 2, []byte("broker"), []byte("sealed")), sig) == nil {
				t.Errorf("%s: signature verified for another version", name)
			}
		case ed25519.PrivateKey:
			sig, err = SignStatement(s, stmt)
			if err == nil {
				err = VerifyStatement(s.Public(), stmt, sig)
			}
			if VerifyStatement(s.Public(), DeleteStatement("demo-client", "demo/a", 1, []byte("broker")), sig) == nil {
				t.Errorf("%s: upload signature verified as a delete", name)
			}
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func FuzzParsePublicKey(f *testing.F) {
	for _, id := range []uint16{KEMX25519, KEMMLKEM768X25519} {
		sk, _ := GenerateKey(id)
		f.Add(MarshalPublicKey(sk.PublicKey()))
	}
	f.Add([]byte{0, 0x20})
	f.Fuzz(func(t *testing.T, b []byte) {
		pk, err := ParsePublicKey(b)
		if err != nil {
			return
		}
		if got := MarshalPublicKey(pk); !bytes.Equal(got, b) {
			t.Fatalf("round trip: %x -> %x", b, got)
		}
	})
}

func FuzzParseNonce(f *testing.F) {
	f.Add(hex.EncodeToString(bytes.Repeat([]byte{0xab}, 32)))
	f.Add("00")
	f.Add("ZZ")
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseNonce(s)
		if err != nil {
			return
		}
		if len(b) < 16 || len(b) > 64 {
			t.Fatalf("accepted a %d-byte nonce", len(b))
		}
		if got := hex.EncodeToString(b); got != strings.ToLower(s) {
			t.Fatalf("round trip %q -> %q", s, got)
		}
	})
}

// FuzzKeyIDInfo checks that every accepted key id keeps the HPKE info and
// the signed statements unambiguous: they split back into their fields.
func FuzzKeyIDInfo(f *testing.F) {
	for _, s := range []string{"demo/a", "a", "team-1/model_2/v.3", "a/../b", "a\nb", ""} {
		f.Add(s, uint64(1), uint64(7))
	}
	f.Fuzz(func(t *testing.T, id string, version, index uint64) {
		if ValidKeyID(id) != nil {
			return
		}
		if len(id) > MaxKeyIDLen || strings.ContainsAny(id, "\n\r \\") {
			t.Fatalf("accepted key id %q", id)
		}
		for _, seg := range strings.Split(id, "/") {
			if seg == "" || seg == "." || seg == ".." {
				t.Fatalf("accepted key id %q with segment %q", id, seg)
			}
		}
		lines := strings.Split(string(ReleaseInfo(id, version, index).Bytes()), "\n")
		if len(lines) != 5 || lines[2] != id || lines[3] != strconv.FormatUint(version, 10) || lines[4] != strconv.FormatUint(index, 10) {
			t.Fatalf("info for %q splits into %q", id, lines)
		}
		st := strings.Split(string(UploadStatement("c", id, version, nil, nil)), "\n")
		if len(st) != 7 || st[2] != id {
			t.Fatalf("upload statement for %q splits into %q", id, st)
		}
	})
}
