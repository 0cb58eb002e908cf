// Command kbsd is the kbs broker daemon. It runs inside a confidential VM,
// attests itself to clients, verifies the evidence of AI workers against a
// signed manifest, and releases prompt-encryption keys only to compliant
// workers, logging every manifest version and every release in a
// transparency log before it takes effect.
//
// # Development
//
//	kbsd --dev [--data DIR] [--listen-tcp ADDR]
//
// runs on any Linux machine with a simulated TEE. DIR (default ./kbs-dev)
// holds everything and is reused when it exists: kbs.db (bbolt: log, key
// store, broker state), kbs.sock, manifest.json with manifest.json.sig,
// owner.key/owner.pub and client.key/client.pub (ECDSA P-256 PEM, dev
// only), and sim/ (the simulated vendor chain, root.pem, and the file that
// stands in for the hardware sealing key). It prints the commands to try,
// which work on a copy of manifest.json: the file in DIR must stay version
// 1. When it is missing next to an existing kbs.db, version 1 is written
// back from the database.
//
// # Production
//
//	kbsd --data DIR --manifest FILE --tee snp [--manifest-sig FILE ...]
//	     [--listen-unix PATH] [--listen-tcp ADDR] [--log-format json]
//
// The first start logs the broker's identity and FILE as version 1. Passing
// FILE is the operator's explicit trust decision for version 1: owner
// signatures are optional. When present (--manifest-sig, or FILE.sig when
// no --manifest-sig is given) they must all verify against the version's own
// owners and reach its threshold, and the log names their signers; without
// them kbsd starts, warns that version 1 is trusted by the operator's
// decision only, and the log's manifest entry names no signers. Clients
// likewise trust version 1 by their own file. Later versions arrive only through PUT
// /v1/manifest. The key store's master key is sealed with the SEV-SNP derived
// key; TDX has no such key, so a TDX kbsd keeps it in memory only. The
// simulated TEE is refused outside --dev.
//
// # Upgrades, moves and recovery
//
//	kbsd --data EMPTYDIR --tee snp|tdx --manifest FILE --handover-from ADDR
//
// takes over from the running broker at ADDR: kbsd verifies it against FILE
// (following its signed chain), attests to it, and receives its master key,
// sealed to this process's attested key after the running broker logged a
// handover entry, together with its database; it checks that the log it
// received ends with that entry, seals the master key with its own sealer,
// and serves the same log. The running broker's evidence check uses the
// active manifest's service reference values: publish a version that lists
// the new measurement first. A kbsd that cannot unseal its master key (a
// lost sealing key, another machine, a TDX restart) starts in recovery: it
// serves attestation and its log and waits for the recovery holders the
// manifest names to send their shares (kbsctl recover). See
// docs/operating.md.
//
// Flags may also come from a JSON config file (--config FILE) whose keys
// are the flag names; flags on the command line win.
//
// At every start kbsd rebuilds its authorization state (the active
// manifest, each key's live version) from its log, and refuses to start,
// saying what differs, on a database whose manifest records or key store
// disagree with the log (a record rolled back, restored after a deletion,
// swapped or removed by the host).
//
// On SIGINT or SIGTERM kbsd stops accepting connections, finishes the
// requests in flight, writes the index of its state (so that the next start
// replays nothing), closes the log (every acknowledged entry and its
// checkpoint are already durable) and closes the database.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kbs-dev/kbs/internal/version"
)

const usage = `kbsd: attested key broker with a transparency log.

Usage:
  kbsd --dev [--data DIR] [--listen-tcp ADDR]
  kbsd --data DIR --manifest FILE --tee snp|tdx [--listen-unix PATH] [--listen-tcp ADDR]
  kbsd --version

Flags:
`

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("kbsd", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	fs.Bool("version", false, "print what kbsd was built from (module version, VCS revision) and exit")
	if wantsVersion(args) {
		fmt.Println(version.Get("kbsd"))
		return 0
	}
	cfg, err := parseFlags(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "kbsd:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "kbsd:", err)
		return 1
	}
	return 0
}

// wantsVersion reports whether args ask for --version: it is answered
// before any other flag is checked, so it needs no --data or --tee.
func wantsVersion(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-version", "--version", "-version=true", "--version=true":
			return true
		}
	}
	return false
}
