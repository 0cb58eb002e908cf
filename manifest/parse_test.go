package manifest_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/manifest"
)

const td = "../testdata/manifest"

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(td, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustParse(t testing.TB, b []byte) *manifest.Manifest {
	t.Helper()
	m, err := manifest.Parse(b)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return m
}

func TestGoldenValid(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(td, "valid", "*.json"))
	chain, _ := filepath.Glob(filepath.Join(td, "chain", "*.json"))
	files = append(files, chain...)
	if len(files) < 6 {
		t.Fatalf("found %d valid fixtures, want at least 6", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			m := mustParse(t, b)
			if !bytes.Equal(m.Bytes(), b) {
				t.Errorf("Bytes() differs from the input")
			}
			if got, want := m.Hash(), manifest.HashOf(b); got != want {
				t.Errorf("Hash() = %s, want %s", got, want)
			}
			// The fixtures were written by Encode: encoding the parsed
			// document again gives the same bytes.
			again, err := manifest.Encode(m.Document())
			if err != nil {
				t.Fatalf("Encode(Document()): %v", err)
			}
			if !bytes.Equal(again, b) {
				t.Errorf("Encode(Document()) differs from the fixture:\n%s", again)
			}
		})
	}
}

func TestGoldenInvalid(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(td, "invalid", "*.json"))
	if len(files) < 25 {
		t.Fatalf("found %d invalid fixtures, want at least 25", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(strings.TrimSuffix(f, ".json") + ".err")
			if err != nil {
				t.Fatal(err)
			}
			m, err := manifest.Parse(b)
			if err == nil {
				t.Fatalf("Parse succeeded (version %d), want error containing %q", m.Version(), want)
			}
			if !strings.Contains(err.Error(), strings.TrimSpace(string(want))) {
				t.Errorf("Parse error = %q, want it to contain %q", err, strings.TrimSpace(string(want)))
			}
			var fe *manifest.FieldError
			if !errors.As(err, &fe) {
				t.Errorf("error %T is not a *FieldError", err)
			}
		})
	}
}

