// Package trillianlog is the scale-out tlog.Backend: kbs's log stored in a
// Trillian log tree (github.com/google/trillian v1.8.0, over its gRPC API),
// with kbs signing its own C2SP checkpoints over Trillian's roots.
//
// # What it trusts
//
// Trillian (trillian_log_server, trillian_log_signer and their database) is
// trusted to store what it is given and to keep it, but not to be honest
// about the tree: before signing a checkpoint over a Trillian root, the Log
// fetches every leaf added since its last signed checkpoint, recomputes the
// root from them and from the compact range (log2 n hashes) it persisted with
// that checkpoint, and also checks Trillian's consistency proof from the
// last signed root (tlog.CheckpointSigner refuses a conflicting checkpoint).
// A Trillian that rolled back (a database restored from an old backup),
// forked, or serves another tree is refused with an error wrapping
// tlog.ErrConflict, and the Log stops appending.
//
// The inclusion proof of an entry in the checkpoint its Append returned (a
// receipt) is computed from the nodes of that verified replay, checked, and
// kept for the last few checkpoints, so receipts cost no Trillian round
// trip. Entries read back (Entries, and the leaves hash tiles are computed
// from) are checked against the latest signed root with two inclusion
// proofs per read of up to 256 entries, so kbs never acts on bytes Trillian
// did not integrate. Other proofs are passed on as Trillian gives them:
// clients and auditors check them against the signed checkpoints.
//
// # Durability
//
// Append queues the entry with QueueLeaf (committed to Trillian's database
// before QueueLeaf returns), waits until trillian_log_signer has integrated
// it into the tree (committed with the new root), then signs a checkpoint
// over that root and writes it, fsync'd, to Config.StatePath before
// returning. One sign-and-persist serves every append integrated by the
// same Trillian root (group commit). A crash at any point loses no
// acknowledged entry. Once an entry may have reached Trillian, Append waits
// for it past the end of its context (Trillian integrates every queued
// leaf): its error then means "not logged", except when it wraps
// tlog.ErrUnknownOutcome (the Log was closed or stopped meanwhile). An
// entry queued by a process that crashed may still appear in the log after
// the next start.
//
// # Duplicates
//
// Trillian deduplicates leaves by their identity hash, which defaults to the
// leaf's Merkle hash. kbs's log is a record of events, and two identical
// entries are two events, so each Append sends a fresh random identity hash:
// identical entries get distinct indices, and a QueueLeaf retried after a
// lost answer (same identity hash, ALREADY_EXISTS) is logged once. The Log
// learns its entry's index by reading the integrated leaves and matching the
// identity hash and the entry's bytes (a leaf with the identity but other
// bytes completes nothing).
//
// # Sharing a tree
//
// The tree must be written only through kbs (leaves written by another
// client are logged and signed over like any other, since kbs cannot tell
// them apart). Each Log keeps its own state file; see docs/scale-out.md for
// running several kbsd instances against one tree.
package trillianlog

