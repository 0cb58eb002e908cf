package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/kbs/inference"
	"github.com/kbs-dev/kbs/kbs/inference/echo"
	"github.com/kbs-dev/kbs/kbs/inference/worker"
)

func cmdWorker(ctx context.Context, e *env, args []string) error {
	return subcommand(ctx, e, "worker", args, map[string]func(context.Context, *env, []string) error{
		"run": cmdWorkerRun,
	})
}

// workerResult is what 'worker run --json' prints on one line when it
// serves.
type workerResult struct {
	URL      string   `json:"url"`
	Class    string   `json:"class"`
	LogIndex uint64   `json:"log_index"`
	Receipt  string   `json:"receipt_file"`
	Keys     []string `json:"keys"`
	Upstream string   `json:"upstream"`
	Instance string   `json:"instance"`
}

func cmdWorkerRun(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("worker run", "--manifest FILE --tee snp|tdx|sim [--sim-dir DIR] --id ID [--id ID...] --listen ADDR [--upstream URL] [--receipts DIR]",
		`An AI worker for a confidential VM: fetches its prompt keys at start like
'key get' (verify the broker, attest, unseal, verify the receipt), keeps them
in memory only, and serves the OpenAI API sealed by a client proxy
('kbsctl proxy'; also 'kbsctl prompt send'): POST /v1/chat/completions,
/v1/completions, /v1/embeddings and /v1/models, each a sealed request in and
a sealed answer out (streamed answers frame by frame), forwarded to the
OpenAI-compatible inference server at --upstream in the same VM (vLLM,
llama.cpp's server, ...). Without --upstream it answers with the built-in
echo model "kbs-echo" (upper case; for demos). Replays are refused; a
request naming a key version the worker does not hold makes it fetch that
version (a new attested, logged release) when the broker has it; keys the
log shows deleted are forgotten. Each release's receipt goes to a new file,
DIR/<id>.v<version>.<log index>.receipt (DIR defaults to STATE/receipts).
It listens before it asks for keys, so a busy address costs no release.
Prints its URL on stdout when ready (with --json, one line of JSON with the
URL, class, receipt, upstream and instance id); stops on SIGINT or SIGTERM.`, useVerify)
	mf := fs.String("manifest", "", "your copy of the manifest (required)")
	var tee teeFlags
	tee.register(fs)
	var ids stringList
	fs.Var(&ids, "id", "key id (repeatable; required)")
	listen := fs.String("listen", "127.0.0.1:8080", "HTTP listen address")
	receipts := fs.String("receipts", "", "directory for the release receipts (default STATE/receipts)")
	pq := fs.Bool("pq", false, "use the post-quantum hybrid HPKE KEM (ML-KEM-768 + X25519)")
	upstream := fs.String("upstream", "", "base URL of the OpenAI-compatible inference server in this VM, e.g. http://127.0.0.1:8000 (default: the built-in echo model)")
	window := fs.Duration("replay-window", inference.DefaultWindow, "accept requests sealed at most this long before or after now (the clocks of proxy and worker must agree within it)")
	replayCap := fs.Int("replay-cache", inference.DefaultCapacity, "request ids remembered at most (when full, new requests get 429)")
	versions := fs.Int("key-versions", 4, "versions of each key kept in memory")
	refresh := fs.Duration("key-refresh", 30*time.Second, "how often to read the broker's log for deleted keys")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *mf == "" {
		return usageErr("worker run: --manifest is required")
	}
	if err := checkKeyIDs(ids); err != nil {
		return err
	}
	if *window <= 0 || *replayCap <= 0 || *versions <= 0 || *refresh <= 0 {
		return usageErr("worker run: --replay-window, --replay-cache, --key-versions and --key-refresh must be positive")
	}
	if *upstream != "" {
		if _, err := worker.ParseUpstream(*upstream); err != nil {
			return usageErr("--upstream: %v", err)
		}
	}
	if *receipts == "" {
		*receipts = filepath.Join(e.g.state, "receipts")
	}
	outs := &keyOutputs{dir: *receipts}
	defer func() { outs.made.undo() }()
	if err := outs.prepare("--receipts", ids); err != nil {
		return err
	}
	iss, err := tee.issuer()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return usageErr("--listen: %v", err)
	}
	defer ln.Close()
	logger := hclog.New(&hclog.LoggerOptions{Name: "worker", Output: e.stderr, Level: hclog.Info})
	up := *upstream
	if up == "" {
		eln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		es := &http.Server{Handler: &echo.Handler{}, ReadHeaderTimeout: 5 * time.Second}
		go es.Serve(eln)
		defer es.Close()
		up = "http://" + eln.Addr().String()
	}
	b, rel, err := fetchKeys(ctx, e, *mf, &tee, ids, *pq)
	if err != nil {
		return err
	}
	outs.made = nil
	kem := api.KEMX25519
	if *pq {
		kem = api.KEMMLKEM768X25519
	}
	src := &worker.BrokerSource{
		Verify: func(ctx context.Context) (*client.Broker, error) { return e.verifyBroker(ctx, *mf, false, false) },
		Issuer: iss,
		KEM:    kem,
		Released: func(rel *client.Released) error {
			for _, k := range rel.Keys {
				var r keyResult
				if err := outs.write(e, k, rel.Receipt, &r); err != nil {
					return err
				}
				logger.Info("fetched a key version a request named", "key", k.ID, "version", k.Version, "log_index", rel.Receipt.Index, "receipt", r.Receipt)
			}
			return nil
		},
	}
	src.SetBroker(b)
	keys, err := worker.NewKeyring(worker.KeyringConfig{IDs: ids, MaxVersions: *versions, Source: src})
	if err != nil {
		return usageErr("%v", err)
	}
	defer keys.Wipe()
	var receipt string
	for _, k := range rel.Keys {
		var r keyResult
		if err := outs.write(e, k, rel.Receipt, &r); err != nil {
			return err
		}
		receipt = r.Receipt
		err := keys.Add(&api.KeyFile{ID: k.ID, Version: k.Version, Material: k.Material})
		clear(k.Material)
		if err != nil {
			return err
		}
	}
	w, err := worker.New(worker.Config{Keys: keys, Upstream: up, Replay: inference.NewReplayCache(*window, *replayCap), Logger: logger})
	if err != nil {
		return usageErr("--upstream: %v", err)
	}
	fmt.Fprintf(e.stderr, "worker: broker verified (manifest version %d); class %s; %d key(s) released at log index %d, receipt verified and written to %s\n",
		b.Manifest.Version(), rel.Class, len(rel.Keys), rel.Receipt.Index, receipt)
	if *upstream == "" {
		fmt.Fprintf(e.stderr, "worker: no --upstream: answering with the built-in echo model %q\n", echo.Model)
	} else {
		fmt.Fprintf(e.stderr, "worker: forwarding to the inference server at %s\n", up)
	}
	fctx, stopFollow := context.WithCancel(ctx)
	defer stopFollow()
	go worker.FollowDeletions(fctx, src, keys, rel.Receipt.Index+1, *refresh, logger)
	return serve(ctx, e, "worker", w, ln, workerResult{URL: "http://" + ln.Addr().String(), Class: rel.Class, LogIndex: rel.Receipt.Index, Receipt: receipt, Keys: ids, Upstream: up, Instance: w.Instance()})
}

// serve serves h on ln until ctx is done (SIGINT, SIGTERM), after printing
// url on stdout (with --json, result as one line of JSON, so that a reader
// can take it as soon as it is there). There is no write timeout: streamed
// answers last as long as the model writes (the worker's upstream request
// has its own timeout).
func serve(ctx context.Context, e *env, name string, h http.Handler, ln net.Listener, result any) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 60 * time.Second, IdleTimeout: 120 * time.Second, MaxHeaderBytes: 64 << 10}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	if e.g.json {
		json.NewEncoder(e.stdout).Encode(result)
	} else {
		fmt.Fprintln(e.stdout, "http://"+ln.Addr().String())
	}
	if f, ok := e.stdout.(interface{ Sync() error }); ok {
		f.Sync()
	}
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		fmt.Fprintf(e.stderr, "%s: stopped\n", name)
		return nil
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}
