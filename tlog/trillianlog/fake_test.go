package trillianlog

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"sync"

	"github.com/google/trillian"
	"github.com/google/trillian/types"
	sumdb "golang.org/x/mod/sumdb/tlog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeTrillian is an in-memory Trillian log tree, LOG or PREORDERED_LOG,
// with the RPCs the Log uses, so the Log's logic runs in plain `go test`
// too. Its signer integrates when a root is asked for. Its Merkle tree is
// golang.org/x/mod's sumdb/tlog, independent of the Log's code. Like
// Trillian's SQL storage, it keeps each identity hash once and answers
// AddSequencedLeaves leaf by leaf ("conflicting LeafIdentityHash",
// "conflicting LeafIndex"). It can lose write answers after storing, be
// unavailable, hold writes, and be rolled back or forked.
type fakeTrillian struct {
	trillian.TrillianLogClient   // methods the Log must not call panic
	trillian.TrillianAdminClient // likewise

	mu         sync.Mutex
	tree       int64
	preordered bool
	queued     []*trillian.LogLeaf         // LOG: queued, not integrated
	sequenced  map[int64]*trillian.LogLeaf // PREORDERED_LOG: stored, not integrated
	ids        map[string]bool
	leaves     []*trillian.LogLeaf // integrated
	stored     []sumdb.Hash
	loseNext   int // write calls that store but answer Unavailable
	downNext   int // calls that fail with Unavailable without effect
	integrate  bool

	inclusionCalls int // GetInclusionProof calls answered
	leavesCalls    int // GetLeavesByRange calls answered
	writeCalls     int // QueueLeaf and AddSequencedLeaves calls answered

	// hold, if set, makes AddSequencedLeaves wait until it is closed (or
	// the call's context ends) before doing anything.
	hold chan struct{}
	// refuse, if set, makes AddSequencedLeaves refuse requests that
	// start at an index it returns true for.
	refuse func(start int64) bool
	// tamper, if set, replaces each leaf the fake integrates by the
	// leaves it returns.
	tamper func(*trillian.LogLeaf) []*trillian.LogLeaf
	// serve, if set, changes the bytes GetLeavesByRange answers.
	serve func(index int64, v []byte) []byte
}

func newFake(tree int64, typ trillian.TreeType) *fakeTrillian {
	return &fakeTrillian{
		tree: tree, preordered: typ == trillian.TreeType_PREORDERED_LOG,
		sequenced: map[int64]*trillian.LogLeaf{}, ids: map[string]bool{}, integrate: true,
	}
}

func (f *fakeTrillian) check(id int64) error {
	if id != f.tree {
		return status.Errorf(codes.NotFound, "tree %d not found", id)
	}
	if f.downNext > 0 {
		f.downNext--
		return status.Error(codes.Unavailable, "fake: down")
	}
	return nil
}

func (f *fakeTrillian) GetTree(ctx context.Context, req *trillian.GetTreeRequest, _ ...grpc.CallOption) (*trillian.Tree, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if req.TreeId != f.tree {
		return nil, status.Errorf(codes.NotFound, "tree %d not found", req.TreeId)
	}
	typ := trillian.TreeType_LOG
	if f.preordered {
		typ = trillian.TreeType_PREORDERED_LOG
	}
	return &trillian.Tree{TreeId: f.tree, TreeType: typ, TreeState: trillian.TreeState_ACTIVE}, nil
}

