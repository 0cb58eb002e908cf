// Package audit checks a kbs broker's transparency log on the auditor's
// own machine: every entry, verified against a signed checkpoint
// consistent with the last one the auditor verified, replayed in order to
// check that the log tells a coherent story. kbsctl audit is a thin shell
// over Audit; a Go program audits a broker the same way:
//
//	c, _ := client.New(client.Config{Addr: addr, Checkpoints: client.State{Dir: dir}.Checkpoints(), AllowUnpinned: true})
//	lv, _ := c.LogVerifier(noteKey)
//	r, err := audit.Audit(ctx, audit.Config{Client: c, Log: lv})
//	// err: the audit could not be completed (a fork, a tile that does not
//	// verify, the broker unreachable); r.OK(): the story holds.
//
// # What it trusts and guarantees
//
// Audit trusts the log's note key (Config.Log) and the checkpoint store
// behind it, and nothing the broker says. It fetches the latest
// checkpoint, verifies its signature and its consistency with the stored
// checkpoint (proofs from tiles authenticated against it: a rollback or
// fork is a *tlog.ForkError carrying both notes), fetches every entry
// bundle and hash tile and verifies each entry against the checkpoint's
// root, and replays the entries (see Replayer for every rule). It then
// cross-checks the broker's manifest history, which carries the owner
// signatures the log only names, with manifest.Chain (see
// Replayer.CheckHistory), and, given the caller's own manifest, checks
// that the log holds it. Finally the checkpoint must carry the cosignatures
// of the witness quorum that the manifest active in its tree names (recent
// ones when nothing was stored before: client.MaxCosignatureAge). It
// stores the checkpoint only when nothing was inconsistent and the quorum
// is there.
//
// # Memory and time
//
// An audit is built to end, within bounded memory, against a broker that
// is hostile. The replay keeps state per key id and a row per manifest
// entry, nothing for other entries, each bounded (Limits); entries flow
// from the tile client to the judgement through a pipeline bounded in
// bytes (about 64 MiB at most: tlog.DefaultMaxBuffered, the bundle being
// delivered, and 16 MiB of chunks being decoded). A
// Report keeps every event unless Config.Events takes them: a monitor, or
// a report streamed to disk, then holds the manifest history, counts and
// findings only. Findings are clipped to 1 KiB each and a Report keeps at
// most Config.MaxFindings of each kind, counting the rest. Config.MaxEntries
// and Config.MaxGrowth bound the log an auditor accepts to replay, and
// Config.Timeout the whole audit (default an hour).
//
// # Errors
//
// An audit that could not be completed returns an error of one of two
// kinds. Verification failures: a *tlog.ForkError, or a
// *client.VerifyError (a checkpoint, proof, tile or entry bundle that
// does not verify). Everything else is not about the log's contents:
// failures to fetch (IsTransport: the broker unreachable, a timeout or the
// audit's deadline, an error status, an answer too large), a *LimitError,
// or the checkpoint store failing. kbsctl audit exits 1 for the first
// kind and 2 for the second.
package audit

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/kbs/policy"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// Config configures Audit.
type Config struct {
	// Client reaches the broker: its checkpoint, tiles and manifest
	// history. Required. Everything it fetches is verified here, so it
	// need not be pinned (client.Config.AllowUnpinned).
	Client *client.Client
	// Log verifies the log's checkpoints and keeps the one verified last
	// (Client.LogVerifier with the log's note key). Required.
	Log *tlog.Verifier
	// Manifest is the caller's own copy of a manifest version, which the
	// log's chain must hold. Optional.
	Manifest *manifest.Manifest
	// Progress is called with the entries replayed so far and the total,
	// after each chunk of entries, on one goroutine. Optional.
	Progress func(done, total uint64)
	// Events, when set, receives every event and finding as the replay
	// meets it, in log order, on one goroutine; the Report then keeps no
	// identities, key events or releases (their counts stay), unless
	// KeepEvents is set. Optional.
	Events Events
	// KeepEvents makes the Report keep the events that Events receives
	// too. Optional.
	KeepEvents bool
	// Filter, when set, passes only the events it selects to the Report
	// and to Events; manifests, findings and counts are never filtered,
	// and every entry is verified whatever the filter. Optional.
	Filter *Filter
	// MaxFindings is how many anomalies, and how many warnings, the Report
	// keeps; the rest are only counted. Optional; default 1000.
	MaxFindings int
	// MaxEntries refuses, with a *LimitError before anything is replayed,
	// a checkpoint of more entries. Optional; 0: no limit.
	MaxEntries uint64
	// MaxGrowth refuses, with a *LimitError before anything is replayed,
	// a checkpoint more than MaxGrowth entries larger than the stored one
	// (than 0 when none is stored). Optional; 0: no limit.
	MaxGrowth uint64
	// Limits bound the replay's state (Limits). Optional; zero fields
	// take their defaults.
	Limits Limits
	// Timeout bounds the whole audit, unless ctx ends earlier: an audit
	// that does not complete in time fails with an error that
	// IsTransport reports. Optional; default DefaultTimeout; negative:
	// only ctx bounds it.
	Timeout time.Duration
}

