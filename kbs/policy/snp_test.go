package policy_test

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	"github.com/google/go-sev-guest/validate"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/policy"
	"github.com/kbs-dev/kbs/manifest"
)

func intp(v int) *int { return &v }

// snpFixture returns claims and reference values that list them, with a
// second, different value first in every allow list.
func snpFixture() (*attest.Claims, manifest.SNPValues) {
	c := &attest.Claims{
		Platform:    attest.SNP,
		Measurement: fake("measurement", 48),
		ReportData:  [64]byte{1, 2, 3},
		SNP: &attest.SNPClaims{
			HostData: fake("host", 32), FamilyID: fake("family", 16), ImageID: fake("image", 16),
			VMPL: 2, Product: "Genoa", ChipID: fake("chip", 64), GuestSVN: 7, Policy: 0x30000,
		},
	}
	two := func(label string, n int, v []byte) manifest.HexList {
		return manifest.Hexes(fake("other "+label, n), v)
	}
	v := manifest.SNPValues{
		Measurement: two("measurement", 48, c.Measurement),
		HostData:    two("host", 32, c.SNP.HostData),
		FamilyID:    two("family", 16, c.SNP.FamilyID),
		ImageID:     two("image", 16, c.SNP.ImageID),
		MaxPolicy:   manifest.Bits{Value: 0x160102}, // SMT off, migration agent on, single socket required, ABI 1.2
		VMPL:        manifest.UintList{Values: []uint32{0, 2}},
		MinTCB:      manifest.TCB{Bootloader: 3, TEE: 1, SNP: 8, Microcode: 0xd1},
		MinGuestSVN: manifest.MinUint{Value: 5},
		Product:     manifest.NameList{Values: []string{"Milan", "Genoa"}},
		ChipIDs:     two("chip", 64, c.SNP.ChipID),
	}
	return c, v
}

