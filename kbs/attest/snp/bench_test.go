package snp

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/google/go-sev-guest/verify"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
)

// BenchmarkVerifyValidate measures Verify followed by Validate on simulated
// evidence (same formats and key types as hardware: ECDSA P-384 report
// signature, RSA-PSS certificate chain): cold builds a new Verifier per
// operation, so every chain is verified; warm reuses one, so the chain
// comes from the cache. Real-Milan measures signature + chain on the real
// report (its debug policy ends Verify before Validate).
func BenchmarkVerifyValidate(b *testing.B) {
	ctx := context.Background()
	dir := testSim(b)
	rd := [64]byte{5}
	iss, err := sim.NewSNPIssuer(dir, sim.SNPOptions{})
	if err != nil {
		b.Fatal(err)
	}
	ev, err := iss.Issue(ctx, rd)
	if err != nil {
		b.Fatal(err)
	}
	opts := simOptions(iss.ChipID(), rd)
	roots := simVerifier(b, dir).rootList()
	now := simNow(b, dir)
	vopts := Options{Roots: roots, Now: func() time.Time { return now }}
	run := func(b *testing.B, v *Verifier) {
		c, err := v.Verify(ctx, ev, rd)
		if err != nil {
			b.Fatal(err)
		}
		if err := Validate(c, opts); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("cold", func(b *testing.B) {
		for b.Loop() {
			v, err := NewVerifier(vopts)
			if err != nil {
				b.Fatal(err)
			}
			run(b, v)
		}
	})
	b.Run("warm", func(b *testing.B) {
		v, err := NewVerifier(vopts)
		if err != nil {
			b.Fatal(err)
		}
		run(b, v)
		for b.Loop() {
			run(b, v)
		}
	})
	b.Run("verify-only-warm", func(b *testing.B) {
		v, err := NewVerifier(vopts)
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := v.Verify(ctx, ev, rd); err != nil {
				b.Fatal(err)
			}
		}
	})
	real := milanEvidence(b, true)
	for _, mode := range []string{"real-milan-cold", "real-milan-warm"} {
		b.Run(mode, func(b *testing.B) {
			v := amdVerifier(b, milanNow, "")
			for b.Loop() {
				if mode == "real-milan-cold" {
					v = amdVerifier(b, milanNow, "")
				}
				parsed, err := ParseEvidence(real.Data)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := v.authenticate(ctx, parsed); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReportSignature is one ECDSA P-384 report signature check, the
// floor of a warm verification.
func BenchmarkReportSignature(b *testing.B) {
	ev := issue(b, testSim(b), sim.SNPOptions{}, [64]byte{})
	parsed, err := ParseEvidence(ev.Data)
	if err != nil {
		b.Fatal(err)
	}
	vcek, err := x509.ParseCertificate(parsed.cert(vcekGUID))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := verify.SnpReportSignature(ev.Data[:ReportSize], vcek); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIsSimulated is the routing check run on every piece of evidence
// before verification: parse the evidence and look for the sim marker in its
// endorsement certificate (parsed once per certificate, then remembered).
func BenchmarkIsSimulated(b *testing.B) {
	ev := issue(b, testSim(b), sim.SNPOptions{}, [64]byte{})
	for b.Loop() {
		if !IsSimulated(ev.Data) {
			b.Fatal("IsSimulated(sim evidence) = false")
		}
	}
}

// BenchmarkValidate is the library's validation of verified claims against
// options built from reference values, as a broker runs it on every release.
func BenchmarkValidate(b *testing.B) {
	dir := testSim(b)
	rd := [64]byte{5}
	iss, err := sim.NewSNPIssuer(dir, sim.SNPOptions{})
	if err != nil {
		b.Fatal(err)
	}
	ev, err := iss.Issue(context.Background(), rd)
	if err != nil {
		b.Fatal(err)
	}
	opts := simOptions(iss.ChipID(), rd)
	now := simNow(b, dir)
	v, err := NewVerifier(Options{Roots: simVerifier(b, dir).rootList(), Now: func() time.Time { return now }})
	if err != nil {
		b.Fatal(err)
	}
	c, err := v.Verify(context.Background(), ev, rd)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := Validate(c, opts); err != nil {
			b.Fatal(err)
		}
	}
}