// TestParseErrors covers strictness rules with small edits of a valid
// manifest, checking the field each error names.
func TestParseErrors(t *testing.T) {
	base := string(readFile(t, "valid/tdx.json"))
	tests := []struct {
		name, from, to string
		field          string
		reason         string
	}{
		{"rtmr missing", `"rtmr3": "any",`, ``, `service.tdx[0].rtmr3`, "required field is missing"},
		{"td debug", `"td_attributes": ["0x10000000"]`, `"td_attributes": ["0x10000001"]`, `service.tdx[0].td_attributes[0]`, "debug TDs are never allowed"},
		{"xfam not hex", `"xfam": ["0x61ae7"]`, `"xfam": ["61ae7"]`, `service.tdx[0].xfam[0]`, "0x"},
		{"xfam too wide", `"xfam": ["0x61ae7"]`, `"xfam": ["0x10000000000000000"]`, `service.tdx[0].xfam[0]`, "at most 64 bits"},
		{"svn short", `"min_tee_tcb_svn": "03010200000000000000000000000000"`, `"min_tee_tcb_svn": "030102"`, `service.tdx[0].min_tee_tcb_svn`, "want 16 bytes"},
		{"mrtd any", `"mrtd": ["`, `"mrtd": "any", "x": ["`, `service.tdx[0].mrtd`, `"any" is not allowed`},
		{"mrseam single string", `"mrseam": "any"`, `"mrseam": "00"`, `service.tdx[0].mrseam`, `want a list of accepted values or "any", got string`},
		{"duplicate value", `"xfam": ["0x61ae7"]`, `"xfam": ["0x61ae7", "0x61AE7"]`, `service.tdx[0].xfam[1]`, "duplicate of [0]"},
		{"duplicate rule", `"keys": [
    {`, `"keys": [
    {"match": "acme/model-key", "release_to": ["tdx-worker"]},
    {`, `keys[1].match`, "duplicate rule"},
		{"client bad key", `"public_key": "-----BEGIN PUBLIC KEY-----\n`, `"public_key": "-----BEGIN PUBLIC KEY-----\nAAAA`, `clients[0].public_key`, "couldn't parse public key"},
		{"client text around key", `"public_key": "-----BEGIN`, `"public_key": "hello -----BEGIN`, `clients[0].public_key`, "exactly one PEM"},
		{"empty platform", `"tdx-worker": {`, `"tdx-worker": {"snp": [],`, `workers["tdx-worker"].snp`, "empty"},
		{"class without values", `"workers": {`, `"workers": {"idle": {},`, `workers["idle"]`, "no reference values"},
		{"bad class name", `"workers": {`, `"workers": {"no spaces": {},`, `workers["no spaces"]`, "invalid class name"},
		{"negative", `"threshold": 1`, `"threshold": -1`, `owners.threshold`, "non-negative integer"},
		{"exponent", `"threshold": 1`, `"threshold": 1e0`, `owners.threshold`, "without fraction or exponent"},
		{"huge", `"version": 1`, `"version": 9007199254740992`, `version`, "out of range"},
		{"threshold zero", `"threshold": 1`, `"threshold": 0`, `owners.threshold`, "at least 1"},
		{"no owners", `"keys": ["-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA`, `"keys": [], "x": ["-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA`, `owners.keys`, "at least one owner key"},
		{"pattern star inside", `"keys": ["acme/model-key"]`, `"keys": ["acme/*-key"]`, `clients[0].keys[0]`, "invalid key id pattern"},
		{"pattern empty list", `"keys": ["acme/model-key"]`, `"keys": []`, `clients[0].keys`, "at least one key id pattern"},
		{"release to nothing", `"release_to": ["tdx-worker"]`, `"release_to": []`, `keys[0].release_to`, "at least one worker class"},
		{"previous malformed", `"version": 1,
  "previous": ""`, `"version": 2,
  "previous": "sha256:ABC"`, `previous`, "64 lowercase hex"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(base, tc.from) {
				t.Fatalf("fixture lacks %q", tc.from)
			}
			doc := strings.Replace(base, tc.from, tc.to, 1)
			_, err := manifest.Parse([]byte(doc))
			var fe *manifest.FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("Parse error = %v, want a *FieldError", err)
			}
			if fe.Field != tc.field || !strings.Contains(fe.Reason, tc.reason) {
				t.Errorf("Parse error = %q (field %q), want field %q with %q", err, fe.Field, tc.field, tc.reason)
			}
		})
	}
}

func TestParseAccessors(t *testing.T) {
	m := mustParse(t, readFile(t, "valid/full.json"))
	if m.Version() != 1 || m.Previous() != "" || m.Threshold() != 2 || m.AllowSimulated() {
		t.Errorf("Version, Previous, Threshold, AllowSimulated = %d, %q, %d, %v", m.Version(), m.Previous(), m.Threshold(), m.AllowSimulated())
	}
	if got := m.WorkerClasses(); strings.Join(got, ",") != "gpu-worker,tdx-worker" {
		t.Errorf("WorkerClasses() = %v", got)
	}
	fps := m.OwnerFingerprints()
	if len(fps) != 3 {
		t.Fatalf("OwnerFingerprints() = %v", fps)
	}
	fp, err := manifest.FingerprintPEM(string(readFile(t, "keys/owner1.pub")))
	if err != nil || fp != fps[0] {
		t.Errorf("FingerprintPEM(owner1) = %s, %v, want %s", fp, err, fps[0])
	}
	if !strings.HasPrefix(fp, "sha256:") || len(fp) != 7+64 {
		t.Errorf("fingerprint %q is not sha256:<64 hex>", fp)
	}
	b := m.Bytes()
	b[0] = 'X'
	if m.Bytes()[0] != '{' {
		t.Error("Bytes() exposes the manifest's own buffer")
	}
	d := m.Document()
	d.Version = 99
	if m.Version() != 1 {
		t.Error("changing Document() changed the manifest")
	}
}

