package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/inference"
	"github.com/kbs-dev/kbs/kbs/inference/proxy"
)

// proxyResult is what 'proxy --json' prints on one line when it serves.
type proxyResult struct {
	URL            string `json:"url"`
	Worker         string `json:"worker"`
	KeyID          string `json:"key_id"`
	KeyVersion     uint64 `json:"key_version"`
	BrokerVerified bool   `json:"broker_verified"`
	Error          string `json:"error,omitempty"`
}

func cmdProxy(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("proxy", "--manifest FILE --key FILE --worker URL [--listen ADDR] [--follow] [--reverify D]",
		`The client proxy for encrypted inference: serves the OpenAI API to
applications on this machine (point an OpenAI SDK's base URL at
http://ADDR/v1), and sends each request to the worker ('kbsctl worker run')
sealed under the prompt key: POST /v1/chat/completions, /v1/completions
(streamed or not), /v1/embeddings, GET /v1/models. The model name and the
stream flag stay in clear for routing; messages, prompt, input and every
other field are sealed, and so is the whole answer, each streamed event
authenticated in order (a tampered, reordered, dropped or cut stream fails
with an error event). Before any request leaves, the broker must verify as
with 'kbsctl verify' (again every --reverify) and know the key's version,
not deleted; otherwise, and when the worker is unreachable or refuses,
applications get OpenAI-style JSON errors (codes
broker_verification_failed, key_refused, worker_unreachable, worker_error,
answer_integrity). The key file is read again when it changes (a new
version from 'key put'). Prints its URL on stdout when ready (with --json,
one line of JSON); stops on SIGINT or SIGTERM.`, useVerify)
	mf := fs.String("manifest", "", "your copy of the manifest (required)")
	var key promptKey
	key.register(fs)
	workerURL := fs.String("worker", "", "the worker's URL, e.g. http://10.0.0.5:8080 (required)")
	listen := fs.String("listen", "127.0.0.1:8081", "HTTP listen address for applications")
	follow := fs.Bool("follow", false, "accept a later manifest through its signed, logged chain (as 'verify --follow'; the file is updated)")
	reverify := fs.Duration("reverify", 10*time.Minute, "verify the broker again after this long")
	remote := fs.Bool("allow-remote", false, "listen on a non-loopback address: anyone who reaches it can use your key and read the answers")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *mf == "" || *workerURL == "" {
		return usageErr("proxy: --manifest and --worker are required")
	}
	if *reverify <= 0 {
		return usageErr("proxy: --reverify must be positive")
	}
	if _, err := readManifest(*mf); err != nil {
		return err
	}
	kf := &keySource{key: key}
	k, err := kf.get()
	if err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(*listen)
	if err != nil {
		return usageErr("--listen: %v", err)
	}
	if ip := net.ParseIP(host); !*remote && host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return usageErr("--listen %s is not a loopback address: anyone who reaches it could use your key and read the answers (pass --allow-remote if that is what you want)", *listen)
	}
	pc, err := proxy.NewClient(proxy.ClientConfig{Worker: *workerURL, Key: kf.get})
	if err != nil {
		return usageErr("--worker: %v", err)
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "proxy", Output: e.stderr, Level: hclog.Info})
	chk := &brokerChecker{e: e, manifest: *mf, follow: *follow, every: *reverify, key: kf.get, log: logger}
	p, err := proxy.New(proxy.Config{Client: pc, Checker: chk, Logger: logger})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return usageErr("--listen: %v", err)
	}
	defer ln.Close()
	res := proxyResult{URL: "http://" + ln.Addr().String(), Worker: *workerURL, KeyID: k.ID, KeyVersion: k.Version}
	if err := chk.Check(ctx); err != nil {
		res.Error = err.Error()
		fmt.Fprintf(e.stderr, "proxy: %v\nproxy: requests get OpenAI-style errors until the broker verifies and knows the key\n", err)
	} else {
		res.BrokerVerified = true
		fmt.Fprintf(e.stderr, "proxy: broker %s verified; key %s version %d; sealing requests for the worker at %s\n", e.g.addr, k.ID, k.Version, *workerURL)
	}
	return serve(ctx, e, "proxy", p, ln, res)
}

