package trillianlog

import (
	"github.com/kbs-dev/kbs/tlog"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
)

// recentProofs holds the inclusion proofs, in the tree of the given size, of
// the entries whose appends that tree completed: Append's callers ask for
// exactly those (receipts), and they are computed without asking Trillian.
type recentProofs struct {
	size    uint64
	byIndex map[uint64][]tlog.Hash
}

// keptProofSets is how many signed trees' proofs are kept, and
// maxProofBatch the largest catch-up whose proofs are computed locally.
const (
	keptProofSets = 16
	maxProofBatch = 1 << 16
)

// proveFromNodes computes the inclusion proof of index in root's tree from
// the nodes given, and verifies it; ok is false if a node is missing or the
// proof does not verify.
func proveFromNodes(nodes map[compact.NodeID][]byte, index uint64, root tlog.Root) (p []tlog.Hash, ok bool) {
	pn, err := proof.Inclusion(index, root.Size)
	if err != nil {
		return nil, false
	}
	hs := make([][]byte, len(pn.IDs))
	for i, id := range pn.IDs {
		if hs[i] = nodes[id]; hs[i] == nil {
			return nil, false
		}
	}
	hs, err = pn.Rehash(hs, hasher.HashChildren)
	if err != nil {
		return nil, false
	}
	leaf := nodes[compact.NewNodeID(0, index)]
	if leaf == nil || proof.VerifyInclusion(hasher, index, root.Size, leaf, hs, root.Hash[:]) != nil {
		return nil, false
	}
	out := make([]tlog.Hash, len(hs))
	for i, h := range hs {
		out[i] = tlog.Hash(h)
	}
	return out, true
}
