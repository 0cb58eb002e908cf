//go:build kbs_clockskew

package clock

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

const skewable = true

// EnvSkew names the environment variable that moves the clock in
// kbs_clockskew builds: a Go duration ("8760h") or a number of years ("1y",
// "5y", where a year is 365 days).
const EnvSkew = "KBS_TEST_CLOCK_SKEW"

var skew = mustParseSkew(os.Getenv(EnvSkew))

func mustParseSkew(s string) time.Duration {
	d, err := ParseSkew(s)
	if err != nil {
		fmt.Fprintf(os.Stderr, "clock: %s=%q: %v\n", EnvSkew, s, err)
		os.Exit(2)
	}
	return d
}

// ParseSkew parses a skew: empty (none), a Go duration, or a number of
// 365-day years followed by "y".
func ParseSkew(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	if y, ok := strings.CutSuffix(s, "y"); ok {
		n, err := strconv.Atoi(y)
		if err != nil {
			return 0, fmt.Errorf("want a duration or a number of years such as 5y")
		}
		return time.Duration(n) * 365 * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}
