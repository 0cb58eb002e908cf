package tdx

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-tdx-guest/validate"
	"github.com/kbs-dev/kbs/kbs/attest"
)

func realClaims(t testing.TB) *attest.Claims {
	t.Helper()
	c, err := mustVerifier(t, realOptions()).Verify(context.Background(), tdxEvidence(realQuote(t)), realReportData(t))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestValidateClaims: Validate takes only well-formed TDX claims, and
// rejects a debug TD whatever the options say (go-tdx-guest does not).
func TestValidateClaims(t *testing.T) {
	c := realClaims(t)
	none := &validate.Options{}
	if err := Validate(c, none); err != nil {
		t.Fatalf("Validate(real claims, nothing pinned) = %v", err)
	}
	wantOnly(t, Validate(nil, none), errClaims)
	wantOnly(t, Validate(&attest.Claims{Platform: attest.SNP, SNP: &attest.SNPClaims{}}, none), errClaims)
	short := *c
	tc := *c.TDX
	tc.MRTD = tc.MRTD[:10]
	short.TDX = &tc
	wantOnly(t, Validate(&short, none), errClaims)
	if err := Validate(c, nil); err == nil {
		t.Error("Validate(no options) succeeded")
	}

	// Claims that did not come from Verify with the debug bit set: Validate
	// rejects them even when nothing is pinned.
	debug := *c
	dt := *c.TDX
	dt.TDAttributes |= 1
	debug.TDX = &dt
	wantOnly(t, Validate(&debug, none), ErrDebug)

	// The options are applied: the real quote's MRTD pinned to another value.
	other := &validate.Options{TdQuoteBodyOptions: validate.TdQuoteBodyOptions{MrTd: make([]byte, 48)}}
	if err := Validate(c, other); err == nil || !strings.Contains(err.Error(), "MR_TD") {
		t.Errorf("Validate(other MRTD) = %v, want an MR_TD refusal", err)
	}
}