func (f *fakeTrillian) QueueLeaf(ctx context.Context, req *trillian.QueueLeafRequest, _ ...grpc.CallOption) (*trillian.QueueLeafResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(req.LogId); err != nil {
		return nil, err
	}
	if f.preordered {
		return nil, status.Error(codes.FailedPrecondition, "fake: QueueLeaf on a PREORDERED_LOG tree")
	}
	f.writeCalls++
	leaf := &trillian.LogLeaf{LeafValue: bytes.Clone(req.Leaf.LeafValue), LeafIdentityHash: bytes.Clone(req.Leaf.LeafIdentityHash)}
	if len(leaf.LeafIdentityHash) == 0 {
		h := sha256.Sum256(append([]byte{0}, leaf.LeafValue...))
		leaf.LeafIdentityHash = h[:]
	}
	resp := &trillian.QueueLeafResponse{QueuedLeaf: &trillian.QueuedLogLeaf{Leaf: leaf}}
	if f.ids[string(leaf.LeafIdentityHash)] {
		resp.QueuedLeaf.Status = status.New(codes.AlreadyExists, "leaf already exists").Proto()
	} else {
		f.ids[string(leaf.LeafIdentityHash)] = true
		f.queued = append(f.queued, leaf)
	}
	if f.loseNext > 0 {
		f.loseNext--
		return nil, status.Error(codes.Unavailable, "fake: answer lost")
	}
	return resp, nil
}

func (f *fakeTrillian) AddSequencedLeaves(ctx context.Context, req *trillian.AddSequencedLeavesRequest, _ ...grpc.CallOption) (*trillian.AddSequencedLeavesResponse, error) {
	f.mu.Lock()
	hold := f.hold
	f.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(req.LogId); err != nil {
		return nil, err
	}
	if !f.preordered {
		return nil, status.Error(codes.FailedPrecondition, "fake: AddSequencedLeaves on a LOG tree")
	}
	if len(req.Leaves) == 0 {
		return nil, status.Error(codes.InvalidArgument, "fake: no leaves")
	}
	for i, lf := range req.Leaves {
		if len(lf.LeafValue) == 0 || len(lf.LeafIdentityHash) != sha256.Size || lf.LeafIndex != req.Leaves[0].LeafIndex+int64(i) || lf.LeafIndex < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "fake: bad leaf %d", i)
		}
	}
	if f.refuse != nil && f.refuse(req.Leaves[0].LeafIndex) {
		return nil, status.Error(codes.PermissionDenied, "fake: refused")
	}
	f.writeCalls++
	resp := &trillian.AddSequencedLeavesResponse{}
	for _, lf := range req.Leaves {
		r := &trillian.QueuedLogLeaf{Status: status.New(codes.OK, "OK").Proto()}
		switch {
		case f.ids[string(lf.LeafIdentityHash)]:
			r.Status = status.New(codes.FailedPrecondition, "conflicting LeafIdentityHash").Proto()
		case lf.LeafIndex < int64(len(f.leaves)) || f.sequenced[lf.LeafIndex] != nil:
			r.Status = status.New(codes.FailedPrecondition, "conflicting LeafIndex").Proto()
		default:
			f.store(lf.LeafIndex, lf.LeafValue, lf.LeafIdentityHash)
		}
		resp.Results = append(resp.Results, r)
	}
	if f.loseNext > 0 {
		f.loseNext--
		return nil, status.Error(codes.Unavailable, "fake: answer lost")
	}
	return resp, nil
}

// store puts a leaf at index of a pre-ordered tree, as AddSequencedLeaves
// does (or a writer other than the Log under test). f.mu is held.
func (f *fakeTrillian) store(index int64, v, id []byte) {
	f.ids[string(id)] = true
	f.sequenced[index] = &trillian.LogLeaf{LeafValue: bytes.Clone(v), LeafIdentityHash: bytes.Clone(id), LeafIndex: index}
}

// sequence is the fake's signer pass. f.mu is held.
func (f *fakeTrillian) sequence() {
	if !f.integrate {
		return
	}
	var next []*trillian.LogLeaf
	if f.preordered {
		for lf := f.sequenced[int64(len(f.leaves)+len(next))]; lf != nil; lf = f.sequenced[int64(len(f.leaves)+len(next))] {
			delete(f.sequenced, lf.LeafIndex)
			next = append(next, lf)
		}
	} else {
		next, f.queued = f.queued, nil
	}
	for _, lf := range next {
		if f.tamper != nil {
			for _, t := range f.tamper(lf) {
				f.integrateLeaf(t)
			}
		} else {
			f.integrateLeaf(lf)
		}
	}
}

