// Package boltlog is the embedded tlog.Backend: an RFC 6962 Merkle tree
// stored in a bbolt file, with group commit.
//
// # Storage
//
// The log lives under one top-level bucket (default "tlog") of a bbolt
// database, so it can share a file with other data (kbsd keeps keys, nonces
// and the log in one kbs.db). Inside it:
//
//   - "entries": index (8-byte big-endian) → the entry's exact bytes;
//   - "hashes": stored-hash index → 32-byte hash, in the layout of
//     golang.org/x/mod/sumdb/tlog (StoredHashIndex), whose code computes
//     every hash, root, proof and tile here;
//   - "meta": "checkpoint" → the latest signed checkpoint note.
//
// # Guarantees
//
// Appends are group-committed: one writer goroutine takes every append
// waiting while the previous commit ran, and writes their entries, their
// stored hashes and the new signed checkpoint in one bbolt transaction,
// which bbolt fsyncs before Commit returns. Append returns only after that.
// The checkpoint is signed inside the transaction by a tlog.CheckpointSigner
// given the previous checkpoint and a consistency proof from it, so the log
// never signs a checkpoint that contradicts one it persisted; since both
// are in the same transaction, the stored tree and the stored checkpoint
// always agree. If a commit fails, the log refuses further appends until it
// is reopened (an fsync failure leaves the file's state unknown), and the
// appends of that commit fail with an error wrapping tlog.ErrUnknownOutcome:
// their entries are in the reopened log or not, and only reading it tells.
//
// Open reads the stored checkpoint, verifies its signature, and recomputes
// its root from the stored hashes (O(log n) reads), so it is fast at any
// size and refuses a store whose tree does not match its checkpoint.
//
// # Trust
//
// The bbolt file is on the host's disk and thus untrusted: the host can roll
// it back or edit it. Open detects inconsistent edits, but not a whole-file
// rollback to an older, self-consistent state; clients and auditors holding
// a later checkpoint detect that (see tlog.Verifier).
package boltlog

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kbs-dev/kbs/tlog"
	sumdb "golang.org/x/mod/sumdb/tlog"

	bolt "go.etcd.io/bbolt"
)

// Config configures a Log.
type Config struct {
	// Signer signs the log's checkpoints. Required. Its origin is the
	// log's origin, and a store written with another origin or key is
	// refused.
	Signer *tlog.CheckpointSigner

	// Bucket is the name of the top-level bbolt bucket that holds the log.
	// Optional; the default is "tlog".
	Bucket string

	// MaxBatch is the largest number of entries committed in one
	// transaction. Optional; the default is 4096.
	MaxBatch int
}

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("boltlog: log is closed")

var (
	entriesBucket = []byte("entries")
	hashesBucket  = []byte("hashes")
	metaBucket    = []byte("meta")
	checkpointKey = []byte("checkpoint")
)

// Log is a tlog.Backend stored in bbolt. It is safe for concurrent use.
type Log struct {
	db     *bolt.DB
	ownDB  bool
	bucket []byte
	signer *tlog.CheckpointSigner
	max    int

	cp atomic.Pointer[tlog.SignedCheckpoint]

	// upper caches committed stored hashes of subtrees of at least
	// 2^cacheLevel leaves (immutable once committed), which most proofs
	// share; at most maxCached of them.
	upper  sync.Map // int64 → tlog.Hash
	cached atomic.Int64

	mu     sync.RWMutex // guards closed and sends on reqs
	closed bool
	reqs   chan *request
	done   chan struct{} // closed when the writer exits
	failed atomic.Pointer[error]
}

type request struct {
	entry []byte
	done  chan result
}

type result struct {
	index uint64
	cp    tlog.SignedCheckpoint
	err   error
}

var _ tlog.Backend = (*Log)(nil)

// Open opens (or creates) the bbolt file at path and the log in it. The Log
// owns the database and closes it on Close.
func Open(path string, cfg Config) (*Log, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:      5 * time.Second,
		FreelistType: bolt.FreelistMapType,
	})
	if err != nil {
		return nil, fmt.Errorf("boltlog: couldn't open %s: %w", path, err)
	}
	l, err := New(db, cfg)
	if err != nil {
		db.Close()
		return nil, err
	}
	l.ownDB = true
	return l, nil
}

