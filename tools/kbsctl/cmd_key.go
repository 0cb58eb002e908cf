package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/client"
)

func cmdKey(ctx context.Context, e *env, args []string) error {
	return subcommand(ctx, e, "key", args, map[string]func(context.Context, *env, []string) error{
		"put": cmdKeyPut,
		"rm":  cmdKeyRm,
		"ls":  cmdKeyLs,
		"get": cmdKeyGet,
	})
}

type keyResult struct {
	ID       string `json:"id"`
	Version  uint64 `json:"version"`
	Client   string `json:"client,omitempty"`
	LogIndex uint64 `json:"log_index"`
	Receipt  string `json:"receipt_file,omitempty"`
	KeyFile  string `json:"key_file,omitempty"`
}

func cmdKeyPut(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("key put", "--manifest FILE --client-key FILE --id ID (--file F | --generate --out F)",
		`Verifies the broker, then uploads a key sealed to its attested HPKE key and
signed with your client key, and verifies the receipt of the upload.
--file takes a key file or raw key bytes; --generate makes a 32-byte
AES-256 key and writes it as a key file (mode 0600) to --out.`)
	mf := fs.String("manifest", "", "your copy of the manifest (required)")
	keyPath := fs.String("client-key", "", "your client signing key, PEM (required)")
	id := fs.String("id", "", "key id (required)")
	file := fs.String("file", "", "key to upload: a key file or raw bytes")
	gen := fs.Bool("generate", false, "generate a 32-byte key")
	outFile := fs.String("out", "", "with --generate: where to write the key file")
	receiptFile := fs.String("receipt", "", "where to write the upload receipt (default OUT.receipt or FILE.receipt)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	switch {
	case *mf == "" || *keyPath == "" || *id == "":
		return usageErr("key put: --manifest, --client-key and --id are required")
	case (*file == "") == !*gen:
		return usageErr("key put: give exactly one of --file and --generate")
	case *gen && *outFile == "":
		return usageErr("key put: --generate needs --out")
	case !*gen && *outFile != "":
		return usageErr("key put: --out goes with --generate")
	}
	if err := api.ValidKeyID(*id); err != nil {
		return usageErr("--id: %v", err)
	}
	signer, err := readSigner(*keyPath)
	if err != nil {
		return err
	}
	var material []byte
	if *gen {
		if _, err := os.Stat(*outFile); err == nil {
			return usageErr("%s exists; refusing to overwrite a key", *outFile)
		}
		material = make([]byte, 32)
		if _, err := rand.Read(material); err != nil {
			return err
		}
	} else {
		raw, err := os.ReadFile(*file)
		if err != nil {
			return err
		}
		if strings.Contains(string(raw), "-----BEGIN "+api.KeyFilePEMType) {
			kf, err := api.ParseKeyFile(raw)
			if err != nil {
				return fmt.Errorf("%s: %w", *file, err)
			}
			if kf.ID != *id {
				return usageErr("%s holds key %q, not %q", *file, kf.ID, *id)
			}
			material = kf.Material
		} else {
			material = raw
		}
		if len(material) == 0 || len(material) > api.MaxKeySize {
			return usageErr("%s: key is %d bytes, want 1 to %d", *file, len(material), api.MaxKeySize)
		}
	}
	b, err := e.verifyBroker(ctx, *mf, false, false)
	if err != nil {
		return err
	}
	ci, ok := b.Manifest.ClientFor(signer.Public())
	if !ok {
		return failErr("the key in %s is not a client of manifest version %d", *keyPath, b.Manifest.Version())
	}
	version, err := b.NextVersion(ctx, *id)
	if err != nil {
		return err
	}
	if *gen {
		f, err := os.OpenFile(*outFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		_, werr := f.Write((&api.KeyFile{ID: *id, Version: version, Material: material}).Marshal())
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			os.Remove(*outFile)
			return werr
		}
	}
	res, r, err := b.UploadKey(ctx, signer, ci.Name, *id, version, material)
	if err != nil {
		if *gen {
			os.Remove(*outFile)
		}
		return err
	}
	if *receiptFile == "" {
		if *gen {
			*receiptFile = *outFile + ".receipt"
		} else {
			*receiptFile = *file + ".receipt"
		}
	}
	if err := os.WriteFile(*receiptFile, r.Raw, 0o644); err != nil {
		return err
	}
	out := keyResult{ID: res.ID, Version: res.Version, Client: ci.Name, LogIndex: res.LogIndex, Receipt: *receiptFile}
	if *gen {
		out.KeyFile = *outFile
	}
	return e.out(out, func() {
		fmt.Fprintf(e.stdout, "uploaded %s version %d as client %s (broker verified, key sealed to its attested HPKE key)\n", res.ID, res.Version, ci.Name)
		fmt.Fprintf(e.stdout, "logged at index %d; receipt verified and written to %s\n", res.LogIndex, *receiptFile)
		if *gen {
			fmt.Fprintf(e.stdout, "key written to %s (mode 0600)\n", *outFile)
		}
	})
}

