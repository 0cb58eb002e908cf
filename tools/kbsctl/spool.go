package main

import (
	"bufio"
	"bytes"
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
)

// A spool keeps records (byte strings) in an unlinked temporary file, so
// that 'kbsctl audit' prints the events of a log of any length in bounded
// memory: they go to disk as the replay meets them and come back, in the
// same order, when the report is printed. Each record is its length
// (uvarint) and its bytes.
type spool struct {
	f   *os.File
	w   *bufio.Writer
	n   int
	err error // the first write error
}

func newSpool() (*spool, error) {
	f, err := os.CreateTemp("", "kbsctl-audit-*")
	if err != nil {
		return nil, fmt.Errorf("couldn't create a temporary file for the audit's events: %w", err)
	}
	// Unlinked at once: the file goes away with the process, whatever
	// happens to it.
	os.Remove(f.Name())
	return &spool{f: f, w: bufio.NewWriterSize(f, 256<<10)}, nil
}

// add appends a record.
func (s *spool) add(rec []byte) {
	if s.err != nil {
		return
	}
	var hdr [binary.MaxVarintLen64]byte
	if _, err := s.w.Write(hdr[:binary.PutUvarint(hdr[:], uint64(len(rec)))]); err != nil {
		s.err = err
		return
	}
	if _, err := s.w.Write(rec); err != nil {
		s.err = err
		return
	}
	s.n++
}

// each calls f with every record in order. The slice f gets is reused.
func (s *spool) each(f func(rec []byte) error) error {
	r, err := s.reader()
	if err != nil {
		return err
	}
	for {
		rec, err := r.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := f(rec); err != nil {
			return err
		}
	}
}

func (s *spool) reader() (*spoolReader, error) {
	if s.err != nil {
		return nil, fmt.Errorf("couldn't write the audit's events to a temporary file: %w", s.err)
	}
	if err := s.w.Flush(); err != nil {
		return nil, fmt.Errorf("couldn't write the audit's events to a temporary file: %w", err)
	}
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return &spoolReader{r: bufio.NewReaderSize(s.f, 256<<10)}, nil
}

func (s *spool) close() { s.f.Close() }

type spoolReader struct {
	r   *bufio.Reader
	buf []byte
}

func (r *spoolReader) next() ([]byte, error) {
	n, err := binary.ReadUvarint(r.r)
	if err != nil {
		return nil, err // io.EOF at a record boundary
	}
	if n > 64<<20 {
		return nil, errors.New("corrupt temporary file of the audit's events")
	}
	r.buf = slices.Grow(r.buf[:0], int(n))[:n]
	if _, err := io.ReadFull(r.r, r.buf); err != nil {
		return nil, fmt.Errorf("couldn't read the audit's events back: %w", err)
	}
	return r.buf, nil
}

// A sortedSpool returns its records sorted by key, records of one key in
// the order they were added: an external merge sort, with runs of
// sortRunBytes (in one buffer) sorted in memory and merged from disk.
type sortedSpool struct {
	run    []keyed
	arena  []byte // the bytes of the run's records, which point into it
	runs   []*spool
	merges int // merges of runs on disk, for the tests
	err    error
}

type keyed struct {
	key, rec []byte
}

// The size of a sorted run in memory, and the number of runs on disk that
// are merged into one (variables for the tests).
var (
	sortRunBytes = 4 << 20
	maxRuns      = 64
)

func (s *sortedSpool) add(key, rec []byte) {
	if s.arena == nil {
		s.arena = make([]byte, 0, sortRunBytes)
	}
	if len(s.arena)+len(key)+len(rec) > cap(s.arena) && len(s.run) > 0 {
		s.flushRun()
	}
	k := len(s.arena)
	s.arena = append(s.arena, key...)
	r := len(s.arena)
	s.arena = append(s.arena, rec...)
	s.run = append(s.run, keyed{s.arena[k:r:r], s.arena[r:len(s.arena):len(s.arena)]})
}

