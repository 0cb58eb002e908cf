package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/tlog"
)

// BrokerSource is the Source of a worker's keys: the broker, reached
// through kbs/client.
type BrokerSource struct {
	// Verify verifies the broker afresh (as 'kbsctl verify' does, against
	// the worker's own manifest) and returns it. Release calls it before
	// every release, so that a new release follows the broker's current,
	// verified manifest. Required.
	Verify func(ctx context.Context) (*client.Broker, error)
	// Issuer produces this worker's evidence. Required.
	Issuer attest.Issuer
	// KEM is the HPKE KEM of the release's ephemeral key
	// (api.KEMX25519 or api.KEMMLKEM768X25519). Optional; default X25519.
	KEM uint16
	// Released is called with every verified release before its key is
	// used (to keep the receipt). Optional.
	Released func(*client.Released) error

	mu sync.Mutex
	b  *client.Broker
}

// SetBroker sets the verified broker that Status and Deletions use until
// the next release verifies it again.
func (s *BrokerSource) SetBroker(b *client.Broker) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = b
}

func (s *BrokerSource) broker(ctx context.Context) (*client.Broker, error) {
	s.mu.Lock()
	b := s.b
	s.mu.Unlock()
	if b != nil {
		return b, nil
	}
	b, err := s.Verify(ctx)
	if err != nil {
		return nil, err
	}
	s.SetBroker(b)
	return b, nil
}

// Status reads what the broker says about key id (GET /v1/keys/{id} over
// the connection pinned by the verification): its latest version and
// whether it is deleted; 0 for a key it does not hold.
func (s *BrokerSource) Status(ctx context.Context, id string) (uint64, bool, error) {
	b, err := s.broker(ctx)
	if err != nil {
		return 0, false, err
	}
	k, err := b.Client().Key(ctx, id)
	var ae *api.Error
	if errors.As(err, &ae) && ae.Code == api.CodeNotFound {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	return k.Version, k.Deleted, nil
}

// Release verifies the broker again, then runs a release of id
// (client.Broker.FetchKeys: attest, unseal, verify the receipt).
func (s *BrokerSource) Release(ctx context.Context, id string) (*api.KeyFile, error) {
	if s.Issuer == nil {
		return nil, errors.New("no evidence issuer")
	}
	b, err := s.Verify(ctx)
	if err != nil {
		return nil, err
	}
	s.SetBroker(b)
	kem := s.KEM
	if kem == 0 {
		kem = api.KEMX25519
	}
	rel, err := b.FetchKeys(ctx, s.Issuer, []string{id}, kem)
	if err != nil {
		return nil, err
	}
	if s.Released != nil {
		if err := s.Released(rel); err != nil {
			for _, k := range rel.Keys {
				clear(k.Material)
			}
			return nil, err
		}
	}
	if len(rel.Keys) != 1 {
		return nil, fmt.Errorf("asked for 1 key, got %d", len(rel.Keys))
	}
	k := rel.Keys[0]
	return &api.KeyFile{ID: k.ID, Version: k.Version, Material: k.Material}, nil
}

// Deletions reads the broker's log from index from to its latest
// checkpoint (verified: the checkpoint's signature and its consistency
// with the stored one, every entry against it) and returns the key-delete
// entries among them, and the index to read from next.
func (s *BrokerSource) Deletions(ctx context.Context, from uint64) ([]tlog.KeyRef, uint64, error) {
	b, err := s.broker(ctx)
	if err != nil {
		return nil, from, err
	}
	tiles := b.Client().Tiles()
	cp, err := tiles.Sync(ctx, b.Log())
	if err != nil {
		return nil, from, err
	}
	if from >= cp.Size {
		return nil, cp.Size, nil
	}
	var out []tlog.KeyRef
	err = tiles.Entries(ctx, cp, from, func(_ uint64, raw []byte) error {
		e, err := tlog.DecodeEntry(raw)
		if err != nil {
			// The audit judges malformed entries; a worker only looks
			// for deletions.
			return nil
		}
		if e.Type == tlog.TypeKeyDelete && e.KeyDelete != nil {
			out = append(out, tlog.KeyRef{ID: e.KeyDelete.ID, Version: e.KeyDelete.Version})
		}
		return nil
	})
	if err != nil {
		return nil, from, err
	}
	return out, cp.Size, nil
}

// FollowDeletions reads the broker's log every interval, from index
// from, and makes r forget every key a key-delete entry deletes, until ctx
// is done. Errors are logged and retried at the next interval.
func FollowDeletions(ctx context.Context, s *BrokerSource, r *Keyring, from uint64, interval time.Duration, log hclog.Logger) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		dels, next, err := s.Deletions(ctx, from)
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("couldn't read the broker's log for key deletions", "error", err)
			}
			continue
		}
		for _, d := range dels {
			log.Info("key deleted by its client: forgotten", "key", d.ID, "version", d.Version)
			r.Forget(d.ID, d.Version)
		}
		from = next
	}
}
