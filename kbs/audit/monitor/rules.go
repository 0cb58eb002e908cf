package monitor

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kbs-dev/kbs/manifest"
)

// Rule kinds.
const (
	KindManifest         = "manifest"
	KindReleaseClass     = "release-class"
	KindSimulatedRelease = "simulated-release"
	KindStaleManifest    = "stale-manifest"
	KindKeyDelete        = "key-delete"
	KindReleaseRate      = "release-rate"
	KindLogStale         = "log-stale"
	KindNotWitnessed     = "not-witnessed"
	// KindFork and KindInconsistency are the built-in alerts: a log that
	// rolled back or forked, and entries (or a manifest history) that do
	// not tell a consistent story.
	KindFork          = "fork"
	KindInconsistency = "inconsistency"
)

// Severities, from the quietest. Emergency is reserved for forks and
// inconsistencies.
const (
	SeverityInfo      = "info"
	SeverityWarning   = "warning"
	SeverityCritical  = "critical"
	SeverityEmergency = "emergency"
)

// kinds lists every rule kind with the parameters it takes (required ones
// first, marked with '!').
var kinds = map[string][]string{
	KindManifest:         nil,
	KindReleaseClass:     {"!key", "!class"},
	KindSimulatedRelease: {"key"},
	KindStaleManifest:    {"key"},
	KindKeyDelete:        {"key", "client"},
	KindReleaseRate:      {"!max", "per", "key", "class"},
	KindLogStale:         {"!for"},
	KindNotWitnessed:     {"!for"},
}

// defaultSeverity is a rule's severity when it names none.
var defaultSeverity = map[string]string{
	KindManifest:         SeverityWarning,
	KindReleaseClass:     SeverityCritical,
	KindSimulatedRelease: SeverityCritical,
	KindStaleManifest:    SeverityCritical,
	KindKeyDelete:        SeverityInfo,
	KindReleaseRate:      SeverityWarning,
	KindLogStale:         SeverityWarning,
	KindNotWitnessed:     SeverityCritical,
}

// Limits of a rules file.
const (
	MaxRulesFile = 64 << 10
	MaxRules     = 256
	// MaxRate bounds release-rate's max.
	MaxRate = 1 << 40
	// MinWindow and MaxWindow bound release-rate's per, log-stale's and
	// not-witnessed's for.
	MinWindow = time.Second
	MaxWindow = 366 * 24 * time.Hour
)

// A Rule is one line of a rules file.
type Rule struct {
	// Name labels the rule's alerts.
	Name string `json:"name"`
	// Kind is one of the Kind constants (not KindFork or KindInconsistency).
	Kind string `json:"kind"`
	// Severity is the severity of its alerts.
	Severity string `json:"severity"`
	// Key is the key id pattern ("" for any key).
	Key string `json:"key,omitempty"`
	// Classes are release-class's allowed classes and release-rate's
	// class (at most one).
	Classes []string `json:"classes,omitempty"`
	// Client is key-delete's client ("" for any).
	Client string `json:"client,omitempty"`
	// Max is release-rate's N.
	Max uint64 `json:"max,omitempty"`
	// Window is release-rate's per, log-stale's and not-witnessed's for.
	Window time.Duration `json:"window,omitempty"`
}

// String formats r as a rules-file line that ParseRules reads back as r.
func (r Rule) String() string {
	var b strings.Builder
	b.WriteString(r.Name + " " + r.Kind)
	if r.Key != "" {
		b.WriteString(" key=" + r.Key)
	}
	if len(r.Classes) > 0 {
		b.WriteString(" class=" + strings.Join(r.Classes, ","))
	}
	if r.Client != "" {
		b.WriteString(" client=" + r.Client)
	}
	if r.Kind == KindReleaseRate {
		fmt.Fprintf(&b, " max=%d per=%s", r.Max, formatDuration(r.Window))
	} else if r.Window != 0 {
		b.WriteString(" for=" + formatDuration(r.Window))
	}
	b.WriteString(" severity=" + r.Severity)
	return b.String()
}

