package manifest_test

import (
	"bytes"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/manifest"
)

// fake mirrors the fixture generator's deterministic values.
func fake(label string, n int) []byte {
	sum := sha512.Sum512([]byte("kbs test fixture: " + label))
	return sum[:n]
}

// snpClaims match the "gpu-worker" class of valid/snp.json.
func snpClaims() *manifest.Claims {
	return &manifest.Claims{
		Platform:    manifest.PlatformSNP,
		Measurement: fake("gpu-worker", 48),
		SNP: &manifest.SNPClaims{
			Policy:       0x30000,
			VMPL:         0,
			FamilyID:     make([]byte, 16),
			ImageID:      make([]byte, 16),
			ReportedTCB:  0xd1_08_0000_0000_00_03, // microcode 0xd1, snp 8, tee 0, bootloader 3
			CurrentTCB:   0xd1_08_0000_0000_00_03,
			CommittedTCB: 0xd1_08_0000_0000_00_03,
			LaunchTCB:    0xd1_08_0000_0000_00_03,
			GuestSVN:     1,
			Product:      "Milan",
			ChipID:       fake("chip", 64),
			HostData:     fake("host", 32),
		},
	}
}

// tdxClaims match the "tdx-worker" class of valid/tdx.json.
func tdxClaims() *manifest.Claims {
	l := "tdx-worker"
	return &manifest.Claims{
		Platform:    manifest.PlatformTDX,
		Measurement: fake(l+" mrtd", 48),
		TDX: &manifest.TDXClaims{
			MRTD:          fake(l+" mrtd", 48),
			RTMR:          [4][]byte{fake(l+" rtmr0", 48), fake(l+" rtmr1", 48), fake(l+" rtmr2", 48), fake("anything", 48)},
			MRConfigID:    make([]byte, 48),
			MROwner:       make([]byte, 48),
			MROwnerConfig: make([]byte, 48),
			XFAM:          0x61ae7,
			TDAttributes:  0x10000000,
			TEETCBSVN:     []byte{3, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
			MRSeam:        fake("seam", 48),
			TCBStatus:     "UpToDate",
		},
	}
}

// failing returns the fields of failed checks in the report.
func failing(r *manifest.Report) []string {
	var out []string
	for _, c := range r.Classes {
		for _, ch := range c.Checks {
			if !ch.OK {
				out = append(out, ch.Field)
			}
		}
		for _, a := range c.Alternatives {
			for _, ch := range a.Checks {
				if !ch.OK {
					out = append(out, ch.Field)
				}
			}
		}
	}
	return out
}

func TestMatchSNP(t *testing.T) {
	m := mustParse(t, readFile(t, "valid/snp.json"))
	r := m.Match(snpClaims())
	if got := r.Matched(); len(got) != 1 || got[0] != "gpu-worker" {
		t.Fatalf("Match(snpClaims) matched %v, want [gpu-worker]\n%s", got, r)
	}
	// Every reference field appears in the report.
	var fields []string
	for _, ch := range r.Classes[0].Alternatives[0].Checks {
		fields = append(fields, ch.Field)
		if ch.Expected == "" || ch.Actual == "" {
			t.Errorf("check %s lacks expected or actual: %+v", ch.Field, ch)
		}
	}
	want := "measurement host_data family_id image_id policy.debug policy vmpl policy.cxl_allow platform_info.smt platform_info reported_tcb.bootloader reported_tcb.tee reported_tcb.snp reported_tcb.microcode tcb_order launch_tcb guest_svn product chip_id id_key_digest author_key_digest"
	if got := strings.Join(fields, " "); got != want {
		t.Errorf("checked fields:\n got %s\nwant %s", got, want)
	}

	tests := []struct {
		name   string
		mutate func(c *manifest.Claims)
		fail   string
	}{
		{"measurement", func(c *manifest.Claims) { c.Measurement = fake("other", 48) }, "measurement"},
		{"debug", func(c *manifest.Claims) { c.SNP.Policy |= 1 << 19 }, "policy.debug"},
		{"smt not permitted", func(c *manifest.Claims) { c.SNP.Policy = 0x20000 | 1<<18 }, "policy"},
		{"abi too low", func(c *manifest.Claims) { c.SNP.Policy = 0x20000 }, ""}, // ABI 0.0 >= 0.0 and SMT off: still fine
		{"unknown policy bit", func(c *manifest.Claims) { c.SNP.Policy |= 1 << 30 }, "policy"},
		{"vmpl", func(c *manifest.Claims) { c.SNP.VMPL = 1 }, "vmpl"},
		{"bootloader", func(c *manifest.Claims) { c.SNP.ReportedTCB = 0xd1_08_0000_0000_00_02 }, "reported_tcb.bootloader"},
		{"snp spl", func(c *manifest.Claims) { c.SNP.ReportedTCB = 0xd1_07_0000_0000_00_03 }, "reported_tcb.snp"},
		{"guest svn", func(c *manifest.Claims) { c.SNP.GuestSVN = 0 }, "guest_svn"},
		{"product", func(c *manifest.Claims) { c.SNP.Product = "Genoa" }, "product"},
		{"unknown product", func(c *manifest.Claims) { c.SNP.Product = "Venice" }, "reported_tcb"},
		{"simulated", func(c *manifest.Claims) { c.Simulated = true }, "simulated"},
		{"platform", func(c *manifest.Claims) { c.Platform = manifest.PlatformTDX }, "platform"},
		{"missing snp", func(c *manifest.Claims) { c.SNP = nil }, "platform"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := snpClaims()
			tc.mutate(c)
			r := m.Match(c)
			if tc.fail == "" {
				if !r.OK() {
					t.Errorf("Match failed: %v", failing(r))
				}
				return
			}
			if r.OK() {
				t.Fatalf("Match succeeded, want %s to fail\n%s", tc.fail, r)
			}
			f := failing(r)
			found := false
			for _, x := range f {
				found = found || x == tc.fail
			}
			if !found {
				t.Errorf("failing fields %v, want %s among them\n%s", f, tc.fail, r)
			}
			if !strings.Contains(r.Summary(), tc.fail) {
				t.Errorf("Summary() = %q, want it to name %s", r.Summary(), tc.fail)
			}
		})
	}
}