func cmdKeyRm(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("key rm", "[--manifest FILE] --client-key FILE --id ID",
		`Verifies the broker, then deletes (crypto-shreds) every version of a key with
a deletion signed by your client key, and verifies the receipt. Without
--manifest, the broker is verified against the manifest it was verified
against last time from this state directory.`)
	mf := fs.String("manifest", "", "your copy of the manifest (default: the one verified last time)")
	keyPath := fs.String("client-key", "", "your client signing key, PEM (required)")
	id := fs.String("id", "", "key id (required)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *keyPath == "" || *id == "" {
		return usageErr("key rm: --client-key and --id are required")
	}
	if err := api.ValidKeyID(*id); err != nil {
		return usageErr("--id: %v", err)
	}
	signer, err := readSigner(*keyPath)
	if err != nil {
		return err
	}
	var b *client.Broker
	if *mf != "" {
		b, err = e.verifyBroker(ctx, *mf, false, false)
	} else {
		b, err = e.verifyRemembered(ctx)
	}
	if err != nil {
		return err
	}
	ci, ok := b.Manifest.ClientFor(signer.Public())
	if !ok {
		return failErr("the key in %s is not a client of manifest version %d", *keyPath, b.Manifest.Version())
	}
	l, err := b.Client().Keys(ctx)
	if err != nil {
		return err
	}
	var version uint64
	for _, k := range l.Keys {
		if k.ID == *id && !k.Deleted {
			version = k.Version
		}
	}
	if version == 0 {
		return fmt.Errorf("key %q does not exist or is already deleted", *id)
	}
	res, _, err := b.DeleteKey(ctx, signer, ci.Name, *id, version)
	if err != nil {
		return err
	}
	out := keyResult{ID: res.ID, Version: res.Version, Client: ci.Name, LogIndex: res.LogIndex}
	return e.out(out, func() {
		fmt.Fprintf(e.stdout, "deleted %s (versions up to %d) as client %s; logged at index %d, receipt verified\n", res.ID, res.Version, ci.Name, res.LogIndex)
	})
}

func cmdKeyLs(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("key ls", "", `Lists key metadata (ids, versions, uploaders; never key material).`)
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	c, _, err := e.client(false)
	if err != nil {
		return err
	}
	l, err := c.Keys(ctx)
	if err != nil {
		return err
	}
	if l.Keys == nil {
		l.Keys = []api.KeyInfo{}
	}
	return e.out(l, func() {
		fmt.Fprintf(e.stdout, "%-32s %7s %-16s %-20s %s\n", "ID", "VERSION", "CLIENT", "CREATED", "STATE")
		for _, k := range l.Keys {
			state := "active"
			if k.Deleted {
				state = "deleted"
			}
			fmt.Fprintf(e.stdout, "%-32s %7d %-16s %-20s %s\n", k.ID, k.Version, k.Client, k.Created.UTC().Format("2006-01-02T15:04:05Z"), state)
		}
	})
}

