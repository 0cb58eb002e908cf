package tlog

import (
	"context"
	"fmt"
	"sync"

	sumdb "golang.org/x/mod/sumdb/tlog"
)

// ReadVerified calls f with every entry of b in [start, cp.Size), in index
// order, each one checked first against the tree of cp: the entry's leaf
// hash must be the one in b's hash tiles, and every tile it relies on must
// hash up to cp's root (golang.org/x/mod/sumdb/tlog.TileHashReader). So f
// sees exactly the entries cp commits to, whatever the storage under b was
// made to hold. cp must be a checkpoint the caller trusts (one its own
// backend signed, or one verified with OpenCheckpoint). An error from f
// stops the reading and is returned.
//
// It is the broker-side counterpart of TileClient.Entries, for a process
// that reads its own log. A full bundle of 256 entries is checked by
// hashing it up to its subtree's root, which must be the one in the
// level-1 tile (authenticated up to cp's root once per 65,536 entries); a
// partial bundle, against its level-0 tile.
func ReadVerified(ctx context.Context, b Backend, cp SignedCheckpoint, start uint64, f func(index uint64, entry []byte) error) error {
	if start > cp.Size {
		return fmt.Errorf("%w: start %d above size %d", ErrInvalidArgument, start, cp.Size)
	}
	hr := sumdb.TileHashReader(sumdb.Tree{N: int64(cp.Size), Hash: cp.Hash}, &backendTiles{ctx: ctx, b: b, cache: map[sumdb.Tile][]byte{}})
	// subtrees holds authenticated roots of complete 256-entry subtrees
	// (stored hashes at level 8), read a level-1 tile at a time: a full
	// bundle of entries is checked by hashing it up to its subtree's root,
	// without reading its level-0 tile.
	subtrees := map[uint64]Hash{}
	full := cp.Size / 256
	idx := make([]int64, 0, 256)
	leaves := make([]Hash, 0, 256)
	for next := start; next < cp.Size; {
		n := next / 256
		end := min(cp.Size, (n+1)*256)
		entries, err := b.Entries(ctx, next, end)
		if err != nil {
			return fmt.Errorf("tlog: couldn't read entries [%d, %d): %w", next, end, err)
		}
		if uint64(len(entries)) != end-next {
			return fmt.Errorf("tlog: asked for entries [%d, %d), got %d", next, end, len(entries))
		}
		leaves = leaves[:0]
		for _, e := range entries {
			leaves = append(leaves, sumdb.RecordHash(e))
		}
		if next == n*256 && n < full {
			want, ok := subtrees[n]
			if !ok {
				idx = idx[:0]
				for k := n - n%256; k < min(n-n%256+256, full); k++ {
					idx = append(idx, sumdb.StoredHashIndex(8, int64(k)))
				}
				hs, err := hr.ReadHashes(idx)
				if err != nil {
					return fmt.Errorf("tlog: the log's hashes for entries [%d, %d) do not verify against its checkpoint of size %d: %w", next, end, cp.Size, err)
				}
				clear(subtrees)
				for i, h := range hs {
					subtrees[n-n%256+uint64(i)] = h
				}
				want = subtrees[n]
			}
			if subtreeRoot(leaves) != want {
				return fmt.Errorf("tlog: entries [%d, %d) do not match the log's tree of size %d (their bytes were changed)", next, end, cp.Size)
			}
		} else {
			idx = idx[:0]
			for i := next; i < end; i++ {
				idx = append(idx, sumdb.StoredHashIndex(0, int64(i)))
			}
			hs, err := hr.ReadHashes(idx)
			if err != nil {
				return fmt.Errorf("tlog: the log's hashes for entries [%d, %d) do not verify against its checkpoint of size %d: %w", next, end, cp.Size, err)
			}
			for i := range leaves {
				if leaves[i] != hs[i] {
					return fmt.Errorf("tlog: entry %d does not match the log's tree of size %d (its bytes were changed)", next+uint64(i), cp.Size)
				}
			}
		}
		for i, e := range entries {
			if err := f(next+uint64(i), e); err != nil {
				return err
			}
		}
		next = end
	}
	return nil
}

// subtreeRoot returns the RFC 6962 root of a complete subtree of leaf
// hashes (a power of two of them), hashing in place.
func subtreeRoot(hs []Hash) Hash {
	for n := len(hs); n > 1; n /= 2 {
		for i := 0; i < n/2; i++ {
			hs[i] = sumdb.NodeHash(hs[2*i], hs[2*i+1])
		}
	}
	return hs[0]
}

// backendTiles adapts a Backend to sumdb's TileReader. It keeps the tiles
// that many reads share (those above level 0, and partial ones); they are
// only used through sumdb.TileHashReader, which authenticates them on
// every read.
type backendTiles struct {
	ctx context.Context
	b   Backend

	mu    sync.Mutex
	cache map[sumdb.Tile][]byte
}

func (r *backendTiles) Height() int { return TileHeight }

func (r *backendTiles) ReadTiles(tiles []sumdb.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		keep := t.L > 0 || t.W < 256
		if keep {
			r.mu.Lock()
			out[i] = r.cache[t]
			r.mu.Unlock()
			if out[i] != nil {
				continue
			}
		}
		d, err := r.b.HashTile(r.ctx, t.L, uint64(t.N), t.W)
		if err != nil {
			return nil, err
		}
		if len(d) != 32*t.W {
			return nil, fmt.Errorf("tlog: hash tile %d/%d is %d bytes, want %d", t.L, t.N, len(d), 32*t.W)
		}
		if keep {
			r.mu.Lock()
			r.cache[t] = d
			r.mu.Unlock()
		}
		out[i] = d
	}
	return out, nil
}

func (r *backendTiles) SaveTiles([]sumdb.Tile, [][]byte) {}
