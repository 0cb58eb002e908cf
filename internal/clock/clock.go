// Package clock is where kbs's programs read the wall clock.
//
// Verifiers and daemons take an injectable Now (see kbs.Config.Now,
// snp.Options.Now, tdx.Options.Now, client.Config.Now); when a caller leaves
// it unset they fall back to clock.Now, never to time.Now directly. In every
// normal build clock.Now is time.Now.
//
// Built with the tag kbs_clockskew (tests only: `make test-future`), Now adds
// the offset in the environment variable KBS_TEST_CLOCK_SKEW to the real
// time, so that the whole suite, process-level tests included, can be run as
// if it were one or five years later. That proves no test depends on the day
// it runs. A binary built without the tag ignores the variable: the skew
// cannot be switched on in production by the environment.
package clock

import "time"

// Now returns the current time as kbs's programs see it.
func Now() time.Time { return time.Now().Add(skew) }

// Skewable reports whether this binary was built with the kbs_clockskew tag,
// so that test helpers which build other binaries build them the same way.
func Skewable() bool { return skewable }

// Skew returns the offset Now adds to the real time (zero in normal builds).
func Skew() time.Duration { return skew }
