//go:build !kbs_clockskew

package clock

import "time"

const skewable = false

const skew time.Duration = 0
