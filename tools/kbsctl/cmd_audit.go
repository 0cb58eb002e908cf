package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/csv"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/audit"
	"github.com/kbs-dev/kbs/kbs/audit/monitor"
	auditreport "github.com/kbs-dev/kbs/kbs/audit/report"
	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/manifest"
)

func cmdAudit(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("audit", "[--manifest FILE] [--note-key KEY] [--csv] [--html FILE [--rules FILE]] [--key P] [--client N] [--class C] [--since T] [--until T] [--max-entries N] [--max-growth N] [--timeout D]",
		`Fetches every tile and entry of the log and verifies them against a fresh
checkpoint, checks that checkpoint's consistency with the stored one, replays
the entries (manifest chain and signers, uploads, deletions, releases under
the active manifest's policy), cross-checks the broker's manifest history and
its signatures, and reports the manifest history and every release. Any
inconsistency exits 1; the checkpoint is stored only when all holds.

--html FILE also writes a self-contained report (manifest timeline with
diffs, per key and per worker class tables, charts, findings, and the
commands that re-verify every number); with --rules, the alerts that
'kbsctl monitor' would raise under those rules. The filters --key, --client,
--class, --since and --until select the key events and releases listed (in
the table, JSON, CSV and report); every entry is verified whatever they say.
Times are RFC 3339 or dates (2026-01-31, midnight UTC); --until excludes its
instant.

--json prints the report with "ok", every count, and the CSV's event names.

An audit that cannot be completed exits 2, not 1: the broker unreachable,
an answer too large or cut short, a redirect, the --timeout passed (default
1h), or a log beyond --max-entries or --max-growth. Nothing is stored then.
Its memory stays bounded whatever the log's length: the events listed go to
a temporary file as they come.`, useBroker|useTimeout)
	mf := fs.String("manifest", "", "your copy of a manifest version the log's chain must contain")
	noteKey := fs.String("note-key", "", "the log's note key (default: learned by 'kbsctl verify')")
	asCSV := fs.Bool("csv", false, "print every event as CSV")
	htmlFile := fs.String("html", "", "also write a self-contained HTML report to this file")
	rulesFile := fs.String("rules", "", "with --html: apply these monitor rules and list their alerts")
	var filter audit.Filter
	fs.StringVar(&filter.Key, "key", "", "list only key events and releases of key ids matching this pattern (a key id, prefix*, or *)")
	fs.StringVar(&filter.Client, "client", "", "list only key events by this client and releases of the key versions it uploaded")
	fs.StringVar(&filter.Class, "class", "", "list only releases to this worker class")
	since := fs.String("since", "", "list only events at or after this time")
	until := fs.String("until", "", "list only events before this time")
	maxEntries := fs.Uint64("max-entries", 0, "refuse (exit 2) a log of more entries, before fetching any (0: no limit)")
	maxGrowth := fs.Uint64("max-growth", 0, "refuse (exit 2) a log that grew by more entries since the stored checkpoint, before fetching any (0: no limit)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *asCSV && e.g.json {
		return usageErr("audit: --csv and --json exclude each other")
	}
	if *rulesFile != "" && *htmlFile == "" {
		return usageErr("audit: --rules needs --html (the report lists the rules' alerts)")
	}
	var err error
	if filter.Since, err = parseTime("--since", *since); err != nil {
		return err
	}
	if filter.Until, err = parseTime("--until", *until); err != nil {
		return err
	}
	if err := filter.Check(); err != nil {
		return usageErr("%v", err)
	}
	var rules []monitor.Rule
	if *rulesFile != "" {
		b, err := os.ReadFile(*rulesFile)
		if err != nil {
			return fmt.Errorf("--rules: %w", err)
		}
		if rules, err = monitor.ParseRules(b); err != nil {
			return usageErr("%s: %v", *rulesFile, err)
		}
		if rules == nil {
			rules = []monitor.Rule{}
		}
	}
	var mine *manifest.Manifest
	if *mf != "" {
		if mine, err = readManifest(*mf); err != nil {
			return err
		}
	}
	c, st, err := e.client(true)
	if err != nil {
		return err
	}
	lv, err := e.logVerifier(c, st, *noteKey)
	if err != nil {
		return err
	}
	timeout := e.g.timeout
	if timeout <= 0 {
		timeout = audit.DefaultTimeout
	}
	cfg := audit.Config{Client: c, Log: lv, Manifest: mine, Timeout: timeout, MaxEntries: *maxEntries, MaxGrowth: *maxGrowth}
	if filter != (audit.Filter{}) {
		cfg.Filter = &filter
	}
	// The events listed go to disk as they come (auditSink): memory stays
	// bounded whatever the log's length.
	mode := sinkTable
	switch {
	case e.g.json:
		mode = sinkJSON
	case *asCSV:
		mode = sinkCSV
	}
	sink, err := newAuditSink(mode)
	if err != nil {
		return err
	}
	defer sink.close()
	cfg.Events = sink
	var sum *auditreport.Summary
	var eval *monitor.Evaluator
	if *htmlFile != "" {
		sum = auditreport.NewSummary()
		cfg.Events = auditreport.Tee(sum, sink)
		if rules != nil {
			eval = monitor.NewEvaluator(rules, lv.Origin(), clock.Now)
			cfg.Events = auditreport.Tee(sum, eval, sink)
		}
	}
	prog := newProgress(e.stderr)
	cfg.Progress = prog.update
	r, err := audit.Audit(ctx, cfg)
	prog.done()
	if err != nil {
		return auditError(err, timeout)
	}
	if *htmlFile != "" {
		d := auditreport.Data{Report: r, Summary: sum, NoteKey: lv.NoteKey(), Addr: e.g.addr, Rules: rules, Generated: clock.Now()}
		if eval != nil {
			d.Alerts, d.AlertsOmitted = eval.Alerts()
		}
		var buf bytes.Buffer
		if err := auditreport.WriteHTML(&buf, d); err != nil {
			return fmt.Errorf("couldn't render the report: %w", err)
		}
		if err := client.WriteFileAtomic(*htmlFile, buf.Bytes(), 0o644); err != nil {
			return fmt.Errorf("couldn't write the report: %w", err)
		}
		fmt.Fprintf(e.stderr, "report written to %s\n", *htmlFile)
	}
	if err := sink.failed(); err != nil {
		return err
	}
	switch mode {
	case sinkJSON:
		err = writeAuditJSON(e, r, sink)
	case sinkCSV:
		err = writeAuditCSV(e.stdout, r, sink)
	default:
		err = writeAuditTable(e.stdout, r, sink)
	}
	if err != nil {
		return err
	}
	if !r.OK() {
		list := strings.Join(r.Anomalies, "\n  ")
		if r.AnomaliesOmitted > 0 {
			list += fmt.Sprintf("\n  ... and %d more (not listed)", r.AnomaliesOmitted)
		}
		return &exitError{code: 1, errCode: "audit_failed", err: fmt.Errorf("audit found %d inconsistencies:\n  %s", r.AnomalyCount(), list)}
	}
	return nil
}

