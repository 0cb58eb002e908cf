package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/kbs-dev/kbs/kbs/audit"
	"github.com/kbs-dev/kbs/tlog"
)

// The output of 'kbsctl audit' besides its table and CSV: the --json shape
// and the progress bar.

// auditJSON is 'audit --json': the report with "ok", the count of every
// entry type (zero ones too), empty lists as [], and key events named as
// the CSV's type column names them (key-upload, key-delete,
// key-upload-repeat). Identities, key events, releases and lifecycle
// entries come from the sink's spools: writeAuditJSON writes them where the placeholders are.
type auditJSON struct {
	OK bool `json:"ok"`
	*audit.Report
	Manifests  []audit.Manifest `json:"manifests"`
	Identities placeholder      `json:"identities"`
	KeyEvents  placeholder      `json:"key_events"`
	Releases   placeholder      `json:"releases"`
	Lifecycle  placeholder      `json:"lifecycle"`
	Anomalies  []string         `json:"anomalies"`
	Warnings   []string         `json:"warnings"`
	Counts     map[string]int   `json:"counts"`
}

type auditKeyEvent struct {
	audit.KeyEvent
	Event string `json:"event"`
}

// placeholder marshals as a JSON string no log can contain (it holds a
// random token), for writeAuditJSON to replace with a spooled list.
type placeholder string

// auditWitnesses is the one-line form of an audit's witness check.
func auditWitnesses(x *audit.WitnessCheck) string {
	r := &witnessResult{Policy: x.Policy, ManifestVersion: x.ManifestVersion, FreshnessChecked: x.FreshnessChecked}
	for _, c := range x.Cosigned {
		r.Cosigned = append(r.Cosigned, cosignatureResult(c))
	}
	return r.String()
}

// entryTypes are the log's entry types, in the order the table counts them.
var entryTypes = []string{tlog.TypeIdentity, tlog.TypeManifest, tlog.TypeKeyUpload, tlog.TypeKeyDelete, tlog.TypeRelease}

// lifecycleTypes are the master key's entry types: counted in the table
// when the log has any, always in --json.
var lifecycleTypes = []string{tlog.TypeHandover, tlog.TypeRecoveryShares, tlog.TypeRecovery}

// writeAuditJSON prints the report as one JSON document (auditJSON), its
// lists of events streamed from the sink's spools.
func writeAuditJSON(e *env, r *audit.Report, sink *auditSink) error {
	nonNil := func(s []string) []string {
		if s == nil {
			return []string{}
		}
		return s
	}
	var token [16]byte
	rand.Read(token[:])
	mark := func(name string) placeholder {
		return placeholder(fmt.Sprintf("kbsctl-spool-%x-%s", token, name))
	}
	j := &auditJSON{OK: r.OK(), Report: r, Manifests: r.Manifests,
		Identities: mark("identities"), KeyEvents: mark("key_events"), Releases: mark("releases"), Lifecycle: mark("lifecycle"),
		Anomalies: nonNil(r.Anomalies), Warnings: nonNil(r.Warnings), Counts: map[string]int{}}
	if j.Manifests == nil {
		j.Manifests = []audit.Manifest{}
	}
	for _, t := range slices.Concat(entryTypes, lifecycleTypes) {
		j.Counts[t] = 0
	}
	for t, n := range r.Counts {
		j.Counts[t] = n
	}
	var doc bytes.Buffer
	enc := json.NewEncoder(&doc)
	enc.SetIndent("", "  ")
	if err := enc.Encode(j); err != nil {
		return err
	}
	w := bufio.NewWriter(e.stdout)
	e.printedJSON = true
	rest := doc.Bytes()
	for _, l := range []struct {
		mark placeholder
		sp   *spool
	}{{j.Identities, sink.identities}, {j.KeyEvents, sink.keyEvents}, {j.Releases, sink.releases}, {j.Lifecycle, sink.lifecycle}} {
		q := []byte(`"` + string(l.mark) + `"`)
		before, after, ok := bytes.Cut(rest, q)
		if !ok {
			return fmt.Errorf("audit --json: lost the place of a list")
		}
		w.Write(before)
		w.WriteString("[")
		first := true
		if err := l.sp.each(func(rec []byte) error {
			if !first {
				w.WriteString(",")
			}
			first = false
			w.WriteString("\n    ")
			_, err := w.Write(rec)
			return err
		}); err != nil {
			return err
		}
		if !first {
			w.WriteString("\n  ")
		}
		w.WriteString("]")
		rest = after
	}
	w.Write(rest)
	return w.Flush()
}

// sinkMode is the output the sink spools for.
type sinkMode int

const (
	sinkTable sinkMode = iota
	sinkCSV
	sinkJSON
)

// auditSink is the audit.Events of 'kbsctl audit': it writes every event
// the output lists to disk, in the output's own form, as the replay meets
// it (the Report keeps none), so that an audit of any length prints its
// report in bounded memory.
type auditSink struct {
	mode sinkMode
	// table: keyEvents holds rows, sorted the releases' rows by key id.
	// csv: events holds the key events' and releases' rows in log order,
	// each after its index (8 bytes, big-endian).
	// json: identities, keyEvents, releases and lifecycle hold JSON
	// elements. lifecycle holds the table's rows in table mode; in csv
	// mode lifecycle entries go to events.
	identities, keyEvents, releases, lifecycle, events *spool
	sorted                                             sortedSpool
	line                                               []byte
	buf                                                bytes.Buffer
	cw                                                 *csv.Writer
	err                                                error
}

