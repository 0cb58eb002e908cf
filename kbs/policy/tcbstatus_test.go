package policy_test

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/attest/tdx"
	"github.com/kbs-dev/kbs/manifest"
)

// TestTDXTCBStatusPolicy: a TDX platform whose collateral says
// SWHardeningNeeded is refused by default, admitted by an exception that
// names its advisories until a date, and refused once the exception has
// expired or when an advisory is not named. The clock derives from the
// collateral: the quote is verified an hour after it was issued.
func TestTDXTCBStatusPolicy(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sim")
	if err := sim.GenerateTDX(dir); err != nil {
		t.Fatal(err)
	}
	col := sim.TDXCollateralDir(dir)
	issued := clock.Now().UTC().Add(-2 * time.Hour).Truncate(time.Second)
	level := sim.TDXLevel{Status: "SWHardeningNeeded", Advisories: []string{"INTEL-SA-00615", "INTEL-SA-00828"}}
	if err := sim.IssueTDXCollateral(dir, issued, level); err != nil {
		t.Fatal(err)
	}
	bundle, err := tdx.LoadCollateral(col)
	if err != nil {
		t.Fatal(err)
	}
	now := bundle.Issued().Add(time.Hour)
	roots, err := sim.TDXRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := tdx.NewVerifier(tdx.Options{Now: func() time.Time { return now }, TrustedRoots: roots, CollateralDir: col})
	if err != nil {
		t.Fatal(err)
	}
	iss, err := sim.NewTDXIssuer(dir, sim.TDXOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var rd [64]byte
	ev, err := iss.Issue(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(context.Background(), ev, rd)
	if err != nil {
		t.Fatal(err)
	}
	if c.TDX.TCBStatus != "SWHardeningNeeded" || !slices.Equal(c.TDX.AdvisoryIDs, level.Advisories) || !c.VerifiedAt.Equal(now) {
		t.Fatalf("claims: status %q advisories %v at %v", c.TDX.TCBStatus, c.TDX.AdvisoryIDs, c.VerifiedAt)
	}
	c.Simulated = true
	pinned, err := manifest.PinTDX(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		ex   []manifest.TCBException
		ok   bool
		why  string
	}{
		{"no exception", nil, false, ""},
		{"excepted", []manifest.TCBException{{Status: "SWHardeningNeeded", Advisories: []string{"INTEL-SA-00615", "INTEL-SA-00828", "INTEL-SA-00001"}, Until: now.Add(24 * time.Hour)}}, true, ""},
		{"expired", []manifest.TCBException{{Status: "SWHardeningNeeded", Advisories: level.Advisories, Until: now.Add(-time.Second)}}, false, "exception expired"},
		{"advisory not named", []manifest.TCBException{{Status: "SWHardeningNeeded", Advisories: []string{"INTEL-SA-00615"}, Until: now.Add(24 * time.Hour)}}, false, "not excepted: INTEL-SA-00828"},
		{"other status", []manifest.TCBException{{Status: "ConfigurationNeeded", Advisories: level.Advisories, Until: now.Add(24 * time.Hour)}}, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := pinned
			v.TCBExceptions = tc.ex
			m := simManifest(t, manifest.Class{TDX: []manifest.TDXValues{v}})
			r, err := m.MatchClass("demo-worker", c)
			if err != nil {
				t.Fatal(err)
			}
			if r.OK() != tc.ok {
				t.Fatalf("OK() = %v, want %v\n%s", r.OK(), tc.ok, r)
			}
			if !tc.ok && (!slices.Equal(r.Failed(), []string{"tcb_status"}) || !strings.Contains(r.String(), tc.why)) {
				t.Errorf("failing %v, want tcb_status saying %q\n%s", r.Failed(), tc.why, r)
			}
		})
	}
	// The same claims, verified two days later by the clock of the claims,
	// fall outside a one-day exception.
	late := *c
	late.VerifiedAt = now.Add(48 * time.Hour)
	v2 := pinned
	v2.TCBExceptions = []manifest.TCBException{{Status: "SWHardeningNeeded", Advisories: level.Advisories, Until: now.Add(24 * time.Hour)}}
	if r, _ := simManifest(t, manifest.Class{TDX: []manifest.TDXValues{v2}}).MatchClass("demo-worker", &late); r.OK() {
		t.Error("exception honoured after its end")
	}
}
