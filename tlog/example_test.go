package tlog_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/boltlog"
)

// A worker checks the receipt that came with its keys: the receipt alone
// proves that the release entry is in the log.
func ExampleVerifyReceipt() {
	receipt, _ := os.ReadFile("testdata/receipt.tlog-proof")
	vkey, _ := os.ReadFile("testdata/receipt.vkey") // from the broker's attestation
	v, err := tlog.NewVerifier("kbs/test", strings.TrimSpace(string(vkey)), nil)
	if err != nil {
		panic(err)
	}
	r, err := v.VerifyReceipt(receipt)
	if err != nil {
		fmt.Println("bad receipt:", err)
		return
	}
	e, err := tlog.DecodeEntry(r.Entry)
	if err != nil {
		fmt.Println("bad entry:", err)
		return
	}
	fmt.Println(r.Index, e.Type, e.Release.WorkerClass, r.Checkpoint.Size)
	// Output: 3 release demo-worker 4
}

// The broker appends an entry, hands out a receipt, and a client that
// remembers the last checkpoint it saw checks that the log only grew.
func ExampleVerifier_Update() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "tlog-example")
	defer os.RemoveAll(dir)

	// Broker side.
	origin := tlog.OriginPrefix + "example"
	signer, verifier, vkey, _ := tlog.NewEd25519NoteKeys(origin, ed25519.NewKeyFromSeed(make([]byte, 32)))
	cs, _ := tlog.NewCheckpointSigner(origin, signer, verifier)
	log, err := boltlog.Open(filepath.Join(dir, "kbs.db"), boltlog.Config{Signer: cs})
	if err != nil {
		panic(err)
	}
	defer log.Close()
	_, first, _ := log.Append(ctx, []byte("first"))

	// Client side: trust on first use, then demand consistency.
	client, _ := tlog.NewVerifier(origin, vkey, tlog.FileStore{Dir: filepath.Join(dir, "client")})
	if _, err := client.Update(first.Note, nil); err != nil {
		panic(err)
	}
	_, second, _ := log.Append(ctx, []byte("second"))
	proof, _ := log.ConsistencyProof(ctx, first.Size, second.Size)
	cp, err := client.Update(second.Note, proof)
	fmt.Println(cp.Size, err)

	// Showing the client the older checkpoint again is a rollback.
	_, err = client.Update(first.Note, nil)
	fmt.Println(err)
	// Output:
	// 2 <nil>
	// tlog: log kbs/example rolled back: verified size 2, new size 1: the tree is smaller than a verified one
}
