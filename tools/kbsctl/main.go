// Command kbsctl is the kbs command-line tool for every role: clients verify
// the broker and upload keys, workers fetch keys and serve encrypted
// prompts, owners sign and roll out manifests, and auditors check the
// transparency log.
//
// Usage:
//
//	kbsctl [global flags] <command> [flags] [args]
//
// Global flags (also accepted after the command, by the commands that use
// them): --addr unix://PATH | https://HOST:PORT (default $KBS_ADDR, else
// unix://kbs-dev/kbs.sock), --state DIR (last verified checkpoints and
// broker identities; default $KBS_STATE, else the user config directory's
// kbs/), --sim-root FILE (accept simulated-TEE evidence under this root),
// --json (machine-readable output on stdout), --offline (no certificate or
// revocation fetches). --version prints what kbsctl was built from.
//
// Exit status: 0 success, 1 a verification or policy failure (evidence,
// manifest, proofs, receipts, a forked or rolled back log, a request the
// broker refused by policy), 2 a usage or I/O error. With --json, a failure
// is one JSON object, {"error": {"code", "message", "hint"}}, on stdout
// (on stderr when the command already printed its JSON result there).
//
// Commands that change the log (key put, key rm, key get, manifest set,
// worker run) check every local precondition (files they write, directories,
// listen addresses) before their first request, and write a receipt for
// every change the broker logged, never over an existing file.
//
// What kbsctl trusts: the manifest file the caller passes (its own copy),
// the vendor roots embedded in the attestation libraries (and a sim root
// only when --sim-root names it), and the state directory. Everything the
// broker says is verified by the libraries before it is used or stored:
// kbs/client (the broker, its manifest chain, receipts, checkpoints),
// kbs/audit (the whole log) and kbs/api (key files, prompts). kbsctl
// itself parses flags, prints results and maps errors to exit codes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/kbs-dev/kbs/internal/version"
)

const usage = `kbsctl: client, worker, owner and auditor tool for kbs.

Usage:
  kbsctl [global flags] <command> [flags] [args]

Client:
  verify --manifest FILE [--follow] [--accept-new-log]  verify the broker, store its checkpoint
  key put --manifest FILE --client-key FILE --id ID (--file F | --generate --out F) [--receipt R]
  key rm [--manifest FILE] --client-key FILE --id ID [--receipt R]
  key ls                                      list key metadata
  prompt encrypt|decrypt --key FILE           AES-256-GCM prompts (stdin to stdout)
  prompt send --worker URL --key FILE         ask a worker (a sealed completion), print the answer
  proxy --manifest FILE --key FILE --worker URL [--listen ADDR]  OpenAI API for local apps, sealed to a worker
Worker:
  key get --manifest FILE --tee snp|tdx|sim [--sim-dir DIR] [--sim-measurement HEX] --id ID... --out DIR
  worker run --manifest FILE --tee ... --id ID... --listen ADDR [--upstream URL] [--receipts DIR]
  attest --tee snp|tdx|sim [--report-data HEX] --out FILE   write evidence (for manifest check)
Owner:
  manifest sign --key FILE MANIFEST           print a base64 signature (openssl/cosign compatible)
  manifest set --sig FILE [--sig FILE...] [--receipt R] MANIFEST
  manifest next [--add-owner PEM] [--threshold N] [--add-service-measurement P:HEX]
                [--add-recovery-holder NAME=FILE] [--recovery-threshold K] MANIFEST
Recovery holder:
  recover keygen --out FILE [--pq]            make a holder key; prints the public key for the manifest
  recover --manifest FILE --holder NAME --key FILE   verify a recovering broker, send it your share
  recover status                              whose shares a recovering broker has
  manifest history [--manifest FILE]
  manifest check --manifest FILE --platform snp|tdx --evidence FILE [--class C] [--report-data HEX] [--offline] [--collateral DIR]
Auditor:
  log checkpoint [--manifest FILE]            fetch the latest checkpoint; check signature, witnesses, consistency
  log verify [--manifest FILE]                check witnesses and consistency with the stored checkpoint, store it
  log witnesses                               the broker's account of its witnesses: who cosigned what, who fails
  audit [--manifest FILE] [--csv | --html FILE] [--key P] [--client N] [--class C] [--since T] [--until T] [--rules FILE]
                                              verify every entry; manifest history, releases, a report
  monitor [--rules FILE] [--webhook URL] [--once]  follow the log; alert on rules, forks, inconsistencies
  receipt verify [--note-key KEY] [--manifest FILE] FILE...  check receipts and their witnesses offline

Run 'kbsctl help <command>' (or 'kbsctl <command> -h') for the flags of a command.
A development broker: 'kbsd --dev' prints the --addr and --sim-root to use.

Exit status: 0 success, 1 verification or policy failure, 2 usage or I/O error.
With --json, errors are JSON too: {"error": {"code": ..., "message": ..., "hint": ...}}.

Global flags:
`