func TestMatchSNPPolicyRules(t *testing.T) {
	base := readFile(t, "valid/snp.json")
	tests := []struct {
		max    string
		policy uint64
		ok     bool
	}{
		{"0x30000", 0x30000, true},
		{"0x30000", 0x20000, true},          // SMT off is stricter
		{"0x30000", 0x30000 | 1<<18, false}, // MIGRATE_MA not permitted
		{"0x30000", 0x30000 | 1<<21, false}, // CXL_ALLOW not permitted
		{"0x30000", 0x30000 | 1<<20, true},  // SINGLE_SOCKET is a restriction
		{"0x130000", 0x30000, false},        // SINGLE_SOCKET required
		{"0x130000", 0x130000, true},        //
		{"0x30105", 0x30104, false},         // ABI 1.4 below 1.5
		{"0x30105", 0x30200, true},          // ABI 2.0
		{"0x70000", 0x70000 | 1<<19, false}, // debug never
		{"any", 0x30000 | 1<<19, false},     // debug never, even with "any"
		{"any", 0x3ffff | 1<<18, true},      //
		{"any", 0x3ffff | 1<<21, false},     // CXL_ALLOW: go-sev-guest never admits it
		{"0x30000", 0x10000, false},         // reserved bit 17 clear
	}
	for _, tc := range tests {
		b := strings.Replace(string(base), `"max_policy": "0x30000"`, `"max_policy": "`+tc.max+`"`, 2)
		b = strings.Replace(b, `"max_policy": "any"`, `"max_policy": "any"`, 2)
		m := mustParse(t, []byte(b))
		c := snpClaims()
		c.SNP.Policy = tc.policy
		if r := m.Match(c); r.OK() != tc.ok {
			t.Errorf("max_policy %s, policy %#x: OK() = %v, want %v\n%s", tc.max, tc.policy, r.OK(), tc.ok, r)
		}
	}
}

