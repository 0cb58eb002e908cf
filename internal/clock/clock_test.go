//go:build !kbs_clockskew

package clock

import (
	"testing"
	"time"
)

// TestNoSkew checks that a normal build reads the wall clock, whatever the
// environment says: the skew cannot be switched on without the build tag.
func TestNoSkew(t *testing.T) {
	t.Setenv("KBS_TEST_CLOCK_SKEW", "5y")
	if Skewable() || Skew() != 0 {
		t.Fatalf("Skewable() = %v, Skew() = %v in a normal build", Skewable(), Skew())
	}
	if d := time.Until(Now()); d < -time.Second || d > time.Second {
		t.Errorf("Now() - time.Now() = %v", d)
	}
}