import (
	"bytes"
	"container/list"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/google/trillian"
	"github.com/google/trillian/types"
	"github.com/hashicorp/go-hclog"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Config configures a Log.
type Config struct {
	// Addr is the gRPC address (host:port) of trillian_log_server. Required
	// unless Client is set.
	Addr string

	// DialOptions are used to connect to Addr. Optional; the default is a
	// plaintext connection, fit for loopback or a private network only.
	DialOptions []grpc.DialOption

	// Client is a Trillian log client to use instead of dialing Addr.
	// Optional; the Log does not close its connection.
	Client trillian.TrillianLogClient

	// TreeID is the id of the Trillian log tree (of type LOG, initialised).
	// Required.
	TreeID int64

	// Signer signs the log's checkpoints. Required.
	Signer *tlog.CheckpointSigner

	// StatePath is the file where the Log keeps, fsync'd, its last signed
	// checkpoint and the compact range of that tree. Required. It is what
	// makes a rolled-back or forked Trillian detectable across restarts:
	// keep it on durable storage and back it up with kbs's data.
	StatePath string

	// Adopt allows starting without a state file on a Trillian tree that
	// already has leaves (a lost state file, or a second kbs instance):
	// the Log then replays the whole tree and trusts it. Optional; by
	// default a non-empty tree without state is refused.
	Adopt bool

	// PollInterval is how often the Log asks Trillian for a new root while
	// appends wait for integration. After a second without a new root (or
	// on errors) the interval doubles, up to MaxPollInterval. Optional;
	// defaults 5ms and 200ms. Set PollInterval to a fraction of the
	// signer's --sequencer_interval.
	PollInterval, MaxPollInterval time.Duration

	// TileCacheSize is the number of hash tiles kept in memory (8 KiB each
	// when full). Full tiles never change, so they are fetched once while
	// they stay cached. Optional; the default is 4096.
	TileCacheSize int

	// Logger receives transient errors. Optional; the default discards.
	Logger hclog.Logger
}

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("trillianlog: log is closed")

// maxRecvSize bounds a gRPC answer: 256 leaves of tlog.MaxEntrySize, and
// their framing.
const maxRecvSize = 64 << 20

// leavesPerCall is how many leaves one GetLeavesByRange asks for.
const leavesPerCall = 256

var hasher = rfc6962.DefaultHasher

// Log is a tlog.Backend over a Trillian log tree. It is safe for concurrent
// use.
type Log struct {
	client  trillian.TrillianLogClient
	conn    *grpc.ClientConn // owned, or nil
	tree    int64
	signer  *tlog.CheckpointSigner
	path    string
	minPoll time.Duration
	maxPoll time.Duration
	log     hclog.Logger
	tiles   *tileCache

	// The integrator goroutine is the only writer of st and rng.
	mu      sync.RWMutex
	st      state          // last signed checkpoint, persisted
	rng     *compact.Range // compact range of st's tree
	waiters map[leafID]*waiter
	proofs  []recentProofs // of the entries appended through this Log
	closed  bool
	failed  error // permanent: Trillian contradicts what was signed

	kick chan struct{}
	stop chan struct{}
	done chan struct{}
}

type leafID [32]byte

type waiter struct {
	leaf  tlog.Hash // leaf hash of the entry
	done  chan struct{}
	index uint64
	found bool
	cp    tlog.SignedCheckpoint
	err   error
}

var _ tlog.Backend = (*Log)(nil)

// New opens the log stored in Trillian tree cfg.TreeID. It reads the state
// file (or, for a new log, signs and writes the checkpoint of the empty
// tree), then catches up with Trillian's latest root, verifying it as
// Append does. It fails with an error wrapping tlog.ErrConflict if
// Trillian's tree does not extend the last signed checkpoint.
func New(ctx context.Context, cfg Config) (*Log, error) {
	if cfg.Signer == nil {
		return nil, errors.New("trillianlog: Config.Signer is required")
	}
	if cfg.StatePath == "" {
		return nil, errors.New("trillianlog: Config.StatePath is required")
	}
	if cfg.TreeID <= 0 {
		return nil, fmt.Errorf("trillianlog: bad Config.TreeID %d", cfg.TreeID)
	}
	l := &Log{
		client:  cfg.Client,
		tree:    cfg.TreeID,
		signer:  cfg.Signer,
		path:    cfg.StatePath,
		minPoll: cfg.PollInterval,
		maxPoll: cfg.MaxPollInterval,
		log:     cfg.Logger,
		tiles:   newTileCache(cfg.TileCacheSize),
		waiters: map[leafID]*waiter{},
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	if l.minPoll <= 0 {
		l.minPoll = 5 * time.Millisecond
	}
	if l.maxPoll < l.minPoll {
		l.maxPoll = max(200*time.Millisecond, l.minPoll)
	}
	if l.log == nil {
		l.log = hclog.NewNullLogger()
	}
	if l.client == nil {
		if cfg.Addr == "" {
			return nil, errors.New("trillianlog: Config.Addr or Config.Client is required")
		}
		opts := cfg.DialOptions
		if len(opts) == 0 {
			opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		}
		conn, err := grpc.NewClient(cfg.Addr, opts...)
		if err != nil {
			return nil, fmt.Errorf("trillianlog: couldn't connect to %s: %w", cfg.Addr, err)
		}
		l.conn = conn
		l.client = trillian.NewTrillianLogClient(conn)
	}
	if err := l.open(ctx, cfg.Adopt); err != nil {
		l.closeConn()
		return nil, err
	}
	go l.run()
	return l, nil
}

func (l *Log) closeConn() {
	if l.conn != nil {
		l.conn.Close()
	}
}

// open loads or creates the state and catches up with Trillian.
func (l *Log) open(ctx context.Context, adopt bool) error {
	st, err := readState(l.path)
	switch {
	case err == nil:
		if st.TreeID != l.tree {
			return fmt.Errorf("trillianlog: state file %s belongs to tree %d, not %d", l.path, st.TreeID, l.tree)
		}
		cp, err := tlog.OpenCheckpoint(st.Checkpoint, l.signer.Origin(), l.signer.Verifier())
		if err != nil {
			return fmt.Errorf("trillianlog: state file %s: %w", l.path, err)
		}
		st.cp = cp
		rng, err := rangeFactory.NewRange(0, cp.Size, st.Range)
		if err != nil {
			return fmt.Errorf("trillianlog: state file %s: bad compact range: %w", l.path, err)
		}
		root, err := rangeRoot(rng)
		if err != nil || root != cp.Hash {
			return fmt.Errorf("trillianlog: state file %s: compact range does not match its checkpoint", l.path)
		}
		l.st, l.rng = st, rng
	case errors.Is(err, errNoState):
		root, err := l.latestRoot(ctx)
		if err != nil {
			return err
		}
		if root.Size > 0 && !adopt {
			return fmt.Errorf("trillianlog: tree %d already has %d leaves and there is no state file %s (set Adopt to replay and trust it)", l.tree, root.Size, l.path)
		}
		cp, err := l.signer.Sign(nil, tlog.Root{Size: 0, Hash: tlog.EmptyRoot}, nil)
		if err != nil {
			return err
		}
		st := state{TreeID: l.tree, Checkpoint: cp.Note, cp: cp}
		if err := writeState(l.path, st); err != nil {
			return err
		}
		l.st, l.rng = st, rangeFactory.NewEmptyRange(0)
	default:
		return err
	}
	_, err = l.sync(ctx)
	return err
}

// latestRoot returns Trillian's latest root.
func (l *Log) latestRoot(ctx context.Context) (tlog.Root, error) {
	resp, err := l.client.GetLatestSignedLogRoot(ctx, &trillian.GetLatestSignedLogRootRequest{LogId: l.tree})
	if err != nil {
		return tlog.Root{}, fmt.Errorf("trillianlog: couldn't get the root of tree %d: %w", l.tree, err)
	}
	return parseRoot(resp.GetSignedLogRoot())
}

func parseRoot(slr *trillian.SignedLogRoot) (tlog.Root, error) {
	var r types.LogRootV1
	if slr == nil {
		return tlog.Root{}, errors.New("trillianlog: Trillian sent no root")
	}
	if err := r.UnmarshalBinary(slr.LogRoot); err != nil {
		return tlog.Root{}, fmt.Errorf("trillianlog: couldn't parse Trillian's root: %w", err)
	}
	if len(r.RootHash) != len(tlog.Hash{}) || r.TreeSize > 1<<62 {
		return tlog.Root{}, fmt.Errorf("trillianlog: Trillian's root has a bad hash or size %d", r.TreeSize)
	}
	return tlog.Root{Size: r.TreeSize, Hash: tlog.Hash(r.RootHash)}, nil
}

// sync signs Trillian's latest root if it is ahead of the last signed
// checkpoint, and resolves the waiters whose leaves it holds. Only the
// integrator goroutine (or open, before it starts) calls it.
func (l *Log) sync(ctx context.Context) (bool, error) {
	root, err := l.latestRoot(ctx)
	if err != nil {
		return false, err
	}
	old := l.st.cp
	switch {
	case root.Size < old.Size:
		return false, fmt.Errorf("%w: Trillian tree %d has %d leaves, fewer than the %d of the last signed checkpoint (rolled back?)", tlog.ErrConflict, l.tree, root.Size, old.Size)
	case root.Size == old.Size:
		if root.Hash != old.Hash {
			return false, fmt.Errorf("%w: Trillian tree %d has another root at the signed size %d", tlog.ErrConflict, l.tree, old.Size)
		}
		return false, nil
	}

	// Replay the new leaves into a copy of the compact range, keeping every
	// node it computes: with the nodes of the old range, they are all the
	// nodes of inclusion proofs of the new leaves in the new tree.
	rng, err := rangeFactory.NewRange(0, old.Size, append([][]byte(nil), l.rng.Hashes()...))
	if err != nil {
		return false, err
	}
	// A long catch-up (a start after many foreign appends) has no waiters
	// and keeps no nodes.
	var nodes map[compact.NodeID][]byte
	var visit compact.VisitFn
	if root.Size-old.Size <= maxProofBatch {
		nodes = map[compact.NodeID][]byte{}
		for i, id := range compact.RangeNodes(0, old.Size, nil) {
			nodes[id] = l.rng.Hashes()[i]
		}
		visit = func(id compact.NodeID, h []byte) { nodes[id] = h }
	}
	type found struct {
		w     *waiter
		index uint64
	}
	var hits []found // in index order: a leaf integrated twice counts at its first index
	hit := map[*waiter]bool{}
	var taken []*waiter // their identity hash was integrated with other bytes
	newLeaves := make([]tlog.Hash, 0, root.Size-old.Size)
	for next := old.Size; next < root.Size; {
		leaves, err := l.leaves(ctx, next, min(root.Size-next, leavesPerCall))
		if err != nil {
			return false, err
		}
		l.mu.RLock()
		for _, lf := range leaves {
			lh := hasher.HashLeaf(lf.LeafValue)
			if len(lf.LeafIdentityHash) == len(leafID{}) {
				// The identity hash names the waiter; only the entry's
				// own bytes complete it (Trillian could pair the
				// identity with other bytes).
				if w := l.waiters[leafID(lf.LeafIdentityHash)]; w != nil && !w.found && !hit[w] && tlog.Hash(lh) == w.leaf {
					hit[w] = true
					hits = append(hits, found{w, next})
				} else if w != nil && tlog.Hash(lh) != w.leaf {
					l.log.Warn("Trillian leaf carries an append's identity but other bytes; ignored", "tree", l.tree, "index", next)
					taken = append(taken, w)
				}
			}
			if err := rng.Append(lh, visit); err != nil {
				l.mu.RUnlock()
				return false, err
			}
			newLeaves = append(newLeaves, tlog.Hash(lh))
			next++
		}
		l.mu.RUnlock()
	}
	got, err := rangeRoot(rng)
	if err != nil {
		return false, err
	}
	if got != root.Hash {
		return false, fmt.Errorf("%w: Trillian tree %d's root at size %d is not the root of its leaves extending the signed size %d", tlog.ErrConflict, l.tree, root.Size, old.Size)
	}

	var cproof []tlog.Hash
	if old.Size > 0 {
		cproof, err = l.consistency(ctx, old.Size, root.Size)
		if err != nil {
			return false, err
		}
	}
	cp, err := l.signer.Sign(&old, root, cproof)
	if err != nil {
		return false, err
	}
	st := state{TreeID: l.tree, Checkpoint: cp.Note, Range: rng.Hashes(), cp: cp}
	if err := writeState(l.path, st); err != nil {
		return false, err
	}
	l.tiles.addLeaves(old.Size, newLeaves)
	proofs := recentProofs{size: root.Size, byIndex: make(map[uint64][]tlog.Hash, len(hits))}
	for _, h := range hits {
		if nodes == nil {
			break
		}
		if p, ok := proveFromNodes(nodes, h.index, root); ok {
			proofs.byIndex[h.index] = p
		}
	}

	l.mu.Lock()
	l.st, l.rng = st, rng
	l.proofs = append(l.proofs[max(0, len(l.proofs)+1-keptProofSets):], proofs)
	for _, h := range hits {
		h.w.index, h.w.found, h.w.cp = h.index, true, cp
	}
	// Trillian deduplicates by identity hash, so an entry whose identity
	// was taken by other bytes is not logged and never will be.
	var refused []*waiter
	for _, w := range taken {
		if !w.found {
			w.found, w.err = true, errors.New("trillianlog: Trillian logged other bytes under the entry's identity hash; the entry is not logged")
			refused = append(refused, w)
		}
	}
	l.mu.Unlock()
	for _, h := range hits {
		close(h.w.done)
	}
	for _, w := range refused {
		close(w.done)
	}
	return true, nil
}

// recentProofs holds the inclusion proofs, in the tree of the given size, of
// the entries whose appends that tree completed: Append's callers ask for
// exactly those (receipts), and they are computed without asking Trillian.
type recentProofs struct {
	size    uint64
	byIndex map[uint64][]tlog.Hash
}

// keptProofSets is how many signed trees' proofs are kept, and
// maxProofBatch the largest catch-up whose proofs are computed locally.
const (
	keptProofSets = 16
	maxProofBatch = 1 << 16
)

// proveFromNodes computes the inclusion proof of index in root's tree from
// the nodes given, and verifies it; ok is false if a node is missing or the
// proof does not verify.
func proveFromNodes(nodes map[compact.NodeID][]byte, index uint64, root tlog.Root) (p []tlog.Hash, ok bool) {
	pn, err := proof.Inclusion(index, root.Size)
	if err != nil {
		return nil, false
	}
	hs := make([][]byte, len(pn.IDs))
	for i, id := range pn.IDs {
		if hs[i] = nodes[id]; hs[i] == nil {
			return nil, false
		}
	}
	hs, err = pn.Rehash(hs, hasher.HashChildren)
	if err != nil {
		return nil, false
	}
	leaf := nodes[compact.NewNodeID(0, index)]
	if leaf == nil || proof.VerifyInclusion(hasher, index, root.Size, leaf, hs, root.Hash[:]) != nil {
		return nil, false
	}
	out := make([]tlog.Hash, len(hs))
	for i, h := range hs {
		out[i] = tlog.Hash(h)
	}
	return out, true
}

// leaves fetches count leaves from start, all of which are in Trillian's
// tree, checking their indices.
func (l *Log) leaves(ctx context.Context, start, count uint64) ([]*trillian.LogLeaf, error) {
	resp, err := l.client.GetLeavesByRange(ctx, &trillian.GetLeavesByRangeRequest{
		LogId: l.tree, StartIndex: int64(start), Count: int64(count),
	}, grpc.MaxCallRecvMsgSize(maxRecvSize))
	if err != nil {
		return nil, fmt.Errorf("trillianlog: couldn't get leaves [%d, %d): %w", start, start+count, err)
	}
	if len(resp.Leaves) == 0 || uint64(len(resp.Leaves)) > count {
		return nil, fmt.Errorf("trillianlog: Trillian returned %d leaves for [%d, %d)", len(resp.Leaves), start, start+count)
	}
	for i, lf := range resp.Leaves {
		if lf.LeafIndex != int64(start)+int64(i) {
			return nil, fmt.Errorf("trillianlog: Trillian returned leaf %d at position %d of [%d, %d)", lf.LeafIndex, i, start, start+count)
		}
	}
	return resp.Leaves, nil
}

func (l *Log) consistency(ctx context.Context, oldSize, newSize uint64) ([]tlog.Hash, error) {
	resp, err := l.client.GetConsistencyProof(ctx, &trillian.GetConsistencyProofRequest{
		LogId: l.tree, FirstTreeSize: int64(oldSize), SecondTreeSize: int64(newSize),
	})
	if err != nil {
		return nil, fmt.Errorf("trillianlog: couldn't get the consistency proof %d → %d: %w", oldSize, newSize, err)
	}
	if resp.Proof == nil {
		return nil, fmt.Errorf("trillianlog: Trillian has no consistency proof %d → %d", oldSize, newSize)
	}
	return toHashes(resp.Proof.Hashes)
}

func toHashes(in [][]byte) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(in))
	for i, h := range in {
		if len(h) != len(tlog.Hash{}) {
			return nil, fmt.Errorf("trillianlog: Trillian sent a %d-byte hash", len(h))
		}
		out[i] = tlog.Hash(h)
	}
	return out, nil
}

