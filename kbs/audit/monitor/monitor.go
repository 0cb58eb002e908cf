// Package monitor follows a kbs broker's transparency log continuously, as
// Certificate Transparency and checksum-database monitors follow theirs:
// it verifies every new checkpoint and entry exactly as an audit does
// (kbs/audit), keeps its state durable across restarts, and raises alerts
// for the events a team's rules name, and always for a fork or an
// inconsistency. kbsctl monitor is a thin shell over it; a Go program
// embeds it the same way:
//
//	rules, _ := monitor.ParseRules(file)
//	m, err := monitor.Open(monitor.Config{Client: c, NoteKey: key, State: "monitor.db", Rules: rules, Out: os.Stdout})
//	defer m.Close()
//	err = m.Run(ctx) // until ctx is done
//
// # What it trusts and guarantees
//
// It trusts the log's note key and its own state file, and nothing the
// broker says. Each poll fetches the latest checkpoint, verifies its
// signature and its consistency with the stored checkpoint (proofs from
// authenticated tiles); a rollback or fork raises the "fork" alert with
// both signed checkpoints as evidence, once per episode, and the stored
// checkpoint stays. Then it replays the new entries with an
// audit.Replayer, in steps of Config.Batch entries, each verified against
// the checkpoint; every anomaly the replay finds, and every disagreement
// of the broker's manifest history with the log, raises an
// "inconsistency" alert. Rules (see ParseRules) fire on the entries and
// on the passing of time.
//
// # Durability
//
// Each step commits, in one fsync'd transaction of the state file, the
// checkpoint, the replayer's snapshot, the rules' state and the alerts it
// raised, numbered by Seq. Only committed alerts are delivered. A monitor
// killed at any point resumes from its last commit and raises the same
// alerts for the entries after it: no alert is lost and none is raised
// twice. Delivery is at least once: each sink (Out, the webhook) keeps a
// cursor, the last Seq it delivered, committed after the delivery; an
// alert delivered in the instant before a kill is delivered again, with
// the same Seq and bytes, after the restart. Consumers that must act once
// per alert keep the highest Seq they handled. The webhook is retried with
// exponential back-off, for as long as it takes, in Seq order; its alerts
// stay in the state file until it takes them.
//
// # Memory
//
// The monitor holds the replayer's state (the active manifest, one small
// record per key id, one per manifest version), each rule's fixed-size
// state, and at most one step's alerts; the stored alerts wait on disk. It
// does not grow with the log.
package monitor

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/mod/sumdb/note"

	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/audit"
	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/kbs/policy"
	"github.com/kbs-dev/kbs/tlog"
)

// Config configures a Monitor.
type Config struct {
	// Client reaches the broker: its checkpoint, tiles and manifest
	// history. Required. Everything it fetches is verified, so it need
	// not be pinned (client.Config.AllowUnpinned).
	Client *client.Client
	// NoteKey is the log's note verifier key. Required.
	NoteKey string
	// State is the path of the monitor's state file (a bbolt database,
	// created if missing). Required. One monitor process at a time may
	// use it.
	State string
	// Rules are the alert rules (ParseRules). Optional: without rules the
	// monitor still verifies the log and raises fork and inconsistency
	// alerts.
	Rules []Rule
	// Out receives every alert as one JSON line. Optional.
	Out io.Writer
	// Webhook is a URL that receives every alert as a POST with the
	// alert's JSON as the body. Optional.
	Webhook string
	// WebhookClient sends the webhook's requests. Optional; default a
	// client with a 10 s timeout.
	WebhookClient *http.Client
	// RetryMin and RetryMax bound the webhook's back-off. Optional;
	// defaults 1 s and 5 min.
	RetryMin, RetryMax time.Duration
	// Interval is the time between polls of Run. Optional; default 30 s.
	Interval time.Duration
	// PollTimeout bounds each poll (Poll, and every poll of Run): a broker
	// that answers slowly or endlessly stalls one poll, never the monitor.
	// What a poll replayed before its deadline is committed; the next
	// poll goes on from there. Optional; default 10 min.
	PollTimeout time.Duration
	// Limits bound the replay's state (audit.Limits). Optional; zero
	// fields take their defaults.
	Limits audit.Limits
	// SkipHistory makes the first poll of a new state file replay the log
	// up to its current checkpoint without raising rule alerts (forks and
	// inconsistencies are still raised): for a monitor started on a log
	// with a long past. Optional.
	SkipHistory bool
	// Batch is how many entries one step replays and commits. Optional;
	// default 16384.
	Batch int
	// Now is the monitor's clock (log-stale, not-witnessed, alert times).
	// Optional; default clock.Now.
	Now func() time.Time
	// Logger receives what the monitor does and every error of a poll or
	// a delivery. Optional; default hclog.NewNullLogger.
	Logger hclog.Logger
}

