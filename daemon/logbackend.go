package main

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/hashicorp/go-hclog"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/boltlog"
	"github.com/kbs-dev/kbs/tlog/trillianlog"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// openLog opens the transparency log backend that c selects: the embedded
// log in db, or a Trillian tree (docs/scale-out.md), whose state file
// defaults to DATA/trillian-state.json, over TLS when c.TrillianTLSCA is set.
func openLog(ctx context.Context, c *Config, db *bolt.DB, signer *tlog.CheckpointSigner, logger hclog.Logger) (tlog.Backend, error) {
	if c.LogBackend != "trillian" {
		return boltlog.New(db, boltlog.Config{Signer: signer})
	}
	state := c.TrillianState
	if state == "" {
		state = filepath.Join(c.Data, "trillian-state.json")
	}
	var opts []grpc.DialOption
	if c.TrillianTLSCA != "" {
		creds, err := credentials.NewClientTLSFromFile(c.TrillianTLSCA, "")
		if err != nil {
			return nil, fmt.Errorf("--trillian-tls-ca: %w", err)
		}
		opts = append(opts, grpc.WithTransportCredentials(creds))
	}
	logger.Info("using a Trillian log", "addr", c.TrillianAddr, "tls", c.TrillianTLSCA != "", "tree", c.TrillianTreeID, "state", state)
	return trillianlog.New(ctx, trillianlog.Config{
		Addr:        c.TrillianAddr,
		DialOptions: opts,
		TreeID:      c.TrillianTreeID,
		Signer:      signer,
		StatePath:   state,
		Adopt:       c.TrillianAdopt,
		Logger:      logger.Named("trillian"),
	})
}