// New opens the log stored in db, creating it (with a signed checkpoint of
// the empty tree) if the bucket does not exist. The caller keeps ownership
// of db: Close does not close it. db must not be opened with NoSync.
func New(db *bolt.DB, cfg Config) (*Log, error) {
	if cfg.Signer == nil {
		return nil, errors.New("boltlog: Config.Signer is required")
	}
	if db.NoSync {
		return nil, errors.New("boltlog: the database is opened with NoSync; appends would not be durable")
	}
	l := &Log{
		db:     db,
		bucket: []byte(cfg.Bucket),
		signer: cfg.Signer,
		max:    cfg.MaxBatch,
	}
	if len(l.bucket) == 0 {
		l.bucket = []byte("tlog")
	}
	if l.max <= 0 {
		l.max = 4096
	}
	if err := l.load(); err != nil {
		return nil, err
	}
	l.reqs = make(chan *request, l.max)
	l.done = make(chan struct{})
	go l.writer()
	return l, nil
}

func (l *Log) load() error {
	var cp *tlog.SignedCheckpoint
	err := l.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(l.bucket)
		if b == nil {
			return nil
		}
		c, err := l.check(b)
		cp = c
		return err
	})
	if err != nil {
		return err
	}
	if cp == nil {
		err := l.db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucket(l.bucket)
			if err != nil {
				return err
			}
			for _, name := range [][]byte{entriesBucket, hashesBucket, metaBucket} {
				if _, err := b.CreateBucket(name); err != nil {
					return err
				}
			}
			c, err := l.signer.Sign(nil, tlog.Root{Size: 0, Hash: tlog.EmptyRoot}, nil)
			if err != nil {
				return err
			}
			cp = &c
			return b.Bucket(metaBucket).Put(checkpointKey, c.Note)
		})
		if err != nil {
			return fmt.Errorf("boltlog: couldn't create the log: %w", err)
		}
	}
	l.cp.Store(cp)
	return nil
}

// check verifies a stored log: the checkpoint's signature and origin, the
// root recomputed from the stored hashes, and the number of stored entries
// and hashes.
func (l *Log) check(b *bolt.Bucket) (*tlog.SignedCheckpoint, error) {
	entries, hashes, meta := b.Bucket(entriesBucket), b.Bucket(hashesBucket), b.Bucket(metaBucket)
	if entries == nil || hashes == nil || meta == nil {
		return nil, fmt.Errorf("boltlog: bucket %q is not a log: sub-buckets missing", l.bucket)
	}
	note := meta.Get(checkpointKey)
	if note == nil {
		return nil, errors.New("boltlog: store has no checkpoint")
	}
	cp, err := tlog.OpenCheckpoint(note, l.signer.Origin(), l.signer.Verifier())
	if err != nil {
		return nil, fmt.Errorf("boltlog: stored checkpoint: %w", err)
	}
	n := int64(cp.Size)
	if k, _ := entries.Cursor().Last(); (n == 0) != (k == nil) || (k != nil && decodeKey(k) != n-1) {
		return nil, fmt.Errorf("boltlog: store does not hold exactly the %d entries of its checkpoint", n)
	}
	if k, _ := hashes.Cursor().Last(); (n == 0) != (k == nil) || (k != nil && decodeKey(k) != sumdb.StoredHashCount(n)-1) {
		return nil, fmt.Errorf("boltlog: store does not hold exactly the stored hashes of its %d entries", n)
	}
	if n > 0 {
		root, err := sumdb.TreeHash(n, &hashReader{b: hashes, limit: sumdb.StoredHashCount(n)})
		if err != nil {
			return nil, fmt.Errorf("boltlog: couldn't recompute the root: %w", err)
		}
		if root != cp.Hash {
			return nil, fmt.Errorf("boltlog: stored tree of size %d has root %x, its checkpoint says %x", n, root[:], cp.Hash[:])
		}
	}
	return &cp, nil
}

// Append implements tlog.Backend. Once the entry is queued, Append waits
// for its commit even if ctx is done, so that its answer is never "failed"
// for an entry that is in fact logged.
func (l *Log) Append(ctx context.Context, entry []byte) (uint64, tlog.SignedCheckpoint, error) {
	if err := tlog.CheckEntry(entry); err != nil {
		return 0, tlog.SignedCheckpoint{}, err
	}
	if err := l.failure(); err != nil {
		return 0, tlog.SignedCheckpoint{}, err
	}
	r := &request{entry: entry, done: make(chan result, 1)}
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		return 0, tlog.SignedCheckpoint{}, ErrClosed
	}
	select {
	case l.reqs <- r:
	case <-ctx.Done():
		l.mu.RUnlock()
		return 0, tlog.SignedCheckpoint{}, ctx.Err()
	}
	l.mu.RUnlock()
	res := <-r.done
	return res.index, res.cp, res.err
}