func TestMatchTurinTCB(t *testing.T) {
	b := strings.Replace(string(readFile(t, "valid/snp.json")), `"product": ["Milan"]`, `"product": ["Milan", "Turin"]`, -1)
	m := mustParse(t, []byte(b))
	c := snpClaims()
	c.SNP.Product = "Turin"
	// Turin: FMC, bootloader, TEE, SNP in bytes 0-3, microcode in byte 7.
	c.SNP.ReportedTCB = 0xd1_000000_08_00_03_00
	c.SNP.CommittedTCB, c.SNP.CurrentTCB = c.SNP.ReportedTCB, c.SNP.ReportedTCB
	if r := m.Match(c); !r.OK() {
		t.Errorf("Turin TCB rejected: %v\n%s", failing(r), r)
	}
	c.SNP.ReportedTCB = 0xd1_000000_07_00_03_00
	if r := m.Match(c); r.OK() {
		t.Errorf("Turin TCB with SNP SPL 7 accepted, want minimum 8")
	}

	// An FMC minimum: Turin's byte 0; a Milan report has no FMC at all.
	b = strings.Replace(b, `"microcode": 0`, `"microcode": 0, "fmc": 2`, -1)
	m = mustParse(t, []byte(b))
	for _, tc := range []struct {
		product string
		tcb     uint64
		ok      bool
	}{
		{"Turin", 0xd1_000000_08_00_03_02, true},
		{"Turin", 0xd1_000000_08_00_03_01, false},
		{"Milan", 0xd1_08_0000_0000_00_03, false},
	} {
		c := snpClaims()
		c.SNP.Product = tc.product
		c.SNP.ReportedTCB, c.SNP.CommittedTCB, c.SNP.CurrentTCB = tc.tcb, tc.tcb, tc.tcb
		r := m.Match(c)
		if r.OK() != tc.ok {
			t.Errorf("min fmc 2, %s TCB %#x: OK() = %v, want %v\n%s", tc.product, tc.tcb, r.OK(), tc.ok, r)
		}
		if !tc.ok && !slices.Contains(failing(r), "reported_tcb.fmc") {
			t.Errorf("min fmc 2, %s TCB %#x: failing %v, want reported_tcb.fmc", tc.product, tc.tcb, failing(r))
		}
	}
}

func TestMatchTDX(t *testing.T) {
	m := mustParse(t, readFile(t, "valid/tdx.json"))
	r := m.Match(tdxClaims())
	if got := r.Matched(); len(got) != 1 || got[0] != "tdx-worker" {
		t.Fatalf("Match(tdxClaims) matched %v\n%s", got, r)
	}
	tests := []struct {
		name   string
		mutate func(c *manifest.TDXClaims)
		fail   string
	}{
		{"mrtd", func(c *manifest.TDXClaims) { c.MRTD = fake("x", 48) }, "mrtd"},
		{"rtmr0", func(c *manifest.TDXClaims) { c.RTMR[0] = fake("x", 48) }, "rtmr0"},
		{"rtmr2", func(c *manifest.TDXClaims) { c.RTMR[2] = nil }, "rtmr2"},
		{"mrconfigid", func(c *manifest.TDXClaims) { c.MRConfigID = fake("x", 48) }, "mrconfigid"},
		{"mrowner", func(c *manifest.TDXClaims) { c.MROwner = fake("x", 48) }, "mrowner"},
		{"mrownerconfig", func(c *manifest.TDXClaims) { c.MROwnerConfig = fake("x", 48) }, "mrownerconfig"},
		{"xfam", func(c *manifest.TDXClaims) { c.XFAM = 0xe7 }, "xfam"},
		{"debug", func(c *manifest.TDXClaims) { c.TDAttributes |= 1 }, "td_attributes.debug"},
		{"attributes", func(c *manifest.TDXClaims) { c.TDAttributes = 0 }, "td_attributes"},
		{"tcb svn", func(c *manifest.TDXClaims) { c.TEETCBSVN = []byte{3, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} }, "tee_tcb_svn"},
		{"tcb svn short", func(c *manifest.TDXClaims) { c.TEETCBSVN = []byte{9} }, "tee_tcb_svn"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := tdxClaims()
			tc.mutate(c.TDX)
			r := m.Match(c)
			if r.OK() {
				t.Fatalf("Match succeeded, want %s to fail\n%s", tc.fail, r)
			}
			f := failing(r)
			found := false
			for _, x := range f {
				found = found || x == tc.fail
			}
			if !found {
				t.Errorf("failing fields %v, want %s among them", f, tc.fail)
			}
		})
	}
	// Higher SVNs pass.
	c := tdxClaims()
	c.TDX.TEETCBSVN[0] = 7
	if r := m.Match(c); !r.OK() {
		t.Errorf("higher TEE TCB SVN rejected: %v", failing(r))
	}
	// Debug is rejected even where td_attributes is "any".
	b := strings.Replace(string(readFile(t, "valid/tdx.json")), `"td_attributes": ["0x10000000"]`, `"td_attributes": "any"`, -1)
	m2 := mustParse(t, []byte(b))
	c = tdxClaims()
	c.TDX.TDAttributes |= 1
	if r := m2.Match(c); r.OK() {
		t.Error("debug TD matched a class with td_attributes \"any\"")
	}
}

