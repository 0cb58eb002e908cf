package tlog

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/kbs-dev/kbs/internal/atomicfile"
)

// A ForkError reports that a log showed two views that cannot both be
// honest: a checkpoint smaller than one verified before (Rollback), another
// root for the same size, or a larger tree without a valid consistency
// proof from the verified one. Old and New carry both signed notes as
// evidence.
type ForkError struct {
	Old, New SignedCheckpoint
	// Rollback is true when New is smaller than Old.
	Rollback bool
	// Reason says what failed.
	Reason string
}

func (e *ForkError) Error() string {
	kind := "forked"
	if e.Rollback {
		kind = "rolled back"
	}
	return fmt.Sprintf("tlog: log %s %s: verified size %d, new size %d: %s", e.Old.Origin, kind, e.Old.Size, e.New.Size, e.Reason)
}

// Evidence returns both signed checkpoints, for reporting.
func (e *ForkError) Evidence() []byte {
	var b bytes.Buffer
	b.WriteString("verified checkpoint:\n")
	b.Write(e.Old.Note)
	b.WriteString("\nconflicting checkpoint:\n")
	b.Write(e.New.Note)
	return b.Bytes()
}

// A CheckpointStore keeps the last verified checkpoint note of each log.
type CheckpointStore interface {
	// Update calls f with the stored note for origin (nil if none) and
	// stores what f returns, unless f returns nil or an error. Updates of
	// one origin are serialized (across processes, for FileStore).
	Update(origin string, f func(old []byte) (new []byte, err error)) error
}

// FileStore is a CheckpointStore keeping one file per origin in a
// directory. Writes are atomic (write, fsync, rename, fsync of the
// directory) and serialized with a lock file, so concurrent processes
// never regress the stored checkpoint.
type FileStore struct {
	Dir string
}

func (s FileStore) path(origin string) string {
	return filepath.Join(s.Dir, "checkpoint-"+url.QueryEscape(origin))
}

// Update implements CheckpointStore.
func (s FileStore) Update(origin string, f func(old []byte) ([]byte, error)) error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("tlog: couldn't create checkpoint store: %w", err)
	}
	p := s.path(origin)
	lock, err := os.OpenFile(p+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("tlog: couldn't lock checkpoint store: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("tlog: couldn't lock checkpoint store: %w", err)
	}
	old, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		old, err = nil, nil
	}
	if err != nil {
		return fmt.Errorf("tlog: couldn't read stored checkpoint: %w", err)
	}
	n, err := f(old)
	if err != nil || n == nil {
		return err
	}
	if err := atomicfile.WriteFile(p, n, 0o600); err != nil {
		return fmt.Errorf("tlog: couldn't store checkpoint: %w", err)
	}
	return nil
}

// A Verifier checks one log from a client's side: checkpoint signatures,
// inclusion proofs, receipts, and consistency with the last checkpoint it
// verified, which it keeps in a CheckpointStore.
type Verifier struct {
	origin string
	v      note.Verifier
	store  CheckpointStore
	mu     sync.Mutex // serializes Update within the process
}

// NewVerifier returns a verifier for the log with the given origin and
// note verifier key ("<name>+<hash>+<key>"). store may be nil, in which
// case Update keeps the last checkpoint in memory only.
func NewVerifier(origin, vkey string, store CheckpointStore) (*Verifier, error) {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("tlog: bad note verifier key: %w", err)
	}
	if store == nil {
		store = &MemStore{}
	}
	return &Verifier{origin: origin, v: v, store: store}, nil
}

// Origin returns the log's origin.
func (v *Verifier) Origin() string { return v.origin }

// NoteVerifier returns the log's note verifier.
func (v *Verifier) NoteVerifier() note.Verifier { return v.v }

// VerifyCheckpoint checks a signed checkpoint note's signature and origin.
func (v *Verifier) VerifyCheckpoint(msg []byte) (SignedCheckpoint, error) {
	return OpenCheckpoint(msg, v.origin, v.v)
}

// VerifyReceipt checks a receipt against the log's key (see VerifyReceipt).
func (v *Verifier) VerifyReceipt(receipt []byte) (*VerifiedReceipt, error) {
	return VerifyReceipt(receipt, v.origin, v.v)
}

