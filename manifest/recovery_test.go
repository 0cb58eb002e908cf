package manifest_test

import (
	"crypto/ecdh"
	"crypto/hpke"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/internal/hpkekey"
	"github.com/kbs-dev/kbs/manifest"
)

// holderKey returns a fresh holder public key as the manifest writes it.
func holderKey(t testing.TB, pq bool) string {
	t.Helper()
	kem := hpke.DHKEM(ecdh.X25519())
	if pq {
		kem = hpke.MLKEM768X25519()
	}
	sk, err := kem.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(hpkekey.Marshal(sk.PublicKey()))
}

func withRecovery(t *testing.T, base *manifest.Manifest, p *manifest.RecoveryPolicy) *manifest.Manifest {
	t.Helper()
	d := base.Document()
	d.Recovery = p
	return mustParse(t, mustEncode(t, d))
}

func TestRecoveryPolicy(t *testing.T) {
	legacy := mustParse(t, readFile(t, "valid/snp.json"))
	if p := legacy.Recovery(); p != nil || p.Active() {
		t.Fatalf("a manifest without the field: Recovery() = %+v, want nil", p)
	}
	hs := []manifest.RecoveryHolder{{Name: "alice", PublicKey: holderKey(t, false)}, {Name: "bob", PublicKey: holderKey(t, true)}, {Name: "carol", PublicKey: holderKey(t, false)}}
	m := withRecovery(t, legacy, &manifest.RecoveryPolicy{Threshold: 2, Holders: hs})
	p := m.Recovery()
	if !p.Active() || p.Threshold != 2 || len(p.Holders) != 3 || p.String() != "2 of 3" || p.Holders[1] != hs[1] {
		t.Fatalf("Recovery() = %+v", p)
	}
	if !strings.HasPrefix(p.Holders[0].Fingerprint(), "sha256:") || p.Holders[0].Fingerprint() == p.Holders[2].Fingerprint() {
		t.Errorf("fingerprints %q, %q", p.Holders[0].Fingerprint(), p.Holders[2].Fingerprint())
	}
	p.Holders[0].Name = "changed"
	if m.Recovery().Holders[0].Name != "alice" {
		t.Error("Recovery() returned the manifest's own list")
	}
	none := withRecovery(t, legacy, manifest.NoRecovery())
	if p := none.Recovery(); p == nil || !p.None || p.Active() || !strings.Contains(string(none.Bytes()), `"recovery": "none"`) {
		t.Errorf("NoRecovery: %+v\n%s", p, none.Bytes())
	}

	// Refusals, each naming its field.
	body := string(m.Bytes())
	for _, tt := range []struct {
		name, from, to, field, reason string
	}{
		{"threshold zero", `"threshold": 2,
    "holders"`, `"threshold": 0,
    "holders"`, "recovery.threshold", "at least 1"},
		{"threshold above holders", `"threshold": 2,
    "holders"`, `"threshold": 4,
    "holders"`, "recovery.threshold", "exceeds the number of holders (3)"},
		{"bad name", `"name": "alice"`, `"name": "al ice"`, "recovery.holders[0].name", "invalid holder name"},
		{"duplicate name", `"name": "carol"`, `"name": "alice"`, "recovery.holders[2].name", "also the name of holders[0]"},
		{"duplicate key", hs[2].PublicKey, hs[0].PublicKey, "recovery.holders[2].public_key", "the same public key as holders[0]"},
		{"key not base64", hs[0].PublicKey, "not base64!", "recovery.holders[0].public_key", "HPKE public key"},
		{"unknown KEM", hs[0].PublicKey, base64.StdEncoding.EncodeToString(append([]byte{0, 0x10}, make([]byte, 65)...)), "recovery.holders[0].public_key", "unsupported HPKE KEM"},
		{"short key", hs[0].PublicKey, base64.StdEncoding.EncodeToString([]byte{0, 0x20, 1, 2}), "recovery.holders[0].public_key", "invalid HPKE public key"},
		{"other string", `"recovery": {`, `"recovery": "nobody", "x": {`, "recovery", `want "none"`},
		{"unknown field", `"name": "alice"`, `"name": "alice", "email": "a@example.com"`, "recovery.holders[0].email", "unknown field"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(body, tt.from) {
				t.Fatalf("fixture lacks %q", tt.from)
			}
			_, err := manifest.Parse([]byte(strings.Replace(body, tt.from, tt.to, 1)))
			var fe *manifest.FieldError
			if !errors.As(err, &fe) || !strings.Contains(err.Error(), tt.field) || !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("Parse = %v, want a FieldError naming %s: %s", err, tt.field, tt.reason)
			}
		})
	}
	d := legacy.Document()
	d.Recovery = &manifest.RecoveryPolicy{Threshold: 1}
	if _, err := manifest.Encode(d); err == nil || !strings.Contains(err.Error(), "recovery.holders: empty") {
		t.Errorf("Encode(no holders) = %v", err)
	}
}

func TestDiffRecovery(t *testing.T) {
	legacy := mustParse(t, readFile(t, "valid/snp.json"))
	a, b := manifest.RecoveryHolder{Name: "alice", PublicKey: holderKey(t, false)}, manifest.RecoveryHolder{Name: "bob", PublicKey: holderKey(t, false)}
	one := withRecovery(t, legacy, &manifest.RecoveryPolicy{Threshold: 1, Holders: []manifest.RecoveryHolder{a}})
	got := changes(manifest.Diff(legacy, one))
	want := []string{`recovery: not stated (no recovery holders) -> 1 of 1`, `recovery["alice"]: added`}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Diff(not stated, 1 of 1):\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	a2 := manifest.RecoveryHolder{Name: "alice", PublicKey: b.PublicKey}
	two := withRecovery(t, legacy, &manifest.RecoveryPolicy{Threshold: 2, Holders: []manifest.RecoveryHolder{a2, {Name: "carol", PublicKey: a.PublicKey}}})
	got = changes(manifest.Diff(one, two))
	want = []string{
		`recovery: 1 of 1 -> 2 of 2`,
		`recovery["alice"].public_key: ` + a.Fingerprint() + ` -> ` + b.Fingerprint(),
		`recovery["carol"]: added`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Diff(holder changes):\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestCheckRecoveryKept(t *testing.T) {
	legacy := mustParse(t, readFile(t, "valid/snp.json"))
	rec := withRecovery(t, legacy, &manifest.RecoveryPolicy{Threshold: 1, Holders: []manifest.RecoveryHolder{{Name: "alice", PublicKey: holderKey(t, false)}}})
	none := withRecovery(t, legacy, manifest.NoRecovery())
	for _, tt := range []struct {
		prev, next *manifest.Manifest
		ok         bool
	}{
		{legacy, legacy, true},
		{legacy, rec, true},
		{rec, none, true},
		{none, rec, true},
		{rec, legacy, false},
		{none, legacy, false},
	} {
		err := manifest.CheckRecoveryKept(tt.prev, tt.next)
		if (err == nil) != tt.ok {
			t.Errorf("CheckRecoveryKept(%s, %s) = %v", tt.prev.Recovery(), tt.next.Recovery(), err)
		}
		if err != nil && !strings.Contains(err.Error(), `"recovery": "none"`) {
			t.Errorf("error %q", err)
		}
	}
}
