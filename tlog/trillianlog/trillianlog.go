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
// acknowledged entry: an entry queued but not acknowledged may still appear
// in the log later, which is harmless (logging without releasing).
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
	"context"
	"errors"
	"fmt"
	"sync"
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
			w.err = ErrClosed
			close(w.done)
		}
		delete(l.waiters, id)
	}
	l.mu.Unlock()
	l.closeConn()
	return nil
}