// run is the integrator: while appends wait, it polls Trillian for a new
// root, with backoff, and signs it.
func (l *Log) run() {
	defer close(l.done)
	delay, lastProgress := l.minPoll, time.Now()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		l.mu.RLock()
		waiting := len(l.waiters) > 0 && l.failed == nil
		l.mu.RUnlock()
		if !waiting {
			select {
			case <-l.kick:
				delay, lastProgress = l.minPoll, time.Now()
			case <-l.stop:
				return
			}
		}
		timer.Reset(delay)
		select {
		case <-timer.C:
		case <-l.stop:
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		go func() {
			select {
			case <-l.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		progressed, err := l.sync(ctx)
		cancel()
		switch {
		case errors.Is(err, tlog.ErrConflict):
			l.log.Error("Trillian contradicts the last signed checkpoint; appends stopped", "tree", l.tree, "error", err)
			l.fail(err)
		case err != nil:
			l.log.Warn("couldn't sync with Trillian", "tree", l.tree, "error", err)
			delay = min(2*delay, l.maxPoll)
		case progressed:
			delay, lastProgress = l.minPoll, time.Now()
		case time.Since(lastProgress) > time.Second:
			// The signer is slow or stopped: back off.
			delay = min(2*delay, l.maxPoll)
		}
	}
}

// fail stops appends for good and fails those waiting.
func (l *Log) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failed == nil {
		l.failed = err
	}
	for id, w := range l.waiters {
		if !w.found {
			w.err = fmt.Errorf("trillianlog: appends stopped (%w): %w", tlog.ErrUnknownOutcome, err)
			close(w.done)
		}
		delete(l.waiters, id)
	}
}

// Append implements tlog.Backend. It returns when the entry is in a
// checkpoint the Log signed and persisted. Once the entry may have reached
// Trillian, ctx no longer cuts the wait short (Trillian integrates every
// queued leaf, so giving up would report "failed" for an entry that gets
// logged): Append then returns only on integration, or with an error
// wrapping tlog.ErrUnknownOutcome when the Log is closed or stops.
func (l *Log) Append(ctx context.Context, entry []byte) (uint64, tlog.SignedCheckpoint, error) {
	if err := tlog.CheckEntry(entry); err != nil {
		return 0, tlog.SignedCheckpoint{}, err
	}
	if err := ctx.Err(); err != nil {
		return 0, tlog.SignedCheckpoint{}, err // nothing was sent
	}
	var id leafID
	rand.Read(id[:])
	w := &waiter{leaf: tlog.Hash(hasher.HashLeaf(entry)), done: make(chan struct{})}
	l.mu.Lock()
	switch {
	case l.closed:
		l.mu.Unlock()
		return 0, tlog.SignedCheckpoint{}, ErrClosed
	case l.failed != nil:
		l.mu.Unlock()
		return 0, tlog.SignedCheckpoint{}, fmt.Errorf("trillianlog: appends stopped: %w", l.failed)
	}
	l.waiters[id] = w
	l.mu.Unlock()

	if err := l.queue(context.WithoutCancel(ctx), entry, id); err != nil {
		l.forget(id)
		return 0, tlog.SignedCheckpoint{}, err
	}
	select {
	case l.kick <- struct{}{}:
	default:
	}
	<-w.done
	l.forget(id)
	if w.err != nil {
		return 0, tlog.SignedCheckpoint{}, w.err
	}
	return w.index, w.cp, nil
}

func (l *Log) forget(id leafID) {
	l.mu.Lock()
	delete(l.waiters, id)
	l.mu.Unlock()
}

// queue sends the entry to Trillian, retrying while it is unavailable. The
// identity hash makes retries idempotent. An error that leaves open whether
// a request reached Trillian wraps tlog.ErrUnknownOutcome.
func (l *Log) queue(ctx context.Context, entry []byte, id leafID) error {
	req := &trillian.QueueLeafRequest{LogId: l.tree, Leaf: &trillian.LogLeaf{LeafValue: entry, LeafIdentityHash: id[:]}}
	delay := 10 * time.Millisecond
	for {
		resp, err := l.client.QueueLeaf(ctx, req)
		if err == nil {
			s := resp.GetQueuedLeaf().GetStatus()
			if c := codes.Code(s.GetCode()); c != codes.OK && c != codes.AlreadyExists {
				return fmt.Errorf("trillianlog: Trillian refused the entry: %s: %s", c, s.GetMessage())
			}
			return nil
		}
		switch status.Code(err) {
		case codes.Unavailable, codes.ResourceExhausted, codes.Aborted:
		case codes.InvalidArgument, codes.FailedPrecondition, codes.PermissionDenied, codes.Unauthenticated, codes.NotFound, codes.Unimplemented, codes.OutOfRange:
			return fmt.Errorf("trillianlog: couldn't queue the entry: %w", err)
		default:
			return fmt.Errorf("trillianlog: couldn't queue the entry (%w): %w", tlog.ErrUnknownOutcome, err)
		}
		select {
		case <-time.After(delay):
			delay = min(2*delay, time.Second)
		case <-ctx.Done():
			return fmt.Errorf("trillianlog: couldn't queue the entry (%w): %w (last error: %v)", tlog.ErrUnknownOutcome, ctx.Err(), err)
		case <-l.stop:
			return fmt.Errorf("trillianlog: couldn't queue the entry (%w): %w", tlog.ErrUnknownOutcome, ErrClosed)
		}
	}
}

// Checkpoint implements tlog.Backend: the last checkpoint this Log signed.
func (l *Log) Checkpoint(ctx context.Context) (tlog.SignedCheckpoint, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.st.cp, nil
}

func (l *Log) size() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.st.cp.Size
}

