package manifest_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/manifest"
)

// TestNewFieldsMatch: each optional field added for issue 15, set to a
// value the claims do not have, is the one failing check, named in the
// explanation; left out it is shown as "any (absent)".
func TestNewFieldsMatch(t *testing.T) {
	verified := time.Date(2026, 2, 18, 12, 0, 0, 0, time.UTC)
	snpC := snpClaims()
	snpC.SNP.IDKeyDigest = fake("id key", 48)
	snpC.SNP.AuthorKeyDigest = fake("author key", 48)
	tdxC := tdxClaims()
	tdxC.VerifiedAt = verified
	tdxC.TDX.MRSignerSeam = make([]byte, 48)
	tdxC.TDX.TEETCBSVN2 = []byte{3, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	tdxC.TDX.MRServiceTD = make([]byte, 48)

	sm := mustParse(t, readFile(t, "valid/snp.json"))
	if r := sm.Match(snpC); !r.OK() || !strings.Contains(r.String(), "id_key_digest            expected any (absent)") {
		t.Fatalf("absent fields:\n%s", r)
	}
	other := fake("other", 48)
	lowLaunch := manifest.TCB{Bootloader: 4}
	for _, tc := range []struct {
		field string
		edit  func(*manifest.SNPValues)
	}{
		{"id_key_digest", func(v *manifest.SNPValues) { v.IDKeyDigest = manifest.Hexes(other) }},
		{"author_key_digest", func(v *manifest.SNPValues) { v.AuthorKeyDigest = manifest.Hexes(other) }},
		{"launch_tcb.bootloader", func(v *manifest.SNPValues) { v.MinLaunchTCB = &lowLaunch }},
		{"chip_id", func(v *manifest.SNPValues) { v.ChipIDs = manifest.Hexes(snpC.SNP.ChipID[:8]) }}, // not a Turin chip id: bytes 8-63 are not zero
	} {
		d := sm.Document()
		w := d.Workers["gpu-worker"]
		tc.edit(&w.SNP[0])
		m := mustParse(t, mustEncode(t, d))
		r := m.Match(snpC)
		if r.OK() || !slices.Equal(r.Failed(), []string{tc.field}) || !strings.Contains(r.String(), "FAIL "+tc.field) {
			t.Errorf("%s: failing %v\n%s", tc.field, r.Failed(), r)
		}
		if ch := manifest.Diff(sm, m); len(ch) == 0 || !strings.Contains(ch[0].Field, strings.Split(tc.field, ".")[0][:4]) {
			t.Errorf("%s: Diff = %v", tc.field, ch)
		}
	}

	tm := mustParse(t, readFile(t, "valid/tdx.json"))
	if r := tm.Match(tdxC); !r.OK() {
		t.Fatalf("TDX claims with absent new fields:\n%s", r)
	}
	for _, tc := range []struct {
		field string
		edit  func(*manifest.TDXValues)
	}{
		{"mrsignerseam", func(v *manifest.TDXValues) { v.MRSignerSeam = manifest.Hexes(other) }},
		{"tee_tcb_svn2", func(v *manifest.TDXValues) {
			v.MinTEETCBSVN2 = &manifest.HexValue{Value: []byte{4, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}}
		}},
		{"mrservicetd", func(v *manifest.TDXValues) { v.MRServiceTD = manifest.Hexes(other) }},
	} {
		d := tm.Document()
		w := d.Workers["tdx-worker"]
		tc.edit(&w.TDX[0])
		m := mustParse(t, mustEncode(t, d))
		r := m.Match(tdxC)
		if r.OK() || !slices.Equal(r.Failed(), []string{tc.field}) || !strings.Contains(r.String(), "FAIL "+tc.field) {
			t.Errorf("%s: failing %v\n%s", tc.field, r.Failed(), r)
		}
		if ch := manifest.Diff(tm, m); len(ch) != 1 || !strings.HasSuffix(ch[0].Field, tc.field) {
			t.Errorf("%s: Diff = %v", tc.field, ch)
		}
	}

	// tcb_exceptions: round trip through the manifest's bytes, diff, and
	// the status check.
	d := tm.Document()
	w := d.Workers["tdx-worker"]
	w.TDX[0].TCBExceptions = []manifest.TCBException{{Status: "SWHardeningNeeded", Advisories: []string{"INTEL-SA-00615"}, Until: verified.Add(time.Hour)}}
	m := mustParse(t, mustEncode(t, d))
	if ch := manifest.Diff(tm, m); len(ch) != 1 || ch[0].New != "SWHardeningNeeded for [INTEL-SA-00615] until 2026-02-18T13:00:00Z" {
		t.Errorf("Diff = %v", ch)
	}
	c := tdxClaims()
	c.VerifiedAt = verified
	c.TDX.TCBStatus, c.TDX.AdvisoryIDs = "SWHardeningNeeded", []string{"INTEL-SA-00615"}
	if r := m.Match(c); !r.OK() {
		t.Errorf("excepted status refused:\n%s", r)
	}
	if r := tm.Match(c); r.OK() || !slices.Equal(r.Failed(), []string{"tcb_status"}) {
		t.Errorf("status without exception: failing %v", r.Failed())
	}
	c.VerifiedAt = verified.Add(2 * time.Hour)
	if r := m.Match(c); r.OK() || !strings.Contains(r.String(), "exception expired") {
		t.Errorf("expired exception:\n%s", r)
	}
}

// TestNewFieldsDecode: the schema of the new fields, with the error naming
// the path.
func TestNewFieldsDecode(t *testing.T) {
	base := string(readFile(t, "valid/tdx.json"))
	ins := func(field string) []byte {
		return []byte(strings.Replace(base, `"mrseam": "any"`, `"mrseam": "any", `+field, 1))
	}
	for _, tc := range []struct {
		field, err string
	}{
		{`"tcb_exceptions": [{"status": "OutOfDate", "advisories": ["INTEL-SA-00615"], "until": "2027-01-01T00:00:00Z"}]`, "never admitted"},
		{`"tcb_exceptions": [{"status": "SWHardeningNeeded", "advisories": ["SA-1"], "until": "2027-01-01T00:00:00Z"}]`, "advisory id"},
		{`"tcb_exceptions": [{"status": "SWHardeningNeeded", "advisories": [], "until": "2027-01-01T00:00:00Z"}]`, "advisory ids"},
		{`"tcb_exceptions": [{"status": "SWHardeningNeeded", "advisories": ["INTEL-SA-00615"], "until": "soon"}]`, "RFC 3339"},
		{`"tcb_exceptions": []`, "empty"},
		{`"mrsignerseam": ["00"]`, "48 bytes"},
		{`"min_tee_tcb_svn2": "0011"`, "16 bytes"},
	} {
		if _, err := manifest.Parse(ins(tc.field)); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: Parse = %v, want an error saying %q", tc.field, err, tc.err)
		}
	}
	snp := string(readFile(t, "valid/snp.json"))
	if _, err := manifest.Parse([]byte(strings.Replace(snp, `"chip_ids": "any"`, `"chip_ids": ["0910b4f884ff4ba9"]`, 1))); err != nil {
		t.Errorf("8-byte chip id refused: %v", err)
	}
	if _, err := manifest.Parse([]byte(strings.Replace(snp, `"chip_ids": "any"`, `"chip_ids": ["0910b4f884ff4ba900"]`, 1))); err == nil {
		t.Error("9-byte chip id accepted")
	}
	if _, err := manifest.Parse([]byte(strings.Replace(snp, `"microcode": 0`, `"microcode": 0, "fmc": 300`, 1))); err == nil {
		t.Error("fmc 300 accepted")
	}
	if !manifest.ChipIDMatches(make([]byte, 8), make([]byte, 64)) || manifest.ChipIDMatches(make([]byte, 8), append(make([]byte, 63), 1)) {
		t.Error("ChipIDMatches: an 8-byte id must match the first 8 bytes with the rest zero")
	}
}
