package witnesskey

import (
	"crypto/ed25519"
	"crypto/sha256"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	seed := sha256.Sum256([]byte("notekey"))
	pub := ed25519.NewKeyFromSeed(seed[:]).Public().(ed25519.PublicKey)
	k, err := New("witness.example/w1", pub)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(k.String())
	if err != nil || got.String() != k.String() || got.Hash != k.Hash || !got.Public.Equal(pub) {
		t.Fatalf("Parse(%q) = %+v, %v", k, got, err)
	}
	for _, name := range []string{"", "a b", "a+b", "a\x00b", "a\u00a0b", string(make([]byte, MaxNameLen+1))} {
		if _, err := New(name, pub); err == nil {
			t.Errorf("New(%q) accepted the name", name)
		}
	}
	if _, err := New("a", pub[:31]); err == nil {
		t.Error("New accepted a short key")
	}
}

// FuzzParse: a key that parses has exactly one spelling.
func FuzzParse(f *testing.F) {
	f.Add("witness.example/a+f6a9e12f+BP6/j0M4OoeW2mTwlWWRdQ5Nf0lg3OSYxkO//6BvLAGN")
	f.Add("kbs/0123456789abcdef+e1496e41+AUGL4N1YFvNGONEFuL9MTdnx5QwRd/YcRhwJoIz7g2r3")
	f.Add("a+00000000+BA==")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := Parse(s)
		if err != nil {
			return
		}
		if k.String() != s {
			t.Fatalf("Parse(%q) formats back as %q", s, k)
		}
	})
}
