package monitor

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/kbs-dev/kbs/kbs/audit"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// rateSlots is how many slots a release-rate window is counted in: the
// window slides by 1/rateSlots of its length.
const rateSlots = 60

// maxFindingAlerts bounds the inconsistency alerts of one step of the
// replay; the rest are counted in one more alert.
const maxFindingAlerts = 100

// maxHistoryFindings bounds the remembered findings about the manifest
// history (which is checked again on every new version).
const maxHistoryFindings = 1000

// engineState is the rules' state, saved with the replayer's.
type engineState struct {
	// QuietUntil: entries before it raise no rule alerts (the history a
	// monitor started with Config.SkipHistory replays silently).
	QuietUntil uint64 `json:"quiet_until"`
	// Rates holds each release-rate rule's window.
	Rates map[string]*rateState `json:"rates,omitempty"`
	// Fired holds the time rules that fired and have not recovered since.
	Fired map[string]bool `json:"fired,omitempty"`
	// LastSize and LastGrowth: the log's size, and when it was last seen
	// to grow (log-stale).
	LastSize   uint64    `json:"last_size"`
	LastGrowth time.Time `json:"last_growth"`
	// PolicySince is when the monitor first saw the current witness
	// policy in force; LastWitnessed the time of the newest quorum of
	// cosignatures seen (not-witnessed).
	PolicySince   time.Time `json:"policy_since"`
	Policy        string    `json:"policy,omitempty"`
	LastWitnessed time.Time `json:"last_witnessed"`
	// Forked is set while the log contradicts the stored checkpoint: the
	// fork alert is raised once per episode.
	Forked bool `json:"forked,omitempty"`
	// Broken is set while the log's tiles do not verify against its
	// checkpoint: one alert per episode.
	Broken bool `json:"broken,omitempty"`
	// HistoryFindings are digests of the findings about the manifest
	// history already raised.
	HistoryFindings []string `json:"history_findings,omitempty"`
	// Latest is the hash of the log's latest valid manifest version
	// (stale-manifest).
	Latest string `json:"latest,omitempty"`
}

type rateState struct {
	// Head is the number of the newest slot (entry time / slot length).
	Head  int64             `json:"head"`
	Slots [rateSlots]uint64 `json:"slots"`
	Fired bool              `json:"fired,omitempty"`
}

// engine applies the rules to what a Replayer meets (it is the replayer's
// audit.Events) and to the log's checkpoints, and collects the alerts.
type engine struct {
	rules  []Rule
	origin string
	st     *engineState
	now    func() time.Time
	// raise receives each alert (Seq unset).
	raise func(Alert)

	pending      []audit.Release // the keys of the release entry being replayed
	findings     int             // inconsistency alerts in this step
	omitted      int             // and those beyond maxFindingAlerts
	firstOmitted uint64
}

func newEngine(rules []Rule, origin string, st *engineState, now func() time.Time, raise func(Alert)) *engine {
	if st.Rates == nil {
		st.Rates = map[string]*rateState{}
	}
	if st.Fired == nil {
		st.Fired = map[string]bool{}
	}
	return &engine{rules: rules, origin: origin, st: st, now: now, raise: raise}
}

func (e *engine) alert(r *Rule, summary string) Alert {
	return Alert{Severity: r.Severity, Rule: r.Name, Kind: r.Kind, Log: e.origin, Raised: e.now().UTC(), Summary: summary}
}

func entryAt(a *Alert, index uint64, t time.Time) {
	t = t.UTC()
	a.Index, a.EntryTime = &index, &t
}

func (e *engine) quiet(index uint64) bool { return index < e.st.QuietUntil }

// Manifest implements audit.Events.
func (e *engine) Manifest(m audit.Manifest) {
	e.flush()
	if m.Parsed() {
		e.st.Latest = m.Hash
	}
	if e.quiet(m.Index) {
		return
	}
	for i := range e.rules {
		r := &e.rules[i]
		if r.Kind != KindManifest {
			continue
		}
		what := fmt.Sprintf("%d change(s)", len(m.Changes))
		if len(m.Changes) == 0 && m.Version == 1 {
			what = "the first version"
		}
		a := e.alert(r, fmt.Sprintf("manifest version %d (%s) logged at entry %d: %s", m.Version, m.Hash, m.Index, what))
		entryAt(&a, m.Index, m.Time)
		changes := m.Changes
		if changes == nil {
			changes = []manifest.Change{}
		}
		a.Manifest = &ManifestVersion{Version: m.Version, Hash: m.Hash, Previous: m.Previous, Signers: m.Signers, Index: m.Index, Time: m.Time.UTC(), Changes: changes}
		e.raise(a)
	}
}

