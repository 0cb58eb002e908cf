package snp

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
)

// TestValidateClaims: Validate takes only claims from Verify, and applies
// the options it is given.
func TestValidateClaims(t *testing.T) {
	ctx := context.Background()
	dir := testSim(t)
	rd := [64]byte{3}
	iss, err := sim.NewSNPIssuer(dir, sim.SNPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := iss.Issue(ctx, rd)
	if err != nil {
		t.Fatal(err)
	}
	c, err := simVerifier(t, dir).Verify(ctx, ev, rd)
	if err != nil {
		t.Fatal(err)
	}
	opts := simOptions(iss.ChipID(), rd)
	if err := Validate(c, opts); err != nil {
		t.Fatalf("Validate(sim claims, their options) = %v", err)
	}
	if err := Validate(&attest.Claims{Platform: attest.SNP}, opts); !errors.Is(err, errClaims) {
		t.Errorf("Validate(empty claims) = %v, want errClaims", err)
	}
	noKey := *c
	s := *c.SNP
	s.EndorsementKey = nil
	noKey.SNP = &s
	if err := Validate(&noKey, opts); !errors.Is(err, errClaims) {
		t.Errorf("Validate(claims without the endorsement key) = %v, want errClaims", err)
	}
	if err := Validate(c, nil); err == nil {
		t.Error("Validate(no options) succeeded")
	}
	other := *opts
	other.HostData = append([]byte{1}, make([]byte, 31)...)
	if err := Validate(c, &other); err == nil || !strings.Contains(err.Error(), "HOST_DATA") {
		t.Errorf("Validate(other host data) = %v, want a HOST_DATA refusal", err)
	}
}
