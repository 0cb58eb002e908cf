package worker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/inference"
)

// A Source is where a Keyring gets keys it does not hold: the broker.
type Source interface {
	// Status returns the broker's latest version of id and whether the
	// key is deleted. It is a cheap read that logs nothing.
	Status(ctx context.Context, id string) (latest uint64, deleted bool, err error)
	// Release obtains the latest version of id through a new attested
	// release, which the broker logs, and returns it.
	Release(ctx context.Context, id string) (*api.KeyFile, error)
}

// A KeyError is a key a Keyring cannot provide. Code is
// inference.CodeKeyRefused (the key is deleted, not served by this worker,
// or the version is not one it can get) or inference.CodeKeyUnavailable
// (the broker could not be asked now; a retry may succeed).
type KeyError struct {
	Code string
	Err  error
}

func (e *KeyError) Error() string { return e.Err.Error() }
func (e *KeyError) Unwrap() error { return e.Err }

// KeyringConfig configures a Keyring.
type KeyringConfig struct {
	// IDs are the key ids the worker serves. Required.
	IDs []string
	// Source fetches versions the keyring does not hold. Optional: without
	// it only the keys added with Add are served.
	Source Source
	// MaxVersions is how many versions of one id are kept: when a newer
	// one arrives beyond it, the oldest is forgotten. Optional; default 4.
	MaxVersions int
	// RetryAfter is how long a failed or fruitless lookup of an id is
	// remembered before the broker is asked again, so that requests
	// naming versions nobody holds cannot make the worker hammer the
	// broker (or its log with releases). Optional; default 5s.
	RetryAfter time.Duration
	// Now returns the current time. Optional; default clock.Now.
	Now func() time.Time
}

// A Keyring holds the prompt keys a worker decrypts with, by id and
// version, in memory only. A request naming a version it does not hold
// makes it ask the Source: if the broker's latest version is the one
// named (or newer) and the key is not deleted, a new attested release
// fetches it; a version older than the broker's latest cannot be fetched
// (the broker releases only the latest) and is refused. Versions are kept
// while they may still be needed (clients move to a new version one by
// one), up to MaxVersions per id; a deleted key is forgotten (Forget, from
// the log's key-delete entries, or when the broker says so). It is safe
// for concurrent use.
type Keyring struct {
	cfg KeyringConfig

	mu      sync.Mutex
	keys    map[string]map[uint64]*api.KeyFile
	deleted map[string]uint64 // versions up to this are deleted
	lookups map[string]*lookup
}

// lookup is one in-flight or recent question to the Source about an id.
type lookup struct {
	done   chan struct{}
	at     time.Time
	latest uint64 // the version the lookup obtained (0: none)
	err    error
}

// NewKeyring returns an empty keyring for cfg.IDs.
func NewKeyring(cfg KeyringConfig) (*Keyring, error) {
	if len(cfg.IDs) == 0 {
		return nil, errors.New("keyring: no key ids")
	}
	for _, id := range cfg.IDs {
		if err := api.ValidKeyID(id); err != nil {
			return nil, fmt.Errorf("keyring: %w", err)
		}
	}
	if cfg.MaxVersions <= 0 {
		cfg.MaxVersions = 4
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = clock.Now
	}
	r := &Keyring{cfg: cfg, keys: map[string]map[uint64]*api.KeyFile{}, deleted: map[string]uint64{}, lookups: map[string]*lookup{}}
	for _, id := range cfg.IDs {
		r.keys[id] = map[uint64]*api.KeyFile{}
	}
	return r, nil
}

// Add adds a key (a copy). A key of an id the keyring does not serve, or
// of a deleted version, is refused.
func (r *Keyring) Add(k *api.KeyFile) error {
	if len(k.Material) != 32 {
		return fmt.Errorf("key %s is %d bytes; prompts need 32-byte AES-256 keys", k.ID, len(k.Material))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.addLocked(k)
}

func (r *Keyring) addLocked(k *api.KeyFile) error {
	vs, ok := r.keys[k.ID]
	if !ok {
		return fmt.Errorf("this worker does not serve key %s", k.ID)
	}
	if k.Version <= r.deleted[k.ID] {
		return fmt.Errorf("key %s version %d is deleted", k.ID, k.Version)
	}
	vs[k.Version] = &api.KeyFile{ID: k.ID, Version: k.Version, Material: append([]byte(nil), k.Material...)}
	for len(vs) > r.cfg.MaxVersions {
		oldest := slices.Min(slices.Collect(maps.Keys(vs)))
		clear(vs[oldest].Material)
		delete(vs, oldest)
	}
	return nil
}

// Forget wipes and drops every version of id up to version (a key-delete
// entry deletes all versions up to the one it names) and refuses them from
// now on.
func (r *Keyring) Forget(id string, version uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	vs, ok := r.keys[id]
	if !ok {
		return
	}
	r.deleted[id] = max(r.deleted[id], version)
	for v, k := range vs {
		if v <= version {
			clear(k.Material)
			delete(vs, v)
		}
	}
}

// Versions returns the versions held of id, in ascending order.
func (r *Keyring) Versions(id string) []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(maps.Keys(r.keys[id]))
}

