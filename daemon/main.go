// Command kbsd is the kbs broker daemon. It runs inside a confidential VM,
// attests itself to clients, verifies the evidence of AI workers against a
// signed manifest, and releases prompt-encryption keys only to compliant
// workers, logging every manifest version and every release in a
// transparency log before it takes effect.
package main

import (
	"flag"
	"fmt"
	"os"
)

const usage = `kbsd: attested key broker with a transparency log.

Usage:
  kbsd --dev [--data DIR] [--listen-tcp ADDR]
  kbsd --data DIR --manifest FILE --tee snp|tdx [--listen-unix PATH] [--listen-tcp ADDR]

Flags:
`

func main() {
	fs := flag.NewFlagSet("kbsd", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	dev := fs.Bool("dev", false, "development mode: simulated TEE, generated dev keys and manifest (never in production)")
	_ = fs.String("data", "", "data directory (default ./kbs-dev with --dev)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	_ = dev
	fmt.Fprintln(os.Stderr, "kbsd: the daemon is not implemented yet")
	os.Exit(1)
}
