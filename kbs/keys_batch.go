package kbs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/keystore"
	"github.com/kbs-dev/kbs/tlog"
)

// Uploads share durable writes.
//
// An upload is decided and logged as one step against the state, like
// every change (sequencer.go), and that step costs three durable writes:
// staging the key, appending its entry, committing the key. Uploads that
// arrive while one is in that step wait for it, then take the next step
// together, as a batch: inside one exclusive section each is decided
// against the state (its client authorized by the active manifest, its
// version the next one), the accepted keys are staged in one key store
// transaction, their entries are appended concurrently so that the log's
// group commit takes them together, each entry is applied to the state in
// log order, and the keys whose entries applied are committed in one
// transaction. So a batch costs three durable writes whatever its size,
// and the rules of a single change hold for each upload in it: a key is
// never released without its upload in the log; an upload whose append
// failed is unstaged and answered with the failure; one whose append has
// an unknown outcome halts the broker (the next start settles it); one
// that a foreign entry made stale is logged without effect, unstaged and
// answered with a conflict; nothing is answered before its entry is
// durable. Two uploads of one key id never share a batch: the later one
// waits for the next.

// maxUploadBatch bounds the uploads decided in one exclusive section, so
// that releases waiting for it are not held back for long.
const maxUploadBatch = 256

// uploadQueue holds the uploads waiting for a batch. The upload that
// holds leader runs the next batch, for itself and every upload queued.
type uploadQueue struct {
	leader sync.Mutex
	mu     sync.Mutex
	jobs   []*uploadJob
}

// uploadJob is one upload, checked outside the sequencer (signature,
// sealed key), waiting to be decided and logged.
type uploadJob struct {
	req      *api.KeyUpload
	stmt     []byte
	seen     *activeManifest
	material []byte
	done     chan uploadDone // buffered: finish never blocks
}

type uploadDone struct {
	l   logged
	err error
}

func (j *uploadJob) finish(l logged, err error) { j.done <- uploadDone{l: l, err: err} }

// uploadBatched decides, stages, logs and commits j, in a batch with the
// uploads that wait at the same time. The batch runs on behalf of all of
// them, so a caller that goes away does not cancel the others' appends.
func (b *Broker) uploadBatched(ctx context.Context, j *uploadJob) (logged, error) {
	j.done = make(chan uploadDone, 1)
	q := &b.uploads
	q.mu.Lock()
	q.jobs = append(q.jobs, j)
	q.mu.Unlock()
	bctx := context.WithoutCancel(ctx)
	for {
		q.leader.Lock()
		select {
		case d := <-j.done:
			q.leader.Unlock()
			return d.l, d.err
		default:
		}
		q.mu.Lock()
		batch, later := splitUploads(q.jobs)
		q.jobs = later
		q.mu.Unlock()
		b.runUploads(bctx, batch)
		q.leader.Unlock()
		select {
		case d := <-j.done:
			return d.l, d.err
		default:
			// Not in this batch (another upload of its key id was, or the
			// batch was full): the next one.
		}
	}
}

// splitUploads takes the next batch from the queued jobs, in order: at
// most maxUploadBatch, one per key id. The others stay queued, in order.
func splitUploads(jobs []*uploadJob) (batch, later []*uploadJob) {
	ids := map[string]bool{}
	for _, j := range jobs {
		if ids[j.req.ID] || len(batch) == maxUploadBatch {
			later = append(later, j)
			continue
		}
		ids[j.req.ID] = true
		batch = append(batch, j)
	}
	return batch, later
}

// runUploads runs one batch and answers every job in it.
func (b *Broker) runUploads(ctx context.Context, batch []*uploadJob) {
	if len(batch) == 0 {
		return
	}
	ran := false
	err := b.exclusive(ctx, func(tx *changeTx) error {
		ran = true
		b.uploadBatch(tx, batch)
		return nil
	})
	if !ran {
		for _, j := range batch {
			j.finish(logged{}, err)
		}
	}
}

// batchEntry is a staged upload's entry and the outcome of its append.
type batchEntry struct {
	j     *uploadJob
	e     *tlog.Entry
	raw   []byte
	index uint64
	cp    tlog.SignedCheckpoint
	err   error
}