type getResult struct {
	Class    string        `json:"class"`
	LogIndex uint64        `json:"log_index"`
	Keys     []keyResult   `json:"keys"`
	Verify   *verifyResult `json:"broker"`
}

// fetchKeys verifies the broker and obtains the keys with evidence from the
// TEE the flags select.
func fetchKeys(ctx context.Context, e *env, manifestFile string, tee *teeFlags, ids []string, pq bool) (*client.Broker, *client.Released, error) {
	if len(ids) == 0 {
		return nil, nil, usageErr("at least one --id is required")
	}
	for _, id := range ids {
		if err := api.ValidKeyID(id); err != nil {
			return nil, nil, usageErr("--id: %v", err)
		}
	}
	iss, err := tee.issuer()
	if err != nil {
		return nil, nil, err
	}
	b, err := e.verifyBroker(ctx, manifestFile, false, false)
	if err != nil {
		return nil, nil, err
	}
	kem := api.KEMX25519
	if pq {
		kem = api.KEMMLKEM768X25519
	}
	rel, err := b.FetchKeys(ctx, iss, ids, kem)
	if err != nil {
		return nil, nil, err
	}
	return b, rel, nil
}

func cmdKeyGet(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("key get", "--manifest FILE --tee snp|tdx|sim [--sim-dir DIR] [--sim-measurement HEX] --id ID [--id ID...] --out DIR",
		`The worker side: verifies the broker, gets a challenge, produces evidence
binding it and a fresh HPKE key, receives the keys sealed to that key,
verifies the release receipt, and writes each key to DIR/<id>.key (mode
0600) with its receipt DIR/<id>.receipt.`)
	mf := fs.String("manifest", "", "your copy of the manifest (required)")
	var tee teeFlags
	tee.register(fs)
	var ids stringList
	fs.Var(&ids, "id", "key id (repeatable; required)")
	outDir := fs.String("out", "", "directory for the key files (required)")
	pq := fs.Bool("pq", false, "use the post-quantum hybrid HPKE KEM (ML-KEM-768 + X25519)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *mf == "" || *outDir == "" {
		return usageErr("key get: --manifest and --out are required")
	}
	b, rel, err := fetchKeys(ctx, e, *mf, &tee, ids, *pq)
	if err != nil {
		return err
	}
	out := getResult{Class: rel.Class, LogIndex: rel.Receipt.Index, Verify: newVerifyResult(e.g.addr, b)}
	for _, k := range rel.Keys {
		kf := filepath.Join(*outDir, filepath.FromSlash(k.ID)+".key")
		rf := filepath.Join(*outDir, filepath.FromSlash(k.ID)+".receipt")
		if err := os.MkdirAll(filepath.Dir(kf), 0o700); err != nil {
			return err
		}
		if err := client.WriteFileAtomic(kf, (&api.KeyFile{ID: k.ID, Version: k.Version, Material: k.Material}).Marshal(), 0o600); err != nil {
			return err
		}
		if err := client.WriteFileAtomic(rf, rel.Receipt.Raw, 0o644); err != nil {
			return err
		}
		clear(k.Material)
		out.Keys = append(out.Keys, keyResult{ID: k.ID, Version: k.Version, LogIndex: rel.Receipt.Index, KeyFile: kf, Receipt: rf})
	}
	return e.out(out, func() {
		fmt.Fprintf(e.stdout, "broker verified (manifest version %d, log size %d)\n", b.Manifest.Version(), b.Checkpoint.Size)
		fmt.Fprintf(e.stdout, "released to worker class %s; release logged at index %d, receipt verified\n", rel.Class, rel.Receipt.Index)
		for _, k := range out.Keys {
			fmt.Fprintf(e.stdout, "  %s version %d -> %s (receipt %s)\n", k.ID, k.Version, k.KeyFile, k.Receipt)
		}
	})
}
