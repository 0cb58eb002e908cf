// Package trillianlog is the scale-out tlog.Backend: kbs's log stored in a
// Trillian log tree (github.com/google/trillian v1.8.0, over its gRPC API),
// with kbs signing its own C2SP checkpoints over the tree.
//
// # Two kinds of tree
//
// On a PREORDERED_LOG tree (what CreateTree and scripts/trillian.sh create)
// kbs is the sequencer. The Log gathers concurrent appends into batches,
// gives each entry the next index itself and writes a batch with one
// AddSequencedLeaves call: one database transaction for up to 1024 entries.
// Once Trillian has committed the batch, the Log extends its own compact
// range with the entries, signs a checkpoint over the root it computed and
// persists it. trillian_log_signer integrates the leaves into Trillian's
// tree in the background, and the Log checks each root Trillian publishes
// against the entries it wrote. An append costs its share of one database
// transaction and one fsync; it does not wait for the signer's next pass.
// The Log must be the tree's only writer (see "Sharing a tree").
//
// On a LOG tree (what kbs used before) Trillian is the sequencer: each
// Append queues its entry with QueueLeaf (a database transaction per
// entry), waits until trillian_log_signer has integrated it, and the Log
// then fetches the new leaves, recomputes the root and signs it. That is
// several times slower; it is kept so that existing trees go on working,
// and Migrate moves such a log to a pre-ordered tree without changing a
// single checkpoint (tools/trillian-migrate, docs/scale-out.md).
//
// # What it trusts
//
// Trillian (trillian_log_server, trillian_log_signer and their database) is
// trusted to store what it is given and to keep it, but not to be honest
// about the tree. Every root the Log signs is one it computed itself from
// the compact range (log2 n hashes) it persisted with its last checkpoint
// and the new leaves: those it wrote (pre-ordered), or those it fetched
// from Trillian (a LOG tree, or a pre-ordered tree holding leaves this Log
// did not write). Every root Trillian publishes is checked against the
// Log's own: the same root at the same size, or Trillian's consistency
// proof from a root the Log signed. A Trillian that rolled back (a
// database restored from an old backup), forked, lost leaves it had
// committed, or serves another tree is refused with an error wrapping
// tlog.ErrConflict, and the Log stops appending.
//
// The inclusion proof of an entry in the checkpoint its Append returned (a
// receipt) is computed from the nodes the Log hashed while extending its
// tree, kept for the last few checkpoints, so receipts cost no Trillian
// round trip. Entries read back (Entries, and the leaves hash tiles are
// computed from) are checked against the latest Trillian root the Log
// verified, with two inclusion proofs per read of up to 256 entries, so
// kbs never acts on bytes Trillian did not integrate. Other proofs are
// passed on as Trillian gives them: clients and auditors check them
// against the signed checkpoints. On a pre-ordered tree, reads and proofs
// that reach past Trillian's integrated tree wait for its signer (one
// --sequencer_interval, typically).
//
// # Durability
//
// Append returns once the entry is committed in Trillian's database and a
// checkpoint containing it is signed and written, fsync'd, to
// Config.StatePath. One transaction, signature and fsync serve a whole
// batch (pre-ordered) or every entry Trillian's signer integrated in one
// pass (LOG): group commit. A crash at any point loses no acknowledged
// entry.
//
// # Settling appends
//
// Once an entry has been handed to Trillian, Append no longer gives up when
// its ctx ends: it waits for the outcome, so that it never reports as
// failed an entry that later appears in the log. That outcome comes within
// one database transaction (pre-ordered) or one signer pass (LOG); while
// Trillian is unreachable it comes when Trillian is back or the Log is
// closed. ctx still abandons an entry not yet handed over (queued behind
// the batch in flight). So an Append error means the entry is not in the
// log and never will be, with one exception: errors wrapping ErrUnsettled,
// returned only when the Log is closed or has stopped for good (Close,
// tlog.ErrConflict, a state file that cannot be written) while the entry
// was in Trillian's hands. Such an entry may be in Trillian's database; if
// it is, it is logged before any entry appended after it: on a
// pre-ordered tree the next Log to append (a restart) finds it at the
// index it was sent to and signs over it before giving out a later index;
// on a LOG tree Trillian's signer integrates it in queue order.
//
// # Duplicates
//
// Trillian deduplicates leaves by their identity hash, which defaults to the
// leaf's Merkle hash. kbs's log is a record of events, and two identical
// entries are two events, so each Append sends a fresh random identity hash:
// identical entries get distinct indices, and a write retried after a lost
// answer (same identity hash) is logged once. When the Log learns an
// entry's index by reading integrated leaves (a LOG tree, or catching up),
// it matches the identity hash and the entry's bytes; a leaf with the
// identity but other bytes fails that append with tlog.ErrConflict.
//
// # Sharing a tree
//
// The tree must be written only through kbs: leaves written by another
// client are logged and signed over like any other, since kbs cannot tell
// them apart. On a pre-ordered tree a second writer is detected (its leaves
// take the indices the Log meant to use) and handled by reading them back,
// which is correct but slow: run one active kbsd per tree. Each Log keeps
// its own state file; see docs/scale-out.md.
package trillianlog

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/trillian"
	"github.com/hashicorp/go-hclog"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Config configures a Log.
