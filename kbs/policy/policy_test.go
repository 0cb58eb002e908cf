package policy_test

import (
	"bytes"
	"context"
	"crypto/sha512"
	"errors"
	"os"
	"reflect"
	"slices"
	"sync"
	"testing"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/attest/snp"
	"github.com/kbs-dev/kbs/kbs/attest/tdx"
	"github.com/kbs-dev/kbs/kbs/attest/verify"
	"github.com/kbs-dev/kbs/kbs/policy"
	"github.com/kbs-dev/kbs/manifest"
)

func fake(label string, n int) []byte {
	s := sha512.Sum512([]byte("policy test: " + label))
	return s[:n]
}

func u32(v uint32) *uint32 { return &v }
func u64(v uint64) *uint64 { return &v }

// snpFixture returns claims and reference values that list them, with a
// second, different value first in every allow list.
func snpFixture() (*attest.Claims, manifest.SNPValues) {
	c := &attest.Claims{
		Platform:    attest.SNP,
		Measurement: fake("measurement", 48),
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
		MaxPolicy:   manifest.Bits{Value: 0x60102}, // SMT off, migration agent on, ABI 1.2
		VMPL:        manifest.UintList{Values: []uint32{0, 2}},
		MinTCB:      manifest.TCB{Bootloader: 3, TEE: 1, SNP: 8, Microcode: 0xd1},
		MinGuestSVN: manifest.MinUint{Value: 5},
		Product:     manifest.NameList{Values: []string{"Milan", "Genoa"}},
		ChipIDs:     two("chip", 64, c.SNP.ChipID),
	}
	return c, v
}

func TestSNPMapping(t *testing.T) {
	c, v := snpFixture()
	p, err := policy.SNP(v, c)
	if err != nil {
		t.Fatal(err)
	}
	want := snp.Policy{
		Measurement: c.Measurement, HostData: c.SNP.HostData, FamilyID: c.SNP.FamilyID, ImageID: c.SNP.ImageID,
		AllowSMT: false, AllowMigrationAgent: true, MinABIMajor: 1, MinABIMinor: 2,
		VMPL:        u32(2),
		MinTCB:      &snp.TCB{Bootloader: 3, TEE: 1, SNP: 8, Microcode: 0xd1},
		MinGuestSVN: u32(5),
		Products:    []string{"Milan", "Genoa"},
		ChipIDs:     v.ChipIDs.Values,
	}
	if !reflect.DeepEqual(p, want) {
		t.Errorf("SNP(values) =\n%+v\nwant\n%+v", p, want)
	}

	// A claim value that is not listed maps to the first listed value, so
	// that the library check fails.
	c2, _ := snpFixture()
	c2.Measurement = fake("unlisted", 48)
	c2.SNP.VMPL = 3
	if p, err := policy.SNP(v, c2); err != nil || !bytes.Equal(p.Measurement, v.Measurement.Values[0]) || *p.VMPL != 0 {
		t.Errorf("SNP(unlisted claims) = measurement %x, vmpl %v, %v; want the first listed values", p.Measurement, p.VMPL, err)
	}

	// "any", field by field, becomes the policy's explicit Any.
	for _, tc := range []struct {
		field string
		edit  func(*manifest.SNPValues)
		check func(snp.Policy) bool
	}{
		{"measurement", func(v *manifest.SNPValues) { v.Measurement = manifest.AnyHex }, func(p snp.Policy) bool { return p.AnyMeasurement && p.Measurement == nil }},
		{"host_data", func(v *manifest.SNPValues) { v.HostData = manifest.AnyHex }, func(p snp.Policy) bool { return p.AnyHostData && p.HostData == nil }},
		{"family_id", func(v *manifest.SNPValues) { v.FamilyID = manifest.AnyHex }, func(p snp.Policy) bool { return p.AnyFamilyID && p.FamilyID == nil }},
		{"image_id", func(v *manifest.SNPValues) { v.ImageID = manifest.AnyHex }, func(p snp.Policy) bool { return p.AnyImageID && p.ImageID == nil }},
		{"max_policy", func(v *manifest.SNPValues) { v.MaxPolicy = manifest.Bits{Any: true} }, func(p snp.Policy) bool {
			return p.AllowSMT && p.AllowMigrationAgent && p.MinABIMajor == 0 && p.MinABIMinor == 0
		}},
		{"vmpl", func(v *manifest.SNPValues) { v.VMPL = manifest.UintList{Any: true} }, func(p snp.Policy) bool { return p.AnyVMPL && p.VMPL == nil }},
		{"min_tcb", func(v *manifest.SNPValues) { v.MinTCB = manifest.TCB{Any: true} }, func(p snp.Policy) bool { return p.MinTCB != nil && *p.MinTCB == snp.TCB{} }},
		{"min_guest_svn", func(v *manifest.SNPValues) { v.MinGuestSVN = manifest.MinUint{Any: true} }, func(p snp.Policy) bool { return p.MinGuestSVN != nil && *p.MinGuestSVN == 0 }},
		{"product", func(v *manifest.SNPValues) { v.Product = manifest.NameList{Any: true} }, func(p snp.Policy) bool { return p.AnyProduct && p.Products == nil }},
		{"chip_ids", func(v *manifest.SNPValues) { v.ChipIDs = manifest.AnyHex }, func(p snp.Policy) bool { return p.AnyChipID && p.ChipIDs == nil }},
	} {
		c, v := snpFixture()
		tc.edit(&v)
		p, err := policy.SNP(v, c)
		if err != nil {
			t.Errorf("%s any: SNP = %v", tc.field, err)
			continue
		}
		if !tc.check(p) {
			t.Errorf("%s any: SNP = %+v, want the field's Any", tc.field, p)
		}
	}

	// An empty allow list is an error, never a policy.
	for _, edit := range []func(*manifest.SNPValues){
		func(v *manifest.SNPValues) { v.Measurement = manifest.Hexes() },
		func(v *manifest.SNPValues) { v.VMPL = manifest.UintList{} },
		func(v *manifest.SNPValues) { v.Product = manifest.NameList{} },
		func(v *manifest.SNPValues) { v.ChipIDs = manifest.Hexes() },
	} {
		c, v := snpFixture()
		edit(&v)
		if p, err := policy.SNP(v, c); err == nil {
			t.Errorf("SNP(empty list) = %+v, want an error", p)
		}
	}
	if _, err := policy.SNP(v, &attest.Claims{Platform: attest.SNP}); err == nil {
		t.Error("SNP(claims without SNP fields) succeeded")
	}
}