// Entries implements tlog.Backend.
func (l *Log) Entries(ctx context.Context, start, end uint64) ([][]byte, error) {
	if start > end {
		return nil, fmt.Errorf("%w: entries [%d, %d)", tlog.ErrInvalidArgument, start, end)
	}
	if size := l.size(); end > size {
		return nil, fmt.Errorf("%w: entries [%d, %d) of a log of size %d", tlog.ErrOutOfRange, start, end, size)
	}
	out := make([][]byte, 0, end-start)
	for next := start; next < end; {
		vs, err := l.verifiedEntries(ctx, next, min(end, next+leavesPerCall))
		if err != nil {
			return nil, err
		}
		out = append(out, vs...)
		next += uint64(len(vs))
	}
	return out, nil
}

// verifiedEntries returns the entries [start, end) (end > start, at most
// leavesPerCall of them) of the latest signed tree, checked against its
// root: Trillian's inclusion proofs of the first and the last entry must
// verify, and the left siblings of the last must be the compact range of
// the left siblings of the first extended by the entries in between. So a
// Trillian that serves other bytes than those it integrated is caught
// before kbs uses them.
func (l *Log) verifiedEntries(ctx context.Context, start, end uint64) ([][]byte, error) {
	l.mu.RLock()
	root := l.st.cp.Root
	l.mu.RUnlock()
	var vals [][]byte
	for next := start; next < end; {
		leaves, err := l.leaves(ctx, next, end-next)
		if err != nil {
			return nil, err
		}
		for _, lf := range leaves {
			vals = append(vals, lf.LeafValue)
		}
		next += uint64(len(leaves))
	}
	first, err := l.leftSiblings(ctx, start, root, vals[0])
	if err != nil {
		return nil, err
	}
	if end-start == 1 {
		return vals, nil
	}
	last, err := l.leftSiblings(ctx, end-1, root, vals[len(vals)-1])
	if err != nil {
		return nil, err
	}
	rng, err := rangeFactory.NewRange(0, start, first)
	if err != nil {
		return nil, err
	}
	for _, v := range vals[:len(vals)-1] {
		if err := rng.Append(hasher.HashLeaf(v), nil); err != nil {
			return nil, err
		}
	}
	got := rng.Hashes()
	if len(got) != len(last) {
		return nil, fmt.Errorf("%w: Trillian's entries [%d, %d) are not those of the signed tree of size %d", tlog.ErrConflict, start, end, root.Size)
	}
	for i := range got {
		if !bytes.Equal(got[i], last[i]) {
			return nil, fmt.Errorf("%w: Trillian's entries [%d, %d) are not those of the signed tree of size %d", tlog.ErrConflict, start, end, root.Size)
		}
	}
	return vals, nil
}