// matchKey reports whether key id matches the rule's key pattern.
func (r *Rule) matchKey(id string) bool {
	return r.Key == "" || manifest.MatchPattern(r.Key, id)
}

var (
	nameRE  = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	classRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	// clientRE accepts what a manifest client name can be, without
	// blanks (the rules file splits on them).
	clientRE = regexp.MustCompile(`^[^\s=#]{1,128}$`)
)

// ParseRules reads a rules file: which events of a log a person must
// see. One rule per line:
//
//	NAME  KIND  [PARAM=VALUE ...]
//
// '#' starts a comment; blank lines are ignored. NAME (1-64 of
// [A-Za-z0-9._-], unique in the file) labels the rule's alerts. KIND and
// its parameters are:
//
//	manifest                              a new manifest version, with its diff
//	release-class   key=P class=C[,C...]  a release of a key matching P to any class not listed
//	simulated-release [key=P]             a release to a worker on a simulated TEE
//	stale-manifest  [key=P]               a release under a manifest that is not the log's latest
//	key-delete      [key=P] [client=N]    a key deletion
//	release-rate    max=N [per=D] [key=P] [class=C]
//	                                      more than N releases within D (default 1h), by the
//	                                      entries' timestamps
//	log-stale       for=D                 the log has not grown for D (the monitor's clock)
//	not-witnessed   for=D                 no checkpoint carried the manifest's witness quorum
//	                                      for D (cosignature timestamps)
//
// Every rule also takes severity=info|warning|critical (default critical
// for release-class, simulated-release, stale-manifest and not-witnessed,
// info for key-delete, warning for the others). Key patterns are the manifest's: a key id, a prefix
// ending in '*', or '*'. Durations are Go durations (90s, 30m, 24h) or
// days (7d). Forks, rollbacks and inconsistencies of the log need no rule:
// they always raise an alert of severity "emergency".
//
// Errors name the line. The file is at most MaxRulesFile bytes and holds
// at most MaxRules rules.
func ParseRules(b []byte) ([]Rule, error) {
	if len(b) > MaxRulesFile {
		return nil, fmt.Errorf("rules file is %d bytes, more than %d", len(b), MaxRulesFile)
	}
	var rules []Rule
	names := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), MaxRulesFile+1)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		r, err := parseRule(f)
		if err != nil {
			return nil, fmt.Errorf("rules line %d: %w", n, err)
		}
		if prev, dup := names[r.Name]; dup {
			return nil, fmt.Errorf("rules line %d: rule %q is already defined on line %d", n, r.Name, prev)
		}
		names[r.Name] = n
		if len(rules) == MaxRules {
			return nil, fmt.Errorf("rules line %d: more than %d rules", n, MaxRules)
		}
		rules = append(rules, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("rules file: %w", err)
	}
	return rules, nil
}

func parseRule(f []string) (Rule, error) {
	if !utf8Printable(f[0]) || !nameRE.MatchString(f[0]) {
		return Rule{}, fmt.Errorf("rule name %q: want 1-64 of A-Z a-z 0-9 . _ -", clipText(f[0]))
	}
	r := Rule{Name: f[0]}
	if len(f) < 2 {
		return Rule{}, fmt.Errorf("rule %q has no kind (want one of %s)", r.Name, kindList())
	}
	r.Kind = f[1]
	params, ok := kinds[r.Kind]
	if !ok {
		return Rule{}, fmt.Errorf("rule %q: unknown kind %q (want one of %s)", r.Name, clipText(r.Kind), kindList())
	}
	r.Severity = defaultSeverity[r.Kind]
	seen := map[string]bool{}
	for _, kv := range f[2:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || v == "" {
			return Rule{}, fmt.Errorf("rule %q: %q is not PARAM=VALUE", r.Name, clipText(kv))
		}
		if seen[k] {
			return Rule{}, fmt.Errorf("rule %q: %s given twice", r.Name, clipText(k))
		}
		seen[k] = true
		if k == "severity" {
			switch v {
			case SeverityInfo, SeverityWarning, SeverityCritical:
				r.Severity = v
			default:
				return Rule{}, fmt.Errorf("rule %q: severity %q: want info, warning or critical", r.Name, clipText(v))
			}
			continue
		}
		if !slices.Contains(params, k) && !slices.Contains(params, "!"+k) {
			return Rule{}, fmt.Errorf("rule %q: %s takes no %q (it takes %s)", r.Name, r.Kind, clipText(k), paramList(params))
		}
		if err := r.set(k, v); err != nil {
			return Rule{}, fmt.Errorf("rule %q: %s: %w", r.Name, k, err)
		}
	}
	for _, p := range params {
		if name, req := strings.CutPrefix(p, "!"); req && !seen[name] {
			return Rule{}, fmt.Errorf("rule %q: %s needs %s=", r.Name, r.Kind, name)
		}
	}
	if r.Kind == KindReleaseRate && r.Window == 0 {
		r.Window = time.Hour
	}
	return r, nil
}

