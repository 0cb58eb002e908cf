package monitor

import (
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseRules(t *testing.T) {
	rules, err := ParseRules([]byte(`
# comment
new-manifest manifest
prod-to-gpu  release-class key=prod/* class=gpu-prod,gpu-prod-2   # trailing comment
no-sim       simulated-release severity=warning
stale        stale-manifest key=*
deletions    key-delete client=acme
burst        release-rate max=100
burst-day    release-rate max=5 per=7d key=prod/model class=gpu-prod
quiet        log-stale for=90m
unwitnessed  not-witnessed for=30s
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []Rule{
		{Name: "new-manifest", Kind: KindManifest, Severity: SeverityWarning},
		{Name: "prod-to-gpu", Kind: KindReleaseClass, Severity: SeverityCritical, Key: "prod/*", Classes: []string{"gpu-prod", "gpu-prod-2"}},
		{Name: "no-sim", Kind: KindSimulatedRelease, Severity: SeverityWarning},
		{Name: "stale", Kind: KindStaleManifest, Severity: SeverityCritical, Key: "*"},
		{Name: "deletions", Kind: KindKeyDelete, Severity: SeverityInfo, Client: "acme"},
		{Name: "burst", Kind: KindReleaseRate, Severity: SeverityWarning, Max: 100, Window: time.Hour},
		{Name: "burst-day", Kind: KindReleaseRate, Severity: SeverityWarning, Key: "prod/model", Classes: []string{"gpu-prod"}, Max: 5, Window: 7 * 24 * time.Hour},
		{Name: "quiet", Kind: KindLogStale, Severity: SeverityWarning, Window: 90 * time.Minute},
		{Name: "unwitnessed", Kind: KindNotWitnessed, Severity: SeverityCritical, Window: 30 * time.Second},
	}
	if !reflect.DeepEqual(rules, want) {
		t.Fatalf("ParseRules =\n%+v\nwant\n%+v", rules, want)
	}
	// Each rule's String reads back as the rule.
	for _, r := range rules {
		got, err := ParseRules([]byte(r.String()))
		if err != nil || len(got) != 1 || !reflect.DeepEqual(got[0], r) {
			t.Errorf("ParseRules(%q) = %+v, %v; want %+v", r.String(), got, err, r)
		}
	}
}

func TestParseRulesErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"x", "has no kind"},
		{"x frobnicate", `unknown kind "frobnicate"`},
		{"x manifest key=a/*", `manifest takes no "key"`},
		{"x release-class key=prod/*", "release-class needs class="},
		{"x release-class class=a", "release-class needs key="},
		{"x release-class key=prod/** class=a", "invalid key id pattern"},
		{"x release-class key=a class=b,b", "listed twice"},
		{"x release-class key=a class=b c=d", `takes no "c"`},
		{"x release-rate", "release-rate needs max="},
		{"x release-rate max=0", "want a whole number"},
		{"x release-rate max=-1", "want a whole number"},
		{"x release-rate max=3 class=a,b", "one class"},
		{"x release-rate max=3 per=0s", "want whole seconds"},
		{"x release-rate max=3 per=1.5s", "want whole seconds"},
		{"x log-stale for=forever", "want a duration"},
		{"x log-stale for=400d", "want whole seconds"},
		{"x log-stale", "log-stale needs for="},
		{"x log-stale for=1h for=2h", "given twice"},
		{"x key-delete severity=emergency", "want info, warning or critical"},
		{"x key-delete key", "not PARAM=VALUE"},
		{"x key-delete key=", "not PARAM=VALUE"},
		{"bad/name manifest", "rule name"},
		{"x manifest\nx key-delete", `rule "x" is already defined on line 1`},
		{"\n\nx manifest\ny nope", "rules line 4"},
		{strings.Repeat("a", 65) + " manifest", "rule name"},
		{strings.Repeat("# long comment\n", MaxRulesFile/15+1), "more than"},
	} {
		_, err := ParseRules([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseRules(%.40q) = %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
	var many strings.Builder
	for i := range MaxRules + 1 {
		many.WriteString("r" + strings.Repeat("x", i%10) + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + " manifest\n")
	}
	if _, err := ParseRules([]byte(many.String())); err == nil || !strings.Contains(err.Error(), "more than 256 rules") {
		t.Errorf("ParseRules of %d rules = %v", MaxRules+1, err)
	}
}

// TestSampleRules: the sample rules file of the documentation parses.
func TestSampleRules(t *testing.T) {
	b, err := os.ReadFile("../../../docs/monitor-rules.txt")
	if err != nil {
		t.Fatal(err)
	}
	rules, err := ParseRules(b)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, r := range rules {
		kinds[r.Kind] = true
	}
	for k := range defaultSeverity {
		if !kinds[k] {
			t.Errorf("the sample has no %s rule", k)
		}
	}
}

// FuzzParseRules: any input either fails cleanly or parses into rules
// whose String forms parse back to the same rules.
func FuzzParseRules(f *testing.F) {
	if b, err := os.ReadFile("../../../docs/monitor-rules.txt"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("x release-rate max=3 per=2h key=a/* class=b severity=info"))
	f.Add([]byte("x log-stale for=7d\ny not-witnessed for=90s"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rules, err := ParseRules(b)
		if err != nil {
			return
		}
		var lines []string
		for _, r := range rules {
			lines = append(lines, r.String())
		}
		again, err := ParseRules([]byte(strings.Join(lines, "\n")))
		if err != nil || !reflect.DeepEqual(again, rules) {
			t.Fatalf("round trip of %q: %+v, %v; want %+v", b, again, err, rules)
		}
	})
}
