package main

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/verify"
	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

func (e *env) state() client.State { return client.State{Dir: e.g.state} }

// verifier returns the evidence verifier: vendor roots, plus the sim root
// when --sim-root names one. collateral is a collateral bundle directory
// (manifest check --collateral), or "".
func (e *env) verifier(offline bool, collateral string) (attest.Verifier, error) {
	if e.g.simRoot != "" {
		if _, err := os.Stat(e.g.simRoot); err != nil {
			return nil, usageErr("--sim-root: %v", err)
		}
	}
	v, err := verify.New(verify.Options{
		SimRootFile: e.g.simRoot,
		CacheDir:    filepath.Join(e.g.state, "cache"),
		Offline:     offline || e.g.offline,
		Collateral:  collateral,
	})
	if err != nil {
		return nil, fmt.Errorf("couldn't set up evidence verification: %w", err)
	}
	return v, nil
}

// client returns a client of --addr, with the TLS pin and log identity
// remembered from the last verification at this address (st is nil if
// there was none). allowUnpinned permits TLS reads before any pin, for
// answers verified by signatures. It verifies no evidence; see
// verifyingClient.
func (e *env) client(allowUnpinned bool) (*client.Client, *client.BrokerState, error) {
	return e.newClient(allowUnpinned, nil)
}

// verifyingClient is client with the evidence verifier that VerifyBroker
// needs.
func (e *env) verifyingClient() (*client.Client, *client.BrokerState, error) {
	v, err := e.verifier(false, "")
	if err != nil {
		return nil, nil, err
	}
	return e.newClient(false, v)
}

func (e *env) newClient(allowUnpinned bool, v attest.Verifier) (*client.Client, *client.BrokerState, error) {
	st, err := e.state().Broker(e.g.addr)
	if err != nil {
		return nil, nil, err
	}
	cfg := client.Config{Addr: e.g.addr, Checkpoints: e.state().Checkpoints(), AllowUnpinned: allowUnpinned, Verifier: v}
	if st != nil {
		cfg.TLSPin = st.TLSSPKISHA256
	}
	c, err := client.New(cfg)
	if err != nil {
		return nil, nil, usageErr("--addr %q: want unix://PATH or https://HOST:PORT%s", e.g.addr, suggestAddr(e.g.addr))
	}
	return c, st, nil
}

// suggestAddr guesses the address a malformed --addr meant.
func suggestAddr(a string) string {
	var s string
	switch {
	case strings.HasPrefix(a, "http://"):
		s = "https://" + strings.TrimPrefix(a, "http://")
	case strings.HasPrefix(a, "unix:") && !strings.HasPrefix(a, "unix://"):
		s = "unix://" + strings.TrimPrefix(a, "unix:")
	case strings.Contains(a, "://"):
	case strings.HasPrefix(a, "/") || strings.HasPrefix(a, ".") || strings.HasSuffix(a, ".sock"):
		s = "unix://" + a
	case strings.Contains(a, ":"):
		s = "https://" + a
	}
	if s == "" || s == "unix://" || s == "https://" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %s?)", s)
}

// readManifest reads and parses a manifest file.
func readManifest(file string) (*manifest.Manifest, error) {
	if file == "" {
		return nil, usageErr("--manifest is required")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--manifest: %w", err)
	}
	m, err := manifest.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return m, nil
}

// verifyBroker verifies the broker at --addr against the manifest file and
// remembers it. With follow, a later manifest accepted through its chain
// replaces the file's contents (the old file is kept as FILE.v<N>).
func (e *env) verifyBroker(ctx context.Context, manifestFile string, follow, acceptNewLog bool) (*client.Broker, error) {
	mine, err := readManifest(manifestFile)
	if err != nil {
		return nil, err
	}
	c, st, err := e.verifyingClient()
	if err != nil {
		return nil, err
	}
	b, err := e.verifyWith(ctx, c, st, mine, client.VerifyOptions{Follow: follow, AcceptNewLog: acceptNewLog})
	if err != nil {
		return nil, err
	}
	if len(b.Followed) > 0 {
		backup := fmt.Sprintf("%s.v%d", manifestFile, mine.Version())
		if err := client.WriteFileAtomic(backup, mine.Bytes(), 0o644); err != nil {
			return nil, err
		}
		if err := client.WriteFileAtomic(manifestFile, b.Manifest.Bytes(), 0o644); err != nil {
			return nil, fmt.Errorf("couldn't store the followed manifest: %w", err)
		}
	}
	return b, nil
}