func TestMatchClass(t *testing.T) {
	m := mustParse(t, readFile(t, "valid/full.json"))
	c := tdxClaims()
	c.Measurement = fake("service mrtd", 48)
	c.TDX.MRTD = fake("service mrtd", 48)
	c.TDX.RTMR = [4][]byte{fake("service rtmr0", 48), fake("service rtmr1", 48), fake("service rtmr2", 48), nil}
	r, err := m.MatchClass(manifest.ServiceClass, c)
	if err != nil || !r.OK() || r.Classes[0].Class != "service" {
		t.Fatalf("MatchClass(service) = %v, %v\n%s", r, err, r)
	}
	if r, err := m.MatchClass("tdx-worker", c); err != nil || r.OK() {
		t.Errorf("service claims matched tdx-worker: %v", err)
	}
	if _, err := m.MatchClass("nope", c); err == nil {
		t.Error("MatchClass(unknown) succeeded")
	}
	// The report is JSON for kbsctl --json.
	j, err := json.Marshal(r)
	if err != nil || !strings.Contains(string(j), `"field":"mrtd"`) {
		t.Errorf("json.Marshal(report) = %s, %v", j, err)
	}
	if s := r.String(); !strings.Contains(s, "class service: MATCH") || !strings.Contains(s, "mrtd") {
		t.Errorf("String() =\n%s", s)
	}
	if r := m.MatchService(nil); r.OK() {
		t.Error("nil claims matched")
	}
}

func TestAuthorizeRelease(t *testing.T) {
	m := mustParse(t, readFile(t, "valid/full.json"))
	c := tdxClaims()
	class, _, err := m.AuthorizeRelease(c, []string{"acme/model", "shared/tokenizer-key"})
	if err != nil || class != "tdx-worker" {
		t.Fatalf("AuthorizeRelease = %q, %v", class, err)
	}
	_, _, err = m.AuthorizeRelease(c, []string{"acme/model", "other/key"})
	var re *manifest.ReleaseError
	if !errors.Is(err, manifest.ErrKeyNotAllowed) || !errors.As(err, &re) || len(re.Denied) != 1 || re.Denied[0] != "other/key" {
		t.Errorf("AuthorizeRelease(other/key) = %v, want ErrKeyNotAllowed for other/key", err)
	}
	c.TDX.MRTD = fake("x", 48)
	_, r, err := m.AuthorizeRelease(c, []string{"acme/model"})
	if !errors.Is(err, manifest.ErrNoMatch) || r.OK() {
		t.Errorf("AuthorizeRelease(wrong mrtd) = %v, want ErrNoMatch", err)
	}
	if !strings.Contains(err.Error(), "mrtd expected") {
		t.Errorf("error %q does not explain the mrtd mismatch", err)
	}
}