func (f *fakeTrillian) integrateLeaf(lf *trillian.LogLeaf) {
	n := int64(len(f.leaves))
	hs, err := sumdb.StoredHashes(n, lf.LeafValue, f.reader())
	if err != nil {
		panic(err)
	}
	h := sumdb.RecordHash(lf.LeafValue)
	f.leaves = append(f.leaves, &trillian.LogLeaf{LeafValue: lf.LeafValue, LeafIdentityHash: lf.LeafIdentityHash, MerkleLeafHash: h[:], LeafIndex: n})
	f.stored = append(f.stored, hs...)
}

func (f *fakeTrillian) reader() sumdb.HashReader {
	return sumdb.HashReaderFunc(func(idx []int64) ([]sumdb.Hash, error) {
		out := make([]sumdb.Hash, len(idx))
		for i, x := range idx {
			if x >= int64(len(f.stored)) {
				return nil, errors.New("fake: no such hash")
			}
			out[i] = f.stored[x]
		}
		return out, nil
	})
}

func (f *fakeTrillian) root() (*trillian.SignedLogRoot, error) {
	n := int64(len(f.leaves))
	h := sumdb.Hash(sha256.Sum256(nil))
	if n > 0 {
		var err error
		if h, err = sumdb.TreeHash(n, f.reader()); err != nil {
			return nil, err
		}
	}
	b, err := (&types.LogRootV1{TreeSize: uint64(n), RootHash: h[:]}).MarshalBinary()
	if err != nil {
		return nil, err
	}
	return &trillian.SignedLogRoot{LogRoot: b}, nil
}

func (f *fakeTrillian) GetLatestSignedLogRoot(ctx context.Context, req *trillian.GetLatestSignedLogRootRequest, _ ...grpc.CallOption) (*trillian.GetLatestSignedLogRootResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(req.LogId); err != nil {
		return nil, err
	}
	f.sequence()
	r, err := f.root()
	return &trillian.GetLatestSignedLogRootResponse{SignedLogRoot: r}, err
}

func (f *fakeTrillian) GetLeavesByRange(ctx context.Context, req *trillian.GetLeavesByRangeRequest, _ ...grpc.CallOption) (*trillian.GetLeavesByRangeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(req.LogId); err != nil {
		return nil, err
	}
	if req.StartIndex < 0 || req.Count <= 0 {
		return nil, status.Error(codes.InvalidArgument, "bad range")
	}
	f.leavesCalls++
	resp := &trillian.GetLeavesByRangeResponse{}
	if req.StartIndex >= int64(len(f.leaves)) {
		return resp, nil // as Trillian does
	}
	// Like Trillian, answer at most a few leaves per call: the Log must
	// loop. On a pre-ordered tree, Trillian also returns the stored leaves
	// past the integrated ones.
	for i := req.StartIndex; i < req.StartIndex+min(req.Count, 100); i++ {
		var lf *trillian.LogLeaf
		switch {
		case i < int64(len(f.leaves)):
			lf = f.leaves[i]
		case f.preordered && f.sequenced[i] != nil:
			lf = f.sequenced[i]
		}
		if lf == nil {
			break
		}
		v := bytes.Clone(lf.LeafValue)
		if f.serve != nil {
			v = f.serve(i, v)
		}
		resp.Leaves = append(resp.Leaves, &trillian.LogLeaf{
			LeafValue: v, LeafIdentityHash: lf.LeafIdentityHash, MerkleLeafHash: lf.MerkleLeafHash, LeafIndex: i,
		})
	}
	return resp, nil
}

func (f *fakeTrillian) GetInclusionProof(ctx context.Context, req *trillian.GetInclusionProofRequest, _ ...grpc.CallOption) (*trillian.GetInclusionProofResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(req.LogId); err != nil {
		return nil, err
	}
	f.inclusionCalls++
	if req.TreeSize > int64(len(f.leaves)) {
		return &trillian.GetInclusionProofResponse{}, nil // as Trillian does
	}
	p, err := sumdb.ProveRecord(req.TreeSize, req.LeafIndex, f.reader())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &trillian.GetInclusionProofResponse{Proof: &trillian.Proof{LeafIndex: req.LeafIndex, Hashes: flat(p)}}, nil
}

