package audit

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestClip(t *testing.T) {
	for _, tc := range []struct {
		s    string
		max  int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"abcdefghijkl", 10, "abcdefghij… (2 more bytes)"},
		{strings.Repeat("é", 6), 5, "éé… (8 more bytes)"}, // no split rune
	} {
		got := clip(tc.s, tc.max)
		if got != tc.want || !utf8.ValidString(got) {
			t.Errorf("clip(%q, %d) = %q, want %q", tc.s, tc.max, got, tc.want)
		}
	}
}