// leftSiblings gets Trillian's inclusion proof of the leaf at index with
// value v in root's tree, verifies it, and returns the hashes of the nodes
// left of the leaf (the compact range of [0, index)), left to right.
func (l *Log) leftSiblings(ctx context.Context, index uint64, root tlog.Root, v []byte) ([][]byte, error) {
	resp, err := l.client.GetInclusionProof(ctx, &trillian.GetInclusionProofRequest{
		LogId: l.tree, LeafIndex: int64(index), TreeSize: int64(root.Size),
	})
	if err != nil {
		return nil, fmt.Errorf("trillianlog: couldn't get the inclusion proof of %d in %d: %w", index, root.Size, err)
	}
	if resp.Proof == nil {
		return nil, fmt.Errorf("trillianlog: Trillian has no inclusion proof of %d in %d", index, root.Size)
	}
	p := resp.Proof.Hashes
	if err := proof.VerifyInclusion(hasher, index, root.Size, hasher.HashLeaf(v), p, root.Hash[:]); err != nil {
		return nil, fmt.Errorf("%w: Trillian's entry %d is not in the signed tree of size %d: %v", tlog.ErrConflict, index, root.Size, err)
	}
	// The proof lists a node per level, lowest first, with the nodes right
	// of the leaf's path folded into one ephemeral node; the left ones are
	// never folded. Walk the levels: at each, the sibling is left of the
	// path iff the path node is a right child.
	pn, err := proof.Inclusion(index, root.Size)
	if err != nil {
		return nil, err
	}
	_, b, e := pn.Ephem()
	var left [][]byte
	pos := 0
	for i, id := range pn.IDs {
		if i > b && i < e {
			continue // folded into the ephemeral node at position b
		}
		if _, end := id.Coverage(); end <= index {
			left = append(left, p[pos])
		}
		pos++
	}
	if pos != len(p) {
		return nil, fmt.Errorf("trillianlog: inclusion proof of %d in %d has %d hashes, want %d", index, root.Size, len(p), pos)
	}
	slices.Reverse(left) // highest (leftmost) first, as in a compact range
	return left, nil
}

