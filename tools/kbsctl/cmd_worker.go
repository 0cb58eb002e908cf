package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
)

func cmdWorker(ctx context.Context, e *env, args []string) error {
	return subcommand(ctx, e, "worker", args, map[string]func(context.Context, *env, []string) error{
		"run": cmdWorkerRun,
	})
}

// exampleWorker is the example AI worker: it holds the prompt keys it
// obtained at start (in memory only) and answers encrypted prompts with
// encrypted replies. Its "model" is a trivial transform.
type exampleWorker struct {
	class string
	keys  map[string]*api.KeyFile // by key id
}

// model is the example worker's stand-in for inference.
func model(prompt []byte) []byte {
	return []byte("echo from a kbs worker: " + strings.ToUpper(string(prompt)))
}

func (w *exampleWorker) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/healthz" && r.Method == http.MethodGet:
		io.WriteString(rw, "ok\n")
		return
	case r.URL.Path != "/v1/prompt":
		http.Error(rw, "not found", http.StatusNotFound)
		return
	case r.Method != http.MethodPost:
		http.Error(rw, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	msg, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, api.MaxPromptSize))
	if err != nil {
		http.Error(rw, "prompt too large or unreadable", http.StatusRequestEntityTooLarge)
		return
	}
	h, _, _, err := api.ParsePromptHeader(msg)
	if err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	k, ok := w.keys[h.KeyID]
	if !ok {
		http.Error(rw, fmt.Sprintf("this worker holds no key %q", h.KeyID), http.StatusNotFound)
		return
	}
	_, prompt, err := api.OpenPrompt(k, api.KindPrompt, msg)
	if err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	reply, err := api.SealPrompt(k, api.KindReply, model(prompt))
	clear(prompt)
	if err != nil {
		http.Error(rw, "couldn't encrypt the reply", http.StatusInternalServerError)
		return
	}
	rw.Header().Set("Content-Type", "application/octet-stream")
	rw.Write(reply)
}

// workerResult is what 'worker run --json' prints on one line when it
// serves.
type workerResult struct {
	URL      string   `json:"url"`
	Class    string   `json:"class"`
	LogIndex uint64   `json:"log_index"`
	Receipt  string   `json:"receipt_file"`
	Keys     []string `json:"keys"`
}

func cmdWorkerRun(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("worker run", "--manifest FILE --tee snp|tdx|sim [--sim-dir DIR] --id ID [--id ID...] --listen ADDR [--receipts DIR]",
		`An example AI worker: fetches its prompt keys at start like 'key get' (verify
the broker, attest, unseal, verify the receipt), keeps them in memory only,
and serves POST /v1/prompt: an encrypted prompt in, an encrypted reply out
(see 'kbsctl prompt'). The release receipt goes to a new file,
DIR/<id>.v<version>.<log index>.receipt (DIR defaults to STATE/receipts).
It listens before it asks for keys, so a busy address costs no release.
Prints its URL on stdout when ready (with --json, one line of JSON with the
URL, class and receipt); stops on SIGINT or SIGTERM.`, useVerify)
	mf := fs.String("manifest", "", "your copy of the manifest (required)")
	var tee teeFlags
	tee.register(fs)
	var ids stringList
	fs.Var(&ids, "id", "key id (repeatable; required)")
	listen := fs.String("listen", "127.0.0.1:8080", "HTTP listen address")
	receipts := fs.String("receipts", "", "directory for the release receipt (default STATE/receipts)")
	pq := fs.Bool("pq", false, "use the post-quantum hybrid HPKE KEM (ML-KEM-768 + X25519)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *mf == "" {
		return usageErr("worker run: --manifest is required")
	}
	if err := checkKeyIDs(ids); err != nil {
		return err
	}
	if *receipts == "" {
		*receipts = filepath.Join(e.g.state, "receipts")
	}
	outs := &keyOutputs{dir: *receipts}
	defer func() { outs.made.undo() }()
	if err := outs.prepare("--receipts", ids); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return usageErr("--listen: %v", err)
	}
	defer ln.Close()
	b, rel, err := fetchKeys(ctx, e, *mf, &tee, ids, *pq)
	if err != nil {
		return err
	}
	outs.made = nil
	w := &exampleWorker{class: rel.Class, keys: map[string]*api.KeyFile{}}
	defer func() {
		for _, k := range w.keys {
			clear(k.Material)
		}
	}()
	var receipt string
	for _, k := range rel.Keys {
		var r keyResult
		if err := outs.write(e, k, rel.Receipt, &r); err != nil {
			return err
		}
		receipt = r.Receipt
		if len(k.Material) != 32 {
			return fmt.Errorf("key %s is %d bytes; prompts need 32-byte AES-256 keys", k.ID, len(k.Material))
		}
		w.keys[k.ID] = &api.KeyFile{ID: k.ID, Version: k.Version, Material: k.Material}
	}
	fmt.Fprintf(e.stderr, "worker: broker verified (manifest version %d); class %s; %d key(s) released at log index %d, receipt verified and written to %s\n",
		b.Manifest.Version(), rel.Class, len(rel.Keys), rel.Receipt.Index, receipt)
	srv := &http.Server{Handler: w, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 60 * time.Second, WriteTimeout: 60 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	url := "http://" + ln.Addr().String()
	if e.g.json {
		// One line, so that a reader can take it as soon as it is there.
		json.NewEncoder(e.stdout).Encode(workerResult{URL: url, Class: rel.Class, LogIndex: rel.Receipt.Index, Receipt: receipt, Keys: ids})
	} else {
		fmt.Fprintln(e.stdout, url)
	}
	if f, ok := e.stdout.(interface{ Sync() error }); ok {
		f.Sync()
	}
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		fmt.Fprintln(e.stderr, "worker: stopped")
		return nil
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}
