package api_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/kbs/api"
)

func testKey() *api.KeyFile {
	return &api.KeyFile{ID: "demo/prompt-key", Version: 3, Material: bytes.Repeat([]byte{0x42}, 32)}
}

func TestKeyFileRoundTrip(t *testing.T) {
	k := testKey()
	b := k.Marshal()
	got, err := api.ParseKeyFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != k.ID || got.Version != k.Version || !bytes.Equal(got.Material, k.Material) {
		t.Fatalf("api.ParseKeyFile(k.Marshal()) = %+v, want %+v", got, k)
	}
	golden, err := os.ReadFile(filepath.Join("testdata", "prompt.key"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, golden) {
		t.Fatalf("key file format changed:\n%s\nwant\n%s", b, golden)
	}
}

func TestKeyFileRejects(t *testing.T) {
	good := string(testKey().Marshal())
	for name, s := range map[string]string{
		"empty":          "",
		"not pem":        "hello",
		"wrong type":     strings.ReplaceAll(good, "KBS KEY", "PRIVATE KEY"),
		"no id":          strings.Replace(good, "Key-Id: demo/prompt-key\n", "", 1),
		"no version":     strings.Replace(good, "Key-Version: 3\n", "", 1),
		"bad id":         strings.Replace(good, "demo/prompt-key", "demo/../x", 1),
		"version 0":      strings.Replace(good, "Key-Version: 3", "Key-Version: 0", 1),
		"version 03":     strings.Replace(good, "Key-Version: 3", "Key-Version: 03", 1),
		"extra header":   strings.Replace(good, "Key-Version: 3\n", "Key-Version: 3\nX: y\n", 1),
		"trailing data":  good + "junk",
		"leading data":   "junk\n" + good,
		"two blocks":     good + good,
		"empty material": string((&api.KeyFile{ID: "a", Version: 1}).Marshal()),
		"huge material":  string((&api.KeyFile{ID: "a", Version: 1, Material: make([]byte, api.MaxKeySize+1)}).Marshal()),
	} {
		if k, err := api.ParseKeyFile([]byte(s)); err == nil {
			t.Errorf("api.ParseKeyFile(%s) = %+v, want an error", name, k)
		}
	}
}

func FuzzKeyFile(f *testing.F) {
	f.Add(testKey().Marshal())
	if b, err := os.ReadFile(filepath.Join("testdata", "prompt.key")); err == nil {
		f.Add(b)
	}
	f.Add([]byte("-----BEGIN KBS KEY-----\nKey-Id: a\nKey-Version: 1\n\nAA==\n-----END KBS KEY-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := api.ParseKeyFile(b)
		if err != nil {
			return
		}
		// Whatever parses re-encodes to a file that parses to the same key.
		k2, err := api.ParseKeyFile(k.Marshal())
		if err != nil {
			t.Fatalf("re-encoded key file does not parse: %v", err)
		}
		if k2.ID != k.ID || k2.Version != k.Version || !bytes.Equal(k2.Material, k.Material) {
			t.Fatalf("round trip changed the key: %+v -> %+v", k, k2)
		}
	})
}

func TestPromptRoundTrip(t *testing.T) {
	k := testKey()
	for _, pt := range [][]byte{nil, []byte("hello"), bytes.Repeat([]byte("x"), 1<<20)} {
		msg, err := api.SealPrompt(k, api.KindPrompt, pt)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(msg, []byte("kbs-prompt-v1\nkind: prompt\nkey-id: demo/prompt-key\nkey-version: 3\n\n")) {
			t.Fatalf("header = %q", msg[:60])
		}
		h, got, err := api.OpenPrompt(k, api.KindPrompt, msg)
		if err != nil || !bytes.Equal(got, pt) || h.KeyID != k.ID {
			t.Fatalf("openPrompt = %q, %v", got, err)
		}
		if _, _, err := api.OpenPrompt(k, api.KindReply, msg); err == nil {
			t.Fatal("a prompt opened as a reply")
		}
	}
}

func TestPromptRejects(t *testing.T) {
	k := testKey()
	msg, err := api.SealPrompt(k, api.KindReply, []byte("secret answer"))
	if err != nil {
		t.Fatal(err)
	}
	other := testKey()
	other.Material = bytes.Repeat([]byte{0x43}, 32)
	relabel := func(from, to string) []byte { return bytes.Replace(msg, []byte(from), []byte(to), 1) }
	for name, tc := range map[string]struct {
		k   *api.KeyFile
		msg []byte
	}{
		"wrong key":          {other, msg},
		"kind relabelled":    {k, relabel("kind: reply", "kind: prompt")},
		"version changed":    {k, relabel("key-version: 3", "key-version: 4")},
		"flipped ciphertext": {k, append(append([]byte{}, msg[:len(msg)-1]...), msg[len(msg)-1]^1)},
		"truncated":          {k, msg[:len(msg)-20]},
		"no header":          {k, msg[bytes.Index(msg, []byte("\n\n"))+2:]},
		"bad magic":          {k, relabel("kbs-prompt-v1", "kbs-prompt-v2")},
		"short key":          {&api.KeyFile{ID: k.ID, Version: 3, Material: k.Material[:16]}, msg},
	} {
		if _, _, err := api.OpenPrompt(tc.k, "", tc.msg); err == nil {
			t.Errorf("api.OpenPrompt(%s) succeeded", name)
		}
	}
}

func FuzzPromptHeader(f *testing.F) {
	k := testKey()
	for _, kind := range []string{api.KindPrompt, api.KindReply} {
		msg, _ := api.SealPrompt(k, kind, []byte("seed"))
		f.Add(msg)
	}
	f.Add([]byte("kbs-prompt-v1\nkind: prompt\nkey-id: a\nkey-version: 1\n\n" + strings.Repeat("x", 28)))
	f.Fuzz(func(t *testing.T, msg []byte) {
		h, hdr, body, err := api.ParsePromptHeader(msg)
		if err != nil {
			return
		}
		// The header is canonical: re-encoding it gives the same bytes,
		// and header plus body is the whole message.
		if !bytes.Equal(h.Marshal(), hdr) {
			t.Fatalf("header %q re-encodes as %q", hdr, h.Marshal())
		}
		if !bytes.Equal(append(bytes.Clone(hdr), body...), msg) {
			t.Fatal("header and body do not make up the message")
		}
	})
}

func TestSealPromptKinds(t *testing.T) {
	for _, kind := range []string{"", "Prompt", "question"} {
		if msg, err := api.SealPrompt(testKey(), kind, []byte("x")); err == nil {
			t.Errorf("SealPrompt(kind %q) = %q, want an error", kind, msg)
		}
	}
	short := testKey()
	short.Material = short.Material[:16]
	if _, err := api.SealPrompt(short, api.KindPrompt, []byte("x")); err == nil {
		t.Error("SealPrompt with a 16-byte key succeeded")
	}
}
