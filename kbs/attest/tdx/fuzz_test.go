package tdx

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	"github.com/google/go-tdx-guest/abi"
	"google.golang.org/protobuf/proto"
)

func fuzzSeeds(f *testing.F) {
	raw, err := os.ReadFile(realQuoteFile)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add(raw[:QuoteMinSizeForTest])
	f.Add(flip(raw, signatureOff))
	dir := f.TempDir()
	if err := GenerateSim(dir); err != nil {
		f.Fatal(err)
	}
	f.Add(simQuote(f, dir, SimOptions{}, reportData("fuzz")))
}

// QuoteMinSizeForTest is the shortest input go-tdx-guest's parser reads.
const QuoteMinSizeForTest = abi.QuoteMinSize

// FuzzParseQuote: parsing never panics, is deterministic, fails only with
// ErrMalformedQuote, and what parses serializes back to the same bytes.
func FuzzParseQuote(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		q1, err1 := parseQuote(data)
		q2, err2 := parseQuote(data)
		if (err1 == nil) != (err2 == nil) || (err1 != nil && err1.Error() != err2.Error()) {
			t.Fatalf("parseQuote not deterministic: %v, %v", err1, err2)
		}
		if err1 != nil {
			if !errors.Is(err1, ErrMalformedQuote) {
				t.Fatalf("parseQuote error %v is not ErrMalformedQuote", err1)
			}
			return
		}
		out, err := abi.QuoteToAbiBytes(q1)
		if err != nil {
			t.Fatalf("QuoteToAbiBytes(parsed quote) = %v", err)
		}
		if !bytes.Equal(out, data) {
			t.Fatalf("round trip changed the quote: %d bytes in, %d out", len(data), len(out))
		}
		if !proto.Equal(q1, q2) {
			t.Fatalf("parseQuote not deterministic: two parses differ")
		}
		_ = chainCacheKey(data)
	})
}

// FuzzVerify: Verify never panics and gives the same answer cold and warm.
func FuzzVerify(f *testing.F) {
	fuzzSeeds(f)
	rd := realReportData(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		v := mustVerifier(t, Options{Now: fixed(realNow)})
		ev := tdxEvidence(data)
		c1, err1 := v.Verify(context.Background(), ev, rd)
		c2, err2 := v.Verify(context.Background(), ev, rd) // warm if the first passed
		if (err1 == nil) != (err2 == nil) || (err1 != nil && err1.Error() != err2.Error()) {
			t.Fatalf("Verify not deterministic: %v, %v", err1, err2)
		}
		if err1 == nil && (!bytes.Equal(c1.Measurement, c2.Measurement) || c1.EvidenceDigest != c2.EvidenceDigest) {
			t.Fatalf("Verify claims differ cold and warm")
		}
		if err1 == nil && c1.Simulated {
			t.Fatalf("quote verified under the Intel root is marked simulated")
		}
	})
}