func TestRead(t *testing.T) {
	b := readFile(t, "valid/snp.json")
	m, err := manifest.Read(bytes.NewReader(b))
	if err != nil || m.Hash() != manifest.HashOf(b) {
		t.Fatalf("Read = %v, %v", m, err)
	}
	big := append(bytes.Repeat([]byte(" "), manifest.MaxSize), b...)
	if _, err := manifest.Read(bytes.NewReader(big)); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("Read(oversize) error = %v, want size limit", err)
	}
}

func TestEncodeRejectsInvalid(t *testing.T) {
	m := mustParse(t, readFile(t, "valid/snp.json"))
	d := m.Document()
	d.Workers["gpu-worker"].SNP[0].MaxPolicy.Value |= 1 << 19
	if _, err := manifest.Encode(d); err == nil || !strings.Contains(err.Error(), "debug") {
		t.Errorf("Encode(debug policy) error = %v, want debug rejected", err)
	}
	d = m.Document()
	d.Keys[0].ReleaseTo = []string{"nobody"}
	if _, err := manifest.Encode(d); err == nil || !strings.Contains(err.Error(), "unknown worker class") {
		t.Errorf("Encode(unknown class) error = %v", err)
	}
}

func TestDevDocument(t *testing.T) {
	owner := string(readFile(t, "keys/owner1.pub"))
	client := string(readFile(t, "keys/client.pub"))
	claims := snpClaims()
	v, err := manifest.PinSNP(claims)
	if err != nil {
		t.Fatal(err)
	}
	cls := manifest.Class{SNP: []manifest.SNPValues{v}}
	b, err := manifest.Encode(manifest.DevDocument(owner, client, cls, cls))
	if err != nil {
		t.Fatalf("Encode(DevDocument) = %v", err)
	}
	m := mustParse(t, b)
	if m.Version() != 1 || !m.AllowSimulated() {
		t.Errorf("dev manifest version %d, allow_simulated %v", m.Version(), m.AllowSimulated())
	}
	c, ok := m.ClientByName("demo-client")
	if !ok || !m.MayWrite(c.Name, "demo/prompt-key") || m.MayWrite(c.Name, "other/key") {
		t.Errorf("demo-client policy wrong: %+v", c)
	}
	claims.Simulated = true
	class, r, err := m.AuthorizeRelease(claims, []string{"demo/prompt-key"})
	if err != nil || class != "demo-worker" {
		t.Errorf("AuthorizeRelease = %q, %v\n%s", class, err, r)
	}
	if r := m.MatchService(claims); !r.OK() {
		t.Errorf("service does not match its pinned claims:\n%s", r)
	}

	tc := tdxClaims()
	tv, err := manifest.PinTDX(tc)
	if err != nil {
		t.Fatal(err)
	}
	tcls := manifest.Class{TDX: []manifest.TDXValues{tv}}
	m = mustParse(t, mustEncode(t, manifest.DevDocument(owner, client, tcls, tcls)))
	if class, r, err := m.AuthorizeRelease(tc, []string{"demo/a"}); err != nil || class != "demo-worker" {
		t.Errorf("AuthorizeRelease(TDX) = %q, %v\n%s", class, err, r)
	}
	if _, err := manifest.PinTDX(claims); err == nil {
		t.Error("PinTDX(SNP claims) succeeded")
	}
	if _, err := manifest.PinSNP(tc); err == nil {
		t.Error("PinSNP(TDX claims) succeeded")
	}
}

// TestDocsExample checks that the annotated example in docs/manifest.md is
// the valid fixture, byte for byte.
func TestDocsExample(t *testing.T) {
	doc, err := os.ReadFile("../docs/manifest.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```json\n")
	if !ok {
		t.Fatal("docs/manifest.md has no json example")
	}
	example, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("unterminated json example")
	}
	if example != string(readFile(t, "valid/full.json")) {
		t.Error("the example in docs/manifest.md differs from testdata/manifest/valid/full.json")
	}
	mustParse(t, []byte(example))
}
