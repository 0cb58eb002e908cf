package tlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	sumdb "golang.org/x/mod/sumdb/tlog"
)

// A TileClient reads a log through its C2SP tlog-tiles HTTP API and
// verifies what it reads against a checkpoint the caller has verified.
// Nothing it returns is trusted before that verification.
type TileClient struct {
	prefix string
	hc     *http.Client
	// parallel is how many entry bundles Entries fetches at once.
	parallel int
}

// NewTileClient returns a client of the log served at prefix, such as
// "https://kbs.example/log" or "http://127.0.0.1:8443/log". hc may be nil
// for http.DefaultClient.
func NewTileClient(prefix string, hc *http.Client) *TileClient {
	if hc == nil {
		hc = http.DefaultClient
	}
	return &TileClient{prefix: strings.TrimSuffix(prefix, "/"), hc: hc, parallel: 8}
}

// Checkpoint fetches the log's latest checkpoint note. Verify it with
// OpenCheckpoint or Verifier.Advance before use.
func (c *TileClient) Checkpoint(ctx context.Context) ([]byte, error) {
	return c.get(ctx, "checkpoint", maxCheckpointSize)
}

// Tile fetches a hash tile or an entry bundle and checks its shape (a hash
// tile of exactly Width hashes, a bundle of exactly Width entries), not its
// contents.
func (c *TileClient) Tile(ctx context.Context, t TilePath) ([]byte, error) {
	if t.Width < 1 || t.Width > 256 {
		return nil, fmt.Errorf("%w: tile width %d", ErrInvalidArgument, t.Width)
	}
	if t.Entries {
		b, err := c.get(ctx, t.String(), t.Width*(2+MaxEntrySize))
		if err != nil {
			return nil, err
		}
		if _, err := DecodeBundle(b, t.Width); err != nil {
			return nil, fmt.Errorf("tlog: %s: %w", t, err)
		}
		return b, nil
	}
	b, err := c.get(ctx, t.String(), t.Width*32)
	if err != nil {
		return nil, err
	}
	if len(b) != t.Width*32 {
		return nil, fmt.Errorf("tlog: %s: tile is %d bytes, want %d", t, len(b), t.Width*32)
	}
	return b, nil
}

func (c *TileClient) get(ctx context.Context, path string, max int) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.prefix+"/"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("tlog: couldn't fetch %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("%w: %s: 404 Not Found", ErrOutOfRange, path)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("tlog: couldn't fetch %s: %s", path, resp.Status)
	}
	var buf bytes.Buffer
	if resp.ContentLength > 0 && resp.ContentLength <= int64(max) {
		buf.Grow(int(resp.ContentLength))
	}
	_, err = buf.ReadFrom(io.LimitReader(resp.Body, int64(max)+1))
	b := buf.Bytes()
	if err != nil {
		return nil, fmt.Errorf("tlog: couldn't fetch %s: %w", path, err)
	}
	if len(b) > max {
		return nil, fmt.Errorf("tlog: %s is larger than %d bytes", path, max)
	}
	return b, nil
}

// tileReader adapts a TileClient to sumdb's TileReader, caching the tiles
// that many reads share: those above level 0 and partial ones (the right
// edge of the tree). Cached tiles are only
// used through sumdb.TileHashReader, which authenticates them on every
// read.
type tileReader struct {
	ctx context.Context
	c   *TileClient

	mu    sync.Mutex
	cache map[sumdb.Tile]*cachedTile
}

type cachedTile struct {
	once sync.Once
	data []byte
	err  error
}

func (r *tileReader) Height() int { return TileHeight }

func (r *tileReader) ReadTiles(tiles []sumdb.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		p := TilePath{Level: t.L, N: uint64(t.N), Width: t.W}
		if t.L == 0 && t.W == 256 {
			d, err := r.c.Tile(r.ctx, p)
			if err != nil {
				return nil, err
			}
			out[i] = d
			continue
		}
		r.mu.Lock()
		ct := r.cache[t]
		if ct == nil {
			ct = &cachedTile{}
			r.cache[t] = ct
		}
		r.mu.Unlock()
		ct.once.Do(func() { ct.data, ct.err = r.c.Tile(r.ctx, p) })
		if ct.err != nil {
			r.mu.Lock()
			delete(r.cache, t)
			r.mu.Unlock()
			return nil, ct.err
		}
		out[i] = ct.data
	}
	return out, nil
}

func (r *tileReader) SaveTiles([]sumdb.Tile, [][]byte) {}

// HashReader returns a reader of the tree of cp's stored hashes, fetching
// tiles from the log and authenticating each against cp's root. It can
// build proofs with golang.org/x/mod/sumdb/tlog: ProveTree(cp.Size, n, r)
// is a consistency proof from size n that is already known to lead to cp.
func (c *TileClient) HashReader(ctx context.Context, cp SignedCheckpoint) sumdb.HashReader {
	return sumdb.TileHashReader(sumdb.Tree{N: int64(cp.Size), Hash: cp.Hash},
		&tileReader{ctx: ctx, c: c, cache: map[sumdb.Tile]*cachedTile{}})
}