// Defaults of Config.
const (
	DefaultMaxFindings = 1000
	DefaultTimeout     = time.Hour
)

// IsTransport reports whether err, returned by Audit or a Replayer, is a
// failure to get the log's data rather than data that does not verify:
// the broker unreachable, a timeout or canceled context, an error answer
// or one that is too large or cut short (tlog.FetchError,
// client.TransportError, client.NotBrokerError, an *api.Error). Monitors
// retry those.
func IsTransport(err error) bool {
	var (
		fe *tlog.FetchError
		te *client.TransportError
		nb *client.NotBrokerError
		ae *api.Error
		ne net.Error
	)
	return errors.As(err, &fe) || errors.As(err, &te) || errors.As(err, &nb) || errors.As(err, &ae) || errors.As(err, &ne) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// Report is what an audit found. Its JSON form is what 'kbsctl audit
// --json' prints.
type Report struct {
	// Origin, Size and RootHash (base64) name the checkpoint the audit
	// verified; PreviousSize is the stored checkpoint's size (nil: none,
	// the checkpoint was trusted on first use).
	Origin       string  `json:"origin"`
	Size         uint64  `json:"size"`
	RootHash     string  `json:"root_hash"`
	PreviousSize *uint64 `json:"previous_size,omitempty"`
	// Manifests are the log's manifest entries, oldest first.
	Manifests  []Manifest `json:"manifests"`
	Identities []Identity `json:"identities"`
	KeyEvents  []KeyEvent `json:"key_events"`
	Releases   []Release  `json:"releases"`
	// Lifecycle are the handover, recovery-shares and recovery entries.
	LifecycleEvents []Lifecycle `json:"lifecycle"`
	// Anomalies are inconsistencies: any fails the audit. Warnings are
	// events that look odd but tell a consistent story: an upload the log
	// records twice (a retried request).
	Anomalies []string `json:"anomalies"`
	Warnings  []string `json:"warnings"`
	// AnomaliesOmitted and WarningsOmitted count the findings beyond
	// Config.MaxFindings, which are not listed.
	AnomaliesOmitted int `json:"anomalies_omitted,omitempty"`
	WarningsOmitted  int `json:"warnings_omitted,omitempty"`
	// Counts are the entries of each type.
	Counts map[string]int `json:"counts"`
	// Stored reports whether the checkpoint was stored (no anomalies).
	Stored bool `json:"stored"`
	// Witnesses says which witnesses cosigned the checkpoint, under the
	// policy of the manifest active in its tree. Nil when the audit found
	// anomalies (the policy is then not checked).
	Witnesses *WitnessCheck `json:"witnesses,omitempty"`
	// Filter is the filter of the listed events, if any.
	Filter *Filter `json:"filter,omitempty"`
	// Checkpoint is the verified checkpoint.
	Checkpoint tlog.SignedCheckpoint `json:"-"`

	maxFindings int
	events      Events
	keep        bool
}

// WitnessCheck is the witness quorum an audited checkpoint carried.
type WitnessCheck struct {
	// Policy is the active manifest's policy: "none" or "K of N".
	Policy          string `json:"policy"`
	ManifestVersion uint64 `json:"manifest_version"`
	// Cosigned are the witnesses whose valid cosignature it carries, with
	// each cosignature's time.
	Cosigned []Cosignature `json:"cosigned"`
	// FreshnessChecked: the cosignatures had to be recent (no checkpoint
	// of this log was stored before).
	FreshnessChecked bool `json:"freshness_checked"`
}

// Cosignature is one witness's cosignature of the audited checkpoint.
type Cosignature struct {
	Witness string    `json:"witness"`
	Time    time.Time `json:"time"`
}

// OK reports whether the audit found no inconsistency.
func (r *Report) OK() bool { return len(r.Anomalies) == 0 && r.AnomaliesOmitted == 0 }

// AnomalyCount returns the number of anomalies, listed or not.
func (r *Report) AnomalyCount() int { return len(r.Anomalies) + r.AnomaliesOmitted }

// WarningCount returns the number of warnings, listed or not.
func (r *Report) WarningCount() int { return len(r.Warnings) + r.WarningsOmitted }

// collector is the Events of a Report: it keeps events (unless they go to
// Config.Events) and the first findings.
type collector Report

func (c *collector) Manifest(m Manifest) {
	if c.events != nil {
		c.events.Manifest(m)
	}
}

func (c *collector) Identity(id Identity) {
	if c.events != nil {
		c.events.Identity(id)
		if !c.keep {
			return
		}
	}
	c.Identities = append(c.Identities, id)
}

func (c *collector) KeyEvent(k KeyEvent) {
	if c.events != nil {
		c.events.KeyEvent(k)
		if !c.keep {
			return
		}
	}
	c.KeyEvents = append(c.KeyEvents, k)
}

func (c *collector) Release(x Release) {
	if c.events != nil {
		c.events.Release(x)
		if !c.keep {
			return
		}
	}
	c.Releases = append(c.Releases, x)
}

func (c *collector) Lifecycle(l Lifecycle) {
	if c.events != nil {
		c.events.Lifecycle(l)
		if !c.keep {
			return
		}
	}
	c.LifecycleEvents = append(c.LifecycleEvents, l)
}

func (c *collector) Finding(f Finding) {
	if c.events != nil {
		c.events.Finding(f)
	}
	list, omitted := &c.Anomalies, &c.AnomaliesOmitted
	if f.Warning {
		list, omitted = &c.Warnings, &c.WarningsOmitted
	}
	if len(*list) < c.maxFindings {
		*list = append(*list, f.String())
	} else {
		*omitted++
	}
}

// Audit audits the log of the broker cfg.Client reaches (see the package
// documentation for every check). It returns the Report of a completed
// audit, whether or not the story holds (Report.OK), and stores the
// checkpoint only when it does. An error means the audit could not be
// completed: a verification failure (a *tlog.ForkError, the log rolled
// back or forked since the stored checkpoint; a *client.VerifyError, a
// checkpoint or tile that does not verify), or not (IsTransport, a
// *LimitError, the checkpoint store): see the package documentation.
func Audit(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Client == nil || cfg.Log == nil {
		return nil, errors.New("audit: Config.Client and Config.Log are required")
	}
	if cfg.Filter != nil {
		if err := cfg.Filter.Check(); err != nil {
			return nil, err
		}
	}
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	parent := ctx
	ctx, cancel := tlog.WithDefaultTimeout(ctx, timeout)
	defer cancel()
	r, err := audit(ctx, cfg)
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) && parent.Err() == nil {
		return nil, fmt.Errorf("audit: not completed within its deadline (%v): %w", timeout, err)
	}
	return r, err
}