// InclusionProof implements tlog.Backend.
func (l *Log) InclusionProof(ctx context.Context, index, treeSize uint64) ([]tlog.Hash, error) {
	if index >= treeSize {
		return nil, fmt.Errorf("%w: index %d is not below tree size %d", tlog.ErrInvalidArgument, index, treeSize)
	}
	if size := l.size(); treeSize > size {
		return nil, fmt.Errorf("%w: tree size %d, log size %d", tlog.ErrOutOfRange, treeSize, size)
	}
	l.mu.RLock()
	for _, rp := range l.proofs {
		if p, ok := rp.byIndex[index]; ok && rp.size == treeSize {
			l.mu.RUnlock()
			return slices.Clone(p), nil
		}
	}
	l.mu.RUnlock()
	resp, err := l.client.GetInclusionProof(ctx, &trillian.GetInclusionProofRequest{
		LogId: l.tree, LeafIndex: int64(index), TreeSize: int64(treeSize),
	})
	if err != nil {
		return nil, fmt.Errorf("trillianlog: couldn't get the inclusion proof of %d in %d: %w", index, treeSize, err)
	}
	if resp.Proof == nil {
		return nil, fmt.Errorf("trillianlog: Trillian has no inclusion proof of %d in %d", index, treeSize)
	}
	return toHashes(resp.Proof.Hashes)
}