// TestSNPMappingNeverZero: whatever mix of values and "any", the policy
// passes snp.Policy.Check (a zero policy, which Check rejects, is never
// produced).
func TestSNPMappingNeverZero(t *testing.T) {
	edits := []func(*manifest.SNPValues){
		func(v *manifest.SNPValues) { v.Measurement = manifest.AnyHex },
		func(v *manifest.SNPValues) { v.HostData = manifest.AnyHex },
		func(v *manifest.SNPValues) { v.FamilyID = manifest.AnyHex },
		func(v *manifest.SNPValues) { v.ImageID = manifest.AnyHex },
		func(v *manifest.SNPValues) { v.MaxPolicy = manifest.Bits{Any: true} },
		func(v *manifest.SNPValues) { v.VMPL = manifest.UintList{Any: true} },
		func(v *manifest.SNPValues) { v.MinTCB = manifest.TCB{Any: true} },
		func(v *manifest.SNPValues) { v.MinGuestSVN = manifest.MinUint{Any: true} },
		func(v *manifest.SNPValues) { v.Product = manifest.NameList{Any: true} },
		func(v *manifest.SNPValues) { v.ChipIDs = manifest.AnyHex },
	}
	for mask := 0; mask < 1<<len(edits); mask++ {
		c, v := snpFixture()
		for i, e := range edits {
			if mask&(1<<i) != 0 {
				e(&v)
			}
		}
		p, err := policy.SNP(v, c)
		if err != nil {
			t.Fatalf("mask %#x: SNP = %v", mask, err)
		}
		if err := p.Check(); err != nil || reflect.DeepEqual(p, snp.Policy{}) {
			t.Fatalf("mask %#x: policy %+v: Check = %v", mask, p, err)
		}
	}
}

