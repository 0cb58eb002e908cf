package kbs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/policy"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// Witnesses: the broker as a client of the witnesses its active manifest
// names (C2SP tlog-witness; docs/witnesses.md).
//
//   - At start, the broker submits its log's latest checkpoint to the
//     witnesses (tlog.Witnessing.Check) and acts (releases, uploads,
//     deletions, manifest changes) only once a quorum has cosigned it
//     during this run. A witness that cannot be reached proves nothing: the
//     broker serves read-only endpoints and asks again every Retry. A
//     witness that cosigned a larger or another tree (409 with a larger
//     size, 422) proves that this log is not the latest one: the broker
//     stops acting for good (behind) and says why and what to do.
//   - Running, it submits each new checkpoint after an append
//     (Witnessing.Notify; rounds coalesce, so one round covers every append
//     made before it starts) and resubmits the latest one every Refresh, so
//     that cosignatures stay fresh and a witness that has seen more (a
//     second broker with the same key) is noticed.
//   - /log/checkpoint and the attestation serve the newest checkpoint the
//     quorum cosigned (served), one note with the log's signature and the
//     witnesses' cosignatures. The log's newer checkpoints stay internal.
//   - A receipt (release, upload, deletion) carries a checkpoint that
//     contains its entry and that the quorum cosigned: the answer waits up
//     to Wait for it (witnessed). Keys leave only on a witnessed
//     checkpoint. While the last round lacked a quorum, changes and
//     releases are refused before anything is logged (gate).
//   - A manifest version that changes the policy takes effect through the
//     log like any change: the new witnesses must first cosign the log as
//     it is (UpdateManifest refuses the version otherwise), and checkpoints
//     that contain the manifest entry are cosigned by the new quorum. Until
//     it has cosigned one, the last checkpoint of the old policy is served.
//
// Cosignatures are kept in memory only: a restarted broker serves none
// until its witnesses have cosigned again, so a restored copy of the data
// directory can never show old cosignatures.

// WitnessOptions tune how the broker works with the witnesses its active
// manifest names. The zero value is the defaults.
type WitnessOptions struct {
	// HTTPClient sends add-checkpoint requests. Optional; default a client
	// of its own.
	HTTPClient *http.Client
	// Timeout bounds one add-checkpoint request. Optional; default
	// tlog.DefaultWitnessTimeout (10s).
	Timeout time.Duration
	// Refresh is how often the latest checkpoint is resubmitted when the
	// log has not grown. Optional; default 1 minute (clients accept
	// cosignatures up to 10 minutes old from a broker they meet first).
	Refresh time.Duration
	// Retry is how soon a round without a quorum, and the start-up check,
	// are tried again. Optional; default 5s.
	Retry time.Duration
	// Wait bounds how long a release, upload, deletion or manifest change
	// waits, after its entry is logged, for a quorum to cosign a
	// checkpoint containing it. Optional; default 5s.
	Wait time.Duration
}

func (o *WitnessOptions) setDefaults() {
	if o.Timeout <= 0 {
		o.Timeout = tlog.DefaultWitnessTimeout
	}
	if o.Refresh <= 0 {
		o.Refresh = time.Minute
	}
	if o.Retry <= 0 {
		o.Retry = 5 * time.Second
	}
	if o.Wait <= 0 {
		o.Wait = 5 * time.Second
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4, IdleConnTimeout: time.Minute}}
	}
}

// witnesses is the broker's witnessing state.
type witnesses struct {
	b    *Broker
	opts WitnessOptions

	ctx    context.Context // canceled by stop
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu  sync.Mutex
	run *witnessRun
	// prev is the newest checkpoint the previous policy's quorum cosigned
	// that does not contain the manifest entry that changed the policy:
	// served until run has cosigned one.
	prev *tlog.SignedCheckpoint
	// prepared are Witnessings checked by UpdateManifest for a new policy,
	// by manifest hash, for the switch to pick up.
	prepared map[string]*tlog.Witnessing
	// checked: a quorum cosigned the log's checkpoint during this run (or
	// the policy names no witnesses). startErr is the last start-up
	// check's failure.
	checked  bool
	startErr error
	// lastRound is the error of the last round (nil: it had a quorum).
	lastRound error
	// behind is the *tlog.BehindError that stopped the broker for good.
	behind error
	// failures counts failed submissions by witness and kind; lastErr is
	// each witness's last error text, to log changes only.
	failures map[[2]string]uint64
	lastErr  map[string]string
	// waits is the time from a change's append to a witnessed checkpoint
	// containing it (witnessed), and rounds the rounds of the running
	// policy, for /metrics.
	waits  histogram
	rounds uint64
}