// globals are the flags every command may use.
type globals struct {
	addr    string
	state   string
	simRoot string
	json    bool
	offline bool
	timeout time.Duration
}

// uses says which global flags a command uses: only those are registered
// on (and shown in the help of) its flag set.
type uses uint8

const (
	useAddr    uses = 1 << iota // --addr
	useState                    // --state
	useSimRoot                  // --sim-root
	useJSON                     // --json
	useOffline                  // --offline
	useTimeout                  // --timeout (see env.bound)

	// useBroker is what a command that talks to the broker without
	// verifying its evidence uses; useVerify what one that verifies it.
	useBroker = useAddr | useState | useJSON
	useVerify = useBroker | useSimRoot | useOffline
)

func (g *globals) register(fs *flag.FlagSet, u uses) {
	if u&useAddr != 0 {
		fs.StringVar(&g.addr, "addr", g.addr, "broker address: unix://PATH or https://HOST:PORT ($KBS_ADDR sets the default)")
	}
	if u&useState != 0 {
		fs.StringVar(&g.state, "state", g.state, "state directory: last verified checkpoints and broker identities ($KBS_STATE sets the default)")
	}
	if u&useSimRoot != 0 {
		fs.StringVar(&g.simRoot, "sim-root", g.simRoot, "accept simulated-TEE evidence under this root.pem (development only)")
	}
	if u&useJSON != 0 {
		fs.BoolVar(&g.json, "json", g.json, "print machine-readable JSON on stdout (errors too)")
	}
	if u&useOffline != 0 {
		fs.BoolVar(&g.offline, "offline", g.offline, "never fetch vendor certificates or revocation lists: evidence must carry its certificates (no revocation check)")
	}
	if u&useTimeout != 0 {
		fs.DurationVar(&g.timeout, "timeout", g.timeout, "give up (exit 2) when the command has not completed after this long (default 10m; audit: 1h)")
	}
}

// globalFlag reports whether name is a global flag.
func globalFlag(name string) bool {
	switch name {
	case "addr", "state", "sim-root", "json", "offline", "timeout":
		return true
	}
	return false
}

// defaultAddr is where 'kbsd --dev' listens when run in the current
// directory (its default data directory is kbs-dev).
const defaultAddr = "unix://kbs-dev/kbs.sock"

func defaultGlobals() *globals {
	g := &globals{addr: os.Getenv("KBS_ADDR"), state: os.Getenv("KBS_STATE")}
	if g.addr == "" {
		g.addr = defaultAddr
	}
	if g.state == "" {
		if d, err := os.UserConfigDir(); err == nil {
			g.state = filepath.Join(d, "kbs")
		} else {
			g.state = ".kbs-state"
		}
	}
	return g
}

// defaultTimeout bounds a command that uses --timeout when it is not set
// (audit sets its own).
const defaultTimeout = 10 * time.Minute

// bound returns ctx with the command's deadline: --timeout, or def when it
// is not set. A broker that answers slowly, each answer within a request's
// timeout, cannot stretch the command beyond it.
func (e *env) bound(ctx context.Context, def time.Duration) (context.Context, context.CancelFunc) {
	d := e.g.timeout
	if d <= 0 {
		d = def
	}
	return context.WithTimeout(ctx, d)
}

