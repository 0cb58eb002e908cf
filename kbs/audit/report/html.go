package report

import (
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"strings"
	"time"

	"github.com/kbs-dev/kbs/kbs/audit"
	"github.com/kbs-dev/kbs/kbs/audit/monitor"
)

// Data is what WriteHTML renders.
type Data struct {
	// Report is the audit's report (audit.Audit). Required.
	Report *audit.Report
	// Summary holds the audit's events (audit.Config.Events). Required.
	Summary *Summary
	// NoteKey is the log's note key, Addr the broker's address: the
	// re-verification commands name them.
	NoteKey, Addr string
	// Rules, if not nil, are the monitor rules the report applied (a
	// rules file was given); Alerts and AlertsOmitted are what they
	// raised (monitor.Evaluator).
	Rules         []monitor.Rule
	Alerts        []monitor.Alert
	AlertsOmitted int
	// Generated is when the report was made.
	Generated time.Time
}

// WriteHTML writes the report as one self-contained HTML page.
func WriteHTML(w io.Writer, d Data) error {
	v := newView(d)
	return page.Execute(w, v)
}

// view is Data prepared for the template.
type view struct {
	Data
	Status    string
	OK        bool
	Note      string
	Origin    string
	Keys      []*Key
	Classes   []*Class
	Manifests []audit.Manifest
	Timeline  *chart
	ByClass   *bars
	Filter    string
	FilterArg string
	TimeRules []string
	Commands  []command
}

type command struct {
	What, Cmd string
}

func newView(d Data) *view {
	r := d.Report
	v := &view{Data: d, OK: r.OK(), Note: string(r.Checkpoint.Note), Origin: r.Origin, Keys: d.Summary.SortedKeys(),
		Classes: d.Summary.SortedClasses(), Manifests: r.Manifests, Filter: r.Filter.String()}
	if v.OK {
		v.Status = "OK: every entry verified, no inconsistencies"
	} else {
		v.Status = fmt.Sprintf("FAILED: %d inconsistencies", r.AnomalyCount())
	}
	v.Timeline = timeline(d.Summary)
	v.ByClass = classBars(v.Classes)
	for _, rule := range d.Rules {
		if rule.Kind == monitor.KindLogStale || rule.Kind == monitor.KindNotWitnessed {
			v.TimeRules = append(v.TimeRules, rule.Name)
		}
	}
	v.FilterArg = filterArgs(r.Filter)
	v.Commands = commands(d, v.FilterArg)
	return v
}

// Count returns the number of entries of type t.
func (v *view) Count(t string) int { return v.Report.Counts[t] }

func filterArgs(f *audit.Filter) string {
	if f == nil {
		return ""
	}
	var a []string
	if f.Key != "" {
		a = append(a, "--key "+shellQuote(f.Key))
	}
	if f.Client != "" {
		a = append(a, "--client "+shellQuote(f.Client))
	}
	if f.Class != "" {
		a = append(a, "--class "+shellQuote(f.Class))
	}
	if !f.Since.IsZero() {
		a = append(a, "--since "+f.Since.UTC().Format(time.RFC3339))
	}
	if !f.Until.IsZero() {
		a = append(a, "--until "+f.Until.UTC().Format(time.RFC3339))
	}
	return strings.Join(a, " ")
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=+@,", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func commands(d Data, filter string) []command {
	base := "kbsctl"
	if d.Addr != "" {
		base += " --addr " + shellQuote(d.Addr)
	}
	nk := ""
	if d.NoteKey != "" {
		nk = " --note-key " + shellQuote(d.NoteKey)
	}
	if filter != "" {
		filter = " " + filter
	}
	size := d.Report.Size
	cs := []command{
		{"Verify every entry again from a fresh state and print this report's numbers as JSON (counts, manifests, releases, findings). A later audit verifies a larger checkpoint; the first " + fmt.Sprint(size) + " entries must give the same numbers.",
			base + " --state \"$(mktemp -d)\" --json audit" + nk + filter + " > audit.json"},
		{"Entries of each type (the summary's counts)", "jq .counts audit.json"},
		{"The verified checkpoint: size and root hash", "jq '{size, root_hash}' audit.json"},
		{"Manifest versions with their hashes, signers and diffs", "jq '.manifests[] | {version, index, hash, signatures_checked, changes}' audit.json"},
		{"Released keys per key id (the per-key tables)", "jq '[.releases[] | .id] | group_by(.) | map({key: .[0], releases: length})' audit.json"},
		{"Released keys per worker class (the per-class tables)", "jq '[.releases[] | .worker_class] | group_by(.) | map({class: .[0], releases: length})' audit.json"},
		{"Every event as a spreadsheet row", base + " --state \"$(mktemp -d)\" audit" + nk + filter + " --csv > audit.csv"},
		{"The latest checkpoint, signature checked (compare the root hash after " + fmt.Sprint(size) + " entries with a consistency check)", base + " log checkpoint" + nk},
		{"The manifest history with the owners' signatures", base + " manifest history"},
		{"A worker's or client's receipt of one release or upload, offline", "kbsctl receipt verify" + nk + " FILE.receipt"},
	}
	if d.Rules != nil {
		cs = append(cs, command{"The monitor rules' alerts", base + " --state \"$(mktemp -d)\" audit" + nk + filter + " --rules RULES --html report.html"})
	}
	return cs
}

