package manifest_test

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/kbs-dev/kbs/manifest"
)

func read(name string) []byte {
	b, err := os.ReadFile(td + "/" + name)
	if err != nil {
		panic(err)
	}
	return b
}

func sig(name string) string { return strings.TrimSpace(string(read(name))) }

// A broker re-verifies the chain it keeps (version 1 as the operator
// configured it, with or without its own owners' signatures; each later
// version with the signatures that admitted it) every time it starts. The
// operator's file is compared with the first version separately, so the
// anchor is nil here.
func ExampleVerifyChain_stored() {
	stored := []manifest.SignedVersion{
		{Body: read("chain/v1.json")}, // version 1, trusted by the operator's decision
		{Body: read("chain/v2.json"), Signatures: []string{sig("chain/v2.json.sig.owner1"), sig("chain/v2.json.sig.owner3")}},
		{Body: read("chain/v3.json"), Signatures: []string{sig("chain/v3.json.sig.owner2"), sig("chain/v3.json.sig.owner4")}},
	}
	chain, err := manifest.VerifyChain(nil, stored)
	if errors.Is(err, manifest.ErrTooFewSignatures) {
		fmt.Println("a version lacks its owners' threshold:", err)
		return
	}
	if err != nil {
		fmt.Println("the stored chain does not verify:", err)
		return
	}
	for _, l := range chain.Links() {
		fmt.Printf("version %d: %d signer(s), %d change(s)\n", l.Manifest.Version(), len(l.Signers), len(l.Changes))
	}
	fmt.Println("active:", chain.Latest().Version())
	// Output:
	// version 1: 0 signer(s), 0 change(s)
	// version 2: 2 signer(s), 5 change(s)
	// version 3: 2 signer(s), 4 change(s)
	// active: 3
}

// A client that holds version 2 follows a broker to version 3: its own
// copy is the anchor, and the versions after it must be signed down from
// it.
func ExampleVerifyChain_follow() {
	mine, err := manifest.Parse(read("chain/v2.json"))
	if err != nil {
		panic(err)
	}
	fromBroker := []manifest.SignedVersion{
		{Body: read("chain/v2.json")},
		{Body: read("chain/v3.json"), Signatures: []string{sig("chain/v3.json.sig.owner2"), sig("chain/v3.json.sig.owner4")}},
	}
	chain, err := manifest.VerifyChain(mine, fromBroker)
	if err != nil {
		fmt.Println("refused:", err)
		return
	}
	next, _ := chain.Version(3)
	fmt.Println("follow to version", next.Manifest.Version())
	for _, c := range next.Changes {
		if c.Field != "previous" {
			fmt.Println(" ", c)
		}
	}

	// A broker whose history does not start at the client's copy is refused.
	_, err = manifest.VerifyChain(mine, fromBroker[1:])
	fmt.Println(errors.Is(err, manifest.ErrUntrusted))
	// Output:
	// follow to version 3
	//   owners.threshold: 2 -> 3
	//   version: 2 -> 3
	//   workers["gpu-worker"].snp[0].measurement: added fb854895685bf733614bc0d47c8a6ff0687e4cad00a8dcfa3c7c085bec7ab4d893b6f6df3cf0b91e55cb873cb0c88f91
	// true
}
