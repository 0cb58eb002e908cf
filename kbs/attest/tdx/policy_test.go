package tdx

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/kbs/attest"
)

func realClaims(t testing.TB) *attest.Claims {
	t.Helper()
	c, err := mustVerifier(t, Options{Now: fixed(realNow)}).Verify(context.Background(), tdxEvidence(realQuote(t)), realReportData(t))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// realPolicy sets every field to the real quote's values.
func realPolicy(c *attest.Claims) Policy {
	x, a := c.TDX.XFAM, c.TDX.TDAttributes
	return Policy{
		MRTD:          c.TDX.MRTD,
		RTMR:          c.TDX.RTMR,
		MRConfigID:    c.TDX.MRConfigID,
		MROwner:       c.TDX.MROwner,
		MROwnerConfig: c.TDX.MROwnerConfig,
		XFAM:          &x,
		TDAttributes:  &a,
		MinTEETCBSVN:  c.TDX.TEETCBSVN,
		MRSeam:        [][]byte{c.TDX.MRSeam},
	}
}

func TestValidateRealQuote(t *testing.T) {
	c := realClaims(t)
	if err := Validate(c, realPolicy(c)); err != nil {
		t.Fatalf("Validate(real claims, their own values) = %v", err)
	}
	if got := hex.EncodeToString(c.TDX.MRTD); got != realMRTD {
		t.Fatalf("MRTD = %s", got)
	}
	// Everything explicitly unchecked passes too (debug is still checked).
	if err := Validate(c, Policy{Any: Fields}); err != nil {
		t.Fatalf("Validate(real claims, all Any) = %v", err)
	}
	// One field off at a time.
	for _, f := range Fields {
		t.Run(string(f), func(t *testing.T) {
			p := realPolicy(c)
			bad := bytes.Repeat([]byte{0xab}, 48)
			var want error
			switch f {
			case FieldMRTD:
				p.MRTD, want = bad, ErrMRTD
			case FieldRTMR0, FieldRTMR1, FieldRTMR2, FieldRTMR3:
				p.RTMR[f[4]-'0'], want = bad, ErrRTMR
			case FieldMRConfigID:
				p.MRConfigID, want = bad, ErrMRConfigID
			case FieldMROwner:
				p.MROwner, want = bad, ErrMROwner
			case FieldMROwnerConfig:
				p.MROwnerConfig, want = bad, ErrMROwnerConfig
			case FieldXFAM:
				x := c.TDX.XFAM &^ 0x4
				p.XFAM, want = &x, ErrXFAM
			case FieldTDAttributes:
				a := uint64(0)
				p.TDAttributes, want = &a, ErrTDAttributes
			case FieldMinTEETCBSVN:
				p.MinTEETCBSVN, want = bytes.Repeat([]byte{0xff}, 16), ErrTEETCBSVN
			case FieldMRSeam:
				p.MRSeam, want = [][]byte{bad}, ErrMRSeam
			}
			err := Validate(c, p)
			wantOnly(t, err, want)
			var me *MismatchError
			if !errors.As(err, &me) || me.Field != f {
				t.Errorf("Validate = %v, want a MismatchError on %s", err, f)
			}
		})
	}
}

// TestPolicyExplicit: a field left out is an error, never a silent skip.
func TestPolicyExplicit(t *testing.T) {
	c := realClaims(t)
	wantOnly(t, Validate(c, Policy{}), ErrPolicy)
	for _, f := range Fields {
		t.Run("unset "+string(f), func(t *testing.T) {
			p := Policy{}
			for _, g := range Fields {
				if g != f {
					p.Any = append(p.Any, g)
				}
			}
			err := Validate(c, p)
			wantOnly(t, err, ErrPolicy)
			if !strings.Contains(err.Error(), string(f)) {
				t.Errorf("error %q does not name %s", err, f)
			}
		})
	}
	for _, tc := range []struct {
		name string
		edit func(*Policy)
	}{
		{"set and Any", func(p *Policy) { p.Any = []Field{FieldMRTD} }},
		{"unknown Any", func(p *Policy) { p.Any = []Field{"mrsigner"} }},
		{"short MRTD", func(p *Policy) { p.MRTD = p.MRTD[:47] }},
		{"short RTMR3", func(p *Policy) { p.RTMR[3] = []byte{1} }},
		{"short TEE TCB SVN", func(p *Policy) { p.MinTEETCBSVN = p.MinTEETCBSVN[:15] }},
		{"empty MRSEAM list", func(p *Policy) { p.MRSeam = [][]byte{} }},
		{"short MRSEAM entry", func(p *Policy) { p.MRSeam = [][]byte{{1, 2}} }},
		{"debug allowed", func(p *Policy) { a := *p.TDAttributes | 1; p.TDAttributes = &a }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := realPolicy(c)
			tc.edit(&p)
			wantOnly(t, Validate(c, p), ErrPolicy)
		})
	}
}

func TestValidateClaims(t *testing.T) {
	c := realClaims(t)
	p := realPolicy(c)
	wantOnly(t, Validate(nil, p), ErrClaims)
	wantOnly(t, Validate(&attest.Claims{Platform: attest.SNP, SNP: &attest.SNPClaims{}}, p), ErrClaims)
	short := *c
	tc := *c.TDX
	tc.MRTD = tc.MRTD[:10]
	short.TDX = &tc
	wantOnly(t, Validate(&short, p), ErrClaims)

	// Claims that did not come from Verify with the debug bit set: Validate
	// rejects them even under an all-Any policy.
	debug := *c
	dt := *c.TDX
	dt.TDAttributes |= 1
	debug.TDX = &dt
	wantOnly(t, Validate(&debug, Policy{Any: Fields}), ErrDebug)
}

// TestValidateAll reports every mismatching field, in the order of Fields.
func TestValidateAll(t *testing.T) {
	c := realClaims(t)
	if errs := ValidateAll(c, realPolicy(c)); errs != nil {
		t.Fatalf("ValidateAll(matching policy) = %v", errs)
	}
	p := realPolicy(c)
	bad := bytes.Repeat([]byte{0xcd}, 48)
	p.MRTD, p.RTMR[1], p.MRSeam = bad, bad, [][]byte{bad}
	a := uint64(0)
	p.TDAttributes = &a
	errs := ValidateAll(c, p)
	want := []Field{FieldMRTD, FieldRTMR1, FieldTDAttributes, FieldMRSeam}
	if len(errs) != len(want) {
		t.Fatalf("ValidateAll = %v, want %d mismatches", errs, len(want))
	}
	for i, err := range errs {
		var me *MismatchError
		if !errors.As(err, &me) || me.Field != want[i] {
			t.Errorf("ValidateAll[%d] = %v, want a mismatch on %s", i, err, want[i])
		}
	}
	if err := Validate(c, p); !errors.Is(err, ErrMRTD) {
		t.Errorf("Validate = %v, want the first mismatch (MRTD)", err)
	}
	if errs := ValidateAll(c, Policy{}); len(errs) != 1 || !errors.Is(errs[0], ErrPolicy) {
		t.Errorf("ValidateAll(zero policy) = %v, want one ErrPolicy", errs)
	}
}
