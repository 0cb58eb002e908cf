package main

import (
	"bytes"
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
// key-upload-repeat).
type auditJSON struct {
	OK bool `json:"ok"`
	*audit.Report
	Manifests  []audit.Manifest  `json:"manifests"`
	Identities []audit.Identity  `json:"identities"`
	KeyEvents  []auditKeyEvent   `json:"key_events"`
	Releases   []audit.Release   `json:"releases"`
	Lifecycle  []audit.Lifecycle `json:"lifecycle"`
	Anomalies  []string          `json:"anomalies"`
	Warnings   []string          `json:"warnings"`
	Counts     map[string]int    `json:"counts"`
}

type auditKeyEvent struct {
	audit.KeyEvent
	Event string `json:"event"`
}

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

func newAuditJSON(r *audit.Report) *auditJSON {
	nonNil := func(s []string) []string {
		if s == nil {
			return []string{}
		}
		return s
	}
	j := &auditJSON{OK: r.OK(), Report: r, Manifests: r.Manifests, Identities: r.Identities, Releases: r.Releases,
		Anomalies: nonNil(r.Anomalies), Warnings: nonNil(r.Warnings), Counts: map[string]int{}, KeyEvents: []auditKeyEvent{}}
	if j.Manifests == nil {
		j.Manifests = []audit.Manifest{}
	}
	if j.Identities == nil {
		j.Identities = []audit.Identity{}
	}
	if j.Releases == nil {
		j.Releases = []audit.Release{}
	}
	if j.Lifecycle = r.LifecycleEvents; j.Lifecycle == nil {
		j.Lifecycle = []audit.Lifecycle{}
	}
	for _, t := range slices.Concat(entryTypes, lifecycleTypes) {
		j.Counts[t] = 0
	}
	for t, n := range r.Counts {
		j.Counts[t] = n
	}
	for _, k := range r.KeyEvents {
		j.KeyEvents = append(j.KeyEvents, auditKeyEvent{KeyEvent: k, Event: "key-" + k.Event})
	}
	return j
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