func TestSNPTurinTCB(t *testing.T) {
	c, v := snpFixture()
	c.SNP.Product = "Turin"
	v.Product = manifest.NameList{Values: []string{"Turin"}}
	v.MinTCB = manifest.TCB{Bootloader: 3, TEE: 1, SNP: 8, Microcode: 0xd1}
	p, err := policy.SNP(v, c)
	if err != nil {
		t.Fatal(err)
	}
	// In the Milan/Genoa view of a Turin TCB_VERSION, byte 1 (the Turin
	// bootloader) is "TEE" and byte 7 is the microcode.
	if want := (snp.TCB{Bootloader: 0, TEE: 3, SNP: 0, Microcode: 0xd1}); *p.MinTCB != want {
		t.Errorf("Turin MinTCB = %+v, want %+v", *p.MinTCB, want)
	}
	c.SNP.Product = "Venice"
	if _, err := policy.SNP(v, c); err == nil {
		t.Error("SNP(unknown product) succeeded")
	}
}

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
	c := &attest.Claims{Platform: attest.TDX, Measurement: t.MRTD, TDX: t}
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

func TestTDXMapping(t *testing.T) {
	c, v := tdxFixture()
	p, err := policy.TDX(v, c)
	if err != nil {
		t.Fatal(err)
	}
	tc := c.TDX
	want := tdx.Policy{
		MRTD: tc.MRTD, RTMR: tc.RTMR, MRConfigID: tc.MRConfigID, MROwner: tc.MROwner, MROwnerConfig: tc.MROwnerConfig,
		XFAM: u64(tc.XFAM), TDAttributes: u64(tc.TDAttributes),
		MinTEETCBSVN: v.MinTEETCBSVN.Value, MRSeam: v.MRSeam.Values,
	}
	if !reflect.DeepEqual(p, want) {
		t.Errorf("TDX(values) =\n%+v\nwant\n%+v", p, want)
	}
	if err := tdx.Validate(c, p); err != nil {
		t.Errorf("tdx.Validate(listed claims) = %v", err)
	}

	anyEdits := map[tdx.Field]func(*manifest.TDXValues){
		tdx.FieldMRTD:          func(v *manifest.TDXValues) { v.MRTD = manifest.AnyHex },
		tdx.FieldRTMR0:         func(v *manifest.TDXValues) { v.RTMR0 = manifest.AnyHex },
		tdx.FieldRTMR1:         func(v *manifest.TDXValues) { v.RTMR1 = manifest.AnyHex },
		tdx.FieldRTMR2:         func(v *manifest.TDXValues) { v.RTMR2 = manifest.AnyHex },
		tdx.FieldRTMR3:         func(v *manifest.TDXValues) { v.RTMR3 = manifest.AnyHex },
		tdx.FieldMRConfigID:    func(v *manifest.TDXValues) { v.MRConfigID = manifest.AnyHex },
		tdx.FieldMROwner:       func(v *manifest.TDXValues) { v.MROwner = manifest.AnyHex },
		tdx.FieldMROwnerConfig: func(v *manifest.TDXValues) { v.MROwnerConfig = manifest.AnyHex },
		tdx.FieldXFAM:          func(v *manifest.TDXValues) { v.XFAM = manifest.BitsList{Any: true} },
		tdx.FieldTDAttributes:  func(v *manifest.TDXValues) { v.TDAttributes = manifest.BitsList{Any: true} },
		tdx.FieldMinTEETCBSVN:  func(v *manifest.TDXValues) { v.MinTEETCBSVN = manifest.HexValue{Any: true} },
		tdx.FieldMRSeam:        func(v *manifest.TDXValues) { v.MRSeam = manifest.AnyHex },
	}
	if len(anyEdits) != len(tdx.Fields) {
		t.Fatalf("test covers %d fields, tdx.Policy has %d", len(anyEdits), len(tdx.Fields))
	}
	all := manifest.TDXValues{}
	for f, edit := range anyEdits {
		c, v := tdxFixture()
		edit(&v)
		edit(&all)
		p, err := policy.TDX(v, c)
		if err != nil || !slices.Equal(p.Any, []tdx.Field{f}) {
			t.Errorf("%s any: TDX = Any %v, %v; want Any [%s]", f, p.Any, err, f)
		}
		// The policy is complete: Validate gets past the policy check.
		if err := tdx.Validate(c, p); err != nil {
			t.Errorf("%s any: tdx.Validate = %v", f, err)
		}
	}
	// Everything "any" is still not a zero policy: every field is named.
	p, err = policy.TDX(all, c)
	if err != nil || len(p.Any) != len(tdx.Fields) {
		t.Errorf("TDX(all any) = Any %v, %v; want every field", p.Any, err)
	}
	if err := tdx.Validate(nil, p); !errors.Is(err, tdx.ErrClaims) {
		t.Errorf("tdx.Validate(nil, all any) = %v, want ErrClaims (the policy itself valid)", err)
	}

	c2, _ := tdxFixture()
	c2.TDX.MRTD = fake("unlisted", 48)
	if p, err := policy.TDX(v, c2); err != nil || !bytes.Equal(p.MRTD, v.MRTD.Values[0]) {
		t.Errorf("TDX(unlisted mrtd) = %x, %v; want the first listed value", p.MRTD, err)
	}
	v.XFAM = manifest.BitsList{}
	if p, err := policy.TDX(v, c); err == nil {
		t.Errorf("TDX(empty xfam list) = %+v, want an error", p)
	}
}