// env is what a command runs with.
type env struct {
	g      *globals
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	// printedJSON is set once a JSON result went to stdout: an error
	// after it goes to stderr, so that stdout stays one JSON document.
	printedJSON bool
}

type command struct {
	name string
	run  func(ctx context.Context, e *env, args []string) error
}

var commands = []command{
	{"verify", cmdVerify},
	{"key", cmdKey},
	{"manifest", cmdManifest},
	{"log", cmdLog},
	{"audit", cmdAudit},
	{"monitor", cmdMonitor},
	{"receipt", cmdReceipt},
	{"prompt", cmdPrompt},
	{"worker", cmdWorker},
	{"proxy", cmdProxy},
	{"attest", cmdAttest},
	{"recover", cmdRecover},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes kbsctl with args and returns the exit status.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	g := defaultGlobals()
	e := &env{g: g, stdin: stdin, stdout: stdout, stderr: stderr}
	if wantsJSON(args) {
		// Errors are JSON even when --json comes after the flag that
		// failed to parse.
		g.json = true
	}
	fs := flag.NewFlagSet("kbsctl", flag.ContinueOnError)
	g.register(fs, useVerify|useTimeout)
	showVersion := fs.Bool("version", false, "print what kbsctl was built from (module version, VCS revision) and exit")
	printUsage := func() {
		fmt.Fprint(stderr, usage)
		printFlags(stderr, fs, func(*flag.Flag) bool { return true })
	}
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage()
			return 0
		}
		return report(e, usageErr("%v%s (see 'kbsctl -h')", err, suggestFlag(fs, err)))
	}
	if *showVersion {
		v := version.Get("kbsctl")
		if err := e.out(v, func() { fmt.Fprintln(stdout, v) }); err != nil {
			return report(e, err)
		}
		return 0
	}
	if fs.NArg() == 0 {
		if g.json {
			return report(e, usageErr("want a command (see 'kbsctl -h')"))
		}
		printUsage()
		return 2
	}
	name, rest := fs.Arg(0), fs.Args()[1:]
	if name == "help" {
		// "kbsctl help" is "kbsctl -h"; "kbsctl help CMD [SUB]" is
		// "kbsctl CMD [SUB] -h".
		if len(rest) == 0 {
			printUsage()
			return 0
		}
		name, rest = rest[0], append(rest[1:], "-h")
	}
	for _, c := range commands {
		if c.name == name {
			return report(e, c.run(ctx, e, rest))
		}
	}
	return report(e, usageErr("unknown command %q (want %s; see 'kbsctl help')", name, commandNames()))
}

// wantsJSON reports whether args ask for --json anywhere before "--".
func wantsJSON(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-json", "--json", "-json=true", "--json=true":
			return true
		}
	}
	return false
}

func commandNames() string {
	var n []string
	for _, c := range commands {
		n = append(n, c.name)
	}
	sort.Strings(n)
	return strings.Join(n, ", ")
}

// newFlags returns a command's flag set with the global flags it uses
// registered: used, or when a command names none, all of them.
func (e *env) newFlags(name, args, doc string, used ...uses) *flag.FlagSet {
	u := useVerify
	if len(used) > 0 {
		u = used[0]
	}
	fs := flag.NewFlagSet("kbsctl "+name, flag.ContinueOnError)
	e.g.register(fs, u)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage: %s\n\n%s\n", strings.TrimSpace("kbsctl "+name+" "+args), doc)
		own := func(f *flag.Flag) bool { return !globalFlag(f.Name) }
		if countFlags(fs, own) > 0 {
			fmt.Fprintf(e.stderr, "\nFlags:\n")
			printFlags(e.stderr, fs, own)
		}
		if u != 0 {
			fmt.Fprintf(e.stderr, "\nGlobal flags it uses (also accepted before the command; see 'kbsctl -h'):\n")
			printFlags(e.stderr, fs, func(f *flag.Flag) bool { return globalFlag(f.Name) })
		}
	}
	// The flag package's own error lines and usage dumps on a bad flag are
	// replaced by parse's one-line error.
	fs.SetOutput(io.Discard)
	return fs
}