// ConsistencyProof implements tlog.Backend. The proof from size 0, or
// between equal sizes, is empty.
func (l *Log) ConsistencyProof(ctx context.Context, oldSize, newSize uint64) ([]tlog.Hash, error) {
	if oldSize > newSize {
		return nil, fmt.Errorf("%w: old size %d is above new size %d", tlog.ErrInvalidArgument, oldSize, newSize)
	}
	if size := l.size(); newSize > size {
		return nil, fmt.Errorf("%w: tree size %d, log size %d", tlog.ErrOutOfRange, newSize, size)
	}
	if oldSize == 0 || oldSize == newSize {
		return []tlog.Hash{}, nil
	}
	return l.consistency(ctx, oldSize, newSize)
}

// HashTile implements tlog.Backend. Level-0 tiles are hashed from the
// leaves; a hash of a higher tile is the root of a full tile below it.
func (l *Log) HashTile(ctx context.Context, level int, index uint64, width int) ([]byte, error) {
	if level < 0 || level > 63 || width < 1 || width > 256 {
		return nil, fmt.Errorf("%w: tile level %d width %d", tlog.ErrInvalidArgument, level, width)
	}
	size := l.size()
	var hashesAtLevel uint64
	if level < 8 {
		hashesAtLevel = size >> (8 * level)
	}
	if index > hashesAtLevel/256 || index*256+uint64(width) > hashesAtLevel {
		return nil, fmt.Errorf("%w: tile %d/%d of width %d in a log of size %d", tlog.ErrOutOfRange, level, index, width, size)
	}
	hs, err := l.tileHashes(ctx, level, index, width)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, width*len(tlog.Hash{}))
	for _, h := range hs[:width] {
		out = append(out, h[:]...)
	}
	return out, nil
}

// tileHashes returns at least width hashes of tile (level, index), all of
// complete subtrees of the signed tree.
func (l *Log) tileHashes(ctx context.Context, level int, index uint64, width int) ([]tlog.Hash, error) {
	have := l.tiles.get(level, index)
	if len(have) >= width {
		return have, nil
	}
	hs := append([]tlog.Hash(nil), have...)
	if level == 0 {
		vs, err := l.verifiedEntries(ctx, index*256+uint64(len(hs)), index*256+uint64(width))
		if err != nil {
			return nil, err
		}
		for _, v := range vs {
			hs = append(hs, tlog.Hash(hasher.HashLeaf(v)))
		}
	} else {
		for j := len(hs); j < width; j++ {
			sub, err := l.tileHashes(ctx, level-1, index*256+uint64(j), 256)
			if err != nil {
				return nil, err
			}
			hs = append(hs, perfectRoot(sub[:256]))
		}
	}
	l.tiles.put(level, index, hs)
	return hs, nil
}

// perfectRoot is the root of a perfect subtree with the given leaves (a
// power of two of them).
func perfectRoot(hs []tlog.Hash) tlog.Hash {
	level := append([]tlog.Hash(nil), hs...)
	for len(level) > 1 {
		for i := 0; i < len(level)/2; i++ {
			level[i] = tlog.Hash(hasher.HashChildren(level[2*i][:], level[2*i+1][:]))
		}
		level = level[:len(level)/2]
	}
	return level[0]
}

