package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/google/trillian"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/trillianlog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"--addr", "127.0.0.1:1", "--from", "1", "--to", "2"},
		{"--addr", "127.0.0.1:1", "--from", "1", "--to", "2", "--state", "s", "extra"},
		{"--bogus"},
		{"--addr", "127.0.0.1:1", "--from", "1", "--to", "2", "--state", "s", "--tls-ca", filepath.Join(t.TempDir(), "missing.pem")},
	} {
		if got := run(args); got != 2 {
			t.Errorf("run(%q) = %d, want 2", args, got)
		}
	}
}

// TestMigrate runs the command against the Trillian named by
// KBS_TRILLIAN_ADDR (make test-trillian starts one).
func TestMigrate(t *testing.T) {
	addr := os.Getenv("KBS_TRILLIAN_ADDR")
	if addr == "" {
		t.Skip("no Trillian: set KBS_TRILLIAN_ADDR, or run `make test-trillian`")
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	tree := func(typ trillian.TreeType) int64 {
		id, err := trillianlog.CreateTreeOfType(ctx, conn, "migrate-test", typ)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			trillian.NewTrillianAdminClient(conn).DeleteTree(context.Background(), &trillian.DeleteTreeRequest{TreeId: id})
		})
		return id
	}
	origin := tlog.OriginPrefix + "migrate-test"
	s, v, _, err := tlog.NewEd25519NoteKeys(origin, ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, ed25519.SeedSize)))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := tlog.NewCheckpointSigner(origin, s, v)
	if err != nil {
		t.Fatal(err)
	}
	from, to, other := tree(trillian.TreeType_LOG), tree(trillian.TreeType_PREORDERED_LOG), tree(trillian.TreeType_PREORDERED_LOG)
	state := filepath.Join(t.TempDir(), "trillian-state.json")
	l, err := trillianlog.New(ctx, trillianlog.Config{Addr: addr, TreeID: from, Signer: signer, StatePath: state})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []string{"a", "b", "c"} {
		if _, _, err := l.Append(ctx, []byte(e)); err != nil {
			t.Fatal(err)
		}
	}
	want, _ := l.Checkpoint(ctx)
	l.Close()

	// A target that already holds another leaf is refused.
	ol, err := trillianlog.New(ctx, trillianlog.Config{Addr: addr, TreeID: other, Signer: signer, StatePath: filepath.Join(t.TempDir(), "other")})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ol.Append(ctx, []byte("other")); err != nil {
		t.Fatal(err)
	}
	ol.Close()
	args := func(to int64) []string {
		return []string{"--addr", addr, "--from", strconv.FormatInt(from, 10), "--to", strconv.FormatInt(to, 10), "--state", state}
	}
	if got := run(args(other)); got != 1 {
		t.Fatalf("migrating to a tree holding another leaf: exit %d, want 1", got)
	}
	if got := run(args(to)); got != 0 {
		t.Fatalf("exit %d, want 0", got)
	}
	l, err = trillianlog.New(ctx, trillianlog.Config{Addr: addr, TreeID: to, Signer: signer, StatePath: state})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if cp, _ := l.Checkpoint(ctx); !bytes.Equal(cp.Note, want.Note) {
		t.Fatalf("checkpoint on the new tree\n%s\nwant\n%s", cp.Note, want.Note)
	}
	if i, _, err := l.Append(ctx, []byte("d")); err != nil || i != 3 {
		t.Fatalf("Append on the new tree = %d, %v; want 3", i, err)
	}
}
