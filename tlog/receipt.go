package tlog

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// MaxReceiptSize bounds the receipts ParseReceipt reads: room for the
// largest entry, a full proof and a checkpoint with many cosignatures.
const MaxReceiptSize = 128 << 10

const receiptHeader = "c2sp.org/tlog-proof@v1"

// A Receipt is a C2SP tlog-proof@v1: a signed checkpoint, the index of an
// entry, its inclusion proof in the checkpoint's tree, and (in kbs
// receipts) the entry's exact bytes as the extra data, so that the receipt
// alone proves what was logged.
type Receipt struct {
	Index uint64
	Proof []Hash
	// Checkpoint is the signed checkpoint note, verbatim.
	Checkpoint []byte
	// Extra is the entry's bytes. Nil means the extra line is absent.
	Extra []byte
}

// Marshal returns the tlog-proof@v1 text of r.
func (r *Receipt) Marshal() []byte {
	var b bytes.Buffer
	b.WriteString(receiptHeader + "\n")
	if r.Extra != nil {
		b.WriteString("extra " + base64.StdEncoding.EncodeToString(r.Extra) + "\n")
	}
	fmt.Fprintf(&b, "index %d\n", r.Index)
	for _, h := range r.Proof {
		b.WriteString(base64.StdEncoding.EncodeToString(h[:]) + "\n")
	}
	b.WriteString("\n")
	b.Write(r.Checkpoint)
	return b.Bytes()
}

// ParseReceipt parses tlog-proof@v1 text strictly: the exact header, an
// optional extra line of canonical base64, "index" with a canonical
// decimal, at most 63 proof lines each canonical base64 of 32 bytes, an
// empty line, and a non-empty checkpoint. It does not verify anything; see
// VerifyReceipt.
func ParseReceipt(b []byte) (*Receipt, error) {
	if len(b) > MaxReceiptSize {
		return nil, fmt.Errorf("tlog: receipt is %d bytes, more than %d", len(b), MaxReceiptSize)
	}
	line := func() (string, bool) {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return "", false
		}
		l := string(b[:i])
		b = b[i+1:]
		return l, true
	}
	l, ok := line()
	if !ok || l != receiptHeader {
		return nil, fmt.Errorf("tlog: malformed receipt: first line is not %q", receiptHeader)
	}
	r := &Receipt{}
	l, ok = line()
	if e, isExtra := strings.CutPrefix(l, "extra "); ok && isExtra {
		extra, err := base64.StdEncoding.Strict().DecodeString(e)
		if err != nil {
			return nil, fmt.Errorf("tlog: malformed receipt: extra data is not base64: %v", err)
		}
		r.Extra = extra
		l, ok = line()
	}
	idx, isIndex := strings.CutPrefix(l, "index ")
	if !ok || !isIndex {
		return nil, errors.New("tlog: malformed receipt: missing index line")
	}
	if idx == "" || (idx[0] == '0' && len(idx) > 1) || idx[0] < '0' || idx[0] > '9' {
		return nil, fmt.Errorf("tlog: malformed receipt: bad index %q", idx)
	}
	var err error
	if r.Index, err = strconv.ParseUint(idx, 10, 64); err != nil || r.Index >= MaxTreeSize {
		return nil, fmt.Errorf("tlog: malformed receipt: bad index %q", clipText(idx))
	}
	for {
		l, ok = line()
		if !ok {
			return nil, errors.New("tlog: malformed receipt: truncated before the checkpoint")
		}
		if l == "" {
			break
		}
		if len(r.Proof) == 63 {
			return nil, errors.New("tlog: malformed receipt: more than 63 proof hashes")
		}
		h, err := base64.StdEncoding.Strict().DecodeString(l)
		if err != nil || len(h) != len(Hash{}) {
			return nil, fmt.Errorf("tlog: malformed receipt: proof line %d is not base64 of 32 bytes", len(r.Proof)+1)
		}
		r.Proof = append(r.Proof, Hash(h))
	}
	if len(b) == 0 {
		return nil, errors.New("tlog: malformed receipt: no checkpoint")
	}
	r.Checkpoint = bytes.Clone(b)
	return r, nil
}

// NewReceipt returns the receipt for the entry at index, proved in the tree
// of cp (typically what Backend.Append returned), with entry as the extra
// data.
func NewReceipt(ctx context.Context, b Backend, index uint64, entry []byte, cp SignedCheckpoint) ([]byte, error) {
	p, err := b.InclusionProof(ctx, index, cp.Size)
	if err != nil {
		return nil, fmt.Errorf("tlog: couldn't make receipt: %w", err)
	}
	leaf := rfc6962.DefaultHasher.HashLeaf(entry)
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, index, cp.Size, leaf, hashSlices(p), cp.Hash[:]); err != nil {
		return nil, fmt.Errorf("tlog: couldn't make receipt: the log's proof does not verify: %w", err)
	}
	r := &Receipt{Index: index, Proof: p, Checkpoint: cp.Note, Extra: entry}
	return r.Marshal(), nil
}

// VerifiedReceipt is what a receipt proves: Entry is in the log at Index,
// in the tree of Checkpoint.
type VerifiedReceipt struct {
	Index      uint64
	Entry      []byte
	Checkpoint SignedCheckpoint
}

// VerifyReceipt checks a kbs receipt on its own: the checkpoint's
// signature by v and its origin, that the receipt carries the entry as its
// extra data, and the inclusion proof of that entry at the index in the
// checkpoint's tree. It does not decode the entry (see DecodeEntry), nor
// check the checkpoint against one seen before (see Verifier.Update).
func VerifyReceipt(receipt []byte, origin string, v note.Verifier) (*VerifiedReceipt, error) {
	r, err := ParseReceipt(receipt)
	if err != nil {
		return nil, err
	}
	if r.Extra == nil {
		return nil, errors.New("tlog: receipt carries no entry (extra line)")
	}
	cp, err := OpenCheckpoint(r.Checkpoint, origin, v)
	if err != nil {
		return nil, fmt.Errorf("tlog: receipt checkpoint: %w", err)
	}
	if err := VerifyInclusion(cp, r.Index, r.Extra, r.Proof); err != nil {
		return nil, err
	}
	return &VerifiedReceipt{Index: r.Index, Entry: r.Extra, Checkpoint: cp}, nil
}

// VerifyInclusion checks that entry is at index in the tree of cp, given
// its RFC 6962 inclusion proof. It checks no signature: cp must come from
// OpenCheckpoint or a Verifier.
func VerifyInclusion(cp SignedCheckpoint, index uint64, entry []byte, p []Hash) error {
	if index >= cp.Size {
		return fmt.Errorf("tlog: index %d is not in a tree of size %d", index, cp.Size)
	}
	leaf := rfc6962.DefaultHasher.HashLeaf(entry)
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, index, cp.Size, leaf, hashSlices(p), cp.Hash[:]); err != nil {
		return fmt.Errorf("tlog: inclusion proof of entry %d in tree %d: %w", index, cp.Size, err)
	}
	return nil
}

func hashSlices(p []Hash) [][]byte {
	out := make([][]byte, len(p))
	for i := range p {
		out[i] = p[i][:]
	}
	return out
}