// uploadBatch decides, stages, logs and commits the uploads of batch, all
// of different key ids, inside exclusive; it answers each.
func (b *Broker) uploadBatch(tx *changeTx, batch []*uploadJob) {
	now := b.now()
	var puts []keystore.Put
	var staged []*uploadJob
	for _, j := range batch {
		r := j.req
		if _, err := b.authorizeChange(j.seen, r.Client, r.ID, j.stmt, r.Signature); err != nil {
			j.finish(logged{}, err)
			continue
		}
		if next := b.st.nextVersion(r.ID); r.Version != next {
			j.finish(logged{}, api.Errorf(api.CodeConflict, "key %q needs version %d, not %d (a replayed or stale upload)", r.ID, next, r.Version))
			continue
		}
		puts = append(puts, keystore.Put{ID: r.ID, Version: r.Version, Client: r.Client, Material: j.material})
		staged = append(staged, j)
	}
	if len(staged) == 0 {
		return
	}
	// Stage the keys, log the uploads, then commit: a key is never
	// released without its upload in the log, and a crash in between is
	// settled against the log at the next start.
	digests, errs, err := b.cfg.Keys.PreparePuts(puts, b.st.size, now)
	if err != nil {
		for _, j := range staged {
			j.finish(logged{}, err)
		}
		return
	}
	var entries []*batchEntry
	for i, j := range staged {
		if errs[i] != nil {
			j.finish(logged{}, errs[i])
			continue
		}
		r := j.req
		e := &tlog.Entry{
			Type:      tlog.TypeKeyUpload,
			Time:      now,
			KeyUpload: &tlog.KeyEntry{ID: r.ID, Version: r.Version, Client: r.Client, SealedDigest: digests[i]},
		}
		raw, err := tlog.EncodeEntry(e)
		if err != nil {
			b.abortStaged(r.ID)
			j.finish(logged{}, api.Errorf(api.CodeBadRequest, "%s cannot be logged: %v", e.Type, err))
			continue
		}
		entries = append(entries, &batchEntry{j: j, e: e, raw: raw})
	}
	var wg sync.WaitGroup
	for _, be := range entries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			be.index, be.cp, be.err = b.appendLog(tx.ctx, be.raw)
		}()
	}
	wg.Wait()

	// Apply the appended entries in log order; entries of other writers in
	// between are read from the log and applied first.
	var ok []*batchEntry
	var cp tlog.SignedCheckpoint
	for _, be := range entries {
		switch {
		case be.err == nil:
			ok = append(ok, be)
			if be.cp.Size > cp.Size {
				cp = be.cp
			}
		case errors.Is(be.err, tlog.ErrUnknownOutcome):
			// Not undone: the next start settles it against the log.
			b.halt(be.err)
			be.j.finish(logged{}, logUnavailable(be.err))
		default:
			b.abortStaged(be.j.req.ID)
			be.j.finish(logged{}, logUnavailable(be.err))
		}
	}
	slices.SortFunc(ok, func(x, y *batchEntry) int { return cmp.Compare(x.index, y.index) })
	var commit []string
	var applied []*batchEntry
	// failRest halts the broker after err and answers every upload not
	// answered yet with answer: their entries may be in the log, and the
	// next start settles their staged keys against it.
	failRest := func(from int, err, answer error) {
		b.halt(err)
		for _, be := range ok[from:] {
			be.j.finish(logged{}, answer)
		}
		for _, be := range applied {
			be.j.finish(logged{}, answer)
		}
	}
	for i, be := range ok {
		if be.index < b.st.size {
			err := fmt.Errorf("kbs: the log put an upload at index %d, which the state already holds (size %d)", be.index, b.st.size)
			failRest(i, err, logUnavailable(err))
			return
		}
		if be.index > b.st.size {
			if err := b.replay(tx.ctx, cp, be.index); err != nil {
				failRest(i, err, logUnavailable(err))
				return
			}
		}
		b.st.mu.Lock()
		changed, why := b.st.apply(be.index, be.e)
		b.st.mu.Unlock()
		if !changed {
			b.abortStaged(be.j.req.ID)
			be.j.finish(logged{}, api.Errorf(api.CodeConflict, "the log changed while this request was logged (another writer's entries came first); logged at %d without effect: %s", be.index, why))
			continue
		}
		commit = append(commit, be.j.req.ID)
		applied = append(applied, be)
	}
	if len(ok) > 0 {
		if err := b.replay(tx.ctx, cp, cp.Size); err != nil {
			failRest(len(ok), err, logUnavailable(err))
			return
		}
		b.requestFlush()
	}
	if len(commit) > 0 {
		// If the store cannot be written, it and the log disagree until
		// the next start settles the staged changes: the broker stops
		// deciding until then.
		if err := b.cfg.Keys.CommitAll(commit); err != nil {
			err = fmt.Errorf("couldn't commit %d key(s) after logging them (from %q at %d): %w", len(commit), commit[0], applied[0].index, err)
			failRest(len(ok), err, err)
			return
		}
	}
	for _, be := range applied {
		be.j.finish(logged{index: be.index, entry: be.raw, cp: be.cp}, nil)
	}
}
