package trillianlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/trillian"
	"github.com/hashicorp/go-hclog"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/transparency-dev/merkle/compact"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// MigrateConfig says which log Migrate moves where.
type MigrateConfig struct {
	// Addr, DialOptions, Client and Admin reach Trillian, as in Config.
	Addr        string
	DialOptions []grpc.DialOption
	Client      trillian.TrillianLogClient
	Admin       trillian.TrillianAdminClient

	// From is the tree the log is in now (a LOG tree, typically), and To
	// an active PREORDERED_LOG tree that nothing else writes to: new, or
	// holding what an interrupted Migrate copied. Required.
	From, To int64

	// StatePath is the Log's state file for From. Required. Migrate
	// rewrites it to name To.
	StatePath string

	// Logger receives progress. Optional; the default discards.
	Logger hclog.Logger
}

// Migrate moves a log from tree From to the pre-ordered tree To without
// changing a single checkpoint: it copies every leaf of From to the same
// index of To (with the same identity hash, so that running it again after
// an interruption resumes), checks while copying that the leaves hash to the
// checkpoint of the state file, waits for To's signer to integrate them and
// checks that To's root is From's, and only then rewrites the state file to
// name To. Clients, workers and auditors see no difference: the Merkle
// tree, the checkpoints and the proofs are the same.
//
// No kbsd may use From or To meanwhile (stop it first). Migrate copies what
// From has integrated: an entry still queued in From when it runs is not
// logged (an append that never returned, or failed with ErrUnsettled).
// From is left as it was; delete it once kbsd runs on To. A state file that
// already names To is left alone.
func Migrate(ctx context.Context, cfg MigrateConfig) error {
	if cfg.From <= 0 || cfg.To <= 0 || cfg.From == cfg.To {
		return fmt.Errorf("trillianlog: bad trees to migrate from %d to %d", cfg.From, cfg.To)
	}
	if cfg.StatePath == "" {
		return errors.New("trillianlog: MigrateConfig.StatePath is required")
	}
	if (cfg.Client == nil) != (cfg.Admin == nil) {
		return errors.New("trillianlog: set both MigrateConfig.Client and MigrateConfig.Admin, or neither")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	st, err := readState(cfg.StatePath)
	if err != nil {
		return err
	}
	switch st.TreeID {
	case cfg.To:
		logger.Info("the state file already names the new tree", "tree", cfg.To)
		return nil
	case cfg.From:
	default:
		return fmt.Errorf("trillianlog: state file %s belongs to tree %d, not %d", cfg.StatePath, st.TreeID, cfg.From)
	}
	// The checkpoint's signature is checked when kbsd opens the state
	// file; the key is not needed here.
	body, _, _ := bytes.Cut(st.Checkpoint, []byte("\n\n"))
	_, cpRoot, err := tlog.ParseCheckpoint(append(body, '\n'))
	if err != nil {
		return fmt.Errorf("trillianlog: state file %s: %w", cfg.StatePath, err)
	}

	client, admin := cfg.Client, cfg.Admin
	if client == nil {
		opts := cfg.DialOptions
		if len(opts) == 0 {
			opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		}
		conn, err := grpc.NewClient(cfg.Addr, opts...)
		if err != nil {
			return fmt.Errorf("trillianlog: couldn't connect to %s: %w", cfg.Addr, err)
		}
		defer conn.Close()
		client, admin = trillian.NewTrillianLogClient(conn), trillian.NewTrillianAdminClient(conn)
	}
	if typ, err := treeType(ctx, admin, cfg.To); err != nil {
		return err
	} else if typ != trillian.TreeType_PREORDERED_LOG {
		return fmt.Errorf("trillianlog: tree %d is a %s tree, not PREORDERED_LOG", cfg.To, typ)
	}
	if _, err := treeType(ctx, admin, cfg.From); err != nil {
		return err
	}
	reader := func(tree int64) *Log {
		return &Log{client: client, tree: tree, minPoll: 10 * time.Millisecond, maxPoll: time.Second, log: logger, stop: make(chan struct{})}
	}
	from, to := reader(cfg.From), reader(cfg.To)
	root, err := from.latestRoot(ctx)
	if err != nil {
		return err
	}
	if root.Size < cpRoot.Size {
		return fmt.Errorf("%w: tree %d has %d leaves, fewer than the %d of the state file's checkpoint", tlog.ErrConflict, cfg.From, root.Size, cpRoot.Size)
	}
	logger.Info("copying", "from", cfg.From, "to", cfg.To, "leaves", root.Size)

	rng := rangeFactory.NewEmptyRange(0)
	for next := uint64(0); next < root.Size; {
		leaves, err := from.leaves(ctx, next, min(root.Size-next, leavesPerCall))
		if err != nil {
			return err
		}
		req := &trillian.AddSequencedLeavesRequest{LogId: cfg.To}
		for i, lf := range leaves {
			if next+uint64(i) == cpRoot.Size {
				if err := checkRangeRoot(rng, cpRoot); err != nil {
					return fmt.Errorf("%w: tree %d's first %d leaves are not the state file's checkpoint", err, cfg.From, cpRoot.Size)
				}
			}
			if err := rng.Append(hasher.HashLeaf(lf.LeafValue), nil); err != nil {
				return err
			}
			req.Leaves = append(req.Leaves, &trillian.LogLeaf{LeafValue: lf.LeafValue, LeafIdentityHash: lf.LeafIdentityHash, LeafIndex: lf.LeafIndex})
		}
		results, err := to.addSequenced(req)
		if err != nil {
			return err
		}
		for i, r := range results {
			if !stored(r) {
				return fmt.Errorf("%w: tree %d already holds another leaf at index %d", tlog.ErrConflict, cfg.To, req.Leaves[i].LeafIndex)
			}
		}
		next += uint64(len(leaves))
		if next%(64*leavesPerCall) == 0 {
			logger.Info("copied", "leaves", next)
		}
	}
	if root.Size == cpRoot.Size {
		if err := checkRangeRoot(rng, cpRoot); err != nil {
			return fmt.Errorf("%w: tree %d's leaves are not the state file's checkpoint", err, cfg.From)
		}
	}
	if err := checkRangeRoot(rng, root); err != nil {
		return fmt.Errorf("%w: tree %d's leaves do not hash to its root", err, cfg.From)
	}

	logger.Info("waiting for the new tree's signer", "tree", cfg.To)
	if err := to.awaitSize(ctx, root.Size, true); err != nil {
		return err
	}
	got, err := to.latestRoot(ctx)
	if err != nil {
		return err
	}
	if got != root {
		return fmt.Errorf("%w: tree %d's root at size %d is not tree %d's", tlog.ErrConflict, cfg.To, got.Size, cfg.From)
	}
	st.TreeID = cfg.To
	if err := writeState(cfg.StatePath, st); err != nil {
		return err
	}
	logger.Info("migrated", "from", cfg.From, "to", cfg.To, "leaves", root.Size, "state", cfg.StatePath)
	return nil
}

// checkRangeRoot returns an error wrapping tlog.ErrConflict unless rng is
// the compact range of want's tree.
func checkRangeRoot(rng *compact.Range, want tlog.Root) error {
	if rng.End() != want.Size {
		return fmt.Errorf("%w: %d leaves, want %d", tlog.ErrConflict, rng.End(), want.Size)
	}
	h, err := rangeRoot(rng)
	if err != nil {
		return err
	}
	if h != want.Hash {
		return fmt.Errorf("%w: another root at size %d", tlog.ErrConflict, want.Size)
	}
	return nil
}