// TestSNPOptions: every manifest field lands in its go-sev-guest option.
func TestSNPOptions(t *testing.T) {
	c, v := snpFixture()
	opts, err := policy.SNPOptions(v, c)
	if err != nil {
		t.Fatal(err)
	}
	want := &validate.Options{
		Measurement: c.Measurement, HostData: c.SNP.HostData, FamilyID: c.SNP.FamilyID, ImageID: c.SNP.ImageID,
		ChipID:                    c.SNP.ChipID,
		GuestPolicy:               abi.SnpPolicy{ABIMajor: 1, ABIMinor: 2, MigrateMA: true, SingleSocket: true},
		VMPL:                      intp(2),
		MinimumTCB:                kds.TCBParts{BlSpl: 3, TeeSpl: 1, SnpSpl: 8, UcodeSpl: 0xd1},
		MinimumGuestSvn:           5,
		PlatformInfo:              &abi.SnpPlatformInfo{SMTEnabled: false, TSMEEnabled: true},
		ReportData:                c.ReportData[:],
		PermitProvisionalFirmware: true,
	}
	if !reflect.DeepEqual(opts, want) {
		t.Errorf("SNPOptions(values) =\n%+v\nwant\n%+v", opts, want)
	}

	// A claim value that is not listed maps to the first listed value, so
	// that the library check fails.
	c2, _ := snpFixture()
	c2.Measurement = fake("unlisted", 48)
	c2.SNP.VMPL = 3
	if o, err := policy.SNPOptions(v, c2); err != nil || !bytes.Equal(o.Measurement, v.Measurement.Values[0]) || *o.VMPL != 0 {
		t.Errorf("SNPOptions(unlisted claims) = measurement %x, vmpl %v, %v; want the first listed values", o.Measurement, o.VMPL, err)
	}

	// "any", field by field, leaves the option unchecked, and only that one.
	for _, tc := range []struct {
		field string
		edit  func(*manifest.SNPValues)
		check func(*validate.Options) bool
	}{
		{"measurement", func(v *manifest.SNPValues) { v.Measurement = manifest.AnyHex }, func(o *validate.Options) bool { return o.Measurement == nil }},
		{"host_data", func(v *manifest.SNPValues) { v.HostData = manifest.AnyHex }, func(o *validate.Options) bool { return o.HostData == nil }},
		{"family_id", func(v *manifest.SNPValues) { v.FamilyID = manifest.AnyHex }, func(o *validate.Options) bool { return o.FamilyID == nil }},
		{"image_id", func(v *manifest.SNPValues) { v.ImageID = manifest.AnyHex }, func(o *validate.Options) bool { return o.ImageID == nil }},
		{"max_policy", func(v *manifest.SNPValues) { v.MaxPolicy = manifest.Bits{Any: true} }, func(o *validate.Options) bool {
			return o.GuestPolicy == abi.SnpPolicy{SMT: true, MigrateMA: true} && o.PlatformInfo.SMTEnabled
		}},
		{"vmpl", func(v *manifest.SNPValues) { v.VMPL = manifest.UintList{Any: true} }, func(o *validate.Options) bool { return o.VMPL == nil }},
		{"min_tcb", func(v *manifest.SNPValues) { v.MinTCB = manifest.TCB{Any: true} }, func(o *validate.Options) bool { return o.MinimumTCB == kds.TCBParts{} }},
		{"min_guest_svn", func(v *manifest.SNPValues) { v.MinGuestSVN = manifest.MinUint{Any: true} }, func(o *validate.Options) bool { return o.MinimumGuestSvn == 0 }},
		{"product", func(v *manifest.SNPValues) { v.Product = manifest.NameList{Any: true} }, func(o *validate.Options) bool { return true }},
		{"chip_ids", func(v *manifest.SNPValues) { v.ChipIDs = manifest.AnyHex }, func(o *validate.Options) bool { return o.ChipID == nil }},
	} {
		c, v := snpFixture()
		tc.edit(&v)
		o, err := policy.SNPOptions(v, c)
		if err != nil {
			t.Errorf("%s any: SNPOptions = %v", tc.field, err)
			continue
		}
		if !tc.check(o) {
			t.Errorf("%s any: SNPOptions = %+v, want the field unchecked", tc.field, o)
		}
	}

	// An empty allow list or a debug policy is an error, never options.
	for _, tc := range []struct {
		field string
		edit  func(*manifest.SNPValues)
	}{
		{"measurement", func(v *manifest.SNPValues) { v.Measurement = manifest.Hexes() }},
		{"measurement", func(v *manifest.SNPValues) { v.Measurement = manifest.Hexes([]byte{}) }},
		{"vmpl", func(v *manifest.SNPValues) { v.VMPL = manifest.UintList{} }},
		{"product", func(v *manifest.SNPValues) { v.Product = manifest.NameList{} }},
		{"chip_ids", func(v *manifest.SNPValues) { v.ChipIDs = manifest.Hexes() }},
		{"max_policy", func(v *manifest.SNPValues) { v.MaxPolicy = manifest.Bits{Value: 0x30000 | 1<<19} }},
		{"max_policy", func(v *manifest.SNPValues) { v.MaxPolicy = manifest.Bits{Value: 0x10000} }},
	} {
		c, v := snpFixture()
		tc.edit(&v)
		if o, err := policy.SNPOptions(v, c); err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("SNPOptions(bad %s) = %+v, %v; want an error naming it", tc.field, o, err)
		}
	}
	if _, err := policy.SNPOptions(v, &attest.Claims{Platform: attest.SNP}); err == nil {
		t.Error("SNPOptions(claims without SNP fields) succeeded")
	}
	// Zero values name no value at all: refused, each field named.
	_, err = policy.SNPOptions(manifest.SNPValues{}, c)
	for _, f := range []string{"measurement", "host_data", "family_id", "image_id", "vmpl", "product", "chip_ids"} {
		if err == nil || !strings.Contains(err.Error(), f+":") {
			t.Errorf("SNPOptions(zero values) = %v, want an error naming %s", err, f)
		}
	}
}

