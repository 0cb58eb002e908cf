// Package tlog is the kbs transparency log: the entry types, C2SP checkpoints
// (signed notes), tlog-proof receipts, the tlog-tiles HTTP handler, the
// client-side verifier, and the Backend interface that storage engines
// (tlog/boltlog, tlog/trillianlog) implement.
//
// The log is an RFC 6962 Merkle tree over SHA-256. Everything a client or an
// auditor needs to check it is published in C2SP formats, so tools written by
// others can check it too.
//
// # Broker side
//
// A Backend appends entries durably and signs checkpoints with a
// CheckpointSigner, which refuses to sign a checkpoint that contradicts the
// last one the backend persisted (a smaller size, another root for a size,
// or a tree that does not extend it). NewReceipt turns an append into a
// C2SP tlog-proof@v1 receipt carrying the entry's bytes; NewHandler serves
// the log as C2SP tlog-tiles under /log/. Entries (EncodeEntry) are strict,
// canonical JSON and never hold key material.
//
// # Client side
//
// Nothing a client receives from the broker or the host is trusted until it
// is verified against the log's note key, which the client gets from the
// broker's hardware attestation. OpenCheckpoint and VerifyReceipt check
// signatures and proofs; a Verifier also keeps the last verified checkpoint
// per log (FileStore). Verifier.Advance is the one way that checkpoint
// moves: it takes consistency proofs from a ProofSource (the broker, a
// Backend, authenticated tiles, or a proof in hand), checks them, and
// reports a log that shrinks or forks as a *ForkError carrying both signed
// checkpoints as evidence. TileClient reads
// a log through its tiles and verifies every tile and entry against a
// verified checkpoint before handing it out, for auditors.
//
// Proof checks on the client side use github.com/transparency-dev/merkle,
// an implementation independent of the golang.org/x/mod/sumdb/tlog code the
// embedded backend builds proofs with.
package tlog

import (
	"context"
	"errors"

	sumdb "golang.org/x/mod/sumdb/tlog"
)

// Hash is a node hash of the RFC 6962 tree (SHA-256).
type Hash = sumdb.Hash

// Root is a tree head: the size of the tree and its root hash.
type Root struct {
	Size uint64
	Hash Hash
}

// Backend stores a log's Merkle tree and entries, and signs checkpoints over
// it. Both the embedded bbolt backend and the Trillian backend implement it,
// and both pass the conformance suite in tlog/tlogtest.
//
// A Backend is safe for concurrent use.
type Backend interface {
	// Append durably adds entry to the log. It returns the entry's index and
	// a signed checkpoint of a tree that contains the entry. When Append
	// returns without error, both the entry and that checkpoint are durable
	// (fsync'd): a crash afterwards loses neither. Concurrent calls may share
	// one durable write (group commit).
	//
	// Its outcome is definite. An error means that the entry is not in the
	// log and never will be, unless the error wraps ErrUnknownOutcome: then
	// the backend has stopped (it failed, or was closed) while the entry
	// may already be durable, and only reading the log after it is reopened
	// tells. Once an entry may have reached storage, Append waits for the
	// outcome even if ctx is done, so that a caller never takes "failed" for
	// an entry that is logged.
	Append(ctx context.Context, entry []byte) (index uint64, cp SignedCheckpoint, err error)

	// Checkpoint returns the latest signed checkpoint.
	Checkpoint(ctx context.Context) (SignedCheckpoint, error)

	// Entries returns the entries with indices in [start, end). end must not
	// exceed the size of the latest signed checkpoint.
	Entries(ctx context.Context, start, end uint64) ([][]byte, error)

	// InclusionProof returns the RFC 6962 inclusion proof of the entry at
	// index in the tree of size treeSize.
	InclusionProof(ctx context.Context, index, treeSize uint64) ([]Hash, error)

	// ConsistencyProof returns the RFC 6962 consistency proof between the
	// trees of sizes oldSize and newSize.
	ConsistencyProof(ctx context.Context, oldSize, newSize uint64) ([]Hash, error)

	// HashTile returns the C2SP tlog-tiles hash tile at level and index with
	// width hashes (1..256): the concatenated 32-byte hashes. A width below
	// 256 is a partial tile.
	HashTile(ctx context.Context, level int, index uint64, width int) ([]byte, error)

	// Close releases the backend's resources. Appends in flight either
	// complete durably or fail.
	Close() error
}

// ErrUnknownOutcome is wrapped by the error of an Append whose entry may or
// may not be in the log: the backend stopped (a failed commit, Close, or a
// store that contradicts the signed checkpoint) after the entry may have
// reached storage. A caller that decides from the log must settle such an
// append by reading the log once it is reopened, before it decides again.
var ErrUnknownOutcome = errors.New("tlog: the append's outcome is unknown")

// SignedCheckpoint is a C2SP tlog-checkpoint together with its signed-note
// text.
type SignedCheckpoint struct {
	Origin string
	Root
	// Note is the complete signed note (checkpoint body and signature
	// lines), exactly as published under /log/checkpoint.
	Note []byte
}
