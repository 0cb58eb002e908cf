// Command kbsctl is the kbs command-line tool for every role: clients verify
// the broker and upload keys, workers fetch keys and serve encrypted
// prompts, owners sign and roll out manifests, and auditors check the
// transparency log.
//
// Usage:
//
//	kbsctl [global flags] <command> [flags] [args]
//
// Global flags (also accepted after the command): --addr unix://PATH |
// https://HOST:PORT (default $KBS_ADDR, else unix://kbs-dev/kbs.sock),
// --state DIR (last verified checkpoints and broker identities; default
// $KBS_STATE, else the user config directory's kbs/), --sim-root FILE
// (accept simulated-TEE evidence under this root), --json (machine-readable
// output on stdout), --offline (no certificate or revocation fetches).
//
// Exit status: 0 success, 1 a verification or policy failure (evidence,
// manifest, proofs, receipts, a forked or rolled back log, a request the
// broker refused by policy), 2 a usage or I/O error.
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
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest/verify"
	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/tlog"
)

const usage = `kbsctl: client, worker, owner and auditor tool for kbs.

Usage:
  kbsctl [global flags] <command> [flags] [args]

Client:
  verify --manifest FILE [--follow]           verify the broker, store its checkpoint
  key put --manifest FILE --client-key FILE --id ID (--file F | --generate --out F)
  key rm [--manifest FILE] --client-key FILE --id ID
  key ls                                      list key metadata
  prompt encrypt|decrypt --key FILE           AES-256-GCM prompts (stdin to stdout)
  prompt send --worker URL --key FILE         encrypt stdin, ask a worker, decrypt the answer
Worker:
  key get --manifest FILE --tee snp|tdx|sim [--sim-dir DIR] [--sim-measurement HEX] --id ID... --out DIR
  worker run --manifest FILE --tee ... --id ID... --listen ADDR
Owner:
  manifest sign --key FILE MANIFEST           print a base64 signature (openssl/cosign compatible)
  manifest set --sig FILE [--sig FILE...] MANIFEST
  manifest next [--add-owner PEM] [--threshold N] MANIFEST
  manifest history [--manifest FILE]
  manifest check --manifest FILE --platform snp|tdx --evidence FILE [--class C] [--report-data HEX] [--offline] [--collateral DIR]
Auditor:
  log checkpoint                              fetch and verify the latest checkpoint
  log verify                                  check consistency with the stored checkpoint
  audit [--manifest FILE] [--csv | --html FILE] [--key P] [--client N] [--class C] [--since T] [--until T] [--rules FILE]
                                              verify every entry; manifest history, releases, a report
  monitor [--rules FILE] [--webhook URL] [--once]  follow the log; alert on rules, forks, inconsistencies
  receipt verify [--note-key KEY] FILE        check a receipt offline

Run 'kbsctl help <command>' (or 'kbsctl <command> -h') for the flags of a command.
A development broker: 'kbsd --dev' prints the --addr and --sim-root to use.

Exit status: 0 success, 1 verification or policy failure, 2 usage or I/O error.

Global flags:
`

// globals are the flags every command accepts.
type globals struct {
	addr    string
	state   string
	simRoot string
	json    bool
	offline bool
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.addr, "addr", g.addr, "broker address: unix://PATH or https://HOST:PORT ($KBS_ADDR sets the default)")
	fs.StringVar(&g.state, "state", g.state, "state directory: last verified checkpoints and broker identities ($KBS_STATE sets the default)")
	fs.StringVar(&g.simRoot, "sim-root", g.simRoot, "accept simulated-TEE evidence under this root.pem (development only)")
	fs.BoolVar(&g.json, "json", g.json, "print machine-readable JSON on stdout")
	fs.BoolVar(&g.offline, "offline", g.offline, "never fetch vendor certificates or revocation lists: evidence must carry its certificates (no revocation check)")
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