// histogram is a Prometheus histogram of durations in seconds.
type histogram struct {
	counts []uint64 // per bucket of waitBuckets, cumulative
	sum    float64
	n      uint64
}

var waitBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

func (h *histogram) add(d time.Duration) {
	if h.counts == nil {
		h.counts = make([]uint64, len(waitBuckets))
	}
	s := d.Seconds()
	for i, ub := range waitBuckets {
		if s <= ub {
			h.counts[i]++
		}
	}
	h.sum += s
	h.n++
}

func (h *histogram) write(out io.Writer, name, help string) {
	fmt.Fprintf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name)
	for i, ub := range waitBuckets {
		var c uint64
		if h.counts != nil {
			c = h.counts[i]
		}
		fmt.Fprintf(out, "%s_bucket{le=\"%g\"} %d\n", name, ub, c)
	}
	fmt.Fprintf(out, "%s_bucket{le=\"+Inf\"} %d\n%s_sum %g\n%s_count %d\n", name, h.n, name, h.sum, name, h.n)
}

// witnessRun is the witnessing of one policy.
type witnessRun struct {
	m    *manifest.Manifest
	q    *tlog.Quorum
	w    *tlog.Witnessing // nil when the policy names no witnesses
	from uint64           // log index of the manifest entry that set the policy
	// ctx is canceled when the run is replaced or the broker stops.
	ctx    context.Context
	cancel context.CancelFunc
}

// startWitnesses starts witnessing under the active manifest's policy.
func startWitnesses(b *Broker) (*witnesses, error) {
	w := &witnesses{b: b, opts: b.cfg.Witnesses, prepared: map[string]*tlog.Witnessing{}, failures: map[[2]string]uint64{}, lastErr: map[string]string{}}
	w.opts.setDefaults()
	w.ctx, w.cancel = context.WithCancel(context.Background())
	am := b.active.Load()
	r, err := w.newRun(am.m, am.rec.LogIndex, nil)
	if err != nil {
		w.cancel()
		return nil, err
	}
	w.run = r
	if r.w == nil {
		w.checked = true
		return w, nil
	}
	b.log.Info("witnesses: checking that the log is not behind what they cosigned before acting", "policy", am.m.Witnesses().String(), "manifest_version", am.rec.Version)
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		w.startCheck(r)
	}()
	return w, nil
}

// newRun returns the witnessing of m's policy (not started). tw, when not
// nil, is a Witnessing of that policy already checked.
func (w *witnesses) newRun(m *manifest.Manifest, from uint64, tw *tlog.Witnessing) (*witnessRun, error) {
	q, err := policy.Witnesses(m)
	if err != nil {
		return nil, fmt.Errorf("kbs: witness policy: %w", err)
	}
	r := &witnessRun{m: m, q: q, from: from}
	r.ctx, r.cancel = context.WithCancel(w.ctx)
	if q.Threshold() == 0 {
		return r, nil
	}
	if tw == nil {
		if tw, err = w.newWitnessing(q); err != nil {
			r.cancel()
			return nil, err
		}
	}
	r.w = tw
	return r, nil
}

// newWitnessing returns a Witnessing of q whose rounds count (onRound)
// while it is the running policy's.
func (w *witnesses) newWitnessing(q *tlog.Quorum) (*tlog.Witnessing, error) {
	g, err := tlog.NewWitnessGroup(q, w.opts.HTTPClient, w.opts.Timeout)
	if err != nil {
		return nil, fmt.Errorf("kbs: witnesses: %w", err)
	}
	var tw *tlog.Witnessing
	tw, err = tlog.NewWitnessing(tlog.WitnessingConfig{Group: g, Log: w.b.cfg.Log, Refresh: w.opts.Refresh, Retry: w.opts.Retry,
		OnRound: func(res *tlog.CosignResult, err error) { w.onRound(tw, res, err) }})
	return tw, err
}

