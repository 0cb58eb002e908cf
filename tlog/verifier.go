package tlog

import (
	"bytes"
	"context"
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
// verified, which it keeps in a CheckpointStore. Advance is the one way
// that stored checkpoint moves.
type Verifier struct {
	origin string
	vkey   string
	v      note.Verifier
	store  CheckpointStore
	mu     sync.Mutex // serializes Advance within the process
}

// NewVerifier returns a verifier for the log with the given origin and
// note verifier key ("<name>+<hash>+<key>"). store may be nil, in which
// case the last checkpoint is kept in memory only.
func NewVerifier(origin, vkey string, store CheckpointStore) (*Verifier, error) {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("tlog: bad note verifier key: %w", err)
	}
	if store == nil {
		store = &MemStore{}
	}
	return &Verifier{origin: origin, vkey: vkey, v: v, store: store}, nil
}

// Origin returns the log's origin.
func (v *Verifier) Origin() string { return v.origin }

// NoteKey returns the log's note verifier key, as given to NewVerifier.
func (v *Verifier) NoteKey() string { return v.vkey }

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

// A ProofSource supplies RFC 6962 consistency proofs between two sizes of
// one log: the broker's proof endpoint (kbs/client.Client), a Backend, the
// log's tiles (TileClient.Prover), or a proof already in hand (KnownProof).
// Nothing it returns is trusted: Advance checks every proof against both
// signed roots.
type ProofSource interface {
	ConsistencyProof(ctx context.Context, oldSize, newSize uint64) ([]Hash, error)
}

// ProofFunc adapts a function to a ProofSource.
type ProofFunc func(ctx context.Context, oldSize, newSize uint64) ([]Hash, error)

// ConsistencyProof implements ProofSource.
func (f ProofFunc) ConsistencyProof(ctx context.Context, oldSize, newSize uint64) ([]Hash, error) {
	return f(ctx, oldSize, newSize)
}

// KnownProof is a ProofSource holding one proof in hand, from OldSize to
// NewSize (as the broker's attestation answer carries one from the size
// the client named); asked for other sizes, it asks Else (nil: an error).
type KnownProof struct {
	OldSize, NewSize uint64
	Proof            []Hash
	Else             ProofSource
}

// ConsistencyProof implements ProofSource.
func (k KnownProof) ConsistencyProof(ctx context.Context, oldSize, newSize uint64) ([]Hash, error) {
	if oldSize == k.OldSize && newSize == k.NewSize && k.Proof != nil {
		return k.Proof, nil
	}
	if k.Else == nil {
		return nil, fmt.Errorf("tlog: no consistency proof from size %d to %d at hand", oldSize, newSize)
	}
	return k.Else.ConsistencyProof(ctx, oldSize, newSize)
}

// AdvanceOptions tune Advance.
type AdvanceOptions struct {
	// Older accepts a checkpoint smaller than the stored one, such as a
	// receipt's, when it is consistent with it (a prefix of the stored
	// tree); the stored checkpoint stays. Without Older the caller claims
	// that the checkpoint is the log's latest (from /log/checkpoint or the
	// broker's attestation), and a smaller one is a rollback.
	Older bool
	// DryRun checks and stores nothing: for a caller that stores only
	// after further checks of its own (an audit), with a second Advance.
	DryRun bool
}

// Advanced reports what Advance established.
type Advanced struct {
	// Checkpoint is the checkpoint Advance was given, verified.
	Checkpoint SignedCheckpoint
	// Previous is the checkpoint stored before, nil if there was none (the
	// new one was then trusted on first use).
	Previous *SignedCheckpoint
	// Stored reports whether Checkpoint is now the stored checkpoint
	// because it is newer than Previous (or the first); false when it is
	// the same size or older, and with DryRun.
	Stored bool
}

// errStoreMoved makes Advance try again when the stored checkpoint changed
// while it fetched a proof.
var errStoreMoved = errors.New("tlog: the stored checkpoint changed meanwhile")