// parseTime parses a filter time: RFC 3339, or a date (midnight UTC).
func parseTime(flag, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UTC(), nil
	}
	if t, err := time.Parse("2006-01-02", s); err == nil {
		return t, nil
	}
	return time.Time{}, usageErr("audit: %s %q: want RFC 3339 (2026-01-31T12:00:00Z) or a date (2026-01-31)", flag, s)
}

func ts(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05Z") }

func writeAuditTable(out io.Writer, r *audit.Report, sink *auditSink) error {
	w := bufio.NewWriter(out)
	defer w.Flush()
	fmt.Fprintf(w, "log %s: %d entries fetched from tiles and verified against the checkpoint (root %s)\n", r.Origin, r.Size, r.RootHash)
	if r.PreviousSize != nil {
		fmt.Fprintf(w, "consistent with the stored checkpoint of size %d\n", *r.PreviousSize)
	} else {
		fmt.Fprintf(w, "no stored checkpoint for this log: trusted on first use\n")
	}
	if x := r.Witnesses; x != nil {
		fmt.Fprintf(w, "witnesses: %s\n", auditWitnesses(x))
	}
	fmt.Fprintf(w, "\nMANIFEST HISTORY\n%-7s %-9s %-20s %-71s %s\n", "VERSION", "LOG INDEX", "TIME", "HASH", "SIGNERS")
	for _, m := range r.Manifests {
		sig := fmt.Sprintf("%d", len(m.Signers))
		if m.Version == 1 && len(m.Signers) == 0 {
			sig = "none (version 1 trusted by the operator's decision)"
		}
		if m.SignaturesChecked {
			sig += " (signatures verified)"
		}
		fmt.Fprintf(w, "%-7d %-9d %-20s %-71s %s\n", m.Version, m.Index, ts(m.Time), m.Hash, sig)
	}
	fmt.Fprintf(w, "\nKEY EVENTS\n%-9s %-20s %-13s %-32s %-7s %s\n", "LOG INDEX", "TIME", "EVENT", "KEY", "VERSION", "CLIENT")
	write := func(rec []byte) error {
		_, err := w.Write(rec)
		return err
	}
	if err := sink.keyEvents.each(write); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nRELEASES (per key)\n%-32s %-7s %-16s %-9s %-22s %-8s %-9s %s\n", "KEY", "VERSION", "WORKER CLASS", "PLATFORM", "MEASUREMENT", "MANIFEST", "LOG INDEX", "TIME")
	if err := sink.sorted.each(write); err != nil {
		return err
	}
	if sink.lifecycle.n > 0 {
		fmt.Fprintf(w, "\nMASTER KEY (handover, recovery)\n%-9s %-20s %-16s %s\n", "LOG INDEX", "TIME", "EVENT", "WHAT")
		if err := sink.lifecycle.each(write); err != nil {
			return err
		}
	}
	var parts []string
	for _, t := range entryTypes {
		parts = append(parts, fmt.Sprintf("%d %s", r.Counts[t], t))
	}
	for _, t := range lifecycleTypes {
		if n := r.Counts[t]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, t))
		}
	}
	fmt.Fprintf(w, "\n%s\n", strings.Join(parts, ", "))
	if len(r.Warnings) > 0 {
		fmt.Fprintf(w, "\nWARNINGS (not inconsistencies)\n")
		for _, s := range r.Warnings {
			fmt.Fprintf(w, "  %s\n", s)
		}
		if r.WarningsOmitted > 0 {
			fmt.Fprintf(w, "  ... and %d more (not listed)\n", r.WarningsOmitted)
		}
	}
	if r.OK() {
		note := ""
		if n := r.WarningCount(); n > 0 {
			note = fmt.Sprintf(" (%d warnings above)", n)
		}
		fmt.Fprintf(w, "audit OK: every entry verified, no inconsistencies%s; checkpoint stored\n", note)
	} else {
		fmt.Fprintf(w, "audit FAILED: %d inconsistencies\n", r.AnomalyCount())
	}
	return w.Flush()
}

