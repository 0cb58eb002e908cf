package tlog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	sumdb "golang.org/x/mod/sumdb/tlog"
)

// A TileClient reads a log through its C2SP tlog-tiles HTTP API and
// verifies what it reads against a checkpoint the caller has verified.
// Nothing it returns is trusted before that verification.
//
// It is built for hostile servers: it never follows a redirect, reads
// every answer up to the largest size the resource can have, bounds the
// entry data it holds (Entries), and bounds Sync by a deadline. Failures
// to get an answer (the server unreachable, a timeout, an error status, a
// body too large or cut short, a redirect) are *FetchError; an answer
// that arrived but does not verify is any other error.
type TileClient struct {
	prefix string
	hc     *http.Client
	// parallel is how many entry bundles Entries fetches at once.
	parallel int
	// maxBuffered bounds the bytes of fetched entry bundles that Entries
	// holds before their entries are delivered.
	maxBuffered int64
	// peakBuffered is the most Entries ever held (for the tests).
	peakBuffered atomic.Int64
}

// DefaultMaxBuffered bounds the entry bundles TileClient.Entries holds
// ahead of the bundle it delivers: 16 MiB (64 bundles of 1 KiB entries,
// one of the largest).
const DefaultMaxBuffered = 16 << 20

// DefaultSyncTimeout bounds TileClient.Sync when its context has no
// earlier deadline.
const DefaultSyncTimeout = 2 * time.Minute

// tileClientTimeout bounds each request of a TileClient made without an
// HTTP client.
const tileClientTimeout = 30 * time.Second

// ErrRedirect is the error (inside a *FetchError) for an answer that
// redirects: a TileClient never follows one, since a log's resources live
// at fixed paths under its prefix.
var ErrRedirect = errors.New("the server answered with a redirect, which kbs clients never follow")

// NewTileClient returns a client of the log served at prefix, such as
// "https://kbs.example/log" or "http://127.0.0.1:8443/log". hc may be nil
// for a client with a 30 s timeout per request. Whatever hc's redirect
// policy, the TileClient never follows a redirect.
func NewTileClient(prefix string, hc *http.Client) *TileClient {
	var c http.Client
	if hc != nil {
		c = *hc
	} else {
		c.Timeout = tileClientTimeout
	}
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return ErrRedirect }
	return &TileClient{prefix: strings.TrimSuffix(prefix, "/"), hc: &c, parallel: 8, maxBuffered: DefaultMaxBuffered}
}

// SetMaxBuffered sets how many bytes of fetched entry bundles Entries may
// hold ahead of the one it delivers (default DefaultMaxBuffered); the
// bundle being delivered, up to 256 entries of MaxEntrySize, comes on top.
// n below 1 MiB is taken as 1 MiB.
func (c *TileClient) SetMaxBuffered(n int64) { c.maxBuffered = max(n, 1<<20) }

// A FetchError reports that a resource of the log could not be fetched:
// the server was unreachable, the request timed out or was canceled, the
// answer had an error status (Status) or a redirect, or its body was larger
// than the resource can be or ended early. It says nothing about the
// log's contents. A 404 wraps ErrOutOfRange.
type FetchError struct {
	// Path is the resource, relative to the log prefix ("checkpoint",
	// "tile/0/000").
	Path string
	// Status is the HTTP status of the answer, 0 if there was none.
	Status int
	Err    error
}

func (e *FetchError) Error() string {
	return fmt.Sprintf("tlog: couldn't fetch %s: %v", e.Path, e.Err)
}

func (e *FetchError) Unwrap() error { return e.Err }

// Checkpoint fetches the log's latest checkpoint note. Verify it with
// OpenCheckpoint or Verifier.Advance before use.
func (c *TileClient) Checkpoint(ctx context.Context) ([]byte, error) {
	return c.get(ctx, "checkpoint", maxCheckpointSize, nil)
}

