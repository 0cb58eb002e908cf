package tlog

import (
	"bytes"
	"os"
	"testing"
)

func BenchmarkDecodeEntryRelease(b *testing.B) {
	e, err := os.ReadFile("testdata/entry-release.json")
	e = bytes.TrimSuffix(e, []byte("\n"))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(e)))
	for b.Loop() {
		if _, err := DecodeEntry(e); err != nil {
			b.Fatal(err)
		}
	}
}