func (f *fakeTrillian) GetConsistencyProof(ctx context.Context, req *trillian.GetConsistencyProofRequest, _ ...grpc.CallOption) (*trillian.GetConsistencyProofResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(req.LogId); err != nil {
		return nil, err
	}
	if req.SecondTreeSize > int64(len(f.leaves)) {
		return &trillian.GetConsistencyProofResponse{}, nil
	}
	p, err := sumdb.ProveTree(req.SecondTreeSize, req.FirstTreeSize, f.reader())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &trillian.GetConsistencyProofResponse{Proof: &trillian.Proof{Hashes: flat(p)}}, nil
}

func flat(p []sumdb.Hash) [][]byte {
	out := make([][]byte, len(p))
	for i := range p {
		out[i] = bytes.Clone(p[i][:])
	}
	return out
}

// truncate rolls the tree back to n leaves, losing everything stored after
// them, as a database restored from an old backup would.
func (f *fakeTrillian) truncate(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sequence()
	f.leaves = f.leaves[:n]
	f.stored = f.stored[:sumdb.StoredHashCount(int64(n))]
	f.queued, f.sequenced = nil, map[int64]*trillian.LogLeaf{}
	f.ids = map[string]bool{}
	for _, lf := range f.leaves {
		f.ids[string(lf.LeafIdentityHash)] = true
	}
}

// rewrite replaces the whole tree by the given entries (a fork).
func (f *fakeTrillian) rewrite(entries [][]byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.leaves, f.stored, f.queued, f.sequenced = nil, nil, nil, map[int64]*trillian.LogLeaf{}
	f.ids = map[string]bool{}
	for _, e := range entries {
		id := sha256.Sum256(e)
		f.ids[string(id[:])] = true
		f.integrateLeaf(&trillian.LogLeaf{LeafValue: e, LeafIdentityHash: id[:]})
	}
}

func (f *fakeTrillian) values() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out [][]byte
	for _, lf := range f.leaves {
		out = append(out, bytes.Clone(lf.LeafValue))
	}
	return out
}

// set changes the fake's settings under its lock.
func (f *fakeTrillian) set(change func(f *fakeTrillian)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(f)
}

// count reads a counter under the fake's lock.
func (f *fakeTrillian) count(c *int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return *c
}

// fakeTrees routes each request to the fake tree it names, for tests that
// use several trees through one client.
type fakeTrees struct {
	trillian.TrillianLogClient   // methods Migrate must not call panic
	trillian.TrillianAdminClient // likewise
	m                            map[int64]*fakeTrillian
}

func (m fakeTrees) tree(id int64) *fakeTrillian {
	if f := m.m[id]; f != nil {
		return f
	}
	return newFake(-1, trillian.TreeType_LOG) // answers NotFound
}

func (m fakeTrees) GetTree(ctx context.Context, req *trillian.GetTreeRequest, opts ...grpc.CallOption) (*trillian.Tree, error) {
	return m.tree(req.TreeId).GetTree(ctx, req, opts...)
}

func (m fakeTrees) GetLatestSignedLogRoot(ctx context.Context, req *trillian.GetLatestSignedLogRootRequest, opts ...grpc.CallOption) (*trillian.GetLatestSignedLogRootResponse, error) {
	return m.tree(req.LogId).GetLatestSignedLogRoot(ctx, req, opts...)
}

func (m fakeTrees) GetLeavesByRange(ctx context.Context, req *trillian.GetLeavesByRangeRequest, opts ...grpc.CallOption) (*trillian.GetLeavesByRangeResponse, error) {
	return m.tree(req.LogId).GetLeavesByRange(ctx, req, opts...)
}

func (m fakeTrees) AddSequencedLeaves(ctx context.Context, req *trillian.AddSequencedLeavesRequest, opts ...grpc.CallOption) (*trillian.AddSequencedLeavesResponse, error) {
	return m.tree(req.LogId).AddSequencedLeaves(ctx, req, opts...)
}