func audit(ctx context.Context, cfg Config) (*Report, error) {
	raw, err := cfg.Client.Checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	cp, err := cfg.Log.VerifyCheckpoint(raw)
	if err != nil {
		return nil, &client.VerifyError{Step: "checkpoint", Err: err}
	}
	if cfg.MaxEntries > 0 && cp.Size > cfg.MaxEntries {
		return nil, &LimitError{What: "entries", Limit: cfg.MaxEntries, Got: cp.Size, Index: -1}
	}
	if cfg.MaxGrowth > 0 {
		var stored uint64
		if last, ok, err := cfg.Log.Latest(); err != nil {
			return nil, err
		} else if ok {
			stored = last.Size
		}
		if cp.Size > stored && cp.Size-stored > cfg.MaxGrowth {
			return nil, &LimitError{What: fmt.Sprintf("entries beyond the stored checkpoint of size %d", stored), Limit: cfg.MaxGrowth, Got: cp.Size - stored, Index: -1}
		}
	}
	tiles := cfg.Client.Tiles()
	// Consistency with the stored checkpoint, from authenticated tiles:
	// checked now, stored only after the replay found nothing wrong. A
	// proof that cannot be built from tiles that arrived is a
	// verification failure; one whose tiles did not arrive is not.
	tileProver := tiles.Prover(cp)
	prover := tlog.ProofFunc(func(ctx context.Context, oldSize, newSize uint64) ([]tlog.Hash, error) {
		p, err := tileProver.ConsistencyProof(ctx, oldSize, newSize)
		if err != nil && !IsTransport(err) {
			return nil, &client.VerifyError{Step: "consistency proof from tiles", Err: err}
		}
		return p, err
	})
	checked, err := cfg.Log.Advance(ctx, raw, prover, tlog.AdvanceOptions{DryRun: true})
	if err != nil {
		return nil, err
	}
	r := &Report{
		Origin: cp.Origin, Size: cp.Size, RootHash: base64.StdEncoding.EncodeToString(cp.Hash[:]), Checkpoint: cp,
		Identities: []Identity{}, KeyEvents: []KeyEvent{}, LifecycleEvents: []Lifecycle{}, Anomalies: []string{}, Warnings: []string{},
		maxFindings: cfg.MaxFindings, events: cfg.Events, keep: cfg.KeepEvents, Filter: cfg.Filter,
	}
	if r.maxFindings <= 0 {
		r.maxFindings = DefaultMaxFindings
	}
	if cfg.Events == nil || cfg.KeepEvents {
		// Most entries of a busy log are releases of one key; a few MB
		// up front save the first rounds of regrowing.
		r.Releases = make([]Release, 0, min(cp.Size, 1<<16))
	} else {
		r.Releases = []Release{}
	}
	if checked.Previous != nil {
		s := checked.Previous.Size
		r.PreviousSize = &s
	}
	var ev Events = (*collector)(r)
	if cfg.Filter != nil {
		ev = cfg.Filter.Events(ev)
	}
	rp := NewReplayer(cfg.Log.NoteKey(), ev)
	rp.SetLimits(cfg.Limits)
	var progress func(uint64)
	if cfg.Progress != nil {
		progress = func(done uint64) { cfg.Progress(done, cp.Size) }
	}
	if err := rp.Replay(ctx, tiles, cp, progress); err != nil {
		var le *LimitError
		if errors.As(err, &le) || IsTransport(err) {
			return nil, fmt.Errorf("audit: log entries: %w", err)
		}
		return nil, &client.VerifyError{Step: "log tiles", Err: err}
	}
	h, err := cfg.Client.ManifestHistory(ctx)
	if err != nil {
		return nil, err
	}
	rp.CheckHistory(h.Manifests)
	if m := cfg.Manifest; m != nil && !rp.Logged(m) {
		rp.finding(-1, false, "your manifest (version %d, %s) is not in the log", m.Version(), m.Hash())
	}
	r.Manifests = append([]Manifest{}, rp.Manifests()...)
	r.Counts = rp.Counts()
	if !r.OK() {
		return r, nil
	}
	// The log's own chain, verified above, says whose cosignatures its
	// head needs.
	am := rp.ActiveManifest()
	if am == nil {
		return nil, &client.VerifyError{Step: "witnesses", Err: errors.New("the log holds no manifest, so no witness policy")}
	}
	q, err := policy.Witnesses(am)
	if err != nil {
		return nil, &client.VerifyError{Step: "witnesses", Err: err}
	}
	cc, fresh, err := cfg.Client.CheckWitnessed(raw, cfg.Log, q)
	if err != nil {
		return nil, err
	}
	r.Witnesses = &WitnessCheck{Policy: am.Witnesses().String(), ManifestVersion: am.Version(), Cosigned: []Cosignature{}, FreshnessChecked: fresh}
	for _, c := range cc.Cosignatures {
		r.Witnesses.Cosigned = append(r.Witnesses.Cosigned, Cosignature{Witness: c.Witness, Time: c.Time.UTC()})
	}
	if _, err := cfg.Log.Advance(ctx, raw, prover, tlog.AdvanceOptions{}); err != nil {
		return nil, err
	}
	r.Stored = true
	return r, nil
}
