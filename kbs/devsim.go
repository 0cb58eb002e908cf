package kbs

import (
	"context"
	"fmt"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/manifest"
)

// SimClass returns manifest reference values that accept exactly the
// default evidence of every platform the simulated TEE in simDir provides
// (kbsd --dev builds its manifest from it). It learns the values by
// verifying a sample of each platform's evidence with v, which must trust
// the sim's root.
func SimClass(ctx context.Context, simDir string, v attest.Verifier) (manifest.Class, error) {
	var cl manifest.Class
	for _, p := range []attest.Platform{attest.SNP, attest.TDX} {
		iss, err := sim.NewIssuer(simDir, p, sim.Options{})
		if err != nil {
			continue // platform not simulated in this build
		}
		var rd [attest.ReportDataSize]byte
		ev, err := iss.Issue(ctx, rd)
		if err != nil {
			return cl, err
		}
		c, err := v.Verify(ctx, ev, rd)
		if err != nil {
			return cl, fmt.Errorf("simulated %s evidence does not verify: %w", p, err)
		}
		switch p {
		case attest.SNP:
			sv, err := manifest.PinSNP(c)
			if err != nil {
				return cl, err
			}
			cl.SNP = append(cl.SNP, sv)
		case attest.TDX:
			tv, err := manifest.PinTDX(c)
			if err != nil {
				return cl, err
			}
			cl.TDX = append(cl.TDX, tv)
		}
	}
	if len(cl.SNP) == 0 && len(cl.TDX) == 0 {
		return cl, fmt.Errorf("no simulated platform in %s", simDir)
	}
	return cl, nil
}