// startCheck repeats the start-up check until a quorum cosigns the log's
// checkpoint or a witness shows the log behind, then runs the witnessing.
func (w *witnesses) startCheck(r *witnessRun) {
	for {
		err := r.w.Check(r.ctx)
		if err == nil {
			w.mu.Lock()
			w.checked, w.startErr = true, nil
			w.mu.Unlock()
			c, _ := r.w.Cosigned()
			w.b.log.Info("witnesses: a quorum cosigned the log's checkpoint; the broker acts", "size", c.Checkpoint.Size, "cosigned_by", cosigners(c.Cosignatures))
			break
		}
		if r.ctx.Err() != nil {
			return
		}
		var be *tlog.BehindError
		if errors.As(err, &be) {
			w.setBehind(be)
			return
		}
		w.mu.Lock()
		first := w.startErr == nil
		w.startErr = err
		w.mu.Unlock()
		if first {
			w.b.log.Warn("witnesses: too few answer to show that the log is not behind what they cosigned; serving read-only endpoints and asking again", "retry", w.opts.Retry, "error", err)
		}
		select {
		case <-r.ctx.Done():
			return
		case <-time.After(w.opts.Retry):
		}
	}
	w.runLoop(r)
}

// runLoop runs r's witnessing until r is replaced, the broker stops, or a
// witness shows the log behind.
func (w *witnesses) runLoop(r *witnessRun) {
	err := r.w.Run(r.ctx)
	var be *tlog.BehindError
	if errors.As(err, &be) {
		w.setBehind(be)
	}
}

// setBehind stops the broker from acting, for good.
func (w *witnesses) setBehind(be *tlog.BehindError) {
	w.mu.Lock()
	if w.behind == nil {
		w.behind = be
	}
	w.mu.Unlock()
	w.b.log.Error("BEHIND ITS WITNESSES: refusing releases, uploads, deletions and manifest changes until restarted",
		"error", be, "what_to_do", behindAdvice)
}

// behindAdvice is what an operator of a broker behind its witnesses can
// do; the kbsd documentation (docs/operating.md) says it at length.
const behindAdvice = "stop kbsd and start it on the latest copy of its data directory (the one it ran on last, not an older backup); " +
	"if this is the latest copy, another kbsd with the same identity appended to this log (a copied data directory running elsewhere): stop it. " +
	"The witnesses keep the checkpoints they cosigned as evidence. Starting over with a new log needs a new data directory and a new identity, which clients see as a new log"

// onRound records a round of tw for the gate, logs and metrics, if tw is
// the running policy's (not one UpdateManifest is checking).
func (w *witnesses) onRound(tw *tlog.Witnessing, res *tlog.CosignResult, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.run == nil || w.run.w != tw {
		return
	}
	w.rounds++
	var qe *tlog.QuorumError
	lost := errors.As(err, &qe) && w.lastRound == nil && w.checked
	regained := err == nil && w.lastRound != nil && w.checked
	w.lastRound = err
	if res == nil {
		return
	}
	for _, c := range res.Cosignatures {
		if w.lastErr[c.Witness] != "" {
			w.b.log.Info("witness cosigns again", "witness", c.Witness)
		}
		delete(w.lastErr, c.Witness)
	}
	for name, e := range res.Failures {
		w.failures[[2]string{name, failureKind(e)}]++
		if msg := e.Error(); w.lastErr[name] != msg {
			w.b.log.Warn("witness did not cosign", "witness", name, "error", msg)
			w.lastErr[name] = msg
		}
	}
	switch {
	case lost:
		w.b.log.Error("witnesses: no quorum: releases, uploads and manifest changes are refused until enough witnesses answer", "error", err)
	case regained:
		w.b.log.Info("witnesses: quorum again")
	}
}

