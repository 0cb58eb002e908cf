package manifest_test

import (
	"testing"

	"github.com/kbs-dev/kbs/manifest"
)

func BenchmarkParse(b *testing.B) {
	data := mustReadB(b, "valid/full.json")
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := manifest.Parse(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMatch(b *testing.B) {
	m, err := manifest.Parse(mustReadB(b, "valid/full.json"))
	if err != nil {
		b.Fatal(err)
	}
	c := tdxClaims()
	for b.Loop() {
		if r := m.Match(c); !r.OK() {
			b.Fatal("no match")
		}
	}
}

func BenchmarkDiff(b *testing.B) {
	v1, _ := manifest.Parse(mustReadB(b, "chain/v1.json"))
	v2, _ := manifest.Parse(mustReadB(b, "chain/v2.json"))
	for b.Loop() {
		manifest.Diff(v1, v2)
	}
}

func mustReadB(b *testing.B, name string) []byte { return readFile(b, name) }
