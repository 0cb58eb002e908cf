package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/inference"
	"github.com/kbs-dev/kbs/kbs/inference/echo"
	"github.com/kbs-dev/kbs/kbs/inference/proxy"
)

func cmdPrompt(ctx context.Context, e *env, args []string) error {
	return subcommand(ctx, e, "prompt", args, map[string]func(context.Context, *env, []string) error{
		"encrypt": cmdPromptEncrypt,
		"decrypt": cmdPromptDecrypt,
		"send":    cmdPromptSend,
	})
}

// promptKey is the key a prompt command encrypts or decrypts with: a key
// file (--key), or raw key bytes (--key, as 'key put --file' takes them)
// with the key id and version that go into the prompt header.
type promptKey struct {
	file    *string
	id      *string
	version *uint64
}

func (k *promptKey) register(fs *flag.FlagSet) {
	k.file = fs.String("key", "", "key file, or raw key bytes with --id and --key-version (required)")
	k.id = fs.String("id", "", "with a raw key: its key id")
	k.version = fs.Uint64("key-version", 0, "with a raw key: its version (as 'key put' printed)")
}

func (k *promptKey) read() (*api.KeyFile, error) {
	if *k.file == "" {
		return nil, usageErr("--key is required")
	}
	kf, raw, err := readKey(*k.file)
	switch {
	case err != nil:
		return nil, err
	case kf != nil:
		if (*k.id != "" && *k.id != kf.ID) || (*k.version != 0 && *k.version != kf.Version) {
			return nil, usageErr("%s is the key file of %s version %d; --id and --key-version disagree", *k.file, kf.ID, kf.Version)
		}
		return kf, nil
	case *k.id == "" || *k.version == 0:
		return nil, usageErr("%s holds raw key bytes: pass --id and --key-version (what 'kbsctl key put' printed), or use a key file", *k.file)
	}
	if err := api.ValidKeyID(*k.id); err != nil {
		return nil, usageErr("--id: %v", err)
	}
	if len(raw) != 32 {
		return nil, usageErr("%s: prompts need a 32-byte AES-256 key, this one is %d bytes", *k.file, len(raw))
	}
	return &api.KeyFile{ID: *k.id, Version: *k.version, Material: raw}, nil
}

func readInput(e *env, file string) ([]byte, error) {
	var r io.Reader = e.stdin
	if file != "" && file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, api.MaxPromptSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > api.MaxPromptSize {
		return nil, usageErr("input larger than %d bytes", api.MaxPromptSize)
	}
	return b, nil
}

func writeOutput(e *env, file string, b []byte) error {
	if file == "" || file == "-" {
		_, err := e.stdout.Write(b)
		return err
	}
	return os.WriteFile(file, b, 0o600)
}

func cmdPromptEncrypt(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("prompt encrypt", "--key FILE [--id ID --key-version N] [--in F] [--out F]",
		`Encrypts a prompt with AES-256-GCM under a key: a key file, or the raw key
bytes 'key put --file' uploaded with their --id and --key-version. The key id
and version go into an authenticated header.`, 0)
	var key promptKey
	key.register(fs)
	in := fs.String("in", "", "input (default stdin)")
	out := fs.String("out", "", "output (default stdout)")
	kind := fs.String("kind", api.KindPrompt, "message kind: prompt or reply")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *kind != api.KindPrompt && *kind != api.KindReply {
		return usageErr("--kind: want prompt or reply")
	}
	k, err := key.read()
	if err != nil {
		return err
	}
	pt, err := readInput(e, *in)
	if err != nil {
		return err
	}
	msg, err := api.SealPrompt(k, *kind, pt)
	if err != nil {
		return err
	}
	return writeOutput(e, *out, msg)
}

func cmdPromptDecrypt(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("prompt decrypt", "--key FILE [--id ID --key-version N] [--in F] [--out F]",
		`Decrypts a prompt or reply made by 'prompt encrypt' or a kbs worker. Fails
(exit 1) if the message was tampered with or is for another key.`, 0)
	var key promptKey
	key.register(fs)
	in := fs.String("in", "", "input (default stdin)")
	out := fs.String("out", "", "output (default stdout)")
	kind := fs.String("kind", "", "require this message kind: prompt or reply (default either)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	k, err := key.read()
	if err != nil {
		return err
	}
	msg, err := readInput(e, *in)
	if err != nil {
		return err
	}
	_, pt, err := api.OpenPrompt(k, *kind, msg)
	if err != nil {
		return failErr("%v", err)
	}
	return writeOutput(e, *out, pt)
}

func cmdPromptSend(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("prompt send", "--worker URL --key FILE [--id ID --key-version N] [--model M] [--in F]",
		`Sends a prompt to a worker started with 'kbsctl worker run', as an OpenAI
completion (POST /v1/completions) sealed like 'kbsctl proxy' seals it (a fresh
request id, bound to this request and the worker instance: the worker refuses
a replay), and prints the completion's text from the worker's sealed answer.
It does not verify the broker ('kbsctl proxy' does).`, 0)
	worker := fs.String("worker", "", "worker URL, e.g. http://127.0.0.1:8080 (required)")
	var key promptKey
	key.register(fs)
	in := fs.String("in", "", "input (default stdin)")
	model := fs.String("model", echo.Model, "the model to ask")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *worker == "" {
		return usageErr("prompt send: --worker is required")
	}
	k, err := key.read()
	if err != nil {
		return err
	}
	pt, err := readInput(e, *in)
	if err != nil {
		return err
	}
	if err := api.ValidModelName(*model); err != nil {
		return usageErr("--model: %v", err)
	}
	c, err := proxy.NewClient(proxy.ClientConfig{Worker: *worker, Key: func() (*api.KeyFile, error) { return k, nil },
		HTTPClient: &http.Client{Timeout: 10 * time.Minute}})
	if err != nil {
		return usageErr("--worker: %v", err)
	}
	body, err := json.Marshal(map[string]any{"model": *model, "prompt": string(pt)})
	if err != nil {
		return err
	}
	resp, err := c.Do(ctx, http.MethodPost, "/v1/completions", body, *model, false)
	var ie *proxy.IntegrityError
	var we *proxy.WorkerError
	switch {
	case errors.As(err, &ie):
		return failErr("%v", err)
	case errors.As(err, &we) && we.Code == inference.CodeKeyRefused:
		return &exitError{code: 1, errCode: we.Code, err: err}
	case err != nil:
		return err
	}
	defer resp.Close()
	ans, err := resp.ReadAll(api.MaxInferenceAnswer)
	if err != nil {
		return failErr("worker answer: %v", err)
	}
	if resp.Status != http.StatusOK {
		if d, ok := inference.ParseError(ans); ok {
			return fmt.Errorf("the inference server answered %d: %s", resp.Status, d.Message)
		}
		return fmt.Errorf("the inference server answered %d", resp.Status)
	}
	var cmpl struct {
		Choices []struct {
			Text string `json:"text"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(ans, &cmpl); err != nil || len(cmpl.Choices) == 0 {
		return fmt.Errorf("the inference server's answer is not a completion: %.200s", ans)
	}
	_, err = io.WriteString(e.stdout, cmpl.Choices[0].Text)
	return err
}