func countFlags(fs *flag.FlagSet, keep func(*flag.Flag) bool) int {
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		if keep(f) {
			n++
		}
	})
	return n
}

// printFlags prints the flags keep selects, sorted, as
//
//	--name TYPE
//	    	usage (default D)
func printFlags(w io.Writer, fs *flag.FlagSet, keep func(*flag.Flag) bool) {
	fs.VisitAll(func(f *flag.Flag) {
		if !keep(f) {
			return
		}
		name, use := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if name != "" {
			line += " " + name
		}
		line += "\n    \t" + strings.ReplaceAll(use, "\n", "\n    \t")
		switch f.DefValue {
		case "", "false", "0", "[]":
		default:
			line += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintln(w, line)
	})
}

// parse parses a command's flags; nargs is the exact number of positional
// arguments (-1: any; -2: at least one). A bad flag or argument count is a
// one-line usage error that points at the command's help.
func parse(fs *flag.FlagSet, args []string, nargs int) error {
	usage := fs.Usage
	fs.Usage = func() {}
	err := fs.Parse(args)
	fs.Usage = usage
	if errors.Is(err, flag.ErrHelp) {
		fs.Usage()
		return errHelp
	}
	cmd := strings.TrimPrefix(fs.Name(), "kbsctl ")
	see := fmt.Sprintf("see '%s -h'", fs.Name())
	switch {
	case err != nil:
		return usageErr("%s: %v%s (%s)", cmd, err, suggestFlag(fs, err), see)
	case nargs == -2 && fs.NArg() == 0:
		return usageErr("%s: want at least 1 argument, got 0 (%s)", cmd, see)
	case nargs == 0 && fs.NArg() != 0:
		return usageErr("%s: unexpected arguments %q (%s)", cmd, fs.Args(), see)
	case nargs > 0 && fs.NArg() != nargs:
		return usageErr("%s: want %d argument(s), got %d (%s)", cmd, nargs, fs.NArg(), see)
	}
	return nil
}

// suggestFlag names the defined flag an undefined one probably meant:
// " (did you mean --addr?)", or "".
func suggestFlag(fs *flag.FlagSet, err error) string {
	_, bad, ok := strings.Cut(err.Error(), "flag provided but not defined: ")
	if !ok {
		return ""
	}
	bad = strings.TrimLeft(bad, "-")
	best, bestD := "", 3
	fs.VisitAll(func(f *flag.Flag) {
		if d := editDistance(bad, f.Name); d < bestD {
			best, bestD = f.Name, d
		}
	})
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean --%s?)", best)
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// subcommand dispatches "kbsctl NAME SUB ...".
func subcommand(ctx context.Context, e *env, name string, args []string, subs map[string]func(context.Context, *env, []string) error) error {
	var names []string
	for n := range subs {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(args) == 0 {
		return usageErr("%s: want a subcommand: %s (see 'kbsctl %s -h')", name, strings.Join(names, ", "), name)
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "-help" || args[0] == "help" {
		fmt.Fprintf(e.stderr, "Usage: kbsctl %s <%s> [flags]\n\n", name, strings.Join(names, "|"))
		// The command's lines of the main usage.
		for _, l := range strings.Split(usage, "\n") {
			if strings.HasPrefix(l, "  "+name+" ") {
				fmt.Fprintf(e.stderr, "%s\n", l)
			}
		}
		fmt.Fprintf(e.stderr, "\nRun 'kbsctl %s <subcommand> -h' for its flags.\n", name)
		return errHelp
	}
	f, ok := subs[args[0]]
	if !ok {
		return usageErr("%s: unknown subcommand %q (want %s; see 'kbsctl %s -h')", name, args[0], strings.Join(names, ", "), name)
	}
	return f(ctx, e, args[1:])
}