// A Monitor follows one log. Poll and Run may not be called concurrently.
type Monitor struct {
	cfg    Config
	origin string
	logV   note.Verifier
	lv     *tlog.Verifier
	store  *store
	rp     *audit.Replayer
	eng    *engine
	log    hclog.Logger

	seq     uint64  // the last committed alert
	pending []Alert // raised in the current step
	sinks   []string
	broken  error // a failed commit: memory and disk disagree

	outMu     sync.Mutex // Out's delivery
	outCursor uint64
	wake      chan struct{} // the webhook has new alerts
}

// Status is what a poll found.
type Status struct {
	// Size is the verified checkpoint's size; Replayed how many entries
	// the monitor has judged.
	Size, Replayed uint64
	// Raised counts the alerts raised by this poll.
	Raised int
}

const (
	sinkOut            = "out"
	webhookPrefix      = "webhook "
	defaultBatch       = 16384
	defaultInterval    = 30 * time.Second
	defaultPollTimeout = 10 * time.Minute
)

// Open opens (or creates) the monitor's state and restores where it
// stopped.
func Open(cfg Config) (*Monitor, error) {
	if cfg.Client == nil || cfg.NoteKey == "" || cfg.State == "" {
		return nil, errors.New("monitor: Config.Client, NoteKey and State are required")
	}
	logV, err := note.NewVerifier(cfg.NoteKey)
	if err != nil {
		return nil, fmt.Errorf("monitor: bad note key: %w", err)
	}
	if !strings.HasPrefix(logV.Name(), tlog.OriginPrefix) {
		return nil, fmt.Errorf("monitor: note key name %q is not a kbs log origin (%s...)", logV.Name(), tlog.OriginPrefix)
	}
	if cfg.Now == nil {
		cfg.Now = clock.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Batch <= 0 {
		cfg.Batch = defaultBatch
	}
	if cfg.Interval <= 0 {
		cfg.Interval = defaultInterval
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = time.Second
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(5*time.Minute, cfg.RetryMin)
	}
	if cfg.WebhookClient == nil {
		cfg.WebhookClient = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Webhook != "" {
		if err := checkWebhook(cfg.Webhook); err != nil {
			return nil, err
		}
	}
	st, err := openStore(cfg.State, cfg.NoteKey)
	if err != nil {
		return nil, err
	}
	m := &Monitor{cfg: cfg, origin: logV.Name(), logV: logV, store: st, log: cfg.Logger, wake: make(chan struct{}, 1)}
	if err := m.restore(); err != nil {
		st.close()
		return nil, err
	}
	return m, nil
}

func checkWebhook(u string) error {
	if err := tlog.CheckWitnessURL(u); err != nil {
		return fmt.Errorf("monitor: webhook: %w", err)
	}
	return nil
}

func (m *Monitor) restore() error {
	s, err := m.store.load()
	if err != nil {
		return err
	}
	mem := &tlog.MemStore{}
	if s.checkpoint != nil {
		mem.Update(m.origin, func([]byte) ([]byte, error) { return s.checkpoint, nil })
	}
	if m.lv, err = tlog.NewVerifier(m.origin, m.cfg.NoteKey, mem); err != nil {
		return err
	}
	if s.checkpoint != nil {
		if _, err := m.lv.VerifyCheckpoint(s.checkpoint); err != nil {
			return fmt.Errorf("monitor: the stored checkpoint: %w", err)
		}
	}
	m.seq = s.seq
	eng := s.engine
	m.eng = newEngine(m.cfg.Rules, m.origin, &eng, m.cfg.Now, m.raise)
	m.rp = audit.NewReplayer(m.cfg.NoteKey, m.eng)
	m.rp.SetLimits(m.cfg.Limits)
	if s.replayer != nil {
		if err := m.rp.Restore(s.replayer); err != nil {
			return err
		}
	}
	if m.cfg.Out != nil {
		m.sinks = append(m.sinks, sinkOut)
		if m.outCursor, err = m.store.cursor(sinkOut, m.seq); err != nil {
			return err
		}
	}
	if m.cfg.Webhook != "" {
		m.sinks = append(m.sinks, webhookPrefix+m.cfg.Webhook)
		if _, err := m.store.cursor(webhookPrefix+m.cfg.Webhook, m.seq); err != nil {
			return err
		}
	}
	return nil
}

// Close closes the state file.
func (m *Monitor) Close() error { return m.store.close() }

// Origin returns the log's origin.
func (m *Monitor) Origin() string { return m.origin }

func (m *Monitor) raise(a Alert) {
	a.Seq = m.seq + uint64(len(m.pending)) + 1
	m.pending = append(m.pending, a)
}

// commit stores a step with the alerts raised since the last one. A
// failed commit leaves memory ahead of the state file: the monitor stops
// (Poll returns the error from then on) and must be opened again.
func (m *Monitor) commit(checkpoint []byte, replayer bool) error {
	c := step{checkpoint: checkpoint, engine: m.eng.st, alerts: m.pending}
	if replayer {
		b, err := m.rp.Snapshot()
		if err != nil {
			m.broken = err
			return err
		}
		c.replayer = b
	}
	if err := m.store.commit(c); err != nil {
		m.broken = fmt.Errorf("monitor: couldn't commit to the state file (open the monitor again): %w", err)
		return m.broken
	}
	if n := len(m.pending); n > 0 {
		m.seq = m.pending[n-1].Seq
		m.pending = m.pending[:0]
		select {
		case m.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// Poll follows the log once: it verifies the latest checkpoint, replays
// the new entries, applies the time rules, commits, and writes the new
// alerts to Out. Errors that a later poll may not meet (the broker
// unreachable) are returned after whatever was done is committed; a
// *tlog.ForkError is returned after the fork alert is.
func (m *Monitor) Poll(ctx context.Context) (Status, error) {
	if m.broken != nil {
		return Status{}, m.broken
	}
	before := m.seq
	timeout := m.cfg.PollTimeout
	if timeout <= 0 {
		timeout = defaultPollTimeout
	}
	pctx, cancel := tlog.WithDefaultTimeout(ctx, timeout)
	st, err := m.poll(pctx)
	cancel()
	if err != nil && pctx.Err() != nil && ctx.Err() == nil {
		err = fmt.Errorf("monitor: the poll did not complete within %v (it goes on from entry %d): %w", timeout, m.rp.Next(), err)
	}
	if m.broken == nil {
		if derr := m.deliverOut(); derr != nil && err == nil {
			err = derr
		}
	}
	st.Raised = int(m.seq - before)
	st.Replayed = m.rp.Next()
	return st, err
}

func (m *Monitor) poll(ctx context.Context) (Status, error) {
	c := m.cfg.Client
	raw, err := c.Checkpoint(ctx)
	if err != nil {
		return Status{}, err
	}
	cp, err := m.lv.VerifyCheckpoint(raw)
	if err != nil {
		return Status{}, &client.VerifyError{Step: "checkpoint", Err: err}
	}
	tiles := c.Tiles()
	_, hadCheckpoint, _ := m.lv.Latest()
	adv, err := m.lv.Advance(ctx, raw, tiles.Prover(cp), tlog.AdvanceOptions{})
	var fe *tlog.ForkError
	if errors.As(err, &fe) {
		m.eng.fork(fe)
		if cerr := m.commit(nil, false); cerr != nil {
			return Status{}, cerr
		}
		return Status{Size: fe.Old.Size}, err
	}
	if err != nil {
		return Status{}, err
	}
	m.eng.st.Forked = false
	if !hadCheckpoint && m.cfg.SkipHistory && m.rp.Next() == 0 {
		m.eng.st.QuietUntil = cp.Size
	}
	// The checkpoint is consistent with everything verified before:
	// stored now, with the rules' state; the entries follow in steps.
	var newCP []byte
	if adv.Stored {
		newCP = cp.Note
	}
	if err := m.commit(newCP, false); err != nil {
		return Status{}, err
	}
	manifests := len(m.rp.Manifests())
	outOK := true
	for m.rp.Next() < cp.Size {
		if err := m.step(ctx, tiles, cp); err != nil {
			return Status{Size: cp.Size}, err
		}
		// Out gets the alerts of a long catch-up as they come; if it
		// fails, they wait in the state and Poll reports it at the end.
		outOK = outOK && m.deliverOut() == nil
	}
	m.eng.st.Broken = false
	if len(m.rp.Manifests()) != manifests {
		h, err := c.ManifestHistory(ctx)
		if err != nil {
			return Status{Size: cp.Size}, err
		}
		m.rp.CheckHistory(h.Manifests)
		m.eng.endStep()
	}
	m.eng.checkTime(cp, m.witnesses(raw))
	if err := m.commit(nil, true); err != nil {
		return Status{}, err
	}
	return Status{Size: cp.Size}, nil
}

// step replays and commits the next Config.Batch entries at most.
func (m *Monitor) step(ctx context.Context, tiles *tlog.TileClient, cp tlog.SignedCheckpoint) error {
	end := min(m.rp.Next()+uint64(m.cfg.Batch), cp.Size)
	rerr := m.rp.ReplayTo(ctx, tiles, cp, end, nil)
	m.eng.endStep()
	var le *audit.LimitError
	if rerr != nil && ctx.Err() == nil && !audit.IsTransport(rerr) && !errors.As(rerr, &le) {
		m.eng.broken(cp, rerr)
	}
	if err := m.commit(nil, true); err != nil {
		return err
	}
	if rerr != nil && (audit.IsTransport(rerr) || errors.As(rerr, &le)) {
		return rerr
	}
	if rerr != nil {
		return &client.VerifyError{Step: "log tiles", Err: rerr}
	}
	return nil
}

// witnesses judges the checkpoint's cosignatures against the witness
// policy of the log's active manifest.
func (m *Monitor) witnesses(raw []byte) witnessView {
	am := m.rp.ActiveManifest()
	if am == nil {
		return witnessView{}
	}
	p := am.Witnesses()
	if p == nil || p.None || len(p.List) == 0 {
		return witnessView{}
	}
	w := witnessView{policy: p.String(), threshold: p.Threshold}
	for _, x := range p.List {
		w.names = append(w.names, x.Name)
	}
	q, err := policy.Witnesses(am)
	if err != nil {
		w.err = err.Error()
		return w
	}
	cc, err := q.Verify(raw, m.origin, m.logV)
	var qe *tlog.QuorumError
	switch {
	case errors.As(err, &qe):
		w.cosigned = qe.Cosigned
		w.err = err.Error()
		return w
	case err != nil:
		w.err = err.Error()
		return w
	}
	// The time by which a quorum had cosigned: the threshold-th newest
	// cosignature, never later than our clock.
	var times []time.Time
	for _, c := range cc.Cosignatures {
		w.cosigned = append(w.cosigned, c.Witness)
		times = append(times, c.Time)
	}
	sortTimesDesc(times)
	w.quorumTime = times[p.Threshold-1]
	if now := m.cfg.Now(); w.quorumTime.After(now) {
		w.quorumTime = now
	}
	return w
}

func sortTimesDesc(ts []time.Time) {
	for i := 1; i < len(ts); i++ {
		for j := i; j > 0 && ts[j].After(ts[j-1]); j-- {
			ts[j], ts[j-1] = ts[j-1], ts[j]
		}
	}
}

// deliverOut writes the committed alerts that Out has not had, and
// commits its cursor.
func (m *Monitor) deliverOut() error {
	if m.cfg.Out == nil {
		return nil
	}
	m.outMu.Lock()
	defer m.outMu.Unlock()
	for m.outCursor < m.seq {
		batch, last, err := m.store.alertsAfter(m.outCursor, 256)
		if err != nil {
			return err
		}
		if len(batch) == 0 {
			// Pruned meanwhile (another sink's run): skip to what is kept.
			m.outCursor = m.seq
			break
		}
		var buf []byte
		for _, b := range batch {
			buf = append(append(buf, b...), '\n')
		}
		if _, err := m.cfg.Out.Write(buf); err != nil {
			return fmt.Errorf("monitor: couldn't write alerts: %w", err)
		}
		if err := m.store.delivered(sinkOut, last, m.sinks); err != nil {
			return err
		}
		m.outCursor = last
	}
	return nil
}

// Run polls every Config.Interval, and delivers to the webhook, until ctx
// is done; it returns ctx's error, or the error that stopped the monitor
// (a failed commit). Errors of a poll (the broker unreachable, a fork)
// are logged and the next poll goes on.
func (m *Monitor) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	if m.cfg.Webhook != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.runWebhook(ctx)
		}()
	}
	defer wg.Wait()
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	for {
		st, err := m.Poll(ctx)
		switch {
		case m.broken != nil:
			return m.broken
		case err != nil && ctx.Err() == nil:
			m.log.Error("poll failed", "error", err)
		case err == nil:
			m.log.Debug("polled", "size", st.Size, "alerts", st.Raised)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// FlushWebhook delivers the webhook's pending alerts, retrying with
// back-off, until none are left or ctx is done.
func (m *Monitor) FlushWebhook(ctx context.Context) error {
	if m.cfg.Webhook == "" {
		return nil
	}
	for {
		cur, err := m.store.cursor(webhookPrefix+m.cfg.Webhook, m.seq)
		if err != nil {
			return err
		}
		if cur >= m.seq {
			return nil
		}
		if err := m.deliverWebhook(ctx); err != nil {
			return err
		}
	}
}

func (m *Monitor) runWebhook(ctx context.Context) {
	for {
		if err := m.deliverWebhook(ctx); err != nil && ctx.Err() == nil {
			m.log.Error("webhook delivery stopped", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-m.wake:
		}
	}
}

// deliverWebhook POSTs every stored alert after the webhook's cursor, in
// order, each retried with back-off until the webhook answers 2xx.
func (m *Monitor) deliverWebhook(ctx context.Context) error {
	sink := webhookPrefix + m.cfg.Webhook
	cur, err := m.store.cursor(sink, 0)
	if err != nil {
		return err
	}
	for {
		batch, _, err := m.store.alertsAfter(cur, 64)
		if err != nil || len(batch) == 0 {
			return err
		}
		for _, b := range batch {
			var a struct {
				Seq uint64 `json:"seq"`
			}
			if err := json.Unmarshal(b, &a); err != nil {
				return fmt.Errorf("monitor: stored alert after %d: %w", cur, err)
			}
			for attempt := 0; ; attempt++ {
				err := m.post(ctx, a.Seq, b)
				if err == nil {
					break
				}
				if ctx.Err() != nil {
					return ctx.Err()
				}
				d := backoff(m.cfg.RetryMin, m.cfg.RetryMax, attempt)
				m.log.Warn("webhook failed; retrying", "seq", a.Seq, "attempt", attempt+1, "retry_in", d, "error", err)
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(d):
				}
			}
			if err := m.store.delivered(sink, a.Seq, m.sinks); err != nil {
				return err
			}
			cur = a.Seq
		}
	}
}

// backoff is the wait before retry attempt+1: RetryMin doubled per
// attempt up to RetryMax, less up to a quarter at random (so that many
// monitors do not retry in step).
func backoff(lo, hi time.Duration, attempt int) time.Duration {
	d := hi
	if attempt < 32 {
		d = min(hi, lo<<attempt)
	}
	if q := int64(d / 4); q > 0 {
		n, _ := rand.Int(rand.Reader, big.NewInt(q))
		d -= time.Duration(n.Int64())
	}
	return d
}

// post sends one alert to the webhook.
func (m *Monitor) post(ctx context.Context, seq uint64, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, m.cfg.Webhook, strings.NewReader(string(body)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Kbs-Alert-Seq", fmt.Sprint(seq))
	req.Header.Set("Kbs-Log", m.origin)
	resp, err := m.cfg.WebhookClient.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return nil
}