// failureKind names the kind of a witness failure for metrics.
func failureKind(err error) string {
	for _, k := range []struct {
		err  error
		kind string
	}{
		{tlog.ErrWitnessUnavailable, "unavailable"},
		{tlog.ErrWitnessAhead, "ahead"},
		{tlog.ErrWitnessInconsistent, "inconsistent"},
		{tlog.ErrWitnessConflict, "conflict"},
		{tlog.ErrWitnessForbidden, "forbidden"},
		{tlog.ErrWitnessUnknownLog, "unknown_log"},
		{tlog.ErrWitnessProtocol, "protocol"},
	} {
		if errors.Is(err, k.err) {
			return k.kind
		}
	}
	return "other"
}

func cosigners(cs []tlog.Cosignature) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Witness
	}
	return out
}

// stop ends every witnessing goroutine. Safe on nil.
func (w *witnesses) stop() {
	if w == nil {
		return
	}
	w.cancel()
	w.wg.Wait()
}

// notify tells the running witnessing that the log has a new checkpoint.
// Safe on nil.
func (w *witnesses) notify() {
	if w == nil {
		return
	}
	w.mu.Lock()
	r := w.run
	w.mu.Unlock()
	if r.w != nil {
		r.w.Notify()
	}
}

// gate returns the error a release or change gets when the broker may not
// act: it is behind its witnesses, has not shown yet that it is not, or
// the last round lacked a quorum (so its receipt could not be witnessed).
// Safe on nil (before witnessing starts, at first start).
func (w *witnesses) gate() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.behind != nil:
		return &statusError{err: api.Errorf(api.CodeBehindWitnesses, "this broker's log is behind or apart from what its witnesses cosigned (a restored copy of its data directory, or a second broker with its key); it acts on nothing until its operator restarts it on the latest data directory; nothing was done: %v", w.behind), cause: w.behind}
	case !w.checked:
		why := "no witness answered yet"
		if w.startErr != nil {
			why = w.startErr.Error()
		}
		return &statusError{err: api.Errorf(api.CodeWitnessesUnavailable, "the broker has not yet shown that its log is not behind what its witnesses cosigned (%s); nothing was done; retry later", why), cause: w.startErr}
	case w.lastRound != nil:
		var qe *tlog.QuorumError
		if errors.As(w.lastRound, &qe) {
			return &statusError{err: api.Errorf(api.CodeWitnessesUnavailable, "too few witnesses answer to cosign a receipt (%v); nothing was done; retry later", w.lastRound), cause: w.lastRound}
		}
	}
	return nil
}

// served returns the checkpoint the broker serves (/log/checkpoint, the
// attestation): the newest one the policy's quorum cosigned, as one note
// with the cosignatures; with no witnesses, the log's latest. Before any
// quorum has cosigned, the log's own (which clients that require the
// quorum refuse, naming the missing witnesses).
func (w *witnesses) served(ctx context.Context) (tlog.SignedCheckpoint, error) {
	w.mu.Lock()
	r, prev := w.run, w.prev
	w.mu.Unlock()
	if r.w != nil {
		if c, ok := r.w.Cosigned(); ok && c.Checkpoint.Size > r.from {
			cp := c.Checkpoint
			cp.Note = c.Note
			return cp, nil
		}
		if prev != nil {
			return *prev, nil
		}
	}
	return w.b.cfg.Log.Checkpoint(ctx)
}