type Config struct {
	// Addr is the gRPC address (host:port) of trillian_log_server. Required
	// unless Client is set.
	Addr string

	// DialOptions are used to connect to Addr. Optional; the default is a
	// plaintext connection, fit for loopback or a private network only.
	DialOptions []grpc.DialOption

	// Client and Admin are Trillian log and admin clients to use instead of
	// dialing Addr (the admin API tells the tree's type). Optional, both
	// or neither; the Log does not close their connection.
	Client trillian.TrillianLogClient
	Admin  trillian.TrillianAdminClient

	// TreeID is the id of the Trillian tree: PREORDERED_LOG (the fast
	// mode) or LOG, active and initialised. Required.
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
	// something waits for trillian_log_signer: appends on a LOG tree; on a
	// pre-ordered tree, checking the roots of what it wrote, and reads
	// past the integrated tree. After a second without a new root (or on
	// errors) the interval doubles, up to MaxPollInterval. Optional;
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

var (
	// ErrClosed is returned by Append after Close.
	ErrClosed = errors.New("trillianlog: log is closed")

	// ErrUnsettled marks an Append error after which the entry may still
	// be logged (see the package documentation, "Settling appends"). It
	// is always wrapped together with the cause: ErrClosed, or the error
	// that stopped the Log. It wraps tlog.ErrUnknownOutcome, the Backend
	// contract's name for it, which the broker settles at its next start.
	ErrUnsettled = fmt.Errorf("trillianlog: the entry may still be logged: %w", tlog.ErrUnknownOutcome)
)

// maxRecvSize bounds a gRPC answer: 256 leaves of tlog.MaxEntrySize, and
// their framing.
const maxRecvSize = 64 << 20

// leavesPerCall is how many leaves one GetLeavesByRange asks for.
const leavesPerCall = 256

// attemptTimeout bounds one write RPC; an attempt that times out is retried
// as it was (the identity hashes make that safe).
const attemptTimeout = 10 * time.Second

var hasher = rfc6962.DefaultHasher

// Log is a tlog.Backend over a Trillian log tree. It is safe for concurrent
// use.
type Log struct {
	client     trillian.TrillianLogClient
	conn       *grpc.ClientConn // owned, or nil
	tree       int64
	preordered bool // PREORDERED_LOG: the Log assigns indices
	signer     *tlog.CheckpointSigner
	path       string
	minPoll    time.Duration
	maxPoll    time.Duration
	log        hclog.Logger
	tiles      *tileCache
	ids        atomic.Uint64 // numbers identity hashes on a LOG tree

	// st and rng change only in the goroutine that appends (the writer,
	// or the integrator on a LOG tree), or in open before it starts.
	mu         sync.RWMutex
	st         state          // last signed checkpoint, persisted
	rng        *compact.Range // compact range of st's tree; never modified in place
	ver        verified       // Trillian's latest root checked against st
	verChanged chan struct{}  // closed (and replaced) when ver advances or the Log stops
	waiters    map[leafID]*waiter
	pending    []*waiter      // pre-ordered: appends not yet sent, oldest first
	proofs     []recentProofs // of the trees this Log extended recently
	readers    int            // reads waiting for ver to advance
	closed     bool
	failed     error // permanent: Trillian contradicts what was signed

	kick     chan struct{} // appends are waiting: wakes the writer or integrator
	verKick  chan struct{} // the signed tree grew: wakes the idle verifier
	readKick chan struct{} // a read waits for Trillian: makes the verifier poll now
	stop     chan struct{}
	wg       sync.WaitGroup
}

// verified is the latest root of Trillian's tree that the Log checked
// against its own tree. On a LOG tree it is always the signed root. On a
// pre-ordered tree it trails the signed root by the leaves Trillian's
// signer has not integrated yet, whose hashes ahead holds:
// root.Size+len(ahead) is always the signed size.
type verified struct {
	root  tlog.Root
	rng   *compact.Range // of root's tree; never modified in place
	ahead []tlog.Hash
	gen   uint64 // incremented when the whole state is replaced (sync)
}

// waiter is one Append in flight.
type waiter struct {
	id    leafID
	entry []byte
	leaf  tlog.Hash // leaf hash of the entry
	done  chan struct{}

	// Guarded by Log.mu.
	sent    bool // handed to Trillian: from here on Append waits for the outcome
	settled bool
	index   uint64
	cp      tlog.SignedCheckpoint
	err     error
}

var _ tlog.Backend = (*Log)(nil)

// New opens the log stored in Trillian tree cfg.TreeID. It reads the state
// file (or, for a new log, signs and writes the checkpoint of the empty
// tree), then catches up with Trillian's latest root, verifying it as
// Append does; on a pre-ordered tree it first waits (up to a minute) for
// Trillian's signer to integrate what the state file's checkpoint covers.
// It fails with an error wrapping tlog.ErrConflict if Trillian's tree does
// not extend the last signed checkpoint.
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
	if (cfg.Client == nil) != (cfg.Admin == nil) {
		return nil, errors.New("trillianlog: set both Config.Client and Config.Admin, or neither")
	}
	l := &Log{
		client:     cfg.Client,
		tree:       cfg.TreeID,
		signer:     cfg.Signer,
		path:       cfg.StatePath,
		minPoll:    cfg.PollInterval,
		maxPoll:    cfg.MaxPollInterval,
		log:        cfg.Logger,
		tiles:      newTileCache(cfg.TileCacheSize),
		waiters:    map[leafID]*waiter{},
		verChanged: make(chan struct{}),
		kick:       make(chan struct{}, 1),
		verKick:    make(chan struct{}, 1),
		readKick:   make(chan struct{}, 1),
		stop:       make(chan struct{}),
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
	var seed [8]byte
	rand.Read(seed[:])
	l.ids.Store(binary.BigEndian.Uint64(seed[:]) >> 1)
	admin := cfg.Admin
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
		admin = trillian.NewTrillianAdminClient(conn)
	}
	typ, err := treeType(ctx, admin, l.tree)
	if err == nil {
		l.preordered = typ == trillian.TreeType_PREORDERED_LOG
		err = l.open(ctx, cfg.Adopt)
	}
	if err != nil {
		l.closeConn()
		return nil, err
	}
	if l.preordered {
		l.wg.Add(2)
		go l.write()
		go l.verify()
	} else {
		l.wg.Add(1)
		go l.integrate()
	}
	return l, nil
}

