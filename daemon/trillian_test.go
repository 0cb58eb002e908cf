package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/trillianlog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// trillianFlags creates a Trillian tree on the Trillian named by
// KBS_TRILLIAN_ADDR (make test-trillian starts one) and returns the kbsd
// flags that put the log on it; without it the test is skipped.
func trillianFlags(t *testing.T) []string {
	t.Helper()
	addr := os.Getenv("KBS_TRILLIAN_ADDR")
	if addr == "" {
		t.Skip("no Trillian: set KBS_TRILLIAN_ADDR, or run `make test-trillian` (starts PostgreSQL and Trillian)")
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tree, err := trillianlog.CreateTree(ctx, conn, "kbsd-test")
	if err != nil {
		t.Fatal(err)
	}
	return []string{"--log-backend", "trillian", "--trillian-addr", addr, "--trillian-tree-id", strconv.FormatInt(tree, 10)}
}

// TestTrillianBackend runs kbsd with its log on a real Trillian: a client
// verifies the broker, uploads a key, a worker gets it with a receipt; after
// a restart the client's consistency check passes, old receipts verify and
// the key is released again; after kill -9 too.
func TestTrillianBackend(t *testing.T) {
	flags := trillianFlags(t)
	data := filepath.Join(t.TempDir(), "kbs-dev")
	d := startDaemon(t, data, flags...)
	defer func() {
		if !d.Exited() {
			d.Kill()
		}
	}()
	if !strings.Contains(d.Output(), "using a Trillian log") {
		t.Fatalf("kbsd did not say it uses Trillian:\n%s", d.Output())
	}
	c := newClient(t, d)
	c.verifyBroker()
	material := []byte("trillian-backed key material....")
	up := c.upload("demo/trillian", 1, material)
	if e := c.checkReceipt(up.Receipt); e.Type != tlog.TypeKeyUpload {
		t.Fatalf("upload receipt entry %+v", e)
	}
	keys, rel, err := fetch(d, attest.SNP, api.KEMX25519, "demo/trillian")
	if err != nil || !bytes.Equal(keys["demo/trillian"], material) {
		t.Fatalf("release: %v", err)
	}
	receipts := []string{up.Receipt, rel.Receipt}
	if e := c.checkReceipt(rel.Receipt); e.Type != tlog.TypeRelease {
		t.Fatalf("release receipt entry %+v", e)
	}
	if _, err := os.Stat(filepath.Join(data, "trillian-state.json")); err != nil {
		t.Fatalf("no Trillian state file: %v", err)
	}

	for _, restart := range []string{"stop", "kill -9"} {
		if restart == "stop" {
			d.stop()
		} else {
			d.Kill()
		}
		d = startDaemon(t, data, flags...)
		c.d = d
		c.verifyBroker() // consistency from the checkpoint seen before
		for _, r := range receipts {
			c.checkReceipt(r)
		}
		keys, rel, err := fetch(d, attest.SNP, api.KEMX25519, "demo/trillian")
		if err != nil || !bytes.Equal(keys["demo/trillian"], material) {
			t.Fatalf("release after %s: %v", restart, err)
		}
		receipts = append(receipts, rel.Receipt)
	}
	d.stop()
}
