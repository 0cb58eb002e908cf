//go:build ignore

// gen_testdata writes testdata/state.json: the state of a 5-entry log
// signed with the tests' key. Run: go run gen_testdata.go (in this folder).
package main

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"log"
	"os"

	"github.com/kbs-dev/kbs/tlog"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
)

func main() {
	const origin = tlog.OriginPrefix + "trillian-test"
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	s, v, _, err := tlog.NewEd25519NoteKeys(origin, priv)
	if err != nil {
		log.Fatal(err)
	}
	cs, err := tlog.NewCheckpointSigner(origin, s, v)
	if err != nil {
		log.Fatal(err)
	}
	h := rfc6962.DefaultHasher
	rng := (&compact.RangeFactory{Hash: h.HashChildren}).NewEmptyRange(0)
	for i := range 5 {
		if err := rng.Append(h.HashLeaf(fmt.Appendf(nil, "e%d", i)), nil); err != nil {
			log.Fatal(err)
		}
	}
	root, err := rng.GetRootHash(nil)
	if err != nil {
		log.Fatal(err)
	}
	cp, err := cs.Sign(nil, tlog.Root{Size: 5, Hash: tlog.Hash(root)}, nil)
	if err != nil {
		log.Fatal(err)
	}
	b, err := json.Marshal(struct {
		TreeID     int64    `json:"tree_id"`
		Checkpoint string   `json:"checkpoint"`
		Range      [][]byte `json:"range"`
	}{1234, string(cp.Note), rng.Hashes()})
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile("testdata/state.json", append(b, '\n'), 0o644); err != nil {
		log.Fatal(err)
	}
}