// Close implements tlog.Backend: appends waiting for integration fail with
// ErrClosed; the state file always holds a complete signed checkpoint.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.stop)
	l.mu.Unlock()
	<-l.done
	l.mu.Lock()
	for id, w := range l.waiters {
		if !w.found {
			w.err = fmt.Errorf("trillianlog: closed while the entry was queued (%w): %w", tlog.ErrUnknownOutcome, ErrClosed)
			close(w.done)
		}
		delete(l.waiters, id)
	}
	l.mu.Unlock()
	l.closeConn()
	return nil
}

var rangeFactory = &compact.RangeFactory{Hash: hasher.HashChildren}

func rangeRoot(r *compact.Range) (tlog.Hash, error) {
	if r.End() == 0 {
		return tlog.EmptyRoot, nil
	}
	h, err := r.GetRootHash(nil)
	if err != nil {
		return tlog.Hash{}, err
	}
	return tlog.Hash(h), nil
}

// tileCache keeps hash tiles, least recently used first out. A tile's
// cached hashes are a prefix of the full tile: hashes of complete subtrees
// never change, so a prefix only grows.
type tileCache struct {
	mu  sync.Mutex
	max int
	ll  *list.List
	m   map[tileKey]*list.Element
}

type tileKey struct {
	level int
	index uint64
}

type tileEntry struct {
	key    tileKey
	hashes []tlog.Hash
}

func newTileCache(n int) *tileCache {
	if n <= 0 {
		n = 4096
	}
	return &tileCache{max: n, ll: list.New(), m: map[tileKey]*list.Element{}}
}

func (c *tileCache) get(level int, index uint64) []tlog.Hash {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.m[tileKey{level, index}]; e != nil {
		c.ll.MoveToFront(e)
		return e.Value.(*tileEntry).hashes
	}
	return nil
}

// put stores hs (which the caller no longer changes) if it is longer than
// what is cached.
func (c *tileCache) put(level int, index uint64, hs []tlog.Hash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := tileKey{level, index}
	if e := c.m[k]; e != nil {
		c.ll.MoveToFront(e)
		if te := e.Value.(*tileEntry); len(hs) > len(te.hashes) {
			te.hashes = hs[:min(len(hs), 256):min(len(hs), 256)]
		}
		return
	}
	c.m[k] = c.ll.PushFront(&tileEntry{k, hs[:min(len(hs), 256):min(len(hs), 256)]})
	for c.ll.Len() > c.max {
		e := c.ll.Back()
		c.ll.Remove(e)
		delete(c.m, e.Value.(*tileEntry).key)
	}
}

// addLeaves extends the level-0 tiles with the hashes of the leaves from
// start on, where the cache holds the tile up to start (or start begins a
// tile).
func (c *tileCache) addLeaves(start uint64, hs []tlog.Hash) {
	for len(hs) > 0 {
		index, off := start/256, int(start%256)
		n := min(len(hs), 256-off)
		have := c.get(0, index)
		if len(have) == off {
			c.put(0, index, append(append([]tlog.Hash(nil), have...), hs[:n]...))
		}
		start += uint64(n)
		hs = hs[n:]
	}
}

// CreateTree creates and initialises a new Trillian log tree over the admin
// and log APIs served at conn (trillian_log_server serves both), and returns
// its id. It is what Trillian's createtree tool does, for tests, benchmarks
// and first-time setup.
func CreateTree(ctx context.Context, conn grpc.ClientConnInterface, displayName string) (int64, error) {
	tree, err := trillian.NewTrillianAdminClient(conn).CreateTree(ctx, &trillian.CreateTreeRequest{Tree: &trillian.Tree{
		TreeState:       trillian.TreeState_ACTIVE,
		TreeType:        trillian.TreeType_LOG,
		DisplayName:     displayName,
		MaxRootDuration: durationpb.New(0),
	}})
	if err != nil {
		return 0, fmt.Errorf("trillianlog: couldn't create a tree: %w", err)
	}
	lc := trillian.NewTrillianLogClient(conn)
	delay := 10 * time.Millisecond
	for {
		_, err := lc.InitLog(ctx, &trillian.InitLogRequest{LogId: tree.TreeId})
		if err == nil || status.Code(err) == codes.AlreadyExists {
			break
		}
		if c := status.Code(err); c != codes.Unavailable && c != codes.NotFound {
			return 0, fmt.Errorf("trillianlog: couldn't initialise tree %d: %w", tree.TreeId, err)
		}
		select {
		case <-time.After(delay):
			delay = min(2*delay, time.Second)
		case <-ctx.Done():
			return 0, fmt.Errorf("trillianlog: couldn't initialise tree %d: %w", tree.TreeId, ctx.Err())
		}
	}
	for {
		_, err := lc.GetLatestSignedLogRoot(ctx, &trillian.GetLatestSignedLogRootRequest{LogId: tree.TreeId})
		if err == nil {
			return tree.TreeId, nil
		}
		if status.Code(err) != codes.FailedPrecondition {
			return 0, fmt.Errorf("trillianlog: tree %d has no root: %w", tree.TreeId, err)
		}
		select {
		case <-time.After(delay):
			delay = min(2*delay, time.Second)
		case <-ctx.Done():
			return 0, fmt.Errorf("trillianlog: tree %d has no root: %w", tree.TreeId, ctx.Err())
		}
	}
}
