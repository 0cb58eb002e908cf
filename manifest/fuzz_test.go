package manifest_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/kbs-dev/kbs/manifest"
)

// FuzzParse checks decoding and validation of hostile manifests: no panic;
// the same input always gives the same result; an accepted document keeps
// its exact bytes and hash, matches and diffs without panicking, and its
// content re-encodes to a document that parses to the same content.
func FuzzParse(f *testing.F) {
	for _, dir := range []string{"valid", "invalid", "chain"} {
		files, _ := filepath.Glob(filepath.Join(td, dir, "*.json"))
		for _, name := range files {
			b, err := os.ReadFile(name)
			if err != nil {
				f.Fatal(err)
			}
			// Oversize documents are rejected before parsing (see
			// TestGoldenInvalid); as seeds they only slow minimization.
			if len(b) <= manifest.MaxSize {
				f.Add(b)
			}
		}
	}
	ref, err := manifest.Parse(mustRead(f, "valid/full.json"))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		in := bytes.Clone(b)
		m1, err1 := manifest.Parse(b)
		m2, err2 := manifest.Parse(b)
		if !bytes.Equal(in, b) {
			t.Fatal("Parse modified its input")
		}
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("Parse is not deterministic: %v vs %v", err1, err2)
		}
		if err1 != nil {
			if err1.Error() != err2.Error() {
				t.Fatalf("Parse errors differ: %q vs %q", err1, err2)
			}
			var fe *manifest.FieldError
			if !errors.As(err1, &fe) {
				t.Fatalf("error %T is not a *FieldError: %v", err1, err1)
			}
			return
		}
		if !bytes.Equal(m1.Bytes(), b) || m1.Hash() != manifest.HashOf(b) || m1.Hash() != m2.Hash() {
			t.Fatal("accepted manifest does not keep its exact bytes and hash")
		}
		// Re-encoding the content gives a valid manifest with the same
		// content (Diff finds no change besides nothing).
		enc, err := manifest.Encode(m1.Document())
		if err != nil {
			t.Fatalf("Encode(Document()) of an accepted manifest: %v", err)
		}
		m3, err := manifest.Parse(enc)
		if err != nil {
			t.Fatalf("re-encoded manifest does not parse: %v", err)
		}
		if d := manifest.Diff(m1, m3); len(d) != 0 {
			t.Fatalf("re-encoding changed the content: %v", d)
		}
		_ = manifest.Diff(ref, m1)
		for _, c := range []*manifest.Claims{snpClaims(), tdxClaims()} {
			r1, r2 := m1.Match(c), m1.Match(c)
			if r1.String() != r2.String() {
				t.Fatal("Match is not deterministic")
			}
			m1.MatchService(c)
		}
	})
}

func mustRead(f *testing.F, name string) []byte {
	b, err := os.ReadFile(filepath.Join(td, name))
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// FuzzVerifyChain checks chain verification of hostile histories: the
// golden chain v1 → v2 → v3 with one version's bytes or one signature
// replaced by the fuzzer's. No panic; an accepted chain is consecutive,
// each link names its predecessor, and Verify accepts each link on its
// own with the same signers; a changed body is accepted only if it is the
// original (signatures are over exact bytes).
func FuzzVerifyChain(f *testing.F) {
	vs := []manifest.SignedVersion{
		{Body: mustRead(f, "chain/v1.json")},
		{Body: mustRead(f, "chain/v2.json"), Signatures: []string{fuzzSig(f, "chain/v2.json.sig.owner1"), fuzzSig(f, "chain/v2.json.sig.owner3")}},
		{Body: mustRead(f, "chain/v3.json"), Signatures: []string{fuzzSig(f, "chain/v3.json.sig.owner2"), fuzzSig(f, "chain/v3.json.sig.owner4")}},
	}
	for i, v := range vs {
		f.Add(uint8(i), false, v.Body)
		for _, s := range v.Signatures {
			f.Add(uint8(i), true, []byte(s))
		}
	}
	f.Add(uint8(0), true, []byte("MEUCIQ=="))
	f.Fuzz(func(t *testing.T, which uint8, sig bool, b []byte) {
		in := make([]manifest.SignedVersion, len(vs))
		copy(in, vs)
		i := int(which) % len(in)
		if sig {
			in[i].Signatures = append([]string{string(b)}, in[i].Signatures...)
		} else {
			in[i].Body = b
		}
		c, err := manifest.VerifyChain(nil, in)
		if err != nil {
			return
		}
		if !sig && !bytes.Equal(b, vs[i].Body) {
			t.Fatalf("version %d accepted with other bytes than its owners signed", i+1)
		}
		links := c.Links()
		if len(links) != len(in) {
			t.Fatalf("chain of %d links from %d versions", len(links), len(in))
		}
		for j := 1; j < len(links); j++ {
			prev, next := links[j-1].Manifest, links[j].Manifest
			if next.Version() != prev.Version()+1 || next.Previous() != prev.Hash() {
				t.Fatalf("link %d: version %d (previous %s) after version %d (%s)", j, next.Version(), next.Previous(), prev.Version(), prev.Hash())
			}
			signers, err := manifest.Verify(prev, next, in[j].Signatures)
			if err != nil || !slices.Equal(signers, links[j].Signers) {
				t.Fatalf("link %d: Verify = %v, %v; the chain said %v", j, signers, err, links[j].Signers)
			}
		}
	})
}

func fuzzSig(f *testing.F, name string) string {
	return string(bytes.TrimSpace(mustRead(f, name)))
}