// flushRun writes the run in memory to disk, sorted; when there are
// maxRuns runs on disk, it merges them into one.
func (s *sortedSpool) flushRun() {
	if s.err != nil || len(s.run) == 0 {
		return
	}
	sortRun(s.run)
	sp, err := newSpool()
	if err != nil {
		s.err = err
		return
	}
	for _, k := range s.run {
		sp.add(appendKeyed(nil, k))
	}
	s.runs = append(s.runs, sp)
	s.run, s.arena = s.run[:0], s.arena[:0]
	if len(s.runs) >= maxRuns {
		merged, err := newSpool()
		if err != nil {
			s.err = err
			return
		}
		if err := mergeRuns(s.runs, nil, func(k keyed) error {
			merged.add(appendKeyed(nil, k))
			return merged.err
		}); err != nil {
			s.err = err
			return
		}
		for _, r := range s.runs {
			r.close()
		}
		s.runs = []*spool{merged}
		s.merges++
	}
}

// each calls f with every record, sorted by key.
func (s *sortedSpool) each(f func(rec []byte) error) error {
	if s.err != nil {
		return s.err
	}
	sortRun(s.run)
	return mergeRuns(s.runs, s.run, func(k keyed) error { return f(k.rec) })
}

func (s *sortedSpool) close() {
	for _, r := range s.runs {
		r.close()
	}
}

func sortRun(run []keyed) {
	slices.SortStableFunc(run, func(a, b keyed) int { return bytes.Compare(a.key, b.key) })
}

// appendKeyed encodes k as uvarint(len(key)), key, rec.
func appendKeyed(b []byte, k keyed) []byte {
	b = binary.AppendUvarint(b, uint64(len(k.key)))
	b = append(b, k.key...)
	return append(b, k.rec...)
}

func parseKeyed(b []byte) (keyed, error) {
	n, w := binary.Uvarint(b)
	if w <= 0 || uint64(len(b)-w) < n {
		return keyed{}, errors.New("corrupt temporary file of the audit's events")
	}
	return keyed{key: b[w : w+int(n)], rec: b[w+int(n):]}, nil
}

// mergeRuns merges sorted runs on disk and one in memory (the last, so
// the latest on ties), calling f in key order; on equal keys the earlier
// run comes first, so the merge is stable.
func mergeRuns(runs []*spool, mem []keyed, f func(keyed) error) error {
	h := &runHeap{}
	for i, r := range runs {
		rd, err := r.reader()
		if err != nil {
			return err
		}
		c := &runCursor{order: i, disk: rd}
		if err := c.advance(); err != nil {
			return err
		}
		if c.ok {
			h.cs = append(h.cs, c)
		}
	}
	if len(mem) > 0 {
		c := &runCursor{order: len(runs), mem: mem}
		if err := c.advance(); err != nil {
			return err
		}
		h.cs = append(h.cs, c)
	}
	heap.Init(h)
	for h.Len() > 0 {
		c := h.cs[0]
		if err := f(c.cur); err != nil {
			return err
		}
		if err := c.advance(); err != nil {
			return err
		}
		if c.ok {
			heap.Fix(h, 0)
		} else {
			heap.Pop(h)
		}
	}
	return nil
}

type runCursor struct {
	order int
	disk  *spoolReader
	mem   []keyed
	cur   keyed
	ok    bool
}

func (c *runCursor) advance() error {
	if c.disk == nil {
		c.ok = len(c.mem) > 0
		if c.ok {
			c.cur, c.mem = c.mem[0], c.mem[1:]
		}
		return nil
	}
	rec, err := c.disk.next()
	if err == io.EOF {
		c.ok = false
		return nil
	}
	if err != nil {
		return err
	}
	// The reader reuses its buffer: keep a copy.
	k, err := parseKeyed(bytes.Clone(rec))
	c.cur, c.ok = k, err == nil
	return err
}

type runHeap struct{ cs []*runCursor }

func (h *runHeap) Len() int { return len(h.cs) }
func (h *runHeap) Less(i, j int) bool {
	if c := bytes.Compare(h.cs[i].cur.key, h.cs[j].cur.key); c != 0 {
		return c < 0
	}
	return h.cs[i].order < h.cs[j].order
}
func (h *runHeap) Swap(i, j int) { h.cs[i], h.cs[j] = h.cs[j], h.cs[i] }
func (h *runHeap) Push(x any)    { h.cs = append(h.cs, x.(*runCursor)) }
func (h *runHeap) Pop() any {
	c := h.cs[len(h.cs)-1]
	h.cs = h.cs[:len(h.cs)-1]
	return c
}