// TestSNPOptionsNeverUnchecked: whatever mix of values and "any", every
// field that is not "any" sets its option (a forgotten field can never pass
// silently).
func TestSNPOptionsNeverUnchecked(t *testing.T) {
	fields := []struct {
		any func(*manifest.SNPValues)
		set func(*validate.Options) bool
	}{
		{func(v *manifest.SNPValues) { v.Measurement = manifest.AnyHex }, func(o *validate.Options) bool { return o.Measurement != nil }},
		{func(v *manifest.SNPValues) { v.HostData = manifest.AnyHex }, func(o *validate.Options) bool { return o.HostData != nil }},
		{func(v *manifest.SNPValues) { v.FamilyID = manifest.AnyHex }, func(o *validate.Options) bool { return o.FamilyID != nil }},
		{func(v *manifest.SNPValues) { v.ImageID = manifest.AnyHex }, func(o *validate.Options) bool { return o.ImageID != nil }},
		{func(v *manifest.SNPValues) { v.MaxPolicy = manifest.Bits{Any: true} }, func(o *validate.Options) bool {
			return !o.GuestPolicy.SMT && o.GuestPolicy.ABIMajor == 1 && o.PlatformInfo != nil && !o.PlatformInfo.SMTEnabled
		}},
		{func(v *manifest.SNPValues) { v.VMPL = manifest.UintList{Any: true} }, func(o *validate.Options) bool { return o.VMPL != nil }},
		{func(v *manifest.SNPValues) { v.MinTCB = manifest.TCB{Any: true} }, func(o *validate.Options) bool { return o.MinimumTCB != kds.TCBParts{} }},
		{func(v *manifest.SNPValues) { v.MinGuestSVN = manifest.MinUint{Any: true} }, func(o *validate.Options) bool { return o.MinimumGuestSvn != 0 }},
		{func(v *manifest.SNPValues) { v.ChipIDs = manifest.AnyHex }, func(o *validate.Options) bool { return o.ChipID != nil }},
	}
	for mask := 0; mask < 1<<len(fields); mask++ {
		c, v := snpFixture()
		for i, f := range fields {
			if mask&(1<<i) != 0 {
				f.any(&v)
			}
		}
		o, err := policy.SNPOptions(v, c)
		if err != nil {
			t.Fatalf("mask %#x: SNPOptions = %v", mask, err)
		}
		if o.ReportData == nil || o.GuestPolicy.Debug || o.PlatformInfo == nil {
			t.Fatalf("mask %#x: REPORT_DATA, debug or platform info unchecked: %+v", mask, o)
		}
		for i, f := range fields {
			if mask&(1<<i) == 0 && !f.set(o) {
				t.Fatalf("mask %#x: field %d is not \"any\" but its option is unchecked: %+v", mask, i, o)
			}
		}
	}
}

// TestSNPTurinTCB: go-sev-guest reads TCB_VERSION in the Milan/Genoa
// layout, so a Turin minimum reaches it through the raw value.
func TestSNPTurinTCB(t *testing.T) {
	c, v := snpFixture()
	c.SNP.Product = "Turin"
	v.Product = manifest.NameList{Values: []string{"Turin"}}
	v.MinTCB = manifest.TCB{Bootloader: 3, TEE: 1, SNP: 8, Microcode: 0xd1}
	o, err := policy.SNPOptions(v, c)
	if err != nil {
		t.Fatal(err)
	}
	// In the Milan/Genoa view of a Turin TCB_VERSION, byte 1 (the Turin
	// bootloader) is "TEE", bytes 2 and 3 (TEE, SNP) are reserved bytes, and
	// byte 7 is the microcode. The library compares every byte, so it
	// confirms all four.
	if want := (kds.TCBParts{BlSpl: 0, TeeSpl: 3, Spl4: 1, Spl5: 8, SnpSpl: 0, UcodeSpl: 0xd1}); o.MinimumTCB != want {
		t.Errorf("Turin MinimumTCB = %+v, want %+v", o.MinimumTCB, want)
	}
	c.SNP.Product = "Venice"
	if _, err := policy.SNPOptions(v, c); err == nil || !strings.Contains(err.Error(), "min_tcb") {
		t.Errorf("SNPOptions(unknown product) = %v, want a min_tcb error", err)
	}
}

