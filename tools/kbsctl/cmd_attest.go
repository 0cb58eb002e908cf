package main

import (
	"context"
	"encoding/hex"
	"fmt"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
)

type attestResult struct {
	Platform   string `json:"platform"`
	Simulated  bool   `json:"simulated"`
	ReportData string `json:"report_data"`
	File       string `json:"file"`
	Bytes      int    `json:"bytes"`
}

func cmdAttest(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("attest", "--tee snp|tdx|sim [--sim-dir DIR] [--sim-measurement HEX] [--sim-platform snp|tdx] [--report-data HEX] --out FILE",
		`Writes evidence of this machine's TEE to a new file, with REPORT_DATA set to
--report-data (default 64 zero bytes): with --tee snp or tdx from this
confidential VM (configfs-tsm, or /dev/sev-guest), with --tee sim from a
simulated TEE directory (development). The file is what 'kbsctl manifest
check --evidence' reads: an SNP report with its certificate table, or a TDX
quote. Nothing is sent anywhere.`, useJSON)
	var tee teeFlags
	tee.register(fs)
	rdHex := fs.String("report-data", "", "REPORT_DATA to bind, 128 hex digits (default all zero)")
	outFile := fs.String("out", "", "evidence file to write, a new file (required)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *outFile == "" {
		return usageErr("attest: --out is required")
	}
	var rd [attest.ReportDataSize]byte
	if *rdHex != "" {
		b, err := hex.DecodeString(*rdHex)
		if err != nil || len(b) != attest.ReportDataSize {
			return usageErr("--report-data: want 64 bytes as 128 hex digits")
		}
		copy(rd[:], b)
	}
	if err := checkNewFile("--out", *outFile); err != nil {
		return err
	}
	iss, err := tee.issuer()
	if err != nil {
		return err
	}
	ev, err := iss.Issue(ctx, rd)
	if err != nil {
		return fmt.Errorf("couldn't produce evidence: %w", err)
	}
	if err := writeNew(*outFile, ev.Data, 0o644); err != nil {
		return err
	}
	out := attestResult{Platform: string(ev.Platform), Simulated: tee.tee == "sim", ReportData: hex.EncodeToString(rd[:]), File: *outFile, Bytes: len(ev.Data)}
	return e.out(out, func() {
		note := ""
		if out.Simulated {
			note = " (simulated)"
		}
		fmt.Fprintf(e.stdout, "wrote %d bytes of %s evidence%s to %s\n", out.Bytes, out.Platform, note, out.File)
		fmt.Fprintf(e.stdout, "check it: kbsctl manifest check --manifest MANIFEST --platform %s --evidence %s", out.Platform, out.File)
		if out.Simulated {
			fmt.Fprintf(e.stdout, " --sim-root %s", sim.RootFile(tee.simDir))
		}
		fmt.Fprintln(e.stdout)
	})
}