func newAuditSink(mode sinkMode) (*auditSink, error) {
	s := &auditSink{mode: mode}
	for _, sp := range []**spool{&s.identities, &s.keyEvents, &s.releases, &s.lifecycle, &s.events} {
		var err error
		if *sp, err = newSpool(); err != nil {
			s.close()
			return nil, err
		}
	}
	s.cw = csv.NewWriter(&s.buf)
	return s, nil
}

// failed returns the error of a failed event encoding, if any (write
// errors of the spools come back when they are read).
func (s *auditSink) failed() error {
	if s.err != nil {
		return fmt.Errorf("couldn't record the audit's events: %w", s.err)
	}
	return nil
}

func (s *auditSink) close() {
	for _, sp := range []*spool{s.identities, s.keyEvents, s.releases, s.lifecycle, s.events} {
		if sp != nil {
			sp.close()
		}
	}
	s.sorted.close()
}

func (s *auditSink) json(sp *spool, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		s.err = err
		return
	}
	sp.add(b)
}

func (s *auditSink) csvRow(index uint64, row []string) {
	s.buf.Reset()
	var idx [8]byte
	binary.BigEndian.PutUint64(idx[:], index)
	s.buf.Write(idx[:])
	s.cw.Write(row)
	s.cw.Flush()
	s.events.add(s.buf.Bytes())
}

func (s *auditSink) Manifest(audit.Manifest) {} // the Report keeps them
func (s *auditSink) Finding(audit.Finding)   {} // the Report keeps the first ones

func (s *auditSink) Identity(id audit.Identity) {
	if s.mode == sinkJSON {
		s.json(s.identities, id)
	}
}

func (s *auditSink) KeyEvent(k audit.KeyEvent) {
	switch s.mode {
	case sinkJSON:
		s.json(s.keyEvents, auditKeyEvent{KeyEvent: k, Event: "key-" + k.Event})
	case sinkCSV:
		s.csvRow(k.Index, keyEventCSV(&k))
	default:
		s.line = appendKeyEventRow(s.line[:0], &k)
		s.keyEvents.add(s.line)
	}
}

func (s *auditSink) Release(x audit.Release) {
	switch s.mode {
	case sinkJSON:
		s.json(s.releases, x)
	case sinkCSV:
		s.csvRow(x.Index, releaseCSV(&x))
	default:
		s.line = appendReleaseRow(s.line[:0], &x)
		s.sorted.add([]byte(x.ID), s.line)
	}
}

func (s *auditSink) Lifecycle(l audit.Lifecycle) {
	switch s.mode {
	case sinkJSON:
		s.json(s.lifecycle, l)
	case sinkCSV:
		s.csvRow(l.Index, lifecycleCSV(&l))
	default:
		s.line = appendLifecycleRow(s.line[:0], &l)
		s.lifecycle.add(s.line)
	}
}

// auditError maps an audit that could not be completed to kbsctl's exit
// statuses: verification failures exit 1 (as they are), everything else
// (the broker unreachable or too slow, a limit) exits 2, with a hint.
func auditError(err error, timeout time.Duration) error {
	var le *audit.LimitError
	switch {
	case errors.As(err, &le):
		return &exitError{code: 2, errCode: "audit_limit", err: err,
			hint: "the log is larger than this audit accepts (--max-entries, --max-growth, or the replay's limits); nothing was stored. Raise the limit if the growth is expected"}
	case errors.Is(err, context.DeadlineExceeded):
		return &exitError{code: 2, errCode: "timeout", err: err,
			hint: fmt.Sprintf("the audit did not complete within --timeout %v: the broker is slow or the log is long; nothing was stored", timeout)}
	case audit.IsTransport(err):
		return &exitError{code: 2, errCode: errorCode(err, 2), err: err}
	}
	return err
}

// progress prints a progress bar on long logs to w (stderr): from the
// first update of an audit of at least min entries, then at most every
// interval, and a full bar when done.
type progress struct {
	w        io.Writer
	min      uint64
	interval time.Duration
	now      func() time.Time
	total    uint64
	last     time.Time
	shown    bool
}

const progressMin = 20000

func newProgress(w io.Writer) *progress {
	return &progress{w: w, min: progressMin, interval: 250 * time.Millisecond, now: time.Now}
}

// update is an audit.Config.Progress.
func (p *progress) update(n, total uint64) {
	p.total = total
	if total < p.min || total == 0 || (p.shown && p.now().Sub(p.last) < p.interval) {
		return
	}
	p.last = p.now()
	p.shown = true
	p.w.Write(progressBar(n, total, '\r'))
}

func (p *progress) done() {
	if p.shown {
		p.w.Write(progressBar(p.total, p.total, '\n'))
	}
}

// progressBar is "\raudit [####....] n/total entries" followed by end.
func progressBar(n, total uint64, end byte) []byte {
	const width = 40
	filled := int(min(n, total) * width / total)
	var b bytes.Buffer
	b.WriteString("\raudit [")
	b.WriteString(strings.Repeat("#", filled) + strings.Repeat(".", width-filled))
	fmt.Fprintf(&b, "] %d/%d entries", n, total)
	if end != '\r' {
		b.WriteByte(end)
	}
	return b.Bytes()
}
