package tlog

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// A BehindError reports that witnesses have cosigned a view of the log
// that the log's own latest checkpoint does not extend: a larger tree
// (ErrWitnessAhead) or another tree (ErrWitnessInconsistent). The usual
// cause is a data directory restored from an old copy; the other is a
// second broker with the same log key. A log that gets one must not act
// (release keys, accept uploads or manifest changes) on its own view.
type BehindError struct {
	Origin string
	// Size is the log's own checkpoint size.
	Size uint64
	// Witnesses holds each witness's *WitnessError.
	Witnesses []error
}

func (e *BehindError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "tlog: log %s at size %d is behind or apart from what its witnesses cosigned: ", e.Origin, e.Size)
	for i, w := range e.Witnesses {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(w.Error())
	}
	b.WriteString(". The log's store is not the latest one the witnesses saw (a restored copy of the data directory, or another broker with the same key): restore the latest copy; see docs/witnesses.md")
	return b.String()
}

// A CosignedNote is a checkpoint note carrying a quorum of cosignatures.
type CosignedNote struct {
	Checkpoint SignedCheckpoint
	// Note is the checkpoint's note with the cosignatures.
	Note []byte
	// Cosignatures are the witnesses' cosignatures in Note.
	Cosignatures []Cosignature
}

// WitnessStatus is what a log knows about one of its witnesses.
type WitnessStatus struct {
	Name string
	// CosignedSize and CosignedAt are the size and timestamp of the last
	// cosignature the witness gave; zero if none since start.
	CosignedSize uint64
	CosignedAt   time.Time
	// Err is the witness's failure in the last round, or nil.
	Err error
}

// A CheckpointSource is the part of a Backend a Witnessing reads.
type CheckpointSource interface {
	Checkpoint(ctx context.Context) (SignedCheckpoint, error)
	ConsistencyProof(ctx context.Context, oldSize, newSize uint64) ([]Hash, error)
}

// WitnessingConfig configures a Witnessing.
type WitnessingConfig struct {
	// Group submits checkpoints to the log's witnesses. Required.
	Group *WitnessGroup
	// Log is the log whose checkpoints are cosigned. Required.
	Log CheckpointSource
	// Refresh is how often Run resubmits the latest checkpoint when the log
	// has not grown, so that cosignature timestamps stay fresh and a
	// witness that has seen a larger tree is noticed. Optional; default 1
	// minute.
	Refresh time.Duration
	// Retry is how soon Run tries again after a round without a quorum.
	// Optional; default 5 seconds.
	Retry time.Duration
	// OnRound, if set, is called after each round with its result and
	// error (for logs and metrics). It must not block.
	OnRound func(*CosignResult, error)
}

// A Witnessing keeps a log's checkpoints cosigned by its witnesses: the
// broker's side of witnessing. Check, at start, proves the log is not
// behind what a quorum of witnesses cosigned; Run then submits each new
// checkpoint (after Notify) and resubmits the latest one periodically;
// Cosigned returns the newest checkpoint with a quorum of cosignatures, to
// serve; Halted says whether a witness has shown the log behind, after
// which the broker must not act; Status reports each witness.
//
// Rule: a witness that cannot be reached proves nothing. The log counts
// as checked only when a quorum has cosigned its current checkpoint; a
// single witness that has cosigned a larger or another tree halts it, even
// when the rest of the quorum cosigned.
//
// A Witnessing is safe for concurrent use.
type Witnessing struct {
	cfg    WitnessingConfig
	notify chan struct{}

	mu       sync.Mutex
	cosigned *CosignedNote
	halted   error
	status   map[string]*WitnessStatus
	changed  chan struct{} // closed and replaced when cosigned advances or halted is set
}

// NewWitnessing returns a Witnessing for cfg.
func NewWitnessing(cfg WitnessingConfig) (*Witnessing, error) {
	if cfg.Group == nil || cfg.Log == nil {
		return nil, errors.New("tlog: witnessing needs a witness group and a log")
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = time.Minute
	}
	if cfg.Retry <= 0 {
		cfg.Retry = 5 * time.Second
	}
	w := &Witnessing{cfg: cfg, notify: make(chan struct{}, 1), status: map[string]*WitnessStatus{}, changed: make(chan struct{})}
	for _, wt := range cfg.Group.q.witnesses {
		w.status[wt.Name] = &WitnessStatus{Name: wt.Name}
	}
	return w, nil
}