// verifyRemembered verifies the broker at --addr against the manifest it
// was last verified against from this state directory: the broker's active
// manifest is accepted as the reference only if its hash is the remembered
// one, and then everything is verified afresh.
func (e *env) verifyRemembered(ctx context.Context) (*client.Broker, error) {
	c, st, err := e.verifyingClient()
	if err != nil {
		return nil, err
	}
	if st == nil {
		return nil, usageErr("no --manifest, and %s was never verified from %s: pass --manifest", e.g.addr, e.g.state)
	}
	am, err := c.Manifest(ctx)
	if err != nil {
		return nil, err
	}
	if h := manifest.HashOf(am.Body); h != st.ManifestHash {
		return nil, failErr("the broker's active manifest (%s) is not the one verified before (%s): pass --manifest, or run 'kbsctl verify --follow'", h, st.ManifestHash)
	}
	mine, err := manifest.Parse(am.Body)
	if err != nil {
		return nil, failErr("the remembered manifest does not parse: %w", err)
	}
	return e.verifyWith(ctx, c, st, mine, client.VerifyOptions{})
}

func (e *env) verifyWith(ctx context.Context, c *client.Client, st *client.BrokerState, mine *manifest.Manifest, opts client.VerifyOptions) (*client.Broker, error) {
	if st != nil {
		opts.KnownOrigin = st.Origin
	}
	b, err := c.VerifyBroker(ctx, mine, opts)
	if err != nil {
		return nil, err
	}
	if err := e.state().SaveBroker(b); err != nil {
		return nil, fmt.Errorf("couldn't save the broker state: %w", err)
	}
	return b, nil
}

// logClient returns a client of --addr for reads verified by signatures
// (TLS before any pin allowed) and the verifier of its log (logVerifier).
func (e *env) logClient(noteKey string) (*client.Client, *tlog.Verifier, error) {
	c, st, err := e.client(true)
	if err != nil {
		return nil, nil, err
	}
	lv, err := e.logVerifier(c, st, noteKey)
	if err != nil {
		return nil, nil, err
	}
	return c, lv, nil
}

// logVerifier returns the verifier of the broker's log: from --note-key,
// else from the broker state of --addr.
func (e *env) logVerifier(c *client.Client, st *client.BrokerState, noteKey string) (*tlog.Verifier, error) {
	if noteKey == "" {
		if st == nil {
			return nil, usageErr("no log key for %s: run 'kbsctl verify --manifest FILE' first, or pass --note-key", e.g.addr)
		}
		noteKey = st.NoteKey
	}
	lv, err := c.LogVerifier(noteKey)
	if err != nil {
		return nil, usageErr("%v", err)
	}
	return lv, nil
}

// readSigner reads a PEM private key (PKCS #8, SEC 1 or cosign).
func readSigner(file string) (crypto.Signer, error) {
	if file == "" {
		return nil, usageErr("a key file is required")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var pass []byte
	if strings.Contains(string(b), "ENCRYPTED") {
		pass = []byte(os.Getenv("COSIGN_PASSWORD"))
	}
	k, err := manifest.ParsePrivateKey(b, pass)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return k, nil
}

// out prints v as JSON with --json, else calls text.
func (e *env) out(v any, text func()) error {
	if e.g.json {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		e.printedJSON = true
		return enc.Encode(v)
	}
	text()
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error {
	if v == "" {
		return errors.New("empty value")
	}
	*s = append(*s, v)
	return nil
}

func short(h string) string {
	if len(h) > 19 {
		return h[:19] + "…"
	}
	return h
}