// keySource reads the prompt key, again whenever its file changes.
type keySource struct {
	key promptKey

	mu  sync.Mutex
	k   *api.KeyFile
	mod time.Time
	sz  int64
}

func (s *keySource) get() (*api.KeyFile, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fi, err := os.Stat(*s.key.file)
	if err != nil && s.k == nil {
		return nil, usageErr("--key: %v", err)
	}
	if s.k != nil && (err != nil || (fi.ModTime().Equal(s.mod) && fi.Size() == s.sz)) {
		return s.k, nil
	}
	k, rerr := s.key.read()
	if rerr != nil {
		if s.k != nil {
			return s.k, nil // a file being rewritten: keep the key we have
		}
		return nil, rerr
	}
	if s.k != nil && s.k.ID != k.ID {
		return s.k, nil // the proxy serves one key id
	}
	s.k, s.mod, s.sz = k, fi.ModTime(), fi.Size()
	return k, nil
}

// brokerChecker verifies the broker before requests go out: at the first
// request, then again when the last verification is older than every, or
// the key file holds a newer version than the broker's key list had; a
// failure is remembered for a few seconds (checkRetry), so that a stream
// of requests does not hammer the broker, and then verified again. It also
// checks that the broker holds the key's version and has not deleted the
// key.
type brokerChecker struct {
	e        *env
	manifest string
	follow   bool
	every    time.Duration
	key      func() (*api.KeyFile, error)
	log      hclog.Logger

	mu       sync.Mutex
	verified time.Time
	tried    time.Time
	err      error
	latest   map[string]uint64 // by key id, from the broker's answer (GET /v1/keys/{id})
	deleted  map[string]bool
	version  uint64 // the key version last checked
}

const checkRetry = 5 * time.Second

func (c *brokerChecker) Check(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := clock.Now()
	k, err := c.key()
	if err != nil {
		return &proxy.CheckError{Code: inference.CodeKeyRefused, Err: err}
	}
	if c.err != nil && k.Version == c.version && now.Sub(c.tried) < checkRetry {
		return c.err
	}
	fresh := c.err == nil && !c.verified.IsZero() && now.Sub(c.verified) < c.every
	if fresh && k.Version == c.version {
		return nil
	}
	if fresh && c.latest[k.ID] < k.Version {
		fresh = false // a newer key file than the broker's list had
	}
	c.tried = now
	if !fresh {
		b, err := c.e.verifyBroker(ctx, c.manifest, c.follow, false)
		if err != nil {
			c.verified, c.version, c.err = time.Time{}, k.Version, &proxy.CheckError{Code: inference.CodeBrokerUnverified, Err: err}
			return c.err
		}
		ki, err := b.Client().Key(ctx, k.ID)
		var ae *api.Error
		unknown := errors.As(err, &ae) && ae.Code == api.CodeNotFound
		if err != nil && !unknown {
			c.verified, c.version, c.err = time.Time{}, k.Version, &proxy.CheckError{Code: inference.CodeBrokerUnverified, Err: fmt.Errorf("couldn't read the broker's key %s: %w", k.ID, err)}
			return c.err
		}
		c.latest, c.deleted = map[string]uint64{}, map[string]bool{}
		if !unknown {
			c.latest[ki.ID], c.deleted[ki.ID] = ki.Version, ki.Deleted
		}
		c.verified = now
	}
	c.version = k.Version
	latest, ok := c.latest[k.ID]
	switch {
	case !ok:
		c.err = &proxy.CheckError{Code: inference.CodeKeyRefused, Err: fmt.Errorf("the broker holds no key %s: upload it with 'kbsctl key put'", k.ID)}
	case c.deleted[k.ID]:
		c.err = &proxy.CheckError{Code: inference.CodeKeyRefused, Err: fmt.Errorf("the broker deleted key %s", k.ID)}
	case k.Version > latest:
		c.err = &proxy.CheckError{Code: inference.CodeKeyRefused, Err: fmt.Errorf("the broker holds versions of %s up to %d, not %d", k.ID, latest, k.Version)}
	default:
		if k.Version < latest {
			c.log.Warn("the prompt key is not the broker's latest version: workers may not hold it", "key", k.ID, "version", k.Version, "latest", latest)
		}
		c.err = nil
	}
	return c.err
}
