package policy_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tdx-guest/validate"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/attest/tdx"
	"github.com/kbs-dev/kbs/kbs/policy"
	"github.com/kbs-dev/kbs/manifest"
)

func tdxFixture() (*attest.Claims, manifest.TDXValues) {
	t := &attest.TDXClaims{
		MRTD:          fake("mrtd", 48),
		RTMR:          [4][]byte{fake("rtmr0", 48), fake("rtmr1", 48), fake("rtmr2", 48), fake("rtmr3", 48)},
		MRConfigID:    fake("config", 48),
		MROwner:       fake("owner", 48),
		MROwnerConfig: fake("ownerconfig", 48),
		XFAM:          0x61ae7,
		TDAttributes:  0x10000000,
		TEETCBSVN:     []byte{3, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		MRSeam:        fake("seam", 48),
	}
	c := &attest.Claims{Platform: attest.TDX, Measurement: t.MRTD, ReportData: [64]byte{9}, TDX: t}
	two := func(label string, v []byte) manifest.HexList { return manifest.Hexes(fake("other "+label, 48), v) }
	v := manifest.TDXValues{
		MRTD: two("mrtd", t.MRTD), RTMR0: two("rtmr0", t.RTMR[0]), RTMR1: two("rtmr1", t.RTMR[1]),
		RTMR2: two("rtmr2", t.RTMR[2]), RTMR3: two("rtmr3", t.RTMR[3]),
		MRConfigID: two("config", t.MRConfigID), MROwner: two("owner", t.MROwner), MROwnerConfig: two("ownerconfig", t.MROwnerConfig),
		XFAM:         manifest.BitsList{Values: []uint64{0xe7, t.XFAM}},
		TDAttributes: manifest.BitsList{Values: []uint64{0, t.TDAttributes}},
		MinTEETCBSVN: manifest.HexValue{Value: []byte{2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
		MRSeam:       two("seam", t.MRSeam),
	}
	return c, v
}

func le64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// tdxAny sets each TDX field to "any", by its manifest name.
var tdxAny = map[string]func(*manifest.TDXValues){
	"mrtd":            func(v *manifest.TDXValues) { v.MRTD = manifest.AnyHex },
	"rtmr0":           func(v *manifest.TDXValues) { v.RTMR0 = manifest.AnyHex },
	"rtmr1":           func(v *manifest.TDXValues) { v.RTMR1 = manifest.AnyHex },
	"rtmr2":           func(v *manifest.TDXValues) { v.RTMR2 = manifest.AnyHex },
	"rtmr3":           func(v *manifest.TDXValues) { v.RTMR3 = manifest.AnyHex },
	"mrconfigid":      func(v *manifest.TDXValues) { v.MRConfigID = manifest.AnyHex },
	"mrowner":         func(v *manifest.TDXValues) { v.MROwner = manifest.AnyHex },
	"mrownerconfig":   func(v *manifest.TDXValues) { v.MROwnerConfig = manifest.AnyHex },
	"xfam":            func(v *manifest.TDXValues) { v.XFAM = manifest.BitsList{Any: true} },
	"td_attributes":   func(v *manifest.TDXValues) { v.TDAttributes = manifest.BitsList{Any: true} },
	"min_tee_tcb_svn": func(v *manifest.TDXValues) { v.MinTEETCBSVN = manifest.HexValue{Any: true} },
	"mrseam":          func(v *manifest.TDXValues) { v.MRSeam = manifest.AnyHex },
}

// TestTDXOptions: every manifest field lands in its go-tdx-guest option.
func TestTDXOptions(t *testing.T) {
	c, v := tdxFixture()
	o, err := policy.TDXOptions(v, c)
	if err != nil {
		t.Fatal(err)
	}
	tc := c.TDX
	want := &validate.Options{TdQuoteBodyOptions: validate.TdQuoteBodyOptions{
		MrTd: tc.MRTD, Rtmrs: tc.RTMR[:], MrConfigID: tc.MRConfigID, MrOwner: tc.MROwner, MrOwnerConfig: tc.MROwnerConfig,
		Xfam: le64(tc.XFAM), TdAttributes: le64(tc.TDAttributes),
		MinimumTeeTcbSvn: v.MinTEETCBSVN.Value, MrSeam: tc.MRSeam, ReportData: c.ReportData[:],
	}}
	if !reflect.DeepEqual(o, want) {
		t.Errorf("TDXOptions(values) =\n%+v\nwant\n%+v", o, want)
	}

	// "any" leaves that option, and only that one, unchecked; the options
	// stay valid for the library.
	if len(tdxAny) != 12 {
		t.Fatalf("test covers %d fields, manifest.TDXValues has 12", len(tdxAny))
	}
	all := manifest.TDXValues{}
	for f, edit := range tdxAny {
		c, v := tdxFixture()
		edit(&v)
		edit(&all)
		o, err := policy.TDXOptions(v, c)
		if err != nil {
			t.Errorf("%s any: TDXOptions = %v", f, err)
			continue
		}
		if unchecked := tdxUnchecked(o); len(unchecked) != 1 || unchecked[0] != f {
			t.Errorf("%s any: unchecked options %q, want only %s", f, unchecked, f)
		}
		if err := tdx.Validate(c, o); err != nil {
			t.Errorf("%s any: tdx.Validate = %v", f, err)
		}
	}
	// Everything "any" is explicit, so it is valid: only REPORT_DATA left.
	o, err = policy.TDXOptions(all, c)
	if err != nil || len(tdxUnchecked(o)) != 12 || !bytes.Equal(o.TdQuoteBodyOptions.ReportData, c.ReportData[:]) {
		t.Errorf("TDXOptions(all any) = %+v, %v", o, err)
	}

	c2, _ := tdxFixture()
	c2.TDX.MRTD = fake("unlisted", 48)
	if o, err := policy.TDXOptions(v, c2); err != nil || !bytes.Equal(o.TdQuoteBodyOptions.MrTd, v.MRTD.Values[0]) {
		t.Errorf("TDXOptions(unlisted mrtd) = %+v, %v; want the first listed value", o, err)
	}
	if _, err := policy.TDXOptions(v, &attest.Claims{Platform: attest.TDX}); err == nil {
		t.Error("TDXOptions(claims without TDX fields) succeeded")
	}
}

// tdxUnchecked names the quote-body options that are left unchecked.
func tdxUnchecked(o *validate.Options) []string {
	b := o.TdQuoteBodyOptions
	var out []string
	for _, f := range []struct {
		name string
		v    []byte
	}{{"mrtd", b.MrTd}, {"mrconfigid", b.MrConfigID}, {"mrowner", b.MrOwner}, {"mrownerconfig", b.MrOwnerConfig},
		{"xfam", b.Xfam}, {"td_attributes", b.TdAttributes}, {"min_tee_tcb_svn", b.MinimumTeeTcbSvn}, {"mrseam", b.MrSeam}} {
		if f.v == nil {
			out = append(out, f.name)
		}
	}
	for i := range 4 {
		if b.Rtmrs == nil || b.Rtmrs[i] == nil {
			out = append(out, "rtmr"+string(rune('0'+i)))
		}
	}
	return out
}

// TestTDXOptionsExplicit: a field left out is an error naming it, never a
// silent skip; so are values the library would read as unchecked.
func TestTDXOptionsExplicit(t *testing.T) {
	c, full := tdxFixture()
	_, err := policy.TDXOptions(manifest.TDXValues{}, c)
	for f := range tdxAny {
		if err == nil || !strings.Contains(err.Error(), f+":") {
			t.Errorf("TDXOptions(zero values) = %v, want an error naming %s", err, f)
		}
	}
	for f := range tdxAny {
		t.Run("unset "+f, func(t *testing.T) {
			var v manifest.TDXValues
			for g, edit := range tdxAny {
				if g != f {
					edit(&v)
				}
			}
			_, err := policy.TDXOptions(v, c)
			if err == nil || !strings.Contains(err.Error(), f+":") {
				t.Errorf("TDXOptions(only %s unset) = %v, want an error naming it", f, err)
			}
		})
	}
	for _, tc := range []struct {
		name string
		edit func(*manifest.TDXValues)
	}{
		{"short TEE TCB SVN", func(v *manifest.TDXValues) { v.MinTEETCBSVN.Value = v.MinTEETCBSVN.Value[:15] }},
		{"empty MRSEAM list", func(v *manifest.TDXValues) { v.MRSeam = manifest.Hexes() }},
		{"empty MRTD value", func(v *manifest.TDXValues) { v.MRTD = manifest.Hexes([]byte{}) }},
		{"debug allowed", func(v *manifest.TDXValues) { v.TDAttributes.Values = append(v.TDAttributes.Values, 1) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := full
			tc.edit(&v)
			if o, err := policy.TDXOptions(v, c); err == nil {
				t.Errorf("TDXOptions = %+v, want an error", o)
			}
		})
	}
	// A value of the wrong length reaches the library, which refuses it.
	v := full
	v.MRTD = manifest.Hexes(full.MRTD.Values[1][:47])
	if err := policy.Validate(c, nil, &v); err == nil {
		t.Error("Validate with a 47-byte MRTD succeeded")
	}
}

// The real quote: a TDX quote v4 (FMSPC b0c06f000000) verified with the
// Intel collateral it came with (testdata/README.md).
func realClaims(t testing.TB) *attest.Claims {
	t.Helper()
	return verifyReal(t, "../../testdata/tdx/quote-v4-b0c06f.dat", "../../testdata/tdx/collateral-b0c06f")
}

// verifyReal verifies a real quote with its collateral bundle, an hour
// after the bundle's newest piece was issued.
func verifyReal(t testing.TB, quote, bundle string) *attest.Claims {
	t.Helper()
	raw, err := os.ReadFile(quote)
	if err != nil {
		t.Fatal(err)
	}
	rd, err := tdx.UnverifiedReportData(raw)
	if err != nil {
		t.Fatal(err)
	}
	col, err := tdx.LoadCollateral(bundle)
	if err != nil {
		t.Fatal(err)
	}
	now := col.Issued().Add(time.Hour)
	v, err := tdx.NewVerifier(tdx.Options{Now: func() time.Time { return now }, CollateralDir: bundle})
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(context.Background(), attest.Evidence{Platform: attest.TDX, Data: raw}, rd)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestTDXRealQuoteFields changes one reference value pinned to the real
// quote at a time: the manifest refuses it naming that field, and the
// library's validation refuses it too.
func TestTDXRealQuoteFields(t *testing.T) {
	c := realClaims(t)
	pinned, err := manifest.PinTDX(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := policy.Validate(c, nil, &pinned); err != nil {
		t.Fatalf("Validate(real claims, their own values) = %v", err)
	}
	var all manifest.TDXValues
	for _, edit := range tdxAny {
		edit(&all)
	}
	if err := policy.Validate(c, nil, &all); err != nil {
		t.Fatalf("Validate(real claims, all any) = %v", err)
	}
	bad := manifest.Hexes(bytes.Repeat([]byte{0xab}, 48))
	for _, tc := range []struct {
		field, lib string // the check manifest.Match reports, the library's name
		edit       func(*manifest.TDXValues)
	}{
		{"mrtd", "MR_TD", func(v *manifest.TDXValues) { v.MRTD = bad }},
		{"rtmr0", "RTMR[0]", func(v *manifest.TDXValues) { v.RTMR0 = bad }},
		{"rtmr1", "RTMR[1]", func(v *manifest.TDXValues) { v.RTMR1 = bad }},
		{"rtmr2", "RTMR[2]", func(v *manifest.TDXValues) { v.RTMR2 = bad }},
		{"rtmr3", "RTMR[3]", func(v *manifest.TDXValues) { v.RTMR3 = bad }},
		{"mrconfigid", "MR_CONFIG_ID", func(v *manifest.TDXValues) { v.MRConfigID = bad }},
		{"mrowner", "MR_OWNER ", func(v *manifest.TDXValues) { v.MROwner = bad }},
		{"mrownerconfig", "MR_OWNER_CONFIG", func(v *manifest.TDXValues) { v.MROwnerConfig = bad }},
		{"xfam", "XFAM", func(v *manifest.TDXValues) { v.XFAM = manifest.BitsList{Values: []uint64{c.TDX.XFAM &^ 0x4}} }},
		{"td_attributes", "TD_ATTRIBUTES", func(v *manifest.TDXValues) { v.TDAttributes = manifest.BitsList{Values: []uint64{0}} }},
		{"tee_tcb_svn", "TEE TCB", func(v *manifest.TDXValues) { v.MinTEETCBSVN = manifest.HexValue{Value: bytes.Repeat([]byte{0xff}, 16)} }},
		{"mrseam", "MR_SEAM", func(v *manifest.TDXValues) { v.MRSeam = bad }},
	} {
		t.Run(tc.field, func(t *testing.T) {
			v := pinned
			tc.edit(&v)
			bothReject(t, c, nil, &v, tc.field, tc.lib)
		})
	}
}

// TestTDXMatchNamesEveryField: the manifest's report names every field
// that differs, in manifest order (what tdx.ValidateAll did before the
// manifest became the one place that explains).
func TestTDXMatchNamesEveryField(t *testing.T) {
	c := realClaims(t)
	v, err := manifest.PinTDX(c)
	if err != nil {
		t.Fatal(err)
	}
	bad := manifest.Hexes(bytes.Repeat([]byte{0xcd}, 48))
	v.MRTD, v.RTMR1, v.MRSeam = bad, bad, bad
	v.TDAttributes = manifest.BitsList{Values: []uint64{0}}
	r, err := simManifest(t, manifest.Class{TDX: []manifest.TDXValues{v}}).MatchClass("demo-worker", c)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(r.Failed(), " "), "mrtd rtmr1 td_attributes mrseam"; got != want {
		t.Errorf("failing fields %q, want %q", got, want)
	}
	if err := policy.Validate(c, nil, &v); err == nil {
		t.Error("library accepts four mismatching fields")
	}
}

// TestTDXSimFields issues one simulated quote per row that differs from the
// reference values pinned to the default quote in one field: the manifest
// and the library both refuse it, the manifest naming the field.
func TestTDXSimFields(t *testing.T) {
	dir := filepath.Join(testSim(t), "tdx")
	quote := func(o sim.TDXOptions) *attest.Claims {
		t.Helper()
		iss, err := sim.NewTDXIssuer(dir, o)
		if err != nil {
			t.Fatal(err)
		}
		var rd [64]byte
		ev, err := iss.Issue(context.Background(), rd)
		if err != nil {
			t.Fatal(err)
		}
		return verified(t, ev, rd)
	}
	pinned, err := manifest.PinTDX(quote(sim.TDXOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	other := bytes.Repeat([]byte{0xee}, 48)
	for _, tc := range []struct {
		name       string
		opts       sim.TDXOptions
		field, lib string
	}{
		{"MRTD", sim.TDXOptions{MRTD: other}, "mrtd", "MR_TD"},
		{"RTMR2", sim.TDXOptions{RTMR: [4][]byte{2: other}}, "rtmr2", "RTMR[2]"},
		{"MRCONFIGID", sim.TDXOptions{MRConfigID: other}, "mrconfigid", "MR_CONFIG_ID"},
		{"MROWNER", sim.TDXOptions{MROwner: other}, "mrowner", "MR_OWNER "},
		{"MROWNERCONFIG", sim.TDXOptions{MROwnerConfig: other}, "mrownerconfig", "MR_OWNER_CONFIG"},
		{"XFAM", sim.TDXOptions{XFAM: 0x2e7}, "xfam", "XFAM"},
		{"TD attributes", sim.TDXOptions{TDAttributes: 1 << 28}, "td_attributes", "TD_ATTRIBUTES"},
		{"TEE TCB SVN below minimum", sim.TDXOptions{TEETCBSVN: []byte{2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}}, "tee_tcb_svn", "TEE TCB"},
		{"MRSEAM", sim.TDXOptions{MRSeam: other}, "mrseam", "MR_SEAM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := pinned
			bothReject(t, quote(tc.opts), nil, &v, tc.field, tc.lib)
		})
	}

	// TD report 1.5 fields (a v5 quote) and MRSIGNERSEAM have no
	// go-tdx-guest option: the manifest alone refuses, naming the field.
	t.Run("TD report 1.5 fields", func(t *testing.T) {
		c5 := quote(sim.TDXOptions{V5: true, MRServiceTD: bytes.Repeat([]byte{5}, 48)})
		if c5.TDX.QuoteVersion != 5 || !bytes.Equal(c5.TDX.MRServiceTD, bytes.Repeat([]byte{5}, 48)) || len(c5.TDX.TEETCBSVN2) != 16 {
			t.Fatalf("v5 claims: version %d, MRSERVICETD %x, TEE_TCB_SVN2 %x", c5.TDX.QuoteVersion, c5.TDX.MRServiceTD, c5.TDX.TEETCBSVN2)
		}
		v5, err := manifest.PinTDX(c5)
		if err != nil {
			t.Fatal(err)
		}
		if err := policy.Validate(c5, nil, &v5); err != nil {
			t.Fatalf("library refuses the v5 quote's own values: %v", err)
		}
		for _, tc := range []struct {
			field string
			edit  func(*manifest.TDXValues)
		}{
			{"tee_tcb_svn2", func(v *manifest.TDXValues) {
				v.MinTEETCBSVN2 = &manifest.HexValue{Value: bytes.Repeat([]byte{0xff}, 16)}
			}},
			{"mrservicetd", func(v *manifest.TDXValues) { v.MRServiceTD = manifest.Hexes(other) }},
			{"mrsignerseam", func(v *manifest.TDXValues) { v.MRSignerSeam = manifest.Hexes(other) }},
		} {
			v := v5
			tc.edit(&v)
			r, err := simManifest(t, manifest.Class{TDX: []manifest.TDXValues{v}}).MatchClass("demo-worker", c5)
			if err != nil || r.OK() || strings.Join(r.Failed(), " ") != tc.field {
				t.Errorf("%s changed: failing %q, %v\n%s", tc.field, r.Failed(), err, r)
			}
		}
		// A v4 quote has no TD report 1.5 fields: values pinned to them
		// refuse it.
		r, err := simManifest(t, manifest.Class{TDX: []manifest.TDXValues{v5}}).MatchClass("demo-worker", quote(sim.TDXOptions{}))
		if err != nil || strings.Join(r.Failed(), " ") != "tee_tcb_svn2 mrservicetd" {
			t.Errorf("v4 quote against v5 values: failing %q, %v", r.Failed(), err)
		}
	})

	// An XFAM bit the architecture reserves: the manifest names it
	// (xfam.fixed) even when its values were pinned to the quote, as the
	// library does: the report no longer shows a match the library refuses.
	t.Run("XFAM reserved bit", func(t *testing.T) {
		c := quote(sim.TDXOptions{XFAM: sim.DefaultTDXXFAM | 1<<40})
		v, err := manifest.PinTDX(c)
		if err != nil {
			t.Fatal(err)
		}
		bothReject(t, c, nil, &v, "xfam.fixed", "xfam")
	})
}
