package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest/verify"
	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/tlog"
)

// exitError carries an exit status, and optionally the JSON error code and
// the hint that go with it.
type exitError struct {
	code    int
	errCode string
	hint    string
	err     error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageErr is a usage error (exit 2).
func usageErr(format string, args ...any) error {
	return &exitError{code: 2, errCode: "usage", err: fmt.Errorf(format, args...)}
}

// failErr is a verification or policy failure (exit 1).
func failErr(format string, args ...any) error {
	return &exitError{code: 1, err: fmt.Errorf(format, args...)}
}

// withHint returns err with a hint printed below it (keeping its exit
// status).
func withHint(err error, hint string) error {
	return &exitError{code: exitCode(err), hint: hint, err: err}
}

// errHelp is returned after printing a command's help (exit 0).
var errHelp = errors.New("help")

// errorJSON is the one shape of every error with --json.
type errorJSON struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	// Code is stable: "usage", "unreachable", "not_a_broker",
	// "verification_failed", "log_forked", "log_rolled_back", "new_log",
	// "manifest_mismatch", "not_pinned", "pin_mismatch", "io", a code of
	// the broker's ("policy_denied", "forbidden", ...), or one a command
	// names ("not_found", "audit_failed", "no_match").
	Code    string `json:"code"`
	Message string `json:"message"`
	Hint    string `json:"hint"`
}

