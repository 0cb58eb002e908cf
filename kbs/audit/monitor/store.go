package monitor

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// The state file is one bbolt database: bucket "meta" holds the log's
// note key, the verified checkpoint, the replayer's snapshot, the rules'
// state, the last alert's Seq and each sink's cursor (the last Seq it
// delivered); bucket "alerts" holds the alerts by Seq (big-endian), as
// the JSON bytes that are delivered. Every step of the monitor is one
// fsync'd transaction.
var (
	bucketMeta   = []byte("meta")
	bucketAlerts = []byte("alerts")

	keyNoteKey    = []byte("note_key")
	keyCheckpoint = []byte("checkpoint")
	keyReplayer   = []byte("replayer")
	keyEngine     = []byte("engine")
	keySeq        = []byte("seq")
	cursorPrefix  = "cursor/"
)

// keepDelivered is how many delivered alerts the state keeps (for
// 'kbsctl monitor --list' and a sink added later).
const keepDelivered = 1000

type store struct {
	db *bbolt.DB
}

// stored is what a monitor's state file holds.
type stored struct {
	checkpoint []byte
	replayer   []byte
	engine     engineState
	seq        uint64
}

// ErrStateLocked reports a state file that another monitor process has
// open.
var ErrStateLocked = errors.New("monitor: the state file is in use by another monitor")

func openStore(path, noteKey string) (*store, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 2 * time.Second})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s", ErrStateLocked, path)
	}
	if err != nil {
		return nil, fmt.Errorf("monitor: couldn't open the state file: %w", err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(bucketAlerts); err != nil {
			return err
		}
		switch k := meta.Get(keyNoteKey); {
		case k == nil:
			return meta.Put(keyNoteKey, []byte(noteKey))
		case string(k) != noteKey:
			return fmt.Errorf("monitor: the state file %s follows the log with key %s, not %s", path, k, noteKey)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return &store{db: db}, nil
}

func (s *store) close() error { return s.db.Close() }

func (s *store) load() (*stored, error) {
	st := &stored{}
	err := s.db.View(func(tx *bbolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		st.checkpoint = bytes.Clone(meta.Get(keyCheckpoint))
		st.replayer = bytes.Clone(meta.Get(keyReplayer))
		if b := meta.Get(keyEngine); b != nil {
			if err := json.Unmarshal(b, &st.engine); err != nil {
				return fmt.Errorf("monitor: the rules' state: %w", err)
			}
		}
		if b := meta.Get(keySeq); len(b) == 8 {
			st.seq = binary.BigEndian.Uint64(b)
		}
		return nil
	})
	return st, err
}

// step is what one step of the monitor commits.
type step struct {
	checkpoint []byte // nil: unchanged
	replayer   []byte // nil: unchanged
	engine     *engineState
	alerts     []Alert // numbered, from the stored seq + 1
}

func seqKey(n uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, n)
}

// commit stores a step in one transaction.
func (s *store) commit(c step) error {
	return s.db.Update(func(tx *bbolt.Tx) error {
		meta, alerts := tx.Bucket(bucketMeta), tx.Bucket(bucketAlerts)
		if c.checkpoint != nil {
			if err := meta.Put(keyCheckpoint, c.checkpoint); err != nil {
				return err
			}
		}
		if c.replayer != nil {
			if err := meta.Put(keyReplayer, c.replayer); err != nil {
				return err
			}
		}
		if c.engine != nil {
			b, err := json.Marshal(c.engine)
			if err != nil {
				return err
			}
			if err := meta.Put(keyEngine, b); err != nil {
				return err
			}
		}
		for _, a := range c.alerts {
			b, err := json.Marshal(a)
			if err != nil {
				return err
			}
			if err := alerts.Put(seqKey(a.Seq), b); err != nil {
				return err
			}
		}
		if n := len(c.alerts); n > 0 {
			return meta.Put(keySeq, seqKey(c.alerts[n-1].Seq))
		}
		return nil
	})
}

// cursor returns the last Seq delivered to sink; a sink seen for the first
// time starts after the alerts raised so far (it is given the state's
// seq), so a webhook added later does not receive the past.
func (s *store) cursor(sink string, seq uint64) (uint64, error) {
	var n uint64
	err := s.db.Update(func(tx *bbolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		k := []byte(cursorPrefix + sink)
		if b := meta.Get(k); len(b) == 8 {
			n = binary.BigEndian.Uint64(b)
			return nil
		}
		n = seq
		return meta.Put(k, seqKey(n))
	})
	return n, err
}

// delivered records that sink delivered every alert up to seq, and drops
// alerts that every sink of this run has delivered, except the last
// keepDelivered.
func (s *store) delivered(sink string, seq uint64, sinks []string) error {
	return s.db.Update(func(tx *bbolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if err := meta.Put([]byte(cursorPrefix+sink), seqKey(seq)); err != nil {
			return err
		}
		low := seq
		for _, o := range sinks {
			if b := meta.Get([]byte(cursorPrefix + o)); len(b) == 8 {
				low = min(low, binary.BigEndian.Uint64(b))
			}
		}
		if low <= keepDelivered {
			return nil
		}
		c := tx.Bucket(bucketAlerts).Cursor()
		for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) <= low-keepDelivered; k, _ = c.First() {
			if err := c.Delete(); err != nil {
				return err
			}
		}
		return nil
	})
}

// alertsAfter returns up to max stored alerts after seq, in order.
func (s *store) alertsAfter(seq uint64, max int) ([][]byte, uint64, error) {
	var out [][]byte
	last := seq
	err := s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketAlerts).Cursor()
		for k, v := c.Seek(seqKey(seq + 1)); k != nil && len(out) < max; k, v = c.Next() {
			out = append(out, bytes.Clone(v))
			last = binary.BigEndian.Uint64(k)
		}
		return nil
	})
	return out, last, err
}