// appendKeyEventRow appends k's row of the key events table.
func appendKeyEventRow(b []byte, k *audit.KeyEvent) []byte {
	return fmt.Appendf(b, "%-9d %-20s %-13s %-32s %-7d %s\n", k.Index, ts(k.Time), k.Event, k.ID, k.Version, k.Client)
}

// appendReleaseRow appends x's row of the releases table: what
// fmt.Sprintf("%-32s %-7d %-16s %-9s %-22s v%-7d %-9d %s\n", ...) prints,
// without its cost on logs of millions of releases.
func appendReleaseRow(b []byte, x *audit.Release) []byte {
	pl := x.Platform
	if x.Simulated {
		pl += "(sim)"
	}
	b = appendPadded(b, x.ID, 32)
	b = appendPadded(b, strconv.FormatUint(x.Version, 10), 7)
	b = appendPadded(b, x.WorkerClass, 16)
	b = appendPadded(b, pl, 9)
	b = appendPadded(b, short(x.Measurement), 22)
	b = append(b, 'v')
	b = appendPadded(b, strconv.FormatUint(x.ManifestVersion, 10), 7)
	b = appendPadded(b, strconv.FormatUint(x.Index, 10), 9)
	b = x.Time.UTC().AppendFormat(b, "2006-01-02T15:04:05Z")
	return append(b, '\n')
}

// appendPadded appends s left-aligned in a field of width runes (as fmt's
// %-Ns) and a separating space.
func appendPadded(b []byte, s string, width int) []byte {
	b = append(b, s...)
	for n := utf8.RuneCountInString(s); n < width; n++ {
		b = append(b, ' ')
	}
	return append(b, ' ')
}

// csvHeader is the first row of 'audit --csv'.
var csvHeader = []string{"log_index", "time", "type", "key", "version", "client", "worker_class", "platform", "simulated",
	"measurement", "chip_id", "tcb", "manifest_version", "manifest_hash"}

func u(v uint64) string { return strconv.FormatUint(v, 10) }

func manifestCSV(m *audit.Manifest) []string {
	return []string{u(m.Index), ts(m.Time), "manifest", "", "", "", "", "", "", "", "", "", u(m.Version), m.Hash}
}

func keyEventCSV(k *audit.KeyEvent) []string {
	return []string{u(k.Index), ts(k.Time), "key-" + k.Event, k.ID, u(k.Version), k.Client, "", "", "", "", "", "", "", ""}
}

func lifecycleCSV(l *audit.Lifecycle) []string {
	return []string{u(l.Index), ts(l.Time), l.Type, "", "", "", "", l.Platform, strconv.FormatBool(l.Simulated),
		l.Measurement, "", "", "", l.ManifestHash}
}

// appendLifecycleRow appends l's row of the master key table.
func appendLifecycleRow(b []byte, l *audit.Lifecycle) []byte {
	return fmt.Appendf(b, "%-9d %-20s %-16s %s\n", l.Index, ts(l.Time), l.Type, l.Describe())
}

func releaseCSV(x *audit.Release) []string {
	return []string{u(x.Index), ts(x.Time), "release", x.ID, u(x.Version), "", x.WorkerClass, x.Platform,
		strconv.FormatBool(x.Simulated), x.Measurement, x.ChipID, x.TCB, u(x.ManifestVersion), x.ManifestHash}
}

// writeAuditCSV prints every event in log order: the manifests (in the
// report) merged with the key events, releases and lifecycle entries
// (spooled in log order,
// each record its index and its CSV row).
func writeAuditCSV(out io.Writer, r *audit.Report, sink *auditSink) error {
	w := bufio.NewWriter(out)
	cw := csv.NewWriter(w)
	cw.Write(csvHeader)
	cw.Flush()
	ms := r.Manifests
	err := sink.events.each(func(rec []byte) error {
		idx := binary.BigEndian.Uint64(rec)
		for len(ms) > 0 && ms[0].Index < idx {
			cw.Write(manifestCSV(&ms[0]))
			ms = ms[1:]
		}
		cw.Flush()
		_, err := w.Write(rec[8:])
		return err
	})
	if err != nil {
		return err
	}
	for i := range ms {
		cw.Write(manifestCSV(&ms[i]))
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return err
	}
	return w.Flush()
}