// TestSNPFieldRejections changes one field of simulated evidence, or of the
// reference values pinned to the default evidence, per row: the manifest's
// comparison refuses it naming exactly that field, and the library's
// validation with the options built from the values refuses it too.
func TestSNPFieldRejections(t *testing.T) {
	base := simEvidence(t, attest.SNP, sim.Options{})
	pinned, err := manifest.PinSNP(base)
	if err != nil {
		t.Fatal(err)
	}
	one := func(n int) []byte { b := make([]byte, n); b[0] = 1; return b }
	for _, tc := range []struct {
		name       string
		opts       sim.Options
		edit       func(*manifest.SNPValues)
		field, lib string // the failing check of the manifest, the library's name
	}{
		{name: "VMPL", opts: sim.Options{VMPL: 1}, field: "vmpl", lib: "VMPL"},
		{name: "measurement", edit: func(v *manifest.SNPValues) { v.Measurement = manifest.Hexes(one(48)) }, field: "measurement", lib: "MEASUREMENT"},
		{name: "host data", opts: sim.Options{HostData: one(32)}, field: "host_data", lib: "HOST_DATA"},
		{name: "family id", opts: sim.Options{FamilyID: one(16)}, field: "family_id", lib: "FAMILY_ID"},
		{name: "image id", opts: sim.Options{ImageID: one(16)}, field: "image_id", lib: "IMAGE_ID"},
		{name: "TCB below minimum", edit: func(v *manifest.SNPValues) { v.MinTCB.SNP++ }, field: "reported_tcb.snp", lib: "REPORTED_TCB"},
		{name: "guest SVN", opts: sim.Options{GuestSVN: 1}, edit: func(v *manifest.SNPValues) { v.MinGuestSVN = manifest.MinUint{Value: 2} }, field: "guest_svn", lib: "GUEST_SVN"},
		{name: "SMT not allowed", edit: func(v *manifest.SNPValues) { v.MaxPolicy.Value &^= 1 << 16 }, field: "policy", lib: "SMT"},
		{name: "migration agent", opts: sim.Options{GuestPolicy: sim.DefaultSNPGuestPolicy | 1<<18}, field: "policy", lib: "migration agent"},
		{name: "chip id", edit: func(v *manifest.SNPValues) { v.ChipIDs = manifest.Hexes(make([]byte, 64)) }, field: "chip_id", lib: "CHIP_ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := simEvidence(t, attest.SNP, tc.opts)
			v := pinned
			if tc.edit != nil {
				tc.edit(&v)
			}
			bothReject(t, c, &v, nil, tc.field, tc.lib)
		})
	}
	// The product has no go-sev-guest option: the manifest alone refuses it.
	v := pinned
	v.Product = manifest.NameList{Values: []string{"Genoa"}}
	r, err := simManifest(t, manifest.Class{SNP: []manifest.SNPValues{v}}).MatchClass("demo-worker", base)
	if err != nil || r.OK() || strings.Join(r.Failed(), " ") != "product" {
		t.Errorf("product Genoa for Milan evidence: failing %q, %v", r.Failed(), err)
	}
}

// TestSNPLibraryArmed: the options built from reference values reject, on
// their own, evidence that violates any one of them (the second line of
// defence is really armed).
func TestSNPLibraryArmed(t *testing.T) {
	c := simEvidence(t, attest.SNP, sim.Options{VMPL: 2, GuestSVN: 1})
	base, err := manifest.PinSNP(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := policy.Validate(c, &base, nil); err != nil {
		t.Fatalf("library rejects the values pinned to the evidence: %v", err)
	}
	other := make([]byte, 48)
	other[5] = 1
	for name, mutate := range map[string]func(*manifest.SNPValues){
		"measurement": func(v *manifest.SNPValues) { v.Measurement = manifest.Hexes(other) },
		"host data":   func(v *manifest.SNPValues) { v.HostData = manifest.Hexes(other[:32]) },
		"family id":   func(v *manifest.SNPValues) { v.FamilyID = manifest.Hexes(other[:16]) },
		"image id":    func(v *manifest.SNPValues) { v.ImageID = manifest.Hexes(other[:16]) },
		"chip id":     func(v *manifest.SNPValues) { v.ChipIDs = manifest.Hexes(append(other, other[:16]...)) },
		"vmpl":        func(v *manifest.SNPValues) { v.VMPL = manifest.UintList{Values: []uint32{0}} },
		"smt":         func(v *manifest.SNPValues) { v.MaxPolicy.Value &^= 1 << 16 },
		"abi":         func(v *manifest.SNPValues) { v.MaxPolicy.Value |= 0x0100 },
		"tcb":         func(v *manifest.SNPValues) { v.MinTCB.Microcode++ },
		"guest svn":   func(v *manifest.SNPValues) { v.MinGuestSVN = manifest.MinUint{Value: 2} },
	} {
		v := base
		mutate(&v)
		if err := policy.Validate(c, &v, nil); err == nil {
			t.Errorf("library accepts a report that violates %s", name)
		}
	}
}