// witnessed returns a checkpoint of at least size (one containing the
// entry at size-1) that the witness policy in force accepts, waiting up to
// Wait for the quorum to cosign one. cp is the log's checkpoint that the
// entry's append returned (what is served with no witnesses). what names
// the entry for the error.
func (w *witnesses) witnessed(ctx context.Context, size uint64, cp tlog.SignedCheckpoint, what string) (tlog.SignedCheckpoint, error) {
	ctx, cancel := context.WithTimeout(ctx, w.opts.Wait)
	defer cancel()
	start := time.Now()
	for {
		w.mu.Lock()
		r := w.run
		w.mu.Unlock()
		if r.w == nil {
			if cp.Size >= size {
				return cp, nil
			}
			return w.b.cfg.Log.Checkpoint(ctx)
		}
		wctx, wcancel := context.WithCancel(ctx)
		stop := context.AfterFunc(r.ctx, wcancel) // the run is replaced
		c, err := r.w.WaitCosigned(wctx, max(size, r.from+1))
		stop()
		wcancel()
		if err == nil {
			w.mu.Lock()
			w.waits.add(time.Since(start))
			w.mu.Unlock()
			out := c.Checkpoint
			out.Note = c.Note
			return out, nil
		}
		if r.ctx.Err() != nil && w.ctx.Err() == nil && ctx.Err() == nil {
			continue // the policy changed: wait for the new quorum
		}
		var be *tlog.BehindError
		if errors.As(err, &be) {
			return tlog.SignedCheckpoint{}, &statusError{err: api.Errorf(api.CodeBehindWitnesses, "%s, but the broker found that its log is behind what its witnesses cosigned, and answers nothing more: %v", what, be), cause: be}
		}
		w.mu.Lock()
		why := w.lastRound
		w.mu.Unlock()
		reason := "they have not answered yet"
		if why != nil {
			reason = why.Error()
		}
		return tlog.SignedCheckpoint{}, &statusError{err: api.Errorf(api.CodeWitnessesUnavailable, "%s, but no quorum of witnesses cosigned a checkpoint containing it within %s (%s)", what, w.opts.Wait, reason), cause: err}
	}
}

// prepare checks, before next becomes active, that the witnesses of its
// policy cosign the log as it is now, and keeps their Witnessing for the
// switch. It does nothing when next keeps the active policy or names no
// witnesses. A witness of the new policy that cosigned a larger or
// another tree of this log refuses the version too (and is logged).
func (w *witnesses) prepare(ctx context.Context, active, next *manifest.Manifest) error {
	if w == nil || policy.SameWitnesses(active, next) {
		return nil
	}
	q, err := policy.Witnesses(next)
	if err != nil || q.Threshold() == 0 {
		return err
	}
	tw, err := w.newWitnessing(q)
	if err != nil {
		return err
	}
	err = tw.Check(ctx)
	var be *tlog.BehindError
	switch {
	case errors.As(err, &be):
		w.b.log.Error("a witness of the proposed manifest has cosigned a larger or another tree of this log", "version", next.Version(), "error", be)
		return api.Errorf(api.CodeConflict, "manifest version %d: its witnesses include one that has cosigned a larger or another tree of this log than the broker holds (%v); the version is not activated", next.Version(), be)
	case err != nil:
		return api.Errorf(api.CodeConflict, "manifest version %d names witnesses (%s) that do not cosign this log now (%v): configure each for the log %s with the note key %s, then try again; the version is not activated",
			next.Version(), next.Witnesses(), err, w.b.cfg.Identity.Checkpoints.Origin(), w.b.cfg.Identity.NoteKey)
	}
	w.mu.Lock()
	w.prepared[next.Hash()] = tw
	w.mu.Unlock()
	return nil
}

// unprepare drops what prepare kept for next.
func (w *witnesses) unprepare(next *manifest.Manifest) {
	if w == nil {
		return
	}
	w.mu.Lock()
	delete(w.prepared, next.Hash())
	w.mu.Unlock()
}

// policyChanged follows a manifest version that the log just activated at
// index (inside the sequencer, right after its append): if it changes the
// witness policy, the new policy's witnessing replaces the old one, which
// stops; checkpoints containing the entry need the new quorum.
func (w *witnesses) policyChanged(prev, next *manifest.Manifest, index uint64) error {
	if w == nil || prev == nil || policy.SameWitnesses(prev, next) {
		return nil
	}
	w.mu.Lock()
	tw := w.prepared[next.Hash()]
	delete(w.prepared, next.Hash())
	old := w.run
	w.mu.Unlock()
	r, err := w.newRun(next, index, tw)
	if err != nil {
		return err
	}
	// The last checkpoint valid under the old policy: the old quorum's
	// newest, if it does not contain the new manifest entry; with no
	// witnesses before, the log as it was before the entry.
	// With no witnesses before, the log's checkpoint just before the entry
	// is not kept: nothing of the old policy is served, and clients wait
	// for the new quorum (a round trip).
	var prevCP *tlog.SignedCheckpoint
	if old.w != nil {
		if c, ok := old.w.Cosigned(); ok && c.Checkpoint.Size <= index {
			cp := c.Checkpoint
			cp.Note = c.Note
			prevCP = &cp
		}
	}
	w.mu.Lock()
	w.run, w.prev = r, prevCP
	w.lastRound = nil
	w.mu.Unlock()
	old.cancel()
	w.b.log.Info("witness policy changed", "manifest_version", next.Version(), "log_index", index, "from", policyString(prev), "to", policyString(next))
	if r.w != nil {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.runLoop(r)
		}()
		r.w.Notify()
	}
	return nil
}