func (l *Log) failure() error {
	if p := l.failed.Load(); p != nil {
		return fmt.Errorf("boltlog: log stopped after a failed commit: %w", *p)
	}
	return nil
}

// maxBatchBytes bounds the entry bytes of one transaction.
const maxBatchBytes = 16 << 20

// writer commits queued appends in batches until reqs is closed. A batch
// takes every append waiting when the previous commit ends, up to MaxBatch
// entries and maxBatchBytes bytes.
func (l *Log) writer() {
	defer close(l.done)
	batch := make([]*request, 0, l.max)
	var carry *request
	for {
		if carry == nil {
			r, ok := <-l.reqs
			if !ok {
				return
			}
			carry = r
		}
		batch = append(batch[:0], carry)
		size := len(carry.entry)
		carry = nil
	fill:
		for len(batch) < l.max {
			select {
			case r, ok := <-l.reqs:
				if !ok {
					break fill
				}
				if size+len(r.entry) > maxBatchBytes {
					carry = r
					break fill
				}
				size += len(r.entry)
				batch = append(batch, r)
			default:
				break fill
			}
		}
		l.commitBatch(batch)
		clear(batch)
	}
}

func (l *Log) commitBatch(batch []*request) {
	if err := l.failure(); err != nil {
		for _, r := range batch {
			r.done <- result{err: err}
		}
		return
	}
	first, cp, err := l.commit(batch)
	if err != nil {
		l.failed.Store(&err)
		// A failed transaction may or may not have reached the disk (an
		// fsync error leaves the file's state unknown until it is reopened).
		err = fmt.Errorf("boltlog: couldn't commit (%w): %w", tlog.ErrUnknownOutcome, err)
		for _, r := range batch {
			r.done <- result{err: err}
		}
		return
	}
	l.cp.Store(&cp)
	for i, r := range batch {
		r.done <- result{index: first + uint64(i), cp: cloneCheckpoint(cp)}
	}
}

// commit writes batch, its stored hashes and a new signed checkpoint in one
// durable transaction.
func (l *Log) commit(batch []*request) (uint64, tlog.SignedCheckpoint, error) {
	last := l.cp.Load()
	var cp tlog.SignedCheckpoint
	err := l.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(l.bucket)
		if b == nil {
			return errors.New("log bucket disappeared")
		}
		entries, hashes, meta := b.Bucket(entriesBucket), b.Bucket(hashesBucket), b.Bucket(metaBucket)
		if string(meta.Get(checkpointKey)) != string(last.Note) {
			return errors.New("stored checkpoint changed behind the log's back")
		}
		entries.FillPercent = 1
		hashes.FillPercent = 1
		n := int64(last.Size)
		base := sumdb.StoredHashCount(n)
		r := &hashReader{b: hashes, limit: base, pendingBase: base, pending: make([]tlog.Hash, 0, 2*len(batch)+64)}
		keys := make([]byte, 8*len(batch))
		for i, req := range batch {
			hs, err := sumdb.StoredHashesForRecordHash(n+int64(i), sumdb.RecordHash(req.entry), r)
			if err != nil {
				return err
			}
			r.pending = append(r.pending, hs...)
			k := keys[8*i : 8*i+8]
			binary.BigEndian.PutUint64(k, uint64(n)+uint64(i))
			if err := entries.Put(k, req.entry); err != nil {
				return err
			}
		}
		hkeys := make([]byte, 8*len(r.pending))
		for j := range r.pending {
			k := hkeys[8*j : 8*j+8]
			binary.BigEndian.PutUint64(k, uint64(base)+uint64(j))
			if err := hashes.Put(k, r.pending[j][:]); err != nil {
				return err
			}
		}
		size := n + int64(len(batch))
		r.limit = base + int64(len(r.pending))
		root, err := sumdb.TreeHash(size, r)
		if err != nil {
			return err
		}
		var proof []tlog.Hash
		if n > 0 {
			if proof, err = sumdb.ProveTree(size, n, r); err != nil {
				return err
			}
		}
		cp, err = l.signer.Sign(last, tlog.Root{Size: uint64(size), Hash: root}, proof)
		if err != nil {
			return err
		}
		return meta.Put(checkpointKey, cp.Note)
	})
	return last.Size, cp, err
}

// Checkpoint implements tlog.Backend.
func (l *Log) Checkpoint(ctx context.Context) (tlog.SignedCheckpoint, error) {
	return cloneCheckpoint(*l.cp.Load()), nil
}

