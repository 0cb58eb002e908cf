//go:build kbs_clockskew

package clock

import (
	"os"
	"testing"
	"time"
)

func TestParseSkew(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, true},
		{"1y", 365 * 24 * time.Hour, true},
		{"5y", 5 * 365 * 24 * time.Hour, true},
		{"8760h", 8760 * time.Hour, true},
		{"-1y", -365 * 24 * time.Hour, true},
		{"y", 0, false},
		{"1.5y", 0, false},
		{"soon", 0, false},
	} {
		got, err := ParseSkew(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseSkew(%q) = %v, %v; want %v, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// TestSkewApplied checks that Now is moved by the environment's skew in a
// kbs_clockskew build, so that make test-future really runs in the future.
func TestSkewApplied(t *testing.T) {
	want, err := ParseSkew(os.Getenv(EnvSkew))
	if err != nil {
		t.Fatal(err)
	}
	if !Skewable() || Skew() != want {
		t.Fatalf("Skewable() = %v, Skew() = %v; want true, %v", Skewable(), Skew(), want)
	}
	if d := time.Until(Now()) - want; d < -time.Minute || d > time.Minute {
		t.Errorf("Now() - time.Now() = %v, want about %v", time.Until(Now()), want)
	}
}