// ConsistencyProof returns the consistency proof from oldSize to cp's
// size, computed from authenticated tiles. Check it against the old
// checkpoint with CheckConsistency, or let Verifier.Advance ask for it
// through Prover.
func (c *TileClient) ConsistencyProof(ctx context.Context, cp SignedCheckpoint, oldSize uint64) ([]Hash, error) {
	if oldSize > cp.Size {
		return nil, fmt.Errorf("%w: old size %d above %d", ErrInvalidArgument, oldSize, cp.Size)
	}
	if oldSize == 0 || oldSize == cp.Size {
		return []Hash{}, nil
	}
	p, err := sumdb.ProveTree(int64(cp.Size), int64(oldSize), c.HashReader(ctx, cp))
	if err != nil {
		return nil, fmt.Errorf("tlog: couldn't build consistency proof from tiles: %w", err)
	}
	return p, nil
}

// Prover returns a ProofSource of consistency proofs into the tree of cp
// (a verified checkpoint), computed from tiles authenticated against cp's
// root. It proves only to cp's size: pass it to Verifier.Advance with cp.
func (c *TileClient) Prover(cp SignedCheckpoint) ProofSource {
	return ProofFunc(func(ctx context.Context, oldSize, newSize uint64) ([]Hash, error) {
		if newSize != cp.Size {
			return nil, fmt.Errorf("%w: tiles of the tree of size %d prove nothing about size %d", ErrInvalidArgument, cp.Size, newSize)
		}
		return c.ConsistencyProof(ctx, cp, oldSize)
	})
}

// Sync fetches the log's latest checkpoint and advances v to it
// (Verifier.Advance), with consistency proofs from authenticated tiles. A
// rollback or fork is returned as a *ForkError.
func (c *TileClient) Sync(ctx context.Context, v *Verifier) (SignedCheckpoint, error) {
	msg, err := c.Checkpoint(ctx)
	if err != nil {
		return SignedCheckpoint{}, err
	}
	cp, err := v.VerifyCheckpoint(msg)
	if err != nil {
		return SignedCheckpoint{}, err
	}
	res, err := v.Advance(ctx, msg, c.Prover(cp), AdvanceOptions{})
	return res.Checkpoint, err
}

// Entries fetches the entries [start, cp.Size) of the tree of cp, verifies
// each against cp (every entry bundle against its level-0 hash tile, every
// tile up to cp's root), and calls f with each entry in index order. f
// sees only verified entries; an error from f stops the iteration and is
// returned. cp must already be verified (OpenCheckpoint, Verifier).
func (c *TileClient) Entries(ctx context.Context, cp SignedCheckpoint, start uint64, f func(index uint64, entry []byte) error) error {
	if start > cp.Size {
		return fmt.Errorf("%w: start %d above size %d", ErrInvalidArgument, start, cp.Size)
	}
	if start == cp.Size {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hr := c.HashReader(ctx, cp)
	first, last := start/256, (cp.Size-1)/256
	type bundle struct {
		entries [][]byte
		err     error
	}
	fetch := func(n uint64) bundle {
		w := int(min(cp.Size-n*256, 256))
		b, err := c.Tile(ctx, TilePath{Entries: true, N: n, Width: w})
		if err != nil {
			return bundle{err: err}
		}
		es, _ := DecodeBundle(b, w) // Tile checked the shape
		idx := make([]int64, w)
		for i := range idx {
			idx[i] = sumdb.StoredHashIndex(0, int64(n*256)+int64(i))
		}
		hs, err := hr.ReadHashes(idx)
		if err != nil {
			return bundle{err: fmt.Errorf("tlog: hash tile 0/%d does not verify against the checkpoint: %w", n, err)}
		}
		for i, e := range es {
			if sumdb.RecordHash(e) != hs[i] {
				return bundle{err: fmt.Errorf("tlog: entry %d in bundle %d does not match the log's tree", n*256+uint64(i), n)}
			}
		}
		return bundle{entries: es}
	}
	// Fetch up to c.parallel bundles ahead, deliver in order.
	results := make(chan chan bundle, c.parallel)
	go func() {
		defer close(results)
		for n := first; n <= last; n++ {
			ch := make(chan bundle, 1)
			select {
			case results <- ch:
			case <-ctx.Done():
				return
			}
			go func(n uint64) { ch <- fetch(n) }(n)
		}
	}()
	next := start
	for ch := range results {
		var b bundle
		select {
		case b = <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		if b.err != nil {
			return b.err
		}
		for i, e := range b.entries {
			idx := next - next%256 + uint64(i)
			if idx < next {
				continue
			}
			if err := f(idx, e); err != nil {
				return err
			}
		}
		next = next - next%256 + uint64(len(b.entries))
	}
	if next != cp.Size {
		if err := ctx.Err(); err != nil {
			return err
		}
		return errors.New("tlog: entries ended early")
	}
	return nil
}
