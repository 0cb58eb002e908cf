package policy_test

import (
	"testing"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/policy"
	"github.com/kbs-dev/kbs/manifest"
)

// BenchmarkDecideConfirm measures the two policy layers of a release on
// default simulated evidence, after verification: decide is the manifest's
// comparison (AuthorizeRelease against a manifest pinned to the evidence),
// confirm the vendor library's validation of the alternative that matched
// (Confirm: SNPOptions or TDXOptions, then snp.Validate or tdx.Validate).
func BenchmarkDecideConfirm(b *testing.B) {
	for _, p := range []attest.Platform{attest.SNP, attest.TDX} {
		c := simEvidence(b, p, sim.Options{})
		cl, err := manifest.PinClass(c)
		if err != nil {
			b.Fatal(err)
		}
		m := simManifest(b, cl)
		keys := []string{"demo/k"}
		class, r, err := m.AuthorizeRelease(c, keys)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(string(p)+"/decide", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := m.AuthorizeRelease(c, keys); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(string(p)+"/confirm", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := policy.Confirm(m, r, class, c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