// Latest returns the last verified checkpoint, or false if there is none.
func (v *Verifier) Latest() (SignedCheckpoint, bool, error) {
	var cp SignedCheckpoint
	var found bool
	err := v.store.Update(v.origin, func(old []byte) ([]byte, error) {
		if old == nil {
			return nil, nil
		}
		c, err := v.VerifyCheckpoint(old)
		if err != nil {
			return nil, fmt.Errorf("tlog: stored checkpoint: %w", err)
		}
		cp, found = c, true
		return nil, nil
	})
	return cp, found, err
}

// Update verifies the signed checkpoint msg and its consistency with the
// last verified checkpoint, given the RFC 6962 consistency proof from that
// checkpoint's size to msg's size, and stores msg if it is newer. With no
// stored checkpoint, the proof is ignored and msg is trusted on first use.
// A smaller tree, another root at the same size, or a proof that fails is
// reported as a *ForkError; the stored checkpoint then stays as it was.
//
// Pass Update only checkpoints that claim to be the log's latest (from
// /log/checkpoint or the broker's attestation): a smaller one is a
// rollback. Older checkpoints, such as a receipt's, are checked with
// VerifyReceipt and, against a newer one, CheckConsistency.
func (v *Verifier) Update(msg []byte, consistency []Hash) (SignedCheckpoint, error) {
	return v.UpdateWith(msg, func(uint64) ([]Hash, error) { return consistency, nil })
}

// UpdateWith is Update with the consistency proof computed by prove, which
// is called (under the store's lock) with the size of the last verified
// checkpoint, and only when that size is above 0 and below msg's size.
func (v *Verifier) UpdateWith(msg []byte, prove func(oldSize uint64) ([]Hash, error)) (SignedCheckpoint, error) {
	cp, err := v.VerifyCheckpoint(msg)
	if err != nil {
		return SignedCheckpoint{}, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	err = v.store.Update(v.origin, func(old []byte) ([]byte, error) {
		if old == nil {
			return cp.Note, nil
		}
		last, err := v.VerifyCheckpoint(old)
		if err != nil {
			return nil, fmt.Errorf("tlog: stored checkpoint: %w", err)
		}
		var p []Hash
		if last.Size > 0 && last.Size < cp.Size {
			if p, err = prove(last.Size); err != nil {
				return nil, fmt.Errorf("tlog: couldn't get a consistency proof from size %d: %w", last.Size, err)
			}
		}
		if err := CheckConsistency(last, cp, p); err != nil {
			return nil, err
		}
		if cp.Size == last.Size {
			return nil, nil
		}
		return cp.Note, nil
	})
	if err != nil {
		return SignedCheckpoint{}, err
	}
	return cp, nil
}

// CheckConsistency checks that the tree of newer extends the tree of old,
// given the RFC 6962 consistency proof between their sizes. It reports a
// failure as a *ForkError. It checks no signatures.
func CheckConsistency(old, newer SignedCheckpoint, p []Hash) error {
	fork := func(rollback bool, reason string) error {
		return &ForkError{Old: old, New: newer, Rollback: rollback, Reason: reason}
	}
	switch {
	case newer.Size < old.Size:
		return fork(true, "the tree is smaller than a verified one")
	case newer.Size == old.Size:
		if newer.Hash != old.Hash {
			return fork(false, "two roots for one tree size")
		}
		return nil
	}
	if err := proof.VerifyConsistency(rfc6962.DefaultHasher, old.Size, newer.Size, hashSlices(p), old.Hash[:], newer.Hash[:]); err != nil {
		return fork(false, "consistency proof failed: "+err.Error())
	}
	return nil
}

// MemStore is a CheckpointStore that keeps checkpoints in memory only, for
// one-shot checks and tests. The zero value is ready to use.
type MemStore struct {
	mu    sync.Mutex
	notes map[string][]byte
}

// Update implements CheckpointStore.
func (m *MemStore) Update(origin string, f func([]byte) ([]byte, error)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, err := f(m.notes[origin])
	if err != nil || n == nil {
		return err
	}
	if m.notes == nil {
		m.notes = map[string][]byte{}
	}
	m.notes[origin] = bytes.Clone(n)
	return nil
}
