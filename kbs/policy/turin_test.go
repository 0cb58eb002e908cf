package policy_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"os"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/uuid"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/attest/snp"
	"github.com/kbs-dev/kbs/kbs/policy"
	"github.com/kbs-dev/kbs/manifest"
)

// realTurin verifies the real Turin report and VCEK (testdata/README.md)
// an hour after the VCEK was issued.
func realTurin(t testing.TB) *attest.Claims {
	t.Helper()
	report, err := os.ReadFile("../../testdata/snp/turin-report.bin")
	if err != nil {
		t.Fatal(err)
	}
	vcek, err := os.ReadFile("../../testdata/snp/turin-vcek.der")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(vcek)
	if err != nil {
		t.Fatal(err)
	}
	table := &abi.CertTable{Entries: []abi.CertTableEntry{{GUID: uuid.MustParse(abi.VcekGUID), RawCert: vcek}}}
	now := cert.NotBefore.Add(time.Hour)
	v, err := snp.NewVerifier(snp.Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	var rd [64]byte
	copy(rd[:], report[0x50:0x90])
	c, err := v.Verify(context.Background(), attest.Evidence{Platform: attest.SNP, Data: append(report, table.Marshal()...)}, rd)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestSNPRealTurin: reference values pinned to a real Turin report match it
// (the manifest) and validate (go-sev-guest, reading the certificate kbs
// translates for it); each single-field change is refused by both, the
// manifest naming the field.
func TestSNPRealTurin(t *testing.T) {
	c := realTurin(t)
	pinned, err := manifest.PinSNP(c)
	if err != nil {
		t.Fatal(err)
	}
	if pinned.MinTCB.FMC != 1 || pinned.MinLaunchTCB == nil || pinned.MinLaunchTCB.FMC != 1 {
		t.Errorf("pinned TCBs %+v, %+v: want FMC 1", pinned.MinTCB, pinned.MinLaunchTCB)
	}
	m := simManifest(t, manifest.Class{SNP: []manifest.SNPValues{pinned}})
	class, r, err := m.AuthorizeRelease(c, []string{"demo/k"})
	if err != nil {
		t.Fatalf("manifest pinned to real Turin evidence refuses it: %v", err)
	}
	if err := policy.Confirm(m, r, class, c); err != nil {
		t.Fatalf("Confirm(real Turin) = %v", err)
	}
	// The 8-byte hardware id stands for the chip too.
	v := pinned
	v.ChipIDs = manifest.Hexes(bytes.Clone(c.SNP.ChipID[:8]))
	if err := policy.Validate(c, &v, nil); err != nil {
		t.Errorf("8-byte chip id: Validate = %v", err)
	}

	bad48 := bytes.Repeat([]byte{0xab}, 48)
	for _, tc := range []struct {
		name, field, lib string
		edit             func(*manifest.SNPValues)
	}{
		{"measurement", "measurement", "MEASUREMENT", func(v *manifest.SNPValues) { v.Measurement = manifest.Hexes(bad48) }},
		{"FMC below minimum", "reported_tcb.fmc", "REPORTED_TCB", func(v *manifest.SNPValues) { v.MinTCB.FMC++ }},
		{"bootloader below minimum", "reported_tcb.bootloader", "REPORTED_TCB", func(v *manifest.SNPValues) { v.MinTCB.Bootloader++ }},
		{"SNP below minimum", "reported_tcb.snp", "REPORTED_TCB", func(v *manifest.SNPValues) { v.MinTCB.SNP++ }},
		{"microcode below minimum", "reported_tcb.microcode", "REPORTED_TCB", func(v *manifest.SNPValues) { v.MinTCB.Microcode++ }},
		{"launch TCB below minimum", "launch_tcb.tee", "LAUNCH_TCB", func(v *manifest.SNPValues) { lt := *v.MinLaunchTCB; lt.TEE++; v.MinLaunchTCB = &lt }},
		{"other 8-byte chip id", "chip_id", "CHIP_ID", func(v *manifest.SNPValues) { v.ChipIDs = manifest.Hexes([]byte{1, 2, 3, 4, 5, 6, 7, 8}) }},
		{"ID key", "id_key_digest", "ID key", func(v *manifest.SNPValues) { v.IDKeyDigest = manifest.Hexes(bad48) }},
		{"author key", "author_key_digest", "author key", func(v *manifest.SNPValues) { v.AuthorKeyDigest = manifest.Hexes(bad48) }},
		{"host data", "host_data", "HOST_DATA", func(v *manifest.SNPValues) { v.HostData = manifest.Hexes(bad48[:32]) }},
		{"VMPL", "vmpl", "VMPL", func(v *manifest.SNPValues) { v.VMPL = manifest.UintList{Values: []uint32{1}} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := pinned
			tc.edit(&v)
			bothReject(t, c, &v, nil, tc.field, tc.lib)
		})
	}
	// SMT: the Turin host runs with SMT (PLATFORM_INFO bit 0). A maximum
	// guest policy without SMT is refused by the manifest, naming both the
	// guest policy and the host; go-sev-guest is not asked about PLATFORM_INFO
	// on Turin (it calls bit 6, IOMMU write safe, reserved).
	v = pinned
	v.MaxPolicy.Value &^= 1 << 16
	r, err = simManifest(t, manifest.Class{SNP: []manifest.SNPValues{v}}).MatchClass("demo-worker", c)
	if err != nil || r.OK() || !contains(r.Failed(), "platform_info.smt") {
		t.Errorf("SMT forbidden: failing %v, %v; want platform_info.smt", r.Failed(), err)
	}
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// TestSNPSimTurin: simulated Turin evidence (a VCEK in Turin's form, an
// 8-byte hardware id, a TCB with FMC) verifies under the sim's ARK-Turin,
// matches values pinned to it, and each changed field is refused by the
// manifest (naming it) and by the library.
func TestSNPSimTurin(t *testing.T) {
	dir := t.TempDir()
	if err := sim.GenerateSNPTurin(dir); err != nil {
		t.Fatal(err)
	}
	certs, err := sim.SNPRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := snp.NewVerifier(snp.Options{Roots: snp.RootsFromCerts(certs)})
	if err != nil {
		t.Fatal(err)
	}
	issue := func(o sim.SNPOptions) *attest.Claims {
		t.Helper()
		iss, err := sim.NewSNPIssuer(dir, o)
		if err != nil {
			t.Fatal(err)
		}
		var rd [64]byte
		ev, err := iss.Issue(context.Background(), rd)
		if err != nil {
			t.Fatal(err)
		}
		c, err := v.Verify(context.Background(), ev, rd)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := issue(sim.SNPOptions{GuestSVN: 3})
	if c.SNP.Product != "Turin" || !c.Simulated || !allZeroBytes(c.SNP.ChipID[8:]) {
		t.Fatalf("claims: product %q simulated %v chip %x", c.SNP.Product, c.Simulated, c.SNP.ChipID)
	}
	if tcb, err := attest.DecodeSNPTCB("Turin", c.SNP.ReportedTCB); err != nil || tcb != sim.SNPTurinTCB() {
		t.Fatalf("TCB %+v, %v; want %+v", tcb, err, sim.SNPTurinTCB())
	}
	pinned, err := manifest.PinSNP(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := policy.Validate(c, &pinned, nil); err != nil {
		t.Fatalf("library refuses values pinned to sim Turin evidence: %v", err)
	}
	for _, tc := range []struct {
		name, field, lib string
		opts             sim.SNPOptions
		edit             func(*manifest.SNPValues)
	}{
		{name: "FMC", field: "reported_tcb.fmc", lib: "REPORTED_TCB", opts: sim.SNPOptions{GuestSVN: 3}, edit: func(v *manifest.SNPValues) { v.MinTCB.FMC++ }},
		{name: "guest SVN", field: "guest_svn", lib: "GUEST_SVN", opts: sim.SNPOptions{GuestSVN: 2}},
		{name: "VMPL", field: "vmpl", lib: "VMPL", opts: sim.SNPOptions{GuestSVN: 3, VMPL: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := pinned
			if tc.edit != nil {
				tc.edit(&v)
			}
			bothReject(t, issue(tc.opts), &v, nil, tc.field, tc.lib)
		})
	}
}

func allZeroBytes(b []byte) bool { return len(bytes.Trim(b, "\x00")) == 0 }
