package tdx

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/google/go-tdx-guest/validate"
	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
)

// BenchmarkVerifyValidate measures Verify followed by Validate:
//
//	real: go-tdx-guest's Sapphire Rapids quote, Intel root, offline without
//	      collateral;
//	sim:  a sim quote with the sim collateral (TCB info, QE identity, both
//	      CRLs), as go-tdx-guest checks it;
//
// cold with the chain cache disabled, warm with it enabled.
func BenchmarkVerifyValidate(b *testing.B) {
	ctx := context.Background()
	run := func(b *testing.B, opts Options, raw []byte, rd [attest.ReportDataSize]byte, p *validate.Options) {
		v := mustVerifier(b, opts)
		ev := tdxEvidence(raw)
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			c, err := v.Verify(ctx, ev, rd)
			if err != nil {
				b.Fatal(err)
			}
			if err := Validate(c, p); err != nil {
				b.Fatal(err)
			}
		}
	}
	raw, rd := realQuote(b), realReportData(b)
	c := realClaims(b)
	p := &validate.Options{TdQuoteBodyOptions: validate.TdQuoteBodyOptions{
		MrTd: c.TDX.MRTD, Rtmrs: c.TDX.RTMR[:], MrConfigID: c.TDX.MRConfigID, MrOwner: c.TDX.MROwner,
		MrOwnerConfig: c.TDX.MROwnerConfig, Xfam: binary.LittleEndian.AppendUint64(nil, c.TDX.XFAM),
		TdAttributes: binary.LittleEndian.AppendUint64(nil, c.TDX.TDAttributes), MinimumTeeTcbSvn: c.TDX.TEETCBSVN,
		MrSeam: c.TDX.MRSeam, ReportData: rd[:],
	}}
	b.Run("real/cold", func(b *testing.B) {
		run(b, func() Options { o := realOptions(); o.ChainCacheSize = -1; return o }(), raw, rd, p)
	})
	b.Run("real/warm", func(b *testing.B) { run(b, realOptions(), raw, rd, p) })

	dir := newSimDir(b)
	srd := reportData("bench")
	sraw := simQuote(b, dir, sim.TDXOptions{}, srd)
	opts, err := simVerifierOptions(dir)
	if err != nil {
		b.Fatal(err)
	}
	opts.Now = fixed(clock.Now())
	cold := opts
	cold.ChainCacheSize = -1
	b.Run("sim-collateral/cold", func(b *testing.B) { run(b, cold, sraw, srd, simOptions(srd)) })
	b.Run("sim-collateral/warm", func(b *testing.B) { run(b, opts, sraw, srd, simOptions(srd)) })
}

// BenchmarkQuoteSignature is the floor of a warm verification: one ECDSA
// P-256 verification of the real quote's signature.
func BenchmarkQuoteSignature(b *testing.B) {
	raw := realQuote(b)
	q, err := parseRawQuote(raw)
	if err != nil {
		b.Fatal(err)
	}
	key, err := p256Key(q.AttestKey)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if !verifyRawSignature(key, q.Signed, q.Signature) {
			b.Fatal("signature does not verify")
		}
	}
}