func (l *Log) closeConn() {
	if l.conn != nil {
		l.conn.Close()
	}
}

// openWait bounds how long New waits for Trillian's signer to integrate
// what the state file's checkpoint covers.
const openWait = time.Minute

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
	l.ver = verified{root: l.st.cp.Root, rng: l.rng}
	if l.preordered && l.st.cp.Size > 0 {
		// The Log acknowledges entries before Trillian's signer integrates
		// them: after a restart its checkpoint may be ahead of Trillian's
		// root for a moment.
		wctx, cancel := context.WithTimeout(ctx, openWait)
		err := l.awaitSize(wctx, l.st.cp.Size, true)
		cancel()
		if err != nil {
			return err
		}
	}
	_, err = l.sync(ctx)
	return err
}

// Close implements tlog.Backend. A batch being written is given the rest
// of its current attempt; then appends not yet sent fail with ErrClosed,
// and those in Trillian's hands with ErrUnsettled and ErrClosed. The state
// file always holds a complete signed checkpoint.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.stop)
	l.mu.Unlock()
	l.wg.Wait()
	l.mu.Lock()
	l.stopWaiters(ErrClosed)
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

// copyRange returns a copy of r that can be extended without changing r.
func copyRange(r *compact.Range) *compact.Range {
	c, err := rangeFactory.NewRange(r.Begin(), r.End(), append([][]byte(nil), r.Hashes()...))
	if err != nil {
		panic(err) // r is a valid range
	}
	return c
}