// maxAdvanceAttempts bounds how often Advance starts over because another
// process moved the stored checkpoint while it fetched a proof (within a
// process, Advance calls are serialized).
const maxAdvanceAttempts = 8

// Advance is the one entry point that moves a verifier's stored checkpoint
// forward (sumdb's mergeLatest is the model). It verifies the signed
// checkpoint msg, and against the stored checkpoint:
//
//   - none stored: msg is trusted on first use and stored;
//   - msg larger: a consistency proof from the stored size, asked of src
//     and checked against both roots, must show that msg extends it; msg
//     is stored;
//   - same size: the roots must be equal; nothing changes;
//   - msg smaller: a rollback, unless opts.Older is set, in which case a
//     proof from msg's size to the stored one must show msg is a prefix.
//
// A contradiction (a rollback, two roots for one size, a proof that fails)
// is a *ForkError carrying both signed checkpoints as evidence, and the
// stored checkpoint stays as it was. src is consulted only when a proof is
// needed, and never while the store is locked: if another process moves
// the stored checkpoint meanwhile, Advance starts over from the new one.
// Calls on one Verifier are serialized.
func (v *Verifier) Advance(ctx context.Context, msg []byte, src ProofSource, opts AdvanceOptions) (Advanced, error) {
	cp, err := v.VerifyCheckpoint(msg)
	if err != nil {
		return Advanced{}, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for range maxAdvanceAttempts {
		last, ok, err := v.Latest()
		if err != nil {
			return Advanced{}, err
		}
		res := Advanced{Checkpoint: cp}
		if ok {
			l := last
			res.Previous = &l
			if err := v.checkAgainst(ctx, last, cp, src, opts.Older); err != nil {
				return Advanced{}, err
			}
			if cp.Size <= last.Size {
				return res, nil
			}
		}
		if opts.DryRun {
			return res, nil
		}
		// Store cp unless the stored checkpoint moved since it was read.
		err = v.store.Update(v.origin, func(old []byte) ([]byte, error) {
			moved := old != nil
			if ok {
				moved = !bytes.Equal(old, last.Note)
			}
			if moved {
				return nil, errStoreMoved
			}
			return cp.Note, nil
		})
		if errors.Is(err, errStoreMoved) {
			continue
		}
		if err != nil {
			return Advanced{}, err
		}
		res.Stored = true
		return res, nil
	}
	return Advanced{}, fmt.Errorf("tlog: the stored checkpoint of %s kept changing while a consistency proof was fetched (%d attempts)", v.origin, maxAdvanceAttempts)
}

// checkAgainst checks cp against the stored checkpoint last, fetching a
// proof from src when the sizes differ.
func (v *Verifier) checkAgainst(ctx context.Context, last, cp SignedCheckpoint, src ProofSource, older bool) error {
	old, newer := last, cp
	if cp.Size < last.Size {
		if !older {
			return CheckConsistency(last, cp, nil) // a rollback
		}
		old, newer = cp, last
	}
	var p []Hash
	if old.Size > 0 && old.Size < newer.Size {
		if src == nil {
			return fmt.Errorf("tlog: a consistency proof from size %d to %d is needed and there is no proof source", old.Size, newer.Size)
		}
		var err error
		if p, err = src.ConsistencyProof(ctx, old.Size, newer.Size); err != nil {
			return fmt.Errorf("tlog: couldn't get a consistency proof from size %d to %d: %w", old.Size, newer.Size, err)
		}
	}
	return CheckConsistency(old, newer, p)
}

// Update is Advance of the latest checkpoint msg with a consistency proof
// already in hand, from the stored checkpoint's size to msg's (ignored
// when nothing is stored). It returns msg, verified.
func (v *Verifier) Update(msg []byte, consistency []Hash) (SignedCheckpoint, error) {
	src := ProofFunc(func(context.Context, uint64, uint64) ([]Hash, error) { return consistency, nil })
	res, err := v.Advance(context.Background(), msg, src, AdvanceOptions{})
	return res.Checkpoint, err
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
