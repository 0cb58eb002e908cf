package tdx

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/google/go-tdx-guest/validate"
	"github.com/google/go-tdx-guest/verify"
	"github.com/kbs-dev/kbs/internal/testbin"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
)

// TestNoStdout runs verifications in a child process and checks that
// nothing reaches stdout: go-tdx-guest's logger writes there, and kbs keeps
// stdout for protocol data. The control child calls the library the way
// that makes it log, to show the check can see it.
func TestNoStdout(t *testing.T) {
	switch os.Getenv("KBS_TDX_STDOUT_CHILD") {
	case "verify":
		stdoutChild()
		os.Exit(0)
	case "control":
		_ = verify.RawTdxQuote(realQuote(t), &verify.Options{Now: realNow}) // nil TrustedRoots: logs a warning
		os.Exit(0)
	}
	run := func(mode string) []byte {
		cmd := testbin.Command(t, os.Args[0], "-test.run=^TestNoStdout$")
		cmd.Env = append(os.Environ(), "KBS_TDX_STDOUT_CHILD="+mode)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("child %s: %v", mode, err)
		}
		return out
	}
	if out := run("control"); len(out) == 0 {
		t.Fatal("control child wrote nothing to stdout; the check would see nothing either")
	}
	if out := run("verify"); len(out) != 0 {
		t.Fatalf("verification wrote to stdout: %q", out)
	}
}

func stdoutChild() {
	ctx := context.Background()
	fail := func(err error) {
		if err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
	}
	raw, err := os.ReadFile(realQuoteFile)
	fail(err)
	var rd [64]byte
	rd, err = UnverifiedReportData(raw)
	fail(err)
	v, err := NewVerifier(realOptions())
	fail(err)
	c, err := v.Verify(ctx, tdxEvidence(raw), rd)
	fail(err)
	fail(Validate(c, &validate.Options{}))
	v, err = NewVerifier(Options{Now: fixed(time.Date(2023, 7, 1, 0, 0, 0, 0, time.UTC)), CollateralDir: intelCollateral})
	fail(err)
	if _, err := v.Verify(ctx, tdxEvidence(raw), rd); err == nil {
		fail(os.ErrInvalid)
	}
	dir, err := os.MkdirTemp("", "tdx-stdout")
	fail(err)
	defer os.RemoveAll(dir)
	fail(sim.GenerateTDX(dir))
	iss, err := sim.NewTDXIssuer(dir, sim.TDXOptions{})
	fail(err)
	ev, err := iss.Issue(ctx, rd)
	fail(err)
	opts, err := simVerifierOptions(dir)
	fail(err)
	v, err = NewVerifier(opts)
	fail(err)
	c, err = v.Verify(ctx, ev, rd)
	fail(err)
	fail(Validate(c, simOptions(rd)))
}