func policyString(m *manifest.Manifest) string { return m.Witnesses().String() }

// health returns why the broker is not ready, or nil.
func (w *witnesses) health() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.behind != nil:
		return fmt.Errorf("behind its witnesses (restart kbsd on its latest data directory): %v", w.behind)
	case !w.checked:
		return errors.New("waiting for a quorum of witnesses to cosign the log's checkpoint")
	}
	return nil
}

// Witnesses answers GET /v1/witnesses: the broker's account of its
// witnesses.
func (b *Broker) Witnesses(ctx context.Context) (*api.WitnessesStatus, error) {
	w := b.wit
	w.mu.Lock()
	r, checked, behind, startErr, lastRound := w.run, w.checked, w.behind, w.startErr, w.lastRound
	w.mu.Unlock()
	_, version := b.ActiveManifest()
	out := &api.WitnessesStatus{Policy: policyString(r.m), ManifestVersion: version, State: "acting", Witnesses: []api.WitnessStatus{}}
	var qe *tlog.QuorumError
	switch {
	case behind != nil:
		out.State, out.Reason = "behind", behind.Error()+". "+behindAdvice
	case !checked:
		out.State, out.Reason = "checking", "waiting for a quorum of witnesses to cosign the log's checkpoint"
		if startErr != nil {
			out.Reason += ": " + startErr.Error()
		}
	case errors.As(lastRound, &qe):
		out.State, out.Reason = "no_quorum", "the last round lacked a quorum, so releases, uploads and manifest changes are refused until one has it (retried every "+w.opts.Retry.String()+"): "+lastRound.Error()
	}
	cp, err := b.cfg.Log.Checkpoint(ctx)
	if err != nil {
		return nil, logUnavailable(err)
	}
	out.LogSize = cp.Size
	out.WitnessedSize = w.witnessedSize(ctx)
	if r.w != nil {
		urls := map[string]string{}
		for _, x := range r.q.Witnesses() {
			urls[x.Name] = x.URL
		}
		for _, st := range r.w.Status() {
			ws := api.WitnessStatus{Name: st.Name, URL: urls[st.Name], CosignedSize: st.CosignedSize}
			if !st.CosignedAt.IsZero() {
				t := st.CosignedAt.UTC()
				ws.CosignedAt = &t
			}
			if st.Err != nil {
				ws.Error = st.Err.Error()
			}
			out.Witnesses = append(out.Witnesses, ws)
		}
	}
	return out, nil
}

// witnessedSize returns the size of the served checkpoint if the policy in
// force accepts it (it carries the quorum, or no witnesses are required),
// else 0.
func (w *witnesses) witnessedSize(ctx context.Context) uint64 {
	w.mu.Lock()
	r := w.run
	w.mu.Unlock()
	s, err := w.served(ctx)
	if err != nil {
		return 0
	}
	if r.w != nil {
		if _, err := r.q.Verify(s.Note, s.Origin, w.b.cfg.Identity.Checkpoints.Verifier()); err != nil {
			return 0
		}
	}
	return s.Size
}

