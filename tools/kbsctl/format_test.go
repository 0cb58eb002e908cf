package main

import (
	"errors"
	"os"
	"testing"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/tlog"
)

func TestExitCodes(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want int
	}{
		{usageErr("x"), 2},
		{failErr("x"), 1},
		{&client.VerifyError{Step: "s", Err: errors.New("x")}, 1},
		{&tlog.ForkError{}, 1},
		{client.ErrNewLog, 1},
		{&api.Error{Code: api.CodePolicyDenied}, 1},
		{&api.Error{Code: api.CodeEvidenceRejected}, 1},
		{&api.Error{Code: api.CodeNotFound}, 2},
		{&api.Error{Code: api.CodeLogUnavailable}, 2},
		{&client.TransportError{Err: errors.New("refused")}, 2},
		{&client.TransportError{Err: client.ErrPinMismatch}, 1},
		{os.ErrNotExist, 2},
	} {
		if got := exitCode(tt.err); got != tt.want {
			t.Errorf("exitCode(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}