var (
	simOnce sync.Once
	simDir  string
	simErr  error
)

func simEvidence(t *testing.T, p attest.Platform, o sim.Options) *attest.Claims {
	t.Helper()
	simOnce.Do(func() {
		if simDir, simErr = os.MkdirTemp("", "kbs-policy-sim-"); simErr == nil {
			simErr = sim.Init(simDir)
		}
	})
	if simErr != nil {
		t.Fatal(simErr)
	}
	ctx := context.Background()
	v, err := verify.New(verify.Options{SimRootFile: sim.RootFile(simDir), Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	iss, err := sim.NewIssuer(simDir, p, o)
	if err != nil {
		t.Fatal(err)
	}
	var rd [attest.ReportDataSize]byte
	ev, err := iss.Issue(ctx, rd)
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(ctx, ev, rd)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestMain(m *testing.M) {
	code := m.Run()
	if simDir != "" {
		os.RemoveAll(simDir)
	}
	os.Exit(code)
}

// TestConfirmSimulated: claims of simulated evidence that a manifest
// matches pass the library validation of the matched alternative, on both
// platforms; claims of another guest, validated against the same values
// outside the manifest's comparison, are rejected by the library.
func TestConfirmSimulated(t *testing.T) {
	for _, p := range []attest.Platform{attest.SNP, attest.TDX} {
		t.Run(string(p), func(t *testing.T) {
			c := simEvidence(t, p, sim.Options{})
			mc := c
			var cl manifest.Class
			var sv *manifest.SNPValues
			var tv *manifest.TDXValues
			if p == attest.SNP {
				v, err := manifest.PinSNP(mc)
				if err != nil {
					t.Fatal(err)
				}
				cl.SNP, sv = []manifest.SNPValues{v}, &v
			} else {
				v, err := manifest.PinTDX(mc)
				if err != nil {
					t.Fatal(err)
				}
				cl.TDX, tv = []manifest.TDXValues{v}, &v
			}
			m := simManifest(t, cl)
			class, r, err := m.AuthorizeRelease(mc, []string{"demo/k"})
			if err != nil {
				t.Fatal(err)
			}
			if err := policy.Confirm(m, r, class, c); err != nil {
				t.Errorf("Confirm(matching sim evidence) = %v", err)
			}
			if err := policy.Confirm(m, m.MatchService(mc), manifest.ServiceClass, c); err != nil {
				t.Errorf("Confirm(service) = %v", err)
			}

			other := simEvidence(t, p, sim.Options{Measurement: fake("another guest", 48)})
			if err := policy.Validate(other, sv, tv); err == nil {
				t.Error("library validation accepted another guest's measurement")
			}
			// A report that matched nothing confirms nothing.
			if err := policy.Confirm(m, m.Match(other), class, other); !errors.Is(err, policy.ErrDisagreement) {
				t.Errorf("Confirm(no match) = %v, want ErrDisagreement", err)
			}
			// No values of the claims' platform: nothing to validate against.
			if err := policy.Validate(c, nil, nil); err == nil {
				t.Error("Validate(no values) succeeded")
			}
		})
	}
}

// simManifest is a development manifest whose service and demo-worker
// classes are cl.
func simManifest(t *testing.T, cl manifest.Class) *manifest.Manifest {
	t.Helper()
	const pub = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n"
	b, err := manifest.Encode(manifest.DevDocument(pub, pub, cl, cl))
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
