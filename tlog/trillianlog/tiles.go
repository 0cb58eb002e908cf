package trillianlog

import (
	"container/list"
	"context"
	"fmt"
	"sync"

	"github.com/kbs-dev/kbs/tlog"
)

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
		root, err := l.waitVerified(ctx, index*256+uint64(width))
		if err != nil {
			return nil, err
		}
		vs, err := l.verifiedEntries(ctx, root, index*256+uint64(len(hs)), index*256+uint64(width))
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