// Identity implements audit.Events.
func (e *engine) Identity(audit.Identity) { e.flush() }

// Lifecycle implements audit.Events: a handover or recovery that breaks
// the rules is an inconsistency the replay reports as a finding.
func (e *engine) Lifecycle(audit.Lifecycle) { e.flush() }

// KeyEvent implements audit.Events.
func (e *engine) KeyEvent(k audit.KeyEvent) {
	e.flush()
	if k.Event != "delete" || e.quiet(k.Index) {
		return
	}
	for i := range e.rules {
		r := &e.rules[i]
		if r.Kind != KindKeyDelete || !r.matchKey(k.ID) || (r.Client != "" && r.Client != k.Client) {
			continue
		}
		a := e.alert(r, fmt.Sprintf("key %s version %d deleted by client %q at entry %d", k.ID, k.Version, k.Client, k.Index))
		entryAt(&a, k.Index, k.Time)
		kc := k
		kc.Time = kc.Time.UTC()
		a.KeyEvent = &kc
		e.raise(a)
	}
}

// Release implements audit.Events: the keys of one entry are judged
// together, once the entry's last key is in.
func (e *engine) Release(x audit.Release) {
	if len(e.pending) > 0 && e.pending[0].Index != x.Index {
		e.flush()
	}
	x.Time = x.Time.UTC()
	e.pending = append(e.pending, x)
}

// Finding implements audit.Events: every anomaly is an inconsistency
// alert (warnings are not alerts).
func (e *engine) Finding(f audit.Finding) {
	if f.Warning {
		return
	}
	if f.Index < 0 {
		d := sha256.Sum256([]byte(f.Message))
		h := hex.EncodeToString(d[:16])
		if slices.Contains(e.st.HistoryFindings, h) {
			return
		}
		if len(e.st.HistoryFindings) == maxHistoryFindings {
			e.st.HistoryFindings = e.st.HistoryFindings[1:]
		}
		e.st.HistoryFindings = append(e.st.HistoryFindings, h)
	}
	if e.findings == maxFindingAlerts {
		if e.omitted == 0 {
			e.firstOmitted = uint64(max(f.Index, 0))
		}
		e.omitted++
		return
	}
	e.findings++
	a := Alert{Severity: SeverityEmergency, Rule: KindInconsistency, Kind: KindInconsistency, Log: e.origin, Raised: e.now().UTC(),
		Summary: "the log is inconsistent: " + f.String(), Finding: f.String()}
	if f.Index >= 0 {
		i := uint64(f.Index)
		a.Index = &i
	}
	e.raise(a)
}

// endStep flushes the last release entry and the count of inconsistencies
// beyond maxFindingAlerts; called after each ReplayTo and CheckHistory.
func (e *engine) endStep() {
	e.flush()
	if e.omitted > 0 {
		e.raise(Alert{Severity: SeverityEmergency, Rule: KindInconsistency, Kind: KindInconsistency, Log: e.origin, Raised: e.now().UTC(),
			Summary: fmt.Sprintf("the log is inconsistent: %d more inconsistencies from entry %d on, not listed (run 'kbsctl audit')", e.omitted, e.firstOmitted)})
	}
	e.findings, e.omitted = 0, 0
}

// flush judges the pending release entry.
func (e *engine) flush() {
	if len(e.pending) == 0 {
		return
	}
	keys := e.pending
	e.pending = e.pending[:0]
	x0 := keys[0]
	latest := e.st.Latest
	for i := range e.rules {
		r := &e.rules[i]
		var match []audit.Release
		for _, x := range keys {
			if !r.matchKey(x.ID) {
				continue
			}
			switch r.Kind {
			case KindReleaseClass:
				if slices.Contains(r.Classes, x.WorkerClass) {
					continue
				}
			case KindSimulatedRelease:
				if !x.Simulated {
					continue
				}
			case KindStaleManifest:
				if latest == "" || x.ManifestHash == latest {
					continue
				}
			case KindReleaseRate:
				if len(r.Classes) > 0 && r.Classes[0] != x.WorkerClass {
					continue
				}
			default:
				continue
			}
			match = append(match, x)
		}
		if len(match) == 0 {
			continue
		}
		if r.Kind == KindReleaseRate {
			e.countRelease(r, x0, match)
			continue
		}
		if e.quiet(x0.Index) {
			continue
		}
		var summary string
		ids := releasedKeys(match)
		switch r.Kind {
		case KindReleaseClass:
			summary = fmt.Sprintf("%s released to class %q, which is not among %s (entry %d)", ids, x0.WorkerClass, strings.Join(r.Classes, ", "), x0.Index)
		case KindSimulatedRelease:
			summary = fmt.Sprintf("%s released to a worker on a simulated %s TEE, class %q (entry %d)", ids, x0.Platform, x0.WorkerClass, x0.Index)
		case KindStaleManifest:
			summary = fmt.Sprintf("%s released under manifest %s, but the log's latest manifest is version %d (%s) (entry %d)", ids, x0.ManifestHash, x0.ManifestVersion, latest, x0.Index)
		}
		a := e.alert(r, summary)
		entryAt(&a, x0.Index, x0.Time)
		a.Releases = slices.Clone(match)
		e.raise(a)
	}
}