// report prints err, with what to do about it when that is known, and
// returns the exit status it maps to. With --json it prints errorJSON.
func report(e *env, err error) int {
	if err == nil || errors.Is(err, errHelp) {
		return 0
	}
	code := exitCode(err)
	msg := userMessage(e.g, err)
	h := hint(e.g, err)
	var fe *tlog.ForkError
	if e.g.json {
		d := errorDetail{Code: errorCode(err, code), Message: msg, Hint: h}
		if errors.As(err, &fe) {
			d.Message += "\n" + string(fe.Evidence())
		}
		w := e.stdout
		if e.printedJSON {
			w = e.stderr
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(errorJSON{Error: d})
		return code
	}
	var ae *api.Error
	switch {
	case errors.As(err, &fe):
		fmt.Fprintf(e.stderr, "kbsctl: VERIFICATION FAILED: %s\n%s", msg, fe.Evidence())
	case code == 1 && errors.As(err, &ae):
		// The broker refused by policy; nothing failed to verify.
		fmt.Fprintf(e.stderr, "kbsctl: REFUSED: %s\n", msg)
	case code == 1 && errorCode(err, code) == "not_found":
		fmt.Fprintf(e.stderr, "kbsctl: REFUSED: %s\n", msg)
	case code == 1:
		fmt.Fprintf(e.stderr, "kbsctl: VERIFICATION FAILED: %s\n", msg)
	default:
		fmt.Fprintf(e.stderr, "kbsctl: %s\n", msg)
	}
	if h != "" {
		fmt.Fprintf(e.stderr, "  hint: %s\n", strings.ReplaceAll(h, "\n", "\n        "))
	}
	return code
}

// userMessage is err for people: the broker's error answer as code and
// message, an unreachable broker as the innermost network error, and no
// internal package prefixes.
func userMessage(g *globals, err error) string {
	var (
		te *client.TransportError
		ae *api.Error
	)
	switch {
	case exitCode(err) == 2 && errors.Is(err, client.ErrNotPinned):
		return fmt.Sprintf("%s: %v", brokerAddr(g, err), client.ErrNotPinned)
	case exitCode(err) == 2 && errors.As(err, &te):
		return unreachable(te)
	}
	msg := err.Error()
	if errors.As(err, &ae) {
		// "kbs: policy_denied (403 Forbidden): msg" -> "policy_denied: msg"
		msg = strings.Replace(msg, ae.Error(), ae.Code+": "+ae.Message, 1)
	}
	for _, p := range []string{"client: ", "tlog: ", "keystore: ", "kbs: "} {
		msg = strings.TrimPrefix(msg, p)
		msg = strings.ReplaceAll(msg, ": "+p, ": ")
	}
	return msg
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
	if p, ok := strings.CutPrefix(te.Addr, "unix://"); ok {
		if fi, err := os.Stat(p); err == nil {
			switch {
			case fi.IsDir():
				return fmt.Sprintf("can't reach the broker at %s: %s is a directory, not a socket", te.Addr, p)
			case fi.Mode()&os.ModeSocket == 0:
				return fmt.Sprintf("can't reach the broker at %s: %s is not a socket", te.Addr, p)
			}
		}
	}
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

// hint says what to do about err when that is known: the common mistakes
// (no broker at --addr, a development broker without --sim-root), and the
// situations a verification failure can mean.
func hint(g *globals, err error) string {
	var (
		ee *exitError
		te *client.TransportError
		nb *client.NotBrokerError
		mm *client.ManifestMismatchError
	)
	switch {
	case errors.As(err, &ee) && ee.hint != "":
		return ee.hint
	case errors.Is(err, verify.ErrSimulatedNotTrusted):
		return "this broker runs on a simulated TEE (kbsd --dev): to trust it for development, pass --sim-root DATA/sim/root.pem (kbsd --dev prints the path)"
	case errors.Is(err, client.ErrNotPinned):
		return fmt.Sprintf("over TLS, kbsctl talks only to a broker whose attested TLS key it has pinned: run 'kbsctl --addr %s verify --manifest FILE' once with this --state", g.addr)
	case errors.Is(err, client.ErrPinMismatch):
		return ""
	case errors.Is(err, client.ErrNewLog):
		return fmt.Sprintf("the broker at %s lost or replaced its data directory, or another broker answers there. "+
			"If you know why (a development broker started over, say), accept the new log once with "+
			"'kbsctl verify --accept-new-log --manifest FILE'; a broker started over runs its own version 1 of the manifest, "+
			"so take a fresh copy of it first (kbsd --dev: cp DATA/manifest.json FILE)", g.addr)
	case errors.As(err, &mm):
		return manifestHint(mm)
	case errors.Is(err, context.DeadlineExceeded):
		return "the command did not complete within its deadline (--timeout): the broker answered too slowly, or not at all"
	case errors.Is(err, client.ErrRedirect), errors.Is(err, tlog.ErrRedirect):
		return "kbs clients never follow redirects: point --addr at the broker itself (kbsd serves every path; a proxy in front of it must not redirect)"
	case errors.As(err, new(*tlog.QuorumError)):
		return "the checkpoint lacks cosignatures of the witnesses your manifest names: 'kbsctl log witnesses' shows which witnesses the broker reaches and why others fail. " +
			"A broker that has just started, or whose witnesses are down, gets them once enough answer: retry. A broker restored from an old copy of its data never gets them"
	case isAPICode(err, api.CodeWitnessesUnavailable):
		return "'kbsctl log witnesses' shows which witnesses fail and why; the broker retries by itself, so retry later"
	case isAPICode(err, api.CodeBehindWitnesses):
		return "the broker's witnesses cosigned more of its log than it holds (a restored copy of its data directory, or a second broker with its key): its operator must restart it on its latest data directory (docs/operating.md)"
	case errors.As(err, &nb):
		return "check --addr: kbsd answers every request, even for unknown paths, with a JSON error; its TCP listener is https://HOST:PORT and its socket DATA/kbs.sock (kbsd logs both at start)"
	case !errors.As(err, &te):
		return ""
	}
	unix := strings.HasPrefix(te.Addr, "unix://")
	path := strings.TrimPrefix(te.Addr, "unix://")
	from := "--addr"
	switch env := os.Getenv("KBS_ADDR"); {
	case env == "" && g.addr == defaultAddr:
		from = "the default --addr, where 'kbsd --dev' run in this directory listens"
	case env == g.addr:
		from = "$KBS_ADDR"
	}
	if unix {
		if fi, err := os.Stat(path); err == nil && fi.IsDir() {
			sock := filepath.Join(path, "kbs.sock")
			if _, err := os.Stat(sock); err == nil {
				return fmt.Sprintf("kbsd's socket is DATA/kbs.sock: did you mean --addr unix://%s?", sock)
			}
			return fmt.Sprintf("--addr names the socket file itself (kbsd --data DIR listens on unix://DIR/kbs.sock), and %s holds none", path)
		}
	}
	switch {
	case unix && errors.Is(err, syscall.ENOENT):
		return fmt.Sprintf("no socket at %s (%s): start kbsd, or point --addr or $KBS_ADDR at the socket it prints (kbsd --data DIR listens on unix://DIR/kbs.sock)", path, from)
	case unix && errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("the socket at %s (%s) exists but nothing accepts on it: kbsd is not running there (restart it)", path, from)
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

// manifestHint says what a broker running another manifest than the
// caller's can mean, and what to do in each case.
func manifestHint(mm *client.ManifestMismatchError) string {
	switch {
	case mm.BrokerVersion > mm.MineVersion:
		return "if its owners published the later version, accept it through its signed, logged chain: 'kbsctl verify --follow --manifest FILE' shows what changed and updates FILE"
	case mm.BrokerVersion < mm.MineVersion:
		return "--follow never accepts an earlier version. Either the broker was rolled back (keep the output and report it), " +
			"or it was started over with a new log (a development broker: take a fresh copy of its manifest, cp DATA/manifest.json FILE, " +
			"and verify with --accept-new-log)"
	default:
		return "two different manifests claim one version: the chains diverge and neither --follow nor a retry accepts it. " +
			"If a development broker was started over, take a fresh copy of its manifest (cp DATA/manifest.json FILE, then verify with --accept-new-log); " +
			"otherwise ask the owners which version they published"
	}
}

// isAPICode reports whether err is a broker error with code.
func isAPICode(err error, code string) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Code == code
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
			api.CodeForbidden, api.CodeConflict, api.CodeBehindWitnesses:
			return 1
		}
	}
	return 2
}

// errorCode is the stable code of err in errorJSON.
func errorCode(err error, exit int) string {
	var (
		ee *exitError
		fe *tlog.ForkError
		ae *api.Error
		te *client.TransportError
		nb *client.NotBrokerError
		mm *client.ManifestMismatchError
		ve *client.VerifyError
	)
	switch {
	case errors.As(err, &ee) && ee.errCode != "":
		return ee.errCode
	case errors.As(err, &fe):
		if fe.Rollback {
			return "log_rolled_back"
		}
		return "log_forked"
	case errors.Is(err, client.ErrNewLog):
		return "new_log"
	case errors.Is(err, client.ErrNotPinned):
		return "not_pinned"
	case errors.Is(err, client.ErrPinMismatch):
		return "pin_mismatch"
	case errors.As(err, &mm):
		return "manifest_mismatch"
	case errors.As(err, new(*tlog.QuorumError)):
		return "witnesses_missing"
	case errors.As(err, &ae):
		return ae.Code
	case errors.As(err, &nb):
		return "not_a_broker"
	case errors.As(err, &te):
		return "unreachable"
	case errors.As(err, &ve), exit == 1:
		return "verification_failed"
	}
	return "io"
}
