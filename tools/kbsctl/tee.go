package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/cvm"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
)

// teeFlags are the flags that choose where a worker's evidence comes from.
type teeFlags struct {
	tee            string
	simDir         string
	simMeasurement string
	simPlatform    string
}

func (t *teeFlags) register(fs interface {
	StringVar(p *string, name, value, usage string)
}) {
	fs.StringVar(&t.tee, "tee", "", "where evidence comes from: snp or tdx (this CVM, through configfs-tsm or /dev/sev-guest), or sim (a simulated TEE directory)")
	fs.StringVar(&t.simDir, "sim-dir", "kbs-dev/sim", "with --tee sim: the simulated TEE directory")
	fs.StringVar(&t.simMeasurement, "sim-measurement", "", "with --tee sim: the launch measurement to claim (96 hex digits; default the sim's)")
	fs.StringVar(&t.simPlatform, "sim-platform", "snp", "with --tee sim: the simulated platform (snp or tdx)")
}

// issuer returns the evidence issuer the flags select.
func (t *teeFlags) issuer() (attest.Issuer, error) {
	switch t.tee {
	case "":
		return nil, usageErr("--tee is required (snp, tdx or sim)")
	case "sim":
		var opts sim.Options
		if t.simMeasurement != "" {
			m, err := hex.DecodeString(t.simMeasurement)
			if err != nil || len(m) != 48 {
				return nil, usageErr("--sim-measurement: want 48 bytes as 96 hex digits")
			}
			opts.Measurement = m
		}
		if _, err := os.Stat(t.simDir); err != nil {
			return nil, usageErr("--tee sim: no simulated TEE at --sim-dir %s (kbsd --dev creates one in DATA/sim): %v", t.simDir, errors.Unwrap(err))
		}
		iss, err := sim.NewIssuer(t.simDir, attest.Platform(t.simPlatform), opts)
		if err != nil {
			return nil, fmt.Errorf("--tee sim: %w", err)
		}
		return iss, nil
	case "snp":
		iss, err := cvm.NewTSMIssuer(attest.SNP)
		if err != nil {
			// Kernels before configfs-tsm: the /dev/sev-guest ioctl.
			if iss, err2 := cvm.NewSevGuestIssuer(); err2 == nil {
				return iss, nil
			}
			return nil, fmt.Errorf("--tee snp: %w", err)
		}
		return iss, nil
	case "tdx":
		iss, err := cvm.NewTSMIssuer(attest.TDX)
		if err != nil {
			return nil, fmt.Errorf("--tee tdx: %w", err)
		}
		return iss, nil
	default:
		return nil, usageErr("--tee %q: want snp, tdx or sim", t.tee)
	}
}