// cloneCheckpoint gives callers their own copy of the note, so that what
// they do with it cannot touch the log's record of its last checkpoint.
func cloneCheckpoint(cp tlog.SignedCheckpoint) tlog.SignedCheckpoint {
	cp.Note = bytes.Clone(cp.Note)
	return cp
}

// Entries implements tlog.Backend.
func (l *Log) Entries(ctx context.Context, start, end uint64) ([][]byte, error) {
	if start > end {
		return nil, fmt.Errorf("%w: entries [%d, %d)", tlog.ErrInvalidArgument, start, end)
	}
	if size := l.cp.Load().Size; end > size {
		return nil, fmt.Errorf("%w: entries [%d, %d) of a log of size %d", tlog.ErrOutOfRange, start, end, size)
	}
	out := make([][]byte, 0, end-start)
	err := l.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(l.bucket).Bucket(entriesBucket).Cursor()
		i := start
		for k, v := c.Seek(key(start)); i < end; k, v = c.Next() {
			if k == nil || decodeKey(k) != int64(i) {
				return fmt.Errorf("boltlog: entry %d missing from the store", i)
			}
			out = append(out, append([]byte(nil), v...))
			i++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// InclusionProof implements tlog.Backend.
func (l *Log) InclusionProof(ctx context.Context, index, treeSize uint64) ([]tlog.Hash, error) {
	if index >= treeSize {
		return nil, fmt.Errorf("%w: index %d is not below tree size %d", tlog.ErrInvalidArgument, index, treeSize)
	}
	if size := l.cp.Load().Size; treeSize > size {
		return nil, fmt.Errorf("%w: tree size %d, log size %d", tlog.ErrOutOfRange, treeSize, size)
	}
	var p []tlog.Hash
	err := l.read(int64(treeSize), func(r sumdb.HashReader) (err error) {
		p, err = sumdb.ProveRecord(int64(treeSize), int64(index), r)
		return err
	})
	return p, err
}

// ConsistencyProof implements tlog.Backend. The proof from size 0, or
// between equal sizes, is empty.
func (l *Log) ConsistencyProof(ctx context.Context, oldSize, newSize uint64) ([]tlog.Hash, error) {
	if oldSize > newSize {
		return nil, fmt.Errorf("%w: old size %d is above new size %d", tlog.ErrInvalidArgument, oldSize, newSize)
	}
	if size := l.cp.Load().Size; newSize > size {
		return nil, fmt.Errorf("%w: tree size %d, log size %d", tlog.ErrOutOfRange, newSize, size)
	}
	if oldSize == 0 || oldSize == newSize {
		return []tlog.Hash{}, nil
	}
	var p []tlog.Hash
	err := l.read(int64(newSize), func(r sumdb.HashReader) (err error) {
		p, err = sumdb.ProveTree(int64(newSize), int64(oldSize), r)
		return err
	})
	return p, err
}

// HashTile implements tlog.Backend.
func (l *Log) HashTile(ctx context.Context, level int, index uint64, width int) ([]byte, error) {
	if level < 0 || level > 63 || width < 1 || width > 256 {
		return nil, fmt.Errorf("%w: tile level %d width %d", tlog.ErrInvalidArgument, level, width)
	}
	size := l.cp.Load().Size
	var hashesAtLevel uint64 // complete hashes at stored level 8*level
	if level < 8 {
		hashesAtLevel = size >> (8 * level)
	}
	if index > hashesAtLevel/256 || index*256+uint64(width) > hashesAtLevel {
		return nil, fmt.Errorf("%w: tile %d/%d of width %d in a log of size %d", tlog.ErrOutOfRange, level, index, width, size)
	}
	var data []byte
	err := l.read(int64(size), func(r sumdb.HashReader) (err error) {
		data, err = sumdb.ReadTileData(sumdb.Tile{H: 8, L: level, N: int64(index), W: width}, r)
		return err
	})
	return data, err
}

// Verify checks the whole stored log: every entry hashes to its stored leaf
// hash, every stored interior hash is the hash of its children, and the
// root matches the checkpoint. It reads the whole log (O(n)); Open does the
// O(log n) part of these checks.
func (l *Log) Verify(ctx context.Context) error {
	cp := l.cp.Load()
	return l.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(l.bucket)
		if _, err := l.check(b); err != nil {
			return err
		}
		hashes := b.Bucket(hashesBucket)
		c := b.Bucket(entriesBucket).Cursor()
		r := &hashReader{b: hashes, limit: 0, pendingBase: 0, pending: make([]tlog.Hash, 0, sumdb.StoredHashCount(int64(cp.Size)))}
		var k [8]byte
		i := int64(0)
		for key, v := c.First(); key != nil && i < int64(cp.Size); key, v = c.Next() {
			if i%4096 == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
			if decodeKey(key) != i {
				return fmt.Errorf("boltlog: entry %d missing", i)
			}
			hs, err := sumdb.StoredHashes(i, v, r)
			if err != nil {
				return err
			}
			for j, h := range hs {
				x := int64(len(r.pending) + j)
				binary.BigEndian.PutUint64(k[:], uint64(x))
				if stored := hashes.Get(k[:]); string(stored) != string(h[:]) {
					return fmt.Errorf("boltlog: stored hash %d does not match entry %d", x, i)
				}
			}
			r.pending = append(r.pending, hs...)
			i++
		}
		if i != int64(cp.Size) {
			return fmt.Errorf("boltlog: %d entries stored, checkpoint says %d", i, cp.Size)
		}
		return nil
	})
}

