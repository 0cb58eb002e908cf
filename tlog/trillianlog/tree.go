package trillianlog

import (
	"context"
	"fmt"
	"time"

	"github.com/google/trillian"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// CreateTree creates and initialises a new PREORDERED_LOG tree, the kind on
// which the Log orders the entries itself (the fast mode), over the admin
// and log APIs served at conn (trillian_log_server serves both), and
// returns its id. It is what Trillian's createtree tool does, for tests,
// benchmarks and first-time setup.
func CreateTree(ctx context.Context, conn grpc.ClientConnInterface, displayName string) (int64, error) {
	return CreateTreeOfType(ctx, conn, displayName, trillian.TreeType_PREORDERED_LOG)
}

// CreateTreeOfType is CreateTree for a tree of type typ: PREORDERED_LOG,
// or LOG (Trillian orders the entries; the slower mode kbs used before).
func CreateTreeOfType(ctx context.Context, conn grpc.ClientConnInterface, displayName string, typ trillian.TreeType) (int64, error) {
	tree, err := trillian.NewTrillianAdminClient(conn).CreateTree(ctx, &trillian.CreateTreeRequest{Tree: &trillian.Tree{
		TreeState:       trillian.TreeState_ACTIVE,
		TreeType:        typ,
		DisplayName:     displayName,
		MaxRootDuration: durationpb.New(0),
	}})
	if err != nil {
		return 0, fmt.Errorf("trillianlog: couldn't create a tree: %w", err)
	}
	lc := trillian.NewTrillianLogClient(conn)
	delay := 10 * time.Millisecond
	for {
		_, err := lc.InitLog(ctx, &trillian.InitLogRequest{LogId: tree.TreeId})
		if err == nil || status.Code(err) == codes.AlreadyExists {
			break
		}
		if c := status.Code(err); c != codes.Unavailable && c != codes.NotFound {
			return 0, fmt.Errorf("trillianlog: couldn't initialise tree %d: %w", tree.TreeId, err)
		}
		select {
		case <-time.After(delay):
			delay = min(2*delay, time.Second)
		case <-ctx.Done():
			return 0, fmt.Errorf("trillianlog: couldn't initialise tree %d: %w", tree.TreeId, ctx.Err())
		}
	}
	for {
		_, err := lc.GetLatestSignedLogRoot(ctx, &trillian.GetLatestSignedLogRootRequest{LogId: tree.TreeId})
		if err == nil {
			return tree.TreeId, nil
		}
		if status.Code(err) != codes.FailedPrecondition {
			return 0, fmt.Errorf("trillianlog: tree %d has no root: %w", tree.TreeId, err)
		}
		select {
		case <-time.After(delay):
			delay = min(2*delay, time.Second)
		case <-ctx.Done():
			return 0, fmt.Errorf("trillianlog: tree %d has no root: %w", tree.TreeId, ctx.Err())
		}
	}
}

// treeType returns the type of tree id, which must be an active LOG or
// PREORDERED_LOG tree.
func treeType(ctx context.Context, admin trillian.TrillianAdminClient, id int64) (trillian.TreeType, error) {
	tree, err := admin.GetTree(ctx, &trillian.GetTreeRequest{TreeId: id})
	if err != nil {
		return 0, fmt.Errorf("trillianlog: couldn't get tree %d: %w", id, err)
	}
	if t := tree.GetTreeType(); t != trillian.TreeType_LOG && t != trillian.TreeType_PREORDERED_LOG {
		return 0, fmt.Errorf("trillianlog: tree %d is a %s tree, not LOG or PREORDERED_LOG", id, t)
	}
	if s := tree.GetTreeState(); s != trillian.TreeState_ACTIVE {
		return 0, fmt.Errorf("trillianlog: tree %d is %s, not ACTIVE", id, s)
	}
	return tree.GetTreeType(), nil
}
