package sim

import (
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/tdx"
)

// Default measurements of simulated TDX quotes, for development manifests:
// MRTD and RTMR0-3 (SHA-384 of fixed labels, see kbs/attest/tdx).
var (
	DefaultTDXMRTD = tdx.DefaultSimMRTD
	DefaultTDXRTMR = tdx.DefaultSimRTMR
)

func init() {
	platforms[attest.TDX] = platform{
		generate: tdx.GenerateSim,
		roots:    tdx.SimRoots,
		issuer:   tdxIssuer,
	}
}

func tdxIssuer(dir string, o Options) (attest.Issuer, error) {
	to := tdx.SimOptions{
		MRTD:       o.Measurement,
		RTMR:       o.RTMR,
		MRConfigID: o.MRConfigID,
		MROwner:    o.MROwner,
	}
	if to.MRTD == nil {
		to.MRTD = DefaultTDXMRTD[:]
	}
	for i := range to.RTMR {
		if to.RTMR[i] == nil {
			to.RTMR[i] = DefaultTDXRTMR[i][:]
		}
	}
	if o.Debug {
		to.TDAttributes |= 1 // TD_ATTRIBUTES.DEBUG
	}
	return tdx.NewSimIssuer(dir, to)
}