const (
	cacheLevel = 6
	maxCached  = 1 << 18 // about 25 MB; covers logs of 8M entries
)

// read runs f with a reader of the stored hashes of the tree of size n.
func (l *Log) read(n int64, f func(sumdb.HashReader) error) error {
	return l.db.View(func(tx *bolt.Tx) error {
		return f(&hashReader{b: tx.Bucket(l.bucket).Bucket(hashesBucket), limit: sumdb.StoredHashCount(n), log: l})
	})
}

// Close implements tlog.Backend: it waits for queued appends to commit,
// stops the writer, and closes the database if Open opened it.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.reqs)
	l.mu.Unlock()
	<-l.done
	if l.ownDB {
		return l.db.Close()
	}
	return nil
}

// hashReader reads stored hashes below limit from a bucket, and those from
// pendingBase on from pending (hashes of the transaction being built).
type hashReader struct {
	b           *bolt.Bucket
	limit       int64
	pendingBase int64
	pending     []tlog.Hash
	log         *Log // if set, use and fill log.upper (committed reads only)
}

func (r *hashReader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	if out, ok := r.scan(indexes); ok {
		return out, nil
	}
	out := make([]tlog.Hash, len(indexes))
	var k [8]byte
	for i, x := range indexes {
		if x < 0 || x >= r.limit && !(r.pending != nil && x >= r.pendingBase && x < r.pendingBase+int64(len(r.pending))) {
			return nil, fmt.Errorf("boltlog: stored hash %d is beyond the tree", x)
		}
		if r.pending != nil && x >= r.pendingBase {
			out[i] = r.pending[x-r.pendingBase]
			continue
		}
		if r.log != nil {
			if h, ok := r.log.upper.Load(x); ok {
				out[i] = h.(tlog.Hash)
				continue
			}
		}
		binary.BigEndian.PutUint64(k[:], uint64(x))
		v := r.b.Get(k[:])
		if len(v) != len(out[i]) {
			return nil, fmt.Errorf("boltlog: stored hash %d is missing or corrupt", x)
		}
		copy(out[i][:], v)
		if r.log != nil && r.log.cached.Load() < maxCached {
			if level, _ := sumdb.SplitStoredHashIndex(x); level >= cacheLevel {
				if _, loaded := r.log.upper.LoadOrStore(x, out[i]); !loaded {
					r.log.cached.Add(1)
				}
			}
		}
	}
	return out, nil
}

// scan reads a dense, ascending run of committed stored hashes (such as a
// hash tile's) with one cursor walk instead of a lookup each. It reports
// false if indexes do not qualify or anything is amiss; ReadHashes then
// falls back to lookups, which report errors precisely.
func (r *hashReader) scan(indexes []int64) ([]tlog.Hash, bool) {
	n := len(indexes)
	if n < 16 || r.pending != nil || indexes[0] < 0 || indexes[n-1] >= r.limit || indexes[n-1]-indexes[0] > 4*int64(n) {
		return nil, false
	}
	for i := 1; i < n; i++ {
		if indexes[i] <= indexes[i-1] {
			return nil, false
		}
	}
	out := make([]tlog.Hash, n)
	c := r.b.Cursor()
	i := 0
	for k, v := c.Seek(key(uint64(indexes[0]))); k != nil && i < n; k, v = c.Next() {
		x := decodeKey(k)
		if x > indexes[i] {
			return nil, false // missing hash
		}
		if x == indexes[i] {
			if len(v) != len(out[i]) {
				return nil, false
			}
			copy(out[i][:], v)
			i++
		}
	}
	return out, i == n
}

func key(i uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, i)
}

func decodeKey(k []byte) int64 {
	if len(k) != 8 {
		return -1
	}
	return int64(binary.BigEndian.Uint64(k))
}