func TestKeyPolicy(t *testing.T) {
	m := mustParse(t, readFile(t, "valid/full.json"))
	tests := []struct {
		client, id string
		ok         bool
	}{
		{"acme", "acme/a", true},
		{"acme", "acme/a/b", true},
		{"acme", "acme", false},
		{"acme", "acme/", false},
		{"acme", "acmex/a", false},
		{"acme", "shared/tokenizer-key", false},
		{"acme-batch", "acme/batch/1", true},
		{"acme-batch", "acme/other", false},
		{"acme-batch", "shared/tokenizer-key", true},
		{"acme-batch", "shared/tokenizer-key2", false},
		{"nobody", "acme/a", false},
		{"acme", "acme/../x", false},
		{"acme", "acme/..x", true},
		{"acme", "acme/a b", false},
		{"acme", "acme//a", false},
	}
	for _, tc := range tests {
		if got := m.MayWrite(tc.client, tc.id); got != tc.ok {
			t.Errorf("MayWrite(%q, %q) = %v, want %v", tc.client, tc.id, got, tc.ok)
		}
	}
	rel := []struct {
		class, id string
		ok        bool
	}{
		{"gpu-worker", "acme/x", true},
		{"tdx-worker", "acme/x", true},
		{"gpu-worker", "shared/tokenizer-key", false},
		{"tdx-worker", "shared/tokenizer-key", true},
		{"tdx-worker", "shared/other", false},
		{"service", "acme/x", false},
	}
	for _, tc := range rel {
		if got := m.ReleaseAllowed(tc.class, tc.id); got != tc.ok {
			t.Errorf("ReleaseAllowed(%q, %q) = %v, want %v", tc.class, tc.id, got, tc.ok)
		}
	}
	if got := m.ReleaseClasses("acme/x"); strings.Join(got, ",") != "gpu-worker,tdx-worker" {
		t.Errorf("ReleaseClasses(acme/x) = %v", got)
	}
	pub := parsePub(t, readFile(t, "keys/client2.pub"))
	ci, ok := m.ClientFor(pub)
	if !ok || ci.Name != "acme-batch" {
		t.Errorf("ClientFor(client2) = %+v, %v", ci, ok)
	}
	if ci2, ok := m.ClientByFingerprint(ci.Fingerprint); !ok || ci2.Name != "acme-batch" {
		t.Errorf("ClientByFingerprint = %+v, %v", ci2, ok)
	}
	if _, ok := m.ClientFor(parsePub(t, readFile(t, "keys/owner1.pub"))); ok {
		t.Error("ClientFor(owner key) found a client")
	}
	if n := len(m.Clients()); n != 2 {
		t.Errorf("Clients() has %d entries", n)
	}
}

func TestMatchedValues(t *testing.T) {
	d := mustParse(t, readFile(t, "valid/snp.json")).Document()
	w := d.Workers["gpu-worker"]
	other := w.SNP[0]
	other.Measurement = manifest.Hexes(fake("another image", 48))
	// The alternative that matches comes second, after one that does not.
	w.SNP = []manifest.SNPValues{other, w.SNP[0]}
	d.Workers["gpu-worker"] = w
	b, err := manifest.Encode(d)
	if err != nil {
		t.Fatal(err)
	}
	m := mustParse(t, b)
	class, r, err := m.AuthorizeRelease(snpClaims(), nil)
	if err != nil {
		t.Fatalf("AuthorizeRelease = %v", err)
	}
	snp, tdx := m.MatchedValues(r, class)
	if len(snp) != 1 || len(tdx) != 0 || !bytes.Equal(snp[0].Measurement.Values[0], fake("gpu-worker", 48)) {
		t.Fatalf("MatchedValues(%s) = %d SNP, %d TDX values (%+v), want the second alternative", class, len(snp), len(tdx), snp)
	}
	for _, tc := range []struct {
		name  string
		r     *manifest.Report
		class string
	}{
		{"nil report", nil, class},
		{"unknown class", r, "nope"},
		{"class not in report", r, manifest.ServiceClass},
		{"no match", m.Match(tdxClaims()), class},
	} {
		if snp, tdx := m.MatchedValues(tc.r, tc.class); snp != nil || tdx != nil {
			t.Errorf("%s: MatchedValues = %v, %v, want none", tc.name, snp, tdx)
		}
	}
}