// Tile fetches a hash tile or an entry bundle and checks its shape (a hash
// tile of exactly Width hashes, a bundle of exactly Width entries), not its
// contents. A path beyond MaxTreeSize (TilePath.Check) is refused without
// a request.
func (c *TileClient) Tile(ctx context.Context, t TilePath) ([]byte, error) {
	return c.tile(ctx, t, nil)
}

func (c *TileClient) tile(ctx context.Context, t TilePath, reserve func(int) error) ([]byte, error) {
	if err := t.Check(); err != nil {
		return nil, err
	}
	if t.Entries {
		b, err := c.get(ctx, t.String(), t.Width*(2+MaxEntrySize), reserve)
		if err != nil {
			return nil, err
		}
		if _, err := DecodeBundle(b, t.Width); err != nil {
			return nil, fmt.Errorf("tlog: %s: %w", t, err)
		}
		return b, nil
	}
	b, err := c.get(ctx, t.String(), t.Width*32, reserve)
	if err != nil {
		return nil, err
	}
	if len(b) != t.Width*32 {
		return nil, fmt.Errorf("tlog: %s: tile is %d bytes, want %d", t, len(b), t.Width*32)
	}
	return b, nil
}

// get fetches path, reading at most max bytes of its body. reserve, if
// not nil, is called before the read buffer grows by n bytes, and may
// wait or fail.
func (c *TileClient) get(ctx context.Context, path string, max int, reserve func(n int) error) ([]byte, error) {
	fail := func(status int, err error) error { return &FetchError{Path: path, Status: status, Err: err} }
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.prefix+"/"+path, nil)
	if err != nil {
		return nil, fail(0, err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fail(0, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, fail(resp.StatusCode, fmt.Errorf("%w: 404 Not Found", ErrOutOfRange))
	case resp.StatusCode != http.StatusOK:
		return nil, fail(resp.StatusCode, errors.New(resp.Status))
	}
	b, err := readLimited(resp.Body, max, resp.ContentLength, reserve)
	if err != nil {
		return nil, fail(resp.StatusCode, err)
	}
	return b, nil
}

// readLimited reads r to its end into a buffer of at most max bytes, sized
// by the announced length when it is plausible, calling reserve before
// each growth of the buffer.
func readLimited(r io.Reader, max int, announced int64, reserve func(int) error) ([]byte, error) {
	size := 4 << 10
	if announced > 0 && announced <= int64(max) {
		size = int(announced) + 1 // +1 to see the end without growing
	}
	size = min(size, max+1)
	if reserve != nil {
		if err := reserve(size); err != nil {
			return nil, err
		}
	}
	buf := make([]byte, 0, size)
	for {
		if len(buf) == cap(buf) {
			if len(buf) > max {
				return nil, fmt.Errorf("answer larger than %d bytes", max)
			}
			grow := min(2*cap(buf), max+1) - cap(buf)
			if reserve != nil {
				if err := reserve(grow); err != nil {
					return nil, err
				}
			}
			nb := make([]byte, len(buf), len(buf)+grow)
			copy(nb, buf)
			buf = nb
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			if len(buf) > max {
				return nil, fmt.Errorf("answer larger than %d bytes", max)
			}
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
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
// rollback or fork is returned as a *ForkError. It gives up after
// DefaultSyncTimeout unless ctx ends earlier.
func (c *TileClient) Sync(ctx context.Context, v *Verifier) (SignedCheckpoint, error) {
	ctx, cancel := WithDefaultTimeout(ctx, DefaultSyncTimeout)
	defer cancel()
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

// WithDefaultTimeout returns ctx with a deadline d from now, unless ctx
// already ends earlier, or d is 0 or less.
func WithDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); d <= 0 || (ok && time.Until(dl) <= d) {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// Entries fetches the entries [start, cp.Size) of the tree of cp, verifies
// each against cp (every entry bundle against its level-0 hash tile, every
// tile up to cp's root), and calls f with each entry in index order. f
// sees only verified entries; an error from f stops the iteration and is
// returned. cp must already be verified (OpenCheckpoint, Verifier).
//
// Entries fetches up to 8 bundles ahead of the one it delivers, holding at
// most SetMaxBuffered bytes of them (default DefaultMaxBuffered) on top of
// the one it delivers (read into a buffer of up to twice its size, at most
// 32 MiB); an entry f keeps after it returns keeps its bundle's memory
// alive, so a caller that holds entries should copy them.
func (c *TileClient) Entries(ctx context.Context, cp SignedCheckpoint, start uint64, f func(index uint64, entry []byte) error) error {
	if start > cp.Size {
		return fmt.Errorf("%w: start %d above size %d", ErrInvalidArgument, start, cp.Size)
	}
	if start == cp.Size {
		return nil
	}
	if cp.Size > MaxTreeSize {
		return fmt.Errorf("%w: tree size %d", ErrInvalidArgument, cp.Size)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hr := c.HashReader(ctx, cp)
	first, last := start/256, (cp.Size-1)/256
	buf := newByteBudget(ctx, c.maxBuffered, first, &c.peakBuffered)
	type bundle struct {
		entries [][]byte
		size    int // bytes reserved for it
		err     error
	}
	fetch := func(n uint64) bundle {
		w := int(min(cp.Size-n*256, 256))
		size := 0
		b, err := c.tile(ctx, TilePath{Entries: true, N: n, Width: w}, func(k int) error {
			if err := buf.acquire(n, k); err != nil {
				return err
			}
			size += k
			return nil
		})
		if err != nil {
			return bundle{size: size, err: err}
		}
		es, _ := DecodeBundle(b, w) // tile checked the shape
		idx := make([]int64, w)
		for i := range idx {
			idx[i] = sumdb.StoredHashIndex(0, int64(n*256)+int64(i))
		}
		hs, err := hr.ReadHashes(idx)
		if err != nil {
			var fe *FetchError
			if errors.As(err, &fe) {
				return bundle{size: size, err: err}
			}
			return bundle{size: size, err: fmt.Errorf("tlog: hash tile 0/%d does not verify against the checkpoint: %w", n, err)}
		}
		for i, e := range es {
			if sumdb.RecordHash(e) != hs[i] {
				return bundle{size: size, err: fmt.Errorf("tlog: entry %d in bundle %d does not match the log's tree", n*256+uint64(i), n)}
			}
		}
		return bundle{entries: es, size: size}
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
		buf.advance(next / 256)
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
		buf.release(b.size)
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

// byteBudget bounds the bytes of bundles fetched ahead of the one Entries
// delivers (the head), which never waits: so the head always completes,
// and the others wait for what it gives back.
type byteBudget struct {
	mu    sync.Mutex
	cond  *sync.Cond
	used  int64
	limit int64
	head  uint64
	done  error
	peak  *atomic.Int64
}

func newByteBudget(ctx context.Context, limit int64, head uint64, peak *atomic.Int64) *byteBudget {
	b := &byteBudget{limit: limit, head: head, peak: peak}
	b.cond = sync.NewCond(&b.mu)
	context.AfterFunc(ctx, func() {
		b.mu.Lock()
		b.done = ctx.Err()
		b.cond.Broadcast()
		b.mu.Unlock()
	})
	return b
}

// acquire takes k bytes for bundle n, waiting while n is not the head and
// the budget is spent.
func (b *byteBudget) acquire(n uint64, k int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for n != b.head && b.used+int64(k) > b.limit && b.done == nil {
		b.cond.Wait()
	}
	if b.done != nil {
		return b.done
	}
	b.used += int64(k)
	if b.used > b.peak.Load() {
		b.peak.Store(b.used)
	}
	return nil
}

func (b *byteBudget) release(k int) {
	b.mu.Lock()
	b.used -= int64(k)
	b.cond.Broadcast()
	b.mu.Unlock()
}

func (b *byteBudget) advance(head uint64) {
	b.mu.Lock()
	b.head = head
	b.cond.Broadcast()
	b.mu.Unlock()
}