// env is what a command runs with.
type env struct {
	g      *globals
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
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
	fs := flag.NewFlagSet("kbsctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	g.register(fs)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	name, rest := fs.Arg(0), fs.Args()[1:]
	if name == "help" {
		// "kbsctl help" is "kbsctl -h"; "kbsctl help CMD [SUB]" is
		// "kbsctl CMD [SUB] -h".
		if len(rest) == 0 {
			fs.Usage()
			return 0
		}
		name, rest = rest[0], append(rest[1:], "-h")
	}
	e := &env{g: g, stdin: stdin, stdout: stdout, stderr: stderr}
	for _, c := range commands {
		if c.name == name {
			return report(stderr, e.g, c.run(ctx, e, rest))
		}
	}
	fmt.Fprintf(stderr, "kbsctl: unknown command %q (want %s; see 'kbsctl help')\n", name, commandNames())
	return 2
}

func commandNames() string {
	var n []string
	for _, c := range commands {
		n = append(n, c.name)
	}
	sort.Strings(n)
	return strings.Join(n, ", ")
}

// exitError carries an exit status.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageErr is a usage error (exit 2).
func usageErr(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

// failErr is a verification or policy failure (exit 1).
func failErr(format string, args ...any) error {
	return &exitError{code: 1, err: fmt.Errorf(format, args...)}
}

// errHelp is returned after printing a command's help (exit 0).
var errHelp = errors.New("help")

// report prints err, with what to do about it when that is known, and
// returns the exit status it maps to.
func report(w io.Writer, g *globals, err error) int {
	if err == nil || errors.Is(err, errHelp) {
		return 0
	}
	code := exitCode(err)
	var fe *tlog.ForkError
	if errors.As(err, &fe) {
		fmt.Fprintf(w, "kbsctl: VERIFICATION FAILED: %v\n%s", err, fe.Evidence())
		return code
	}
	msg := err.Error()
	var te *client.TransportError
	switch {
	case code == 2 && errors.Is(err, client.ErrNotPinned):
		msg = fmt.Sprintf("%s: %v", brokerAddr(g, err), client.ErrNotPinned)
	case code == 2 && errors.As(err, &te):
		msg = unreachable(te)
	}
	var ae *api.Error
	switch {
	case code == 1 && errors.As(err, &ae):
		// The broker refused by policy; nothing failed to verify.
		fmt.Fprintf(w, "kbsctl: REFUSED: %s\n", msg)
	case code == 1:
		fmt.Fprintf(w, "kbsctl: VERIFICATION FAILED: %s\n", msg)
	default:
		fmt.Fprintf(w, "kbsctl: %s\n", msg)
	}
	if h := hint(g, err); h != "" {
		fmt.Fprintf(w, "  hint: %s\n", h)
	}
	return code
}

// brokerAddr is the broker address err is about.
func brokerAddr(g *globals, err error) string {
	var te *client.TransportError
	if errors.As(err, &te) {
		return te.Addr
	}
	return g.addr
}

// unreachable says briefly why the broker at te.Addr could not be
// reached: the innermost network error, without the HTTP request.
func unreachable(te *client.TransportError) string {
	cause := te.Err
	var oe *net.OpError
	if errors.As(cause, &oe) && oe.Err != nil {
		cause = oe.Err
	} else {
		var ue *url.Error
		if errors.As(cause, &ue) {
			cause = ue.Err
		}
	}
	return fmt.Sprintf("can't reach the broker at %s: %v", te.Addr, cause)
}

// hint says what to do about the common mistakes: no broker at --addr, a
// development broker without --sim-root.
func hint(g *globals, err error) string {
	var te *client.TransportError
	switch {
	case errors.Is(err, verify.ErrSimulatedNotTrusted):
		return "this broker runs on a simulated TEE (kbsd --dev): to trust it for development, pass --sim-root DATA/sim/root.pem (kbsd --dev prints the path)"
	case errors.Is(err, client.ErrNotPinned):
		return fmt.Sprintf("over TLS, kbsctl talks only to a broker whose attested TLS key it has pinned: run 'kbsctl --addr %s verify --manifest FILE' once with this --state", g.addr)
	case errors.Is(err, client.ErrPinMismatch):
		return ""
	case !errors.As(err, &te):
		return ""
	}
	unix := strings.HasPrefix(te.Addr, "unix://")
	from := "--addr"
	switch env := os.Getenv("KBS_ADDR"); {
	case env == "" && g.addr == defaultAddr:
		from = "the default --addr, where 'kbsd --dev' run in this directory listens"
	case env == g.addr:
		from = "$KBS_ADDR"
	}
	switch {
	case unix && errors.Is(err, syscall.ENOENT):
		return fmt.Sprintf("no socket at %s (%s): start kbsd, or point --addr or $KBS_ADDR at the socket it prints (kbsd --data DIR listens on unix://DIR/kbs.sock)", strings.TrimPrefix(te.Addr, "unix://"), from)
	case unix && errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("the socket at %s (%s) exists but nothing accepts on it: kbsd is not running there (restart it)", strings.TrimPrefix(te.Addr, "unix://"), from)
	case errors.Is(err, syscall.EACCES):
		return "permission denied: the socket belongs to the user that runs kbsd (mode 0600); run kbsctl as that user"
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("nothing listens at %s (%s): is kbsd running with --listen-tcp on that address?", te.Addr, from)
	}
	var tlsErr *tls.RecordHeaderError
	if errors.As(err, &tlsErr) {
		return "the server at --addr does not speak TLS: kbsd's TCP listener is https://HOST:PORT"
	}
	return fmt.Sprintf("check that kbsd is running and that %s (%s) is its address", from, te.Addr)
}

// exitCode maps an error to 1 (verification or policy failure) or 2.
func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var (
		ve *client.VerifyError
		fe *tlog.ForkError
		ae *api.Error
	)
	switch {
	case errors.As(err, &ve), errors.As(err, &fe), errors.Is(err, client.ErrNewLog), errors.Is(err, client.ErrPinMismatch):
		return 1
	case errors.As(err, &ae):
		switch ae.Code {
		case api.CodeUnauthorized, api.CodeNonceInvalid, api.CodeEvidenceRejected, api.CodePolicyDenied,
			api.CodeForbidden, api.CodeConflict:
			return 1
		}
	}
	return 2
}

// newFlags returns a command's flag set with the global flags registered.
func (e *env) newFlags(name, args, doc string) *flag.FlagSet {
	fs := flag.NewFlagSet("kbsctl "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	e.g.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage: %s\n\n%s\n\nFlags:\n", strings.TrimSpace("kbsctl "+name+" "+args), doc)
		fs.SetOutput(e.stderr)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	// The flag package's own error lines and usage dumps on a bad flag are
	// replaced by parse's one-line error.
	fs.SetOutput(io.Discard)
	return fs
}

// parse parses a command's flags; nargs is the exact number of positional
// arguments (-1: any). A bad flag or argument count is a one-line usage
// error that points at the command's help.
func parse(fs *flag.FlagSet, args []string, nargs int) error {
	usage := fs.Usage
	fs.Usage = func() {}
	err := fs.Parse(args)
	fs.Usage = usage
	if errors.Is(err, flag.ErrHelp) {
		fs.Usage()
		return errHelp
	}
	see := fmt.Sprintf("see '%s -h'", fs.Name())
	if err != nil {
		return usageErr("%s: %v (%s)", strings.TrimPrefix(fs.Name(), "kbsctl "), err, see)
	}
	if nargs >= 0 && fs.NArg() != nargs {
		if nargs == 0 {
			return usageErr("%s: unexpected arguments %q (%s)", strings.TrimPrefix(fs.Name(), "kbsctl "), fs.Args(), see)
		}
		return usageErr("%s: want %d argument(s), got %d (%s)", strings.TrimPrefix(fs.Name(), "kbsctl "), nargs, fs.NArg(), see)
	}
	return nil
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
		return usageErr("%s: unknown subcommand %q (want %s)", name, args[0], strings.Join(names, ", "))
	}
	return f(ctx, e, args[1:])
}