// Check submits the log's latest checkpoint to every witness once. It
// returns nil when a quorum cosigned it; a *BehindError (and halts the
// Witnessing) when any witness has cosigned a larger or another tree; a
// *QuorumError when too few witnesses answered, which proves nothing
// either way: call it again.
func (w *Witnessing) Check(ctx context.Context) error {
	_, err := w.round(ctx)
	return err
}

// round submits the latest checkpoint and records the outcome.
func (w *Witnessing) round(ctx context.Context) (*CosignResult, error) {
	cp, err := w.cfg.Log.Checkpoint(ctx)
	if err != nil {
		return nil, fmt.Errorf("tlog: couldn't read the log's checkpoint: %w", err)
	}
	res, err := w.cfg.Group.Cosign(ctx, cp, w.cfg.Log.ConsistencyProof)
	err = w.record(cp, res, err)
	if w.cfg.OnRound != nil {
		w.cfg.OnRound(res, err)
	}
	return res, err
}

// record updates the state with a round's result and returns the round's
// error (a *BehindError when a witness showed the log behind).
func (w *Witnessing) record(cp SignedCheckpoint, res *CosignResult, err error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range res.Cosignatures {
		st := w.status[c.Witness]
		st.CosignedSize, st.CosignedAt, st.Err = cp.Size, c.Time, nil
	}
	for name, e := range res.Failures {
		w.status[name].Err = e
	}
	if behind := res.Behind(w.cfg.Group.q); len(behind) > 0 {
		err = &BehindError{Origin: cp.Origin, Size: cp.Size, Witnesses: behind}
		if w.halted == nil {
			w.halted = err
			w.broadcast()
		}
	} else if err == nil && (w.cosigned == nil || cp.Size >= w.cosigned.Checkpoint.Size) {
		w.cosigned = &CosignedNote{Checkpoint: cp, Note: res.Note, Cosignatures: res.Cosignatures}
		w.broadcast()
	}
	return err
}

func (w *Witnessing) broadcast() {
	close(w.changed)
	w.changed = make(chan struct{})
}

// Notify tells Run that the log has a new checkpoint. It never blocks.
func (w *Witnessing) Notify() {
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

// Run submits the log's latest checkpoint after each Notify, every Refresh
// interval, and Retry after a round without a quorum, until ctx is done or
// the Witnessing halts. Notifications that arrive during a round coalesce
// into one more round.
func (w *Witnessing) Run(ctx context.Context) error {
	wait := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.notify:
		case <-time.After(wait):
		}
		_, err := w.round(ctx)
		if h := w.Halted(); h != nil {
			return h
		}
		wait = w.cfg.Refresh
		if err != nil {
			wait = w.cfg.Retry
		}
	}
}

// Cosigned returns the newest checkpoint that a quorum cosigned since
// start, and false if there is none yet.
func (w *Witnessing) Cosigned() (CosignedNote, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cosigned == nil {
		return CosignedNote{}, false
	}
	return *w.cosigned, true
}

// WaitCosigned waits until a checkpoint of at least size has a quorum of
// cosignatures and returns it; it fails when ctx is done or the
// Witnessing halts. Run must be running.
func (w *Witnessing) WaitCosigned(ctx context.Context, size uint64) (CosignedNote, error) {
	for {
		w.mu.Lock()
		c, h, ch := w.cosigned, w.halted, w.changed
		w.mu.Unlock()
		if h != nil {
			return CosignedNote{}, h
		}
		if c != nil && c.Checkpoint.Size >= size {
			return *c, nil
		}
		select {
		case <-ctx.Done():
			return CosignedNote{}, fmt.Errorf("tlog: no quorum of cosignatures for size %d yet: %w", size, ctx.Err())
		case <-ch:
		}
	}
}

// Halted returns the *BehindError that halted the Witnessing, or nil.
// Once halted it stays halted: only an operator can tell a restored copy
// from a split view.
func (w *Witnessing) Halted() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.halted
}

// Status returns what is known about each witness, in the quorum's order.
func (w *Witnessing) Status() []WitnessStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]WitnessStatus, 0, len(w.status))
	for _, wt := range w.cfg.Group.q.witnesses {
		out = append(out, *w.status[wt.Name])
	}
	return out
}