func releasedKeys(xs []audit.Release) string {
	var l []string
	for _, x := range xs {
		l = append(l, fmt.Sprintf("%s v%d", x.ID, x.Version))
	}
	return strings.Join(l, ", ")
}

// countRelease counts one release entry in r's window, by the entry's
// time, and fires when the window holds more than r.Max; it fires again
// only after the count fell back to r.Max or below.
func (e *engine) countRelease(r *Rule, x audit.Release, match []audit.Release) {
	s := e.st.Rates[r.Name]
	if s == nil {
		s = &rateState{}
		e.st.Rates[r.Name] = s
	}
	width := int64(r.Window / rateSlots)
	slot := x.Time.UnixNano() / width
	switch {
	case s.Head == 0 && s.Slots == [rateSlots]uint64{}:
		s.Head = slot
	case slot > s.Head:
		shift := min(slot-s.Head, rateSlots)
		for i := int64(1); i <= shift; i++ {
			s.Slots[(s.Head+i)%rateSlots] = 0
		}
		s.Head = slot
	case slot <= s.Head-rateSlots:
		return // older than the window (entry times need not increase)
	}
	s.Slots[((slot%rateSlots)+rateSlots)%rateSlots]++
	var n uint64
	for _, c := range s.Slots {
		n += c
	}
	if n <= r.Max {
		s.Fired = false
		return
	}
	if s.Fired {
		return
	}
	s.Fired = true
	if e.quiet(x.Index) {
		return
	}
	what := "releases"
	if r.Key != "" {
		what += " of " + r.Key
	}
	if len(r.Classes) > 0 {
		what += " to class " + r.Classes[0]
	}
	a := e.alert(r, fmt.Sprintf("%d %s within %s, more than %d (entry %d)", n, what, formatDuration(r.Window), r.Max, x.Index))
	entryAt(&a, x.Index, x.Time)
	a.Releases = slices.Clone(match)
	a.Rate = &RateCount{Count: n, Max: r.Max, Window: formatDuration(r.Window)}
	e.raise(a)
}

// witnessView is what a poll learned of the latest checkpoint's witnesses.
type witnessView struct {
	// policy is the witness policy in force ("" when it names none).
	policy    string
	threshold int
	names     []string
	cosigned  []string
	// quorumTime is the time by which a quorum had cosigned the
	// checkpoint (zero: no quorum).
	quorumTime time.Time
	err        string
}

