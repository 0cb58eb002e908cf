package trillianlog

import (
	"github.com/kbs-dev/kbs/tlog"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
)

// recentProofs holds the nodes the Log hashed when it extended its tree to
// root (see growth): from them it answers, without asking Trillian, the
// inclusion proofs in root's tree of the entries that extension added,
// which are exactly what Append's callers ask for (receipts).
type recentProofs struct {
	root  tlog.Root
	nodes map[compact.NodeID][]byte
}

// keptProofSets is how many signed trees' nodes are kept, and
// maxProofBatch the largest catch-up whose nodes are kept.
const (
	keptProofSets = 16
	maxProofBatch = 1 << 16
)

// keepProofs remembers the nodes of root's tree (nil: none). l.mu is held.
func (l *Log) keepProofs(root tlog.Root, nodes map[compact.NodeID][]byte) {
	if nodes == nil {
		return
	}
	l.proofs = append(l.proofs[max(0, len(l.proofs)+1-keptProofSets):], recentProofs{root, nodes})
}

// recentProof returns the inclusion proof of index in the tree of size
// treeSize if the Log has its nodes.
func (l *Log) recentProof(index, treeSize uint64) ([]tlog.Hash, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	for _, rp := range l.proofs {
		if rp.root.Size == treeSize {
			if p, ok := proveFromNodes(rp.nodes, index, rp.root); ok {
				return p, true
			}
		}
	}
	return nil, false
}

// proveFromNodes computes the inclusion proof of index in root's tree from
// the nodes given, and verifies it; ok is false if a node is missing or the
// proof does not verify.
func proveFromNodes(nodes map[compact.NodeID][]byte, index uint64, root tlog.Root) (p []tlog.Hash, ok bool) {
	leaf := nodes[compact.NewNodeID(0, index)]
	if leaf == nil {
		return nil, false
	}
	pn, err := proof.Inclusion(index, root.Size)
	if err != nil {
		return nil, false
	}
	hs, ok := rehash(nodes, pn)
	if !ok || proof.VerifyInclusion(hasher, index, root.Size, leaf, hs, root.Hash[:]) != nil {
		return nil, false
	}
	return toHashesUnchecked(hs), true
}

// consistencyFromNodes computes the consistency proof from old to root
// from the nodes given (see growth); ok is false if a node is missing.
// CheckpointSigner.Sign verifies it.
func consistencyFromNodes(nodes map[compact.NodeID][]byte, old, root tlog.Root) (p []tlog.Hash, ok bool) {
	pn, err := proof.Consistency(old.Size, root.Size)
	if err != nil {
		return nil, false
	}
	hs, ok := rehash(nodes, pn)
	if !ok {
		return nil, false
	}
	return toHashesUnchecked(hs), true
}

// rehash looks up the nodes of a proof and folds its ephemeral node.
func rehash(nodes map[compact.NodeID][]byte, pn proof.Nodes) ([][]byte, bool) {
	hs := make([][]byte, len(pn.IDs))
	for i, id := range pn.IDs {
		if hs[i] = nodes[id]; hs[i] == nil {
			return nil, false
		}
	}
	hs, err := pn.Rehash(hs, hasher.HashChildren)
	if err != nil {
		return nil, false
	}
	return hs, true
}

// toHashesUnchecked converts 32-byte hashes the Log computed itself.
func toHashesUnchecked(hs [][]byte) []tlog.Hash {
	out := make([]tlog.Hash, len(hs))
	for i, h := range hs {
		out[i] = tlog.Hash(h)
	}
	return out
}