// IDs returns the key ids served.
func (r *Keyring) IDs() []string { return slices.Clone(r.cfg.IDs) }

// Wipe clears every key's material; the keyring holds nothing afterwards.
func (r *Keyring) Wipe() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, vs := range r.keys {
		for v, k := range vs {
			clear(k.Material)
			delete(vs, v)
		}
	}
}

func refused(format string, args ...any) error {
	return &KeyError{Code: inference.CodeKeyRefused, Err: fmt.Errorf(format, args...)}
}

// Get returns version of id, fetching it from the Source when the keyring
// does not hold it and the broker has it. The returned key must not be
// modified.
func (r *Keyring) Get(ctx context.Context, id string, version uint64) (*api.KeyFile, error) {
	for attempt := 0; ; attempt++ {
		r.mu.Lock()
		vs, ok := r.keys[id]
		if !ok {
			r.mu.Unlock()
			return nil, refused("this worker does not serve key %s (it serves %v)", id, r.cfg.IDs)
		}
		if k, ok := vs[version]; ok {
			r.mu.Unlock()
			return k, nil
		}
		if version <= r.deleted[id] {
			r.mu.Unlock()
			return nil, refused("key %s version %d is deleted", id, version)
		}
		if len(vs) > 0 && version < slices.Max(slices.Collect(maps.Keys(vs))) {
			r.mu.Unlock()
			return nil, refused("this worker does not hold key %s version %d, which is older than its newest version of it: the broker releases only the latest version", id, version)
		}
		if r.cfg.Source == nil || attempt > 0 {
			r.mu.Unlock()
			return nil, refused("this worker does not hold key %s version %d", id, version)
		}
		l, start := r.lookups[id], false
		now := r.cfg.Now()
		if l == nil || (isDone(l) && now.Sub(l.at) >= r.cfg.RetryAfter) {
			l, start = &lookup{done: make(chan struct{}), at: now}, true
			r.lookups[id] = l
		}
		r.mu.Unlock()
		if start {
			go r.fetch(id, version, l)
		}
		select {
		case <-l.done:
		case <-ctx.Done():
			return nil, &KeyError{Code: inference.CodeKeyUnavailable, Err: fmt.Errorf("waiting for key %s version %d: %w", id, version, ctx.Err())}
		}
		if l.err != nil {
			return nil, l.err
		}
		if l.latest < version {
			// A recent lookup found an older latest version: the one
			// named does not exist (yet).
			return nil, refused("the broker holds no version %d of key %s (its latest is %d)", version, id, l.latest)
		}
		// The lookup added the latest version; look again.
	}
}

func isDone(l *lookup) bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// fetch asks the Source about id on behalf of a request for version, and
// releases the latest version when the broker has one at least as new.
// It runs detached from the request, so that a cancelled request does not
// waste a logged release.
func (r *Keyring) fetch(id string, version uint64, l *lookup) {
	defer close(l.done)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	latest, deleted, err := r.cfg.Source.Status(ctx, id)
	switch {
	case err != nil:
		l.err = &KeyError{Code: inference.CodeKeyUnavailable, Err: fmt.Errorf("couldn't ask the broker about key %s: %w", id, err)}
		return
	case deleted:
		r.Forget(id, latest)
		l.err = refused("the broker deleted key %s", id)
		return
	case latest < version:
		l.latest = latest
		return
	}
	k, err := r.cfg.Source.Release(ctx, id)
	if err != nil {
		l.err = &KeyError{Code: inference.CodeKeyUnavailable, Err: fmt.Errorf("couldn't fetch key %s from the broker: %w", id, err)}
		return
	}
	defer clear(k.Material)
	if k.ID != id {
		l.err = &KeyError{Code: inference.CodeKeyUnavailable, Err: fmt.Errorf("asked for key %s, got %s", id, k.ID)}
		return
	}
	r.mu.Lock()
	err = r.addLocked(k)
	r.mu.Unlock()
	if err != nil {
		l.err = refused("%v", err)
		return
	}
	l.latest = k.Version
}