func (r *Rule) set(k, v string) error {
	switch k {
	case "key":
		if err := manifest.CheckPattern(v); err != nil {
			return err
		}
		r.Key = v
	case "class":
		for _, c := range strings.Split(v, ",") {
			if !classRE.MatchString(c) {
				return fmt.Errorf("class %q: want 1-64 of A-Z a-z 0-9 . _ -", clipText(c))
			}
			if slices.Contains(r.Classes, c) {
				return fmt.Errorf("class %q listed twice", c)
			}
			r.Classes = append(r.Classes, c)
		}
		if r.Kind == KindReleaseRate && len(r.Classes) > 1 {
			return fmt.Errorf("release-rate counts one class, not %d", len(r.Classes))
		}
	case "client":
		if !utf8Printable(v) || !clientRE.MatchString(v) {
			return fmt.Errorf("client %q is not a client name", clipText(v))
		}
		r.Client = v
	case "max":
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n < 1 || n > MaxRate {
			return fmt.Errorf("%q: want a whole number from 1 to %d", clipText(v), uint64(MaxRate))
		}
		r.Max = n
	case "per", "for":
		d, err := parseDuration(v)
		if err != nil {
			return err
		}
		r.Window = d
	}
	return nil
}

// parseDuration parses a Go duration or a number of days ("7d") within
// [MinWindow, MaxWindow].
func parseDuration(v string) (time.Duration, error) {
	var d time.Duration
	if days, ok := strings.CutSuffix(v, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 16)
		if err != nil {
			return 0, fmt.Errorf("%q: want a duration such as 90s, 30m, 24h or 7d", clipText(v))
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			return 0, fmt.Errorf("%q: want a duration such as 90s, 30m, 24h or 7d", clipText(v))
		}
	}
	if d < MinWindow || d > MaxWindow || d%time.Second != 0 {
		return 0, fmt.Errorf("%q: want whole seconds from %s to %s", clipText(v), MinWindow, MaxWindow)
	}
	return d, nil
}

// formatDuration formats d so that parseDuration reads it back.
func formatDuration(d time.Duration) string {
	switch {
	case d%(24*time.Hour) == 0:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return fmt.Sprintf("%ds", d/time.Second)
}

func kindList() string {
	var l []string
	for k := range kinds {
		l = append(l, k)
	}
	slices.Sort(l)
	return strings.Join(l, ", ")
}

func paramList(p []string) string {
	if len(p) == 0 {
		return "only severity="
	}
	var l []string
	for _, s := range p {
		l = append(l, strings.TrimPrefix(s, "!")+"=")
	}
	return strings.Join(append(l, "severity="), ", ")
}

// clipText quotes at most 64 bytes of user text in errors.
func clipText(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

func utf8Printable(s string) bool {
	for _, c := range s {
		if c < 0x20 || c == 0x7f || c == 0xfffd {
			return false
		}
	}
	return true
}