// chart is a bar chart of releases over time.
type chart struct {
	Width, Height int
	Bars          []bar
	Unit          string
	Max           uint64
	From, To      string
	Total         uint64
}

type bar struct {
	X, Y, W, H int
	Label      string
	Count      uint64
}

const (
	chartW, chartH = 760, 180
	chartTop       = 20
	maxBars        = 120
)

// timeline buckets the releases per minute, hour, day or week, whichever
// gives at most maxBars bars.
func timeline(s *Summary) *chart {
	if len(s.Hours) == 0 {
		return nil
	}
	counts, unit := s.Hours, int64(3600)
	if first, last := span(s.Minutes); s.Minutes != nil && last-first < maxBars {
		counts, unit = s.Minutes, 60
	}
	first, last := span(counts)
	var step int64
	var name, layout string
	switch n := last - first + 1; {
	case unit == 60:
		step, name, layout = 1, "minute", "2006-01-02 15:04"
	case n <= maxBars:
		step, name, layout = 1, "hour", "2006-01-02 15:00"
	case n <= 24*maxBars:
		step, name, layout = 24, "day", "2006-01-02"
	default:
		step, layout = 24*7, "2006-01-02"
		for n/step > maxBars {
			step *= 2
		}
		name = fmt.Sprintf("%d days", step/24)
	}
	start := first - first%step
	n := int((last-start)/step) + 1
	buckets := make([]uint64, n)
	var total, top uint64
	for t, c := range counts {
		buckets[(t-start)/step] += c
		total += c
	}
	for _, c := range buckets {
		top = max(top, c)
	}
	at := func(i int) string { return time.Unix((start+int64(i)*step)*unit, 0).UTC().Format(layout) }
	ch := &chart{Width: chartW, Height: chartH + chartTop + 30, Unit: name, Max: top, Total: total, From: at(0), To: at(n - 1)}
	bw := min(chartW/n, 40)
	for i, c := range buckets {
		h := int(c * chartH / max(top, 1))
		if c > 0 && h == 0 {
			h = 1
		}
		ch.Bars = append(ch.Bars, bar{X: i * bw, Y: chartTop + chartH - h, W: max(bw-2, 1), H: h, Label: at(i), Count: c})
	}
	return ch
}

// span returns the smallest and largest key of m.
func span(m map[int64]uint64) (lo, hi int64) {
	first := true
	for k := range m {
		if first || k < lo {
			lo = k
		}
		if first || k > hi {
			hi = k
		}
		first = false
	}
	return lo, hi
}

// bars is a horizontal bar chart.
type bars struct {
	Width, Height int
	Rows          []hbar
}

type hbar struct {
	Y, W  int
	Label string
	Count uint64
}

func classBars(cs []*Class) *bars {
	if len(cs) == 0 {
		return nil
	}
	var top uint64
	for _, c := range cs {
		top = max(top, c.Releases)
	}
	b := &bars{Width: chartW, Height: len(cs)*26 + 4}
	for i, c := range cs {
		w := int(c.Releases * 480 / max(top, 1))
		b.Rows = append(b.Rows, hbar{Y: i*26 + 2, W: max(w, 1), Label: c.Name, Count: c.Releases})
	}
	return b
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func platform(p string, sim bool) string {
	if sim {
		return p + " (simulated)"
	}
	return p
}

func shortHex(s string) string {
	if len(s) > 24 {
		return s[:24] + "…"
	}
	return s
}

//go:embed page.html
var pageHTML string

var page = template.Must(template.New("report").Funcs(template.FuncMap{
	"time":     fmtTime,
	"platform": platform,
	"short":    shortHex,
	"add":      func(a, b int) int { return a + b },
	"half":     func(a int) int { return a / 2 },
}).Parse(pageHTML))
