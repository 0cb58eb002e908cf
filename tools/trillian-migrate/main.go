// Command trillian-migrate moves kbs's transparency log from one Trillian
// tree to another without changing a checkpoint: typically from a LOG tree
// (where Trillian orders the entries, the slower mode of older kbs
// deployments) to a PREORDERED_LOG tree (where kbsd orders them and writes
// them in batches). It copies every leaf to the same index of the new tree,
// checks that they hash to kbsd's last signed checkpoint and that the new
// tree's root is the old one's, then rewrites kbsd's state file to name the
// new tree (trillianlog.Migrate). Clients, workers and auditors see no
// difference.
//
// Usage:
//
//	trillian-migrate --addr HOST:PORT [--tls-ca FILE] --from OLD --to NEW --state DATA/trillian-state.json
//
// Stop kbsd first, create the new tree with Trillian's createtree
// (--tree_type=PREORDERED_LOG --max_root_duration=0s), run this, then start
// kbsd with --trillian-tree-id NEW. Running it again after an interruption
// resumes the copy; once the state file names NEW it does nothing. The old
// tree is left as it was: delete it when kbsd runs on the new one. See
// docs/scale-out.md.
//
// Exit status: 0 success, 1 the trees or the state file disagree (nothing
// was switched), 2 a usage or I/O error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"github.com/hashicorp/go-hclog"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/trillianlog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("trillian-migrate", flag.ContinueOnError)
	addr := fs.String("addr", "", "Trillian log server gRPC address HOST:PORT")
	tlsCA := fs.String("tls-ca", "", "PEM CA certificates: speak TLS to Trillian and verify its certificate (default plaintext)")
	from := fs.Int64("from", 0, "the tree the log is in now")
	to := fs.Int64("to", 0, "the PREORDERED_LOG tree to move it to")
	state := fs.String("state", "", "kbsd's Trillian state file (DATA/trillian-state.json)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *addr == "" || *from <= 0 || *to <= 0 || *state == "" || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: trillian-migrate --addr HOST:PORT [--tls-ca FILE] --from OLD --to NEW --state FILE")
		return 2
	}
	var opts []grpc.DialOption
	if *tlsCA != "" {
		creds, err := credentials.NewClientTLSFromFile(*tlsCA, "")
		if err != nil {
			fmt.Fprintln(os.Stderr, "trillian-migrate: --tls-ca:", err)
			return 2
		}
		opts = append(opts, grpc.WithTransportCredentials(creds))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	err := trillianlog.Migrate(ctx, trillianlog.MigrateConfig{
		Addr: *addr, DialOptions: opts, From: *from, To: *to, StatePath: *state,
		Logger: hclog.New(&hclog.LoggerOptions{Name: "trillian-migrate", Output: os.Stderr}),
	})
	switch {
	case err == nil:
		return 0
	case errors.Is(err, tlog.ErrConflict):
		fmt.Fprintln(os.Stderr, "trillian-migrate:", err)
		return 1
	default:
		fmt.Fprintln(os.Stderr, "trillian-migrate:", err)
		return 2
	}
}
