package main

import (
	"context"
	"encoding/hex"
	"fmt"

	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	tsmreport "github.com/google/go-configfs-tsm/report"

	"github.com/kbs-dev/kbs/kbs/attest"
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
	fs.StringVar(&t.tee, "tee", "", "where evidence comes from: snp or tdx (configfs-tsm in this CVM), or sim (a simulated TEE directory)")
	fs.StringVar(&t.simDir, "sim-dir", "kbs-dev/sim", "with --tee sim: the simulated TEE directory")
	fs.StringVar(&t.simMeasurement, "sim-measurement", "", "with --tee sim: the launch measurement to claim (96 hex digits; default the sim's)")
	fs.StringVar(&t.simPlatform, "sim-platform", "snp", "with --tee sim: the simulated platform")
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
		iss, err := sim.NewIssuer(t.simDir, attest.Platform(t.simPlatform), opts)
		if err != nil {
			return nil, fmt.Errorf("--tee sim: %w", err)
		}
		return iss, nil
	case "snp":
		return &tsmIssuer{platform: attest.SNP}, nil
	case "tdx":
		return &tsmIssuer{platform: attest.TDX}, nil
	default:
		return nil, usageErr("--tee %q: want snp, tdx or sim", t.tee)
	}
}

// tsmIssuer obtains evidence from the Linux configfs-tsm report interface
// (/sys/kernel/config/tsm/report) inside an SEV-SNP or TDX guest. SNP
// evidence is the report followed by the certificate table (auxblob); TDX
// evidence is the quote.
type tsmIssuer struct {
	platform attest.Platform
}

func (t *tsmIssuer) Platform() attest.Platform { return t.platform }

func (t *tsmIssuer) Issue(_ context.Context, rd [attest.ReportDataSize]byte) (attest.Evidence, error) {
	resp, err := linuxtsm.GetReport(&tsmreport.Request{InBlob: rd[:], GetAuxBlob: t.platform == attest.SNP})
	if err != nil {
		return attest.Evidence{}, fmt.Errorf("configfs-tsm report: %w", err)
	}
	want := map[attest.Platform]string{attest.SNP: "sev_guest", attest.TDX: "tdx_guest"}[t.platform]
	if resp.Provider != want {
		return attest.Evidence{}, fmt.Errorf("configfs-tsm provider is %q, not %q: this is not a %s guest", resp.Provider, want, t.platform)
	}
	data := append([]byte(nil), resp.OutBlob...)
	if t.platform == attest.SNP {
		data = append(data, resp.AuxBlob...)
	}
	return attest.Evidence{Platform: t.platform, Data: data}, nil
}
