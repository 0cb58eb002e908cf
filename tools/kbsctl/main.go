// Command kbsctl is the kbs command-line tool for every role: clients verify
// the broker and upload keys, workers fetch keys, owners sign and roll out
// manifests, and auditors check the transparency log.
package main

import (
	"flag"
	"fmt"
	"os"
)

const usage = `kbsctl: client, worker, owner and auditor tool for kbs.

Usage:
  kbsctl [global flags] <command> [flags]

Commands: verify, key, manifest, log, audit, receipt, prompt, worker.

Global flags:
`

func main() {
	fs := flag.NewFlagSet("kbsctl", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	fmt.Fprintln(os.Stderr, "kbsctl: no commands are implemented yet")
	os.Exit(2)
}
