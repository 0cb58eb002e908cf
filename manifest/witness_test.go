package manifest_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/manifest"
)

func TestWitnessPolicy(t *testing.T) {
	m := mustParse(t, readFile(t, "valid/witnesses.json"))
	p := m.Witnesses()
	if p == nil || p.None || p.Threshold != 2 || len(p.List) != 3 || p.String() != "2 of 3" {
		t.Fatalf("Witnesses() = %+v", p)
	}
	if w := p.List[2]; w.Name != "local" || w.URL != "http://127.0.0.1:28180" || !strings.HasPrefix(w.Key, "witness.kbs.test/w1+") {
		t.Errorf("List[2] = %+v", w)
	}
	// The copy is the caller's.
	p.List[0].Name = "changed"
	if m.Witnesses().List[0].Name != "acme-witness" {
		t.Error("Witnesses() returned the manifest's own list")
	}
	none := mustParse(t, readFile(t, "valid/no-witnesses.json"))
	if p := none.Witnesses(); p == nil || !p.None || p.String() != "none" {
		t.Errorf("no-witnesses.json: Witnesses() = %+v", p)
	}
	if !strings.Contains(string(none.Bytes()), `"witnesses": "none"`) {
		t.Error(`no-witnesses.json does not say "witnesses": "none"`)
	}
	legacy := mustParse(t, readFile(t, "valid/snp.json"))
	if p := legacy.Witnesses(); p != nil {
		t.Errorf("a manifest without the field: Witnesses() = %+v, want nil", p)
	}
	// Encode writes what the document holds, and refuses an invalid policy.
	d := legacy.Document()
	d.Witnesses = manifest.NoWitnesses()
	b, err := manifest.Encode(d)
	if err != nil || !strings.Contains(string(b), "\n  \"witnesses\": \"none\"\n}") {
		t.Errorf("Encode(NoWitnesses) = %s, %v", b, err)
	}
	d.Witnesses = &manifest.WitnessPolicy{Threshold: 1}
	if _, err := manifest.Encode(d); err == nil || !strings.Contains(err.Error(), "witnesses.list: empty") {
		t.Errorf("Encode(no list) = %v", err)
	}
}

func TestDiffWitnesses(t *testing.T) {
	legacy := mustParse(t, readFile(t, "valid/snp.json"))
	wit := mustParse(t, readFile(t, "valid/witnesses.json"))
	got := changes(manifest.Diff(legacy, wit))
	want := []string{
		`witnesses: not stated (none required) -> 2 of 3`,
		`witnesses["acme-witness"]: added`,
		`witnesses["armory"]: added`,
		`witnesses["local"]: added`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Diff(none stated, 2 of 3):\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	d := wit.Document()
	d.Witnesses.Threshold = 1
	d.Witnesses.List = d.Witnesses.List[:2]
	d.Witnesses.List[1].URL = "https://armory.example/witness2"
	oldKey := d.Witnesses.List[0].Key
	d.Witnesses.List[0].Key = d.Witnesses.List[2-1].Key
	d.Witnesses.List[1].Key = oldKey
	got = changes(manifest.Diff(wit, mustParse(t, mustEncode(t, d))))
	aKey, bKey := wit.Witnesses().List[0].Key, wit.Witnesses().List[1].Key
	want = []string{
		`witnesses: 2 of 3 -> 1 of 2`,
		`witnesses["acme-witness"].key: ` + aKey + ` -> ` + bKey,
		`witnesses["armory"].key: ` + bKey + ` -> ` + aKey,
		`witnesses["armory"].url: https://armory.example/witness -> https://armory.example/witness2`,
		`witnesses["local"]: removed`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Diff(witness changes):\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	d.Witnesses = manifest.NoWitnesses()
	got = changes(manifest.Diff(wit, mustParse(t, mustEncode(t, d))))
	if len(got) != 4 || got[0] != "witnesses: 2 of 3 -> none" {
		t.Errorf("Diff(2 of 3, none) = %q", got)
	}
}

func changes(cs []manifest.Change) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.String())
	}
	return out
}

func TestCheckWitnessesKept(t *testing.T) {
	legacy := mustParse(t, readFile(t, "valid/snp.json"))
	wit := mustParse(t, readFile(t, "valid/witnesses.json"))
	d := wit.Document()
	d.Witnesses = manifest.NoWitnesses()
	none := mustParse(t, mustEncode(t, d))
	for _, tt := range []struct {
		prev, next *manifest.Manifest
		ok         bool
	}{
		{legacy, legacy, true},
		{legacy, wit, true},
		{wit, none, true},
		{none, wit, true},
		{wit, legacy, false},
		{none, legacy, false},
	} {
		err := manifest.CheckWitnessesKept(tt.prev, tt.next)
		if (err == nil) != tt.ok {
			t.Errorf("CheckWitnessesKept(%s, %s) = %v", tt.prev.Witnesses(), tt.next.Witnesses(), err)
		}
		var fe *manifest.FieldError
		if err != nil && (!errors.As(err, &fe) || !strings.Contains(err.Error(), `"witnesses": "none"`)) {
			t.Errorf("error %q", err)
		}
	}
}

// TestVerifyKeepsWitnesses: Verify, and so every chain verification (the
// broker's, clients', auditors'), refuses a version that drops the witness
// policy its predecessor states, however well signed, and accepts the
// explicit "none".
func TestVerifyKeepsWitnesses(t *testing.T) {
	owner := loadKey(t, "owner1")
	v1 := mustParse(t, readFile(t, "valid/snp.json")) // owner1, threshold 1
	d := v1.Document()
	d.Version, d.Previous = 2, v1.Hash()
	d.Witnesses = mustParse(t, readFile(t, "valid/witnesses.json")).Witnesses()
	v2 := mustParse(t, mustEncode(t, d))
	next := func(prev *manifest.Manifest, p *manifest.WitnessPolicy) *manifest.Manifest {
		d := prev.Document()
		d.Version, d.Previous, d.Witnesses = prev.Version()+1, prev.Hash(), p
		return mustParse(t, mustEncode(t, d))
	}
	sign := func(m *manifest.Manifest) []string {
		s, err := manifest.Sign(owner, m.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		return []string{s}
	}
	dropped := next(v2, nil)
	var fe *manifest.FieldError
	if _, err := manifest.Verify(v2, dropped, sign(dropped)); !errors.As(err, &fe) || fe.Field != "witnesses" {
		t.Errorf("Verify(v2 with witnesses, v3 without the field) = %v, want a FieldError on witnesses", err)
	}
	chain := []manifest.SignedVersion{{Body: v1.Bytes()}, {Body: v2.Bytes(), Signatures: sign(v2)}, {Body: dropped.Bytes(), Signatures: sign(dropped)}}
	if _, err := manifest.VerifyChain(v1, chain); !errors.As(err, &fe) {
		t.Errorf("VerifyChain(... a version dropping the witnesses) = %v", err)
	}
	none := next(v2, manifest.NoWitnesses())
	if _, err := manifest.Verify(v2, none, sign(none)); err != nil {
		t.Errorf("Verify(v2 with witnesses, v3 with \"none\") = %v", err)
	}
}