// writeMetrics writes the witness metrics in the Prometheus text format.
func (w *witnesses) writeMetrics(ctx context.Context, out io.Writer) {
	w.mu.Lock()
	r, checked, behind := w.run, w.checked, w.behind
	failures := make(map[[2]string]uint64, len(w.failures))
	for k, v := range w.failures {
		failures[k] = v
	}
	waits := w.waits
	waits.counts = slices.Clone(waits.counts)
	rounds := w.rounds
	w.mu.Unlock()
	gauge := func(name, help string, v uint64) {
		fmt.Fprintf(out, "# HELP %s %s\n# TYPE %s gauge\n%s %d\n", name, help, name, name, v)
	}
	b2u := func(b bool) uint64 {
		if b {
			return 1
		}
		return 0
	}
	gauge("kbs_witness_threshold", "Cosignatures the active manifest's witness policy requires (0: no witnesses).", uint64(r.q.Threshold()))
	gauge("kbs_witness_checked", "1 once a quorum cosigned the log's checkpoint since start (the broker acts).", b2u(checked))
	gauge("kbs_witness_halted", "1 when a witness cosigned a larger or another tree: the broker acts on nothing until restarted.", b2u(behind != nil))
	gauge("kbs_log_witnessed_size", "Size of the newest checkpoint the witness quorum cosigned (the one served; with no witnesses, the log's).", w.witnessedSize(ctx))
	if r.w == nil {
		return
	}
	fmt.Fprintf(out, "# HELP kbs_witness_rounds_total Checkpoints submitted to the witnesses (one round covers every append made before it starts).\n# TYPE kbs_witness_rounds_total counter\nkbs_witness_rounds_total %d\n", rounds)
	waits.write(out, "kbs_witness_wait_seconds", "Time from a release's, upload's, deletion's or manifest change's append to a checkpoint containing it that the witness quorum cosigned.")
	st := r.w.Status()
	fmt.Fprintln(out, "# HELP kbs_witness_cosigned_size Size of the last checkpoint each witness cosigned since start.")
	fmt.Fprintln(out, "# TYPE kbs_witness_cosigned_size gauge")
	for _, s := range st {
		fmt.Fprintf(out, "kbs_witness_cosigned_size{witness=%q} %d\n", s.Name, s.CosignedSize)
	}
	fmt.Fprintln(out, "# HELP kbs_witness_cosigned_timestamp_seconds Timestamp of each witness's last cosignature (0: none since start).")
	fmt.Fprintln(out, "# TYPE kbs_witness_cosigned_timestamp_seconds gauge")
	for _, s := range st {
		var ts int64
		if !s.CosignedAt.IsZero() {
			ts = s.CosignedAt.Unix()
		}
		fmt.Fprintf(out, "kbs_witness_cosigned_timestamp_seconds{witness=%q} %d\n", s.Name, ts)
	}
	fmt.Fprintln(out, "# HELP kbs_witness_up 1 when the witness cosigned in the last round.")
	fmt.Fprintln(out, "# TYPE kbs_witness_up gauge")
	for _, s := range st {
		fmt.Fprintf(out, "kbs_witness_up{witness=%q} %d\n", s.Name, b2u(s.Err == nil && s.CosignedSize > 0))
	}
	writeCounters(out, "kbs_witness_failures_total", "Submissions a witness did not cosign, by kind (unavailable, ahead, inconsistent, conflict, forbidden, unknown_log, protocol, other).", "witness", "kind", failures)
}

// serveCheckpoint serves GET /log/checkpoint: the served checkpoint (a
// C2SP signed note with the witnesses' cosignatures).
func (b *Broker) serveCheckpoint(w http.ResponseWriter, r *http.Request) {
	cp, err := b.wit.served(r.Context())
	if err != nil {
		b.writeError(w, r, "log_checkpoint", logUnavailable(err))
		return
	}
	b.m.request("log_checkpoint", "ok")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(cp.Note)
}

// manifestAt returns the manifest version active in the tree of size:
// the active one, or, while the served checkpoint does not contain the
// active version's entry yet, the newest version whose entry it contains,
// with its log entry.
func (b *Broker) manifestAt(ctx context.Context, cp tlog.SignedCheckpoint) (*activeManifest, error) {
	am := b.active.Load()
	if am.rec.LogIndex < cp.Size {
		return am, nil
	}
	recs := b.manifests.history()
	for i := len(recs) - 1; i >= 0; i-- {
		if recs[i].LogIndex < cp.Size {
			entry, err := b.verifiedEntry(ctx, cp, recs[i].LogIndex)
			if err != nil {
				return nil, logUnavailable(err)
			}
			return &activeManifest{rec: recs[i], entry: entry}, nil
		}
	}
	return nil, api.Errorf(api.CodeUnavailable, "the served checkpoint (size %d) holds no manifest yet", cp.Size)
}
