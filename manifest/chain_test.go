package manifest_test

import (
	"crypto"
	"errors"
	"slices"
	"testing"

	"github.com/kbs-dev/kbs/manifest"
)

// goldenChain returns the committed chain v1 → v2 → v3 with its signatures
// (v1 unsigned).
func goldenChain(t *testing.T) []manifest.SignedVersion {
	t.Helper()
	return []manifest.SignedVersion{
		{Body: readFile(t, "chain/v1.json")},
		{Body: readFile(t, "chain/v2.json"), Signatures: []string{sigFile(t, "chain/v2.json.sig.owner1"), sigFile(t, "chain/v2.json.sig.owner3")}},
		{Body: readFile(t, "chain/v3.json"), Signatures: []string{sigFile(t, "chain/v3.json.sig.owner2"), sigFile(t, "chain/v3.json.sig.owner4")}},
	}
}

func fingerprint(t *testing.T, owner string) string {
	t.Helper()
	fp, err := manifest.FingerprintPEM(string(readFile(t, "keys/"+owner+".pub")))
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

func TestVerifyChain(t *testing.T) {
	vs := goldenChain(t)
	v1 := mustParse(t, vs[0].Body)
	c, err := manifest.VerifyChain(v1, vs)
	if err != nil {
		t.Fatalf("VerifyChain(golden) = %v", err)
	}
	if c.Len() != 3 || c.Anchor().Hash() != v1.Hash() || c.Latest().Version() != 3 {
		t.Fatalf("chain of %d, anchor %s, latest version %d", c.Len(), c.Anchor().Hash(), c.Latest().Version())
	}
	want13 := []string{fingerprint(t, "owner1"), fingerprint(t, "owner3")}
	slices.Sort(want13)
	links := c.Links()
	if links[0].Signers != nil || links[0].Changes != nil {
		t.Errorf("unsigned version 1 anchor: signers %v, changes %v; want none", links[0].Signers, links[0].Changes)
	}
	if !slices.Equal(links[1].Signers, want13) {
		t.Errorf("version 2 signers = %v, want %v", links[1].Signers, want13)
	}
	if want := manifest.Diff(links[0].Manifest, links[1].Manifest); len(want) == 0 || !slices.Equal(links[1].Changes, want) {
		t.Errorf("version 2 changes = %v, want Diff(v1, v2) = %v", links[1].Changes, want)
	}
	if l, ok := c.Version(2); !ok || l.Manifest.Version() != 2 {
		t.Errorf("Version(2) = %v, %v", l, ok)
	}
	for _, v := range []uint64{0, 4} {
		if _, ok := c.Version(v); ok {
			t.Errorf("Version(%d) found", v)
		}
	}
	// Without an anchor the same chain verifies; with another one it does not.
	if _, err := manifest.VerifyChain(nil, vs); err != nil {
		t.Errorf("VerifyChain(nil anchor) = %v", err)
	}
	if _, err := manifest.VerifyChain(mustParse(t, readFile(t, "valid/snp.json")), vs); !errors.Is(err, manifest.ErrUntrusted) {
		t.Errorf("VerifyChain(other anchor) = %v, want ErrUntrusted", err)
	}
	// A chain may start above version 1 (a client's own copy): the
	// anchor's signatures cannot be checked and are not.
	v2 := mustParse(t, vs[1].Body)
	tail := []manifest.SignedVersion{{Body: vs[1].Body, Signatures: []string{"not even base64"}}, vs[2]}
	c, err = manifest.VerifyChain(v2, tail)
	if err != nil || c.Len() != 2 || c.Links()[0].Signers != nil {
		t.Fatalf("VerifyChain(from version 2) = %v", err)
	}
	if l, ok := c.Version(1); ok {
		t.Errorf("Version(1) of a chain from version 2 = %v", l)
	}
	if _, err := manifest.VerifyChain(nil, nil); err == nil {
		t.Error("VerifyChain(empty) succeeded")
	}
}

func TestVerifyChainBroken(t *testing.T) {
	vs := goldenChain(t)
	sign := func(k crypto.Signer, body []byte) string {
		s, err := manifest.Sign(k, body)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	owner1, owner2 := loadKey(t, "owner1"), loadKey(t, "owner2")
	for _, tc := range []struct {
		name string
		vs   []manifest.SignedVersion
		want error
	}{
		{"gap", []manifest.SignedVersion{vs[0], vs[2]}, manifest.ErrVersionSkip},
		{"repeat", []manifest.SignedVersion{vs[0], vs[1], vs[1]}, manifest.ErrVersionRollback},
		{"version 3 signed by too few", []manifest.SignedVersion{vs[0], vs[1], {Body: vs[2].Body, Signatures: vs[2].Signatures[:1]}}, manifest.ErrTooFewSignatures},
		{"version 2 signed by its own new owner", []manifest.SignedVersion{vs[0], {Body: vs[1].Body, Signatures: []string{vs[1].Signatures[0], sign(loadKey(t, "owner4"), vs[1].Body)}}}, manifest.ErrSignerNotOwner},
		{"version 1 signed below its threshold", []manifest.SignedVersion{{Body: vs[0].Body, Signatures: []string{sign(owner1, vs[0].Body)}}}, manifest.ErrTooFewSignatures},
		{"version 1 signed twice by one owner", []manifest.SignedVersion{{Body: vs[0].Body, Signatures: []string{sign(owner1, vs[0].Body), sign(owner1, vs[0].Body)}}}, manifest.ErrDuplicateSigner},
		{"version 1 signed by an outsider", []manifest.SignedVersion{{Body: vs[0].Body, Signatures: []string{sign(owner1, vs[0].Body), sign(loadKey(t, "owner4"), vs[0].Body)}}}, manifest.ErrUnknownSigner},
		{"version 1 signatures over other bytes", []manifest.SignedVersion{{Body: vs[0].Body, Signatures: []string{sign(owner1, vs[1].Body), sign(owner2, vs[0].Body)}}}, manifest.ErrUnknownSigner},
		{"version 1 malformed signature", []manifest.SignedVersion{{Body: vs[0].Body, Signatures: []string{"!"}}}, manifest.ErrMalformedSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c, err := manifest.VerifyChain(nil, tc.vs); !errors.Is(err, tc.want) {
				t.Fatalf("VerifyChain = %v, %v; want %v", c, err, tc.want)
			}
		})
	}
	// A version that does not parse is a *FieldError naming the version.
	var fe *manifest.FieldError
	if _, err := manifest.VerifyChain(nil, []manifest.SignedVersion{vs[0], {Body: []byte("{}")}}); !errors.As(err, &fe) {
		t.Errorf("VerifyChain(unparsable version 2) = %v, want a *FieldError", err)
	}

	// Version 1 signed by its own owners names them.
	signed := manifest.SignedVersion{Body: vs[0].Body, Signatures: []string{sign(owner2, vs[0].Body), sign(owner1, vs[0].Body)}}
	c, err := manifest.VerifyChain(nil, []manifest.SignedVersion{signed, vs[1]})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{fingerprint(t, "owner1"), fingerprint(t, "owner2")}
	slices.Sort(want)
	if got := c.Links()[0].Signers; !slices.Equal(got, want) {
		t.Errorf("signed version 1: signers %v, want %v", got, want)
	}

	// Append grows a chain one version at a time and leaves it unchanged
	// on error.
	var ch manifest.Chain
	if ch.Anchor() != nil || ch.Latest() != nil {
		t.Fatal("empty chain has versions")
	}
	if _, err := ch.Append(vs[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.Append(vs[2]); !errors.Is(err, manifest.ErrVersionSkip) || ch.Len() != 1 {
		t.Fatalf("Append(gap) = %v, chain of %d", err, ch.Len())
	}
	if l, err := ch.Append(vs[1]); err != nil || l.Manifest.Version() != 2 || ch.Latest().Version() != 2 {
		t.Fatalf("Append(v2) = %v, %v", l, err)
	}
}