// checkTime applies the rules that watch time pass: log-stale (from the
// log's size) and not-witnessed (from w), at the monitor's clock.
func (e *engine) checkTime(cp tlog.SignedCheckpoint, w witnessView) {
	now := e.now()
	if cp.Size > e.st.LastSize || e.st.LastGrowth.IsZero() {
		e.st.LastSize, e.st.LastGrowth = cp.Size, now
		for i := range e.rules {
			if e.rules[i].Kind == KindLogStale {
				delete(e.st.Fired, e.rules[i].Name)
			}
		}
	}
	if w.policy != e.st.Policy {
		e.st.Policy, e.st.PolicySince = w.policy, now
	}
	if !w.quorumTime.IsZero() && w.quorumTime.After(e.st.LastWitnessed) {
		e.st.LastWitnessed = w.quorumTime
	}
	info := &CheckpointInfo{Size: cp.Size, RootHash: base64.StdEncoding.EncodeToString(cp.Hash[:]), Note: string(cp.Note)}
	for i := range e.rules {
		r := &e.rules[i]
		switch r.Kind {
		case KindLogStale:
			if now.Sub(e.st.LastGrowth) <= r.Window || e.st.Fired[r.Name] {
				continue
			}
			e.st.Fired[r.Name] = true
			since := e.st.LastGrowth.UTC()
			a := e.alert(r, fmt.Sprintf("the log has not grown for %s: size %d since %s", now.Sub(since).Round(time.Second), cp.Size, since.Format(time.RFC3339)))
			ci := *info
			ci.Since = &since
			a.Checkpoint = &ci
			e.raise(a)
		case KindNotWitnessed:
			if w.policy == "" {
				delete(e.st.Fired, r.Name)
				continue
			}
			since := e.st.PolicySince
			if e.st.LastWitnessed.After(since) {
				since = e.st.LastWitnessed
			}
			if now.Sub(since) <= r.Window {
				delete(e.st.Fired, r.Name)
				continue
			}
			if e.st.Fired[r.Name] {
				continue
			}
			e.st.Fired[r.Name] = true
			ws := &WitnessState{Threshold: w.threshold, Witnesses: w.names, Cosigned: w.cosigned, Error: w.err}
			if ws.Cosigned == nil {
				ws.Cosigned = []string{}
			}
			what := "no checkpoint of the log has carried"
			if !e.st.LastWitnessed.IsZero() {
				lw := e.st.LastWitnessed.UTC()
				ws.LastWitnessed = &lw
				what = fmt.Sprintf("the last quorum of cosignatures was made at %s; since then no checkpoint has carried", lw.Format(time.RFC3339))
			}
			a := e.alert(r, fmt.Sprintf("not witnessed for %s: %s %d of the witnesses %s (latest checkpoint: size %d, cosigned by %d)",
				now.Sub(since).Round(time.Second), what, w.threshold, strings.Join(w.names, ", "), cp.Size, len(w.cosigned)))
			a.Checkpoint = info
			a.Witnesses = ws
			e.raise(a)
		}
	}
}

// fork raises the fork alert once per episode.
func (e *engine) fork(fe *tlog.ForkError) {
	if e.st.Forked {
		return
	}
	e.st.Forked = true
	kind := "forked"
	if fe.Rollback {
		kind = "rolled back"
	}
	a := Alert{Severity: SeverityEmergency, Rule: KindFork, Kind: KindFork, Log: e.origin, Raised: e.now().UTC(),
		Summary:    fmt.Sprintf("the log %s: verified size %d, now shows size %d: %s", kind, fe.Old.Size, fe.New.Size, fe.Reason),
		Checkpoint: &CheckpointInfo{Size: fe.New.Size, RootHash: base64.StdEncoding.EncodeToString(fe.New.Hash[:]), Note: string(fe.New.Note)},
		Fork:       &ForkEvidence{Rollback: fe.Rollback, Reason: fe.Reason, Verified: string(fe.Old.Note), Conflicting: string(fe.New.Note)}}
	e.raise(a)
}

// broken raises an inconsistency alert once per episode of tiles that do
// not verify against the log's own signed checkpoint.
func (e *engine) broken(cp tlog.SignedCheckpoint, err error) {
	if e.st.Broken {
		return
	}
	e.st.Broken = true
	e.raise(Alert{Severity: SeverityEmergency, Rule: KindInconsistency, Kind: KindInconsistency, Log: e.origin, Raised: e.now().UTC(),
		Summary:    fmt.Sprintf("the log's tiles do not verify against its checkpoint of size %d: %v", cp.Size, err),
		Finding:    err.Error(),
		Checkpoint: &CheckpointInfo{Size: cp.Size, RootHash: base64.StdEncoding.EncodeToString(cp.Hash[:]), Note: string(cp.Note)}})
}

// MaxEvaluatorAlerts bounds the alerts an Evaluator keeps.
const MaxEvaluatorAlerts = 1000

// An Evaluator applies rules to a replay offline, as a monitor would have
// raised them while following the log: give it to audit.Config.Events
// (kbsctl audit --rules). The rules that watch time pass (log-stale,
// not-witnessed) need a running monitor and raise nothing here; anomalies
// raise inconsistency alerts. Alerts are numbered from 1 and stamped with
// now; it keeps the first MaxEvaluatorAlerts and counts the rest.
type Evaluator struct {
	*engine
	alerts  []Alert
	omitted int
}

// NewEvaluator returns an Evaluator of rules over the log origin.
func NewEvaluator(rules []Rule, origin string, now func() time.Time) *Evaluator {
	v := &Evaluator{}
	v.engine = newEngine(rules, origin, &engineState{}, now, func(a Alert) {
		if len(v.alerts) == MaxEvaluatorAlerts {
			v.omitted++
			return
		}
		a.Seq = uint64(len(v.alerts) + 1)
		v.alerts = append(v.alerts, a)
	})
	return v
}

// Alerts returns the alerts raised so far and how many more were not
// kept.
func (v *Evaluator) Alerts() ([]Alert, int) {
	v.endStep()
	return v.alerts, v.omitted
}
