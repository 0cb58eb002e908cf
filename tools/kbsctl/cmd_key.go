package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

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
	// PreviousKeyFile is where a key file of another version that 'key
	// get' replaced was kept.
	PreviousKeyFile string `json:"previous_key_file,omitempty"`
	// AlreadyDeleted: 'key rm' found the key deleted; nothing was logged.
	AlreadyDeleted bool `json:"already_deleted,omitempty"`
}

// readKey reads a key to upload or to encrypt with: a key file (kf set),
// or raw key bytes (kf nil), which 'key put --file' and 'prompt' accept.
func readKey(file string) (kf *api.KeyFile, material []byte, err error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, err
	}
	if bytes.Contains(raw, []byte("-----BEGIN "+api.KeyFilePEMType)) {
		kf, err := api.ParseKeyFile(raw)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", file, err)
		}
		return kf, kf.Material, nil
	}
	if len(raw) == 0 || len(raw) > api.MaxKeySize {
		return nil, nil, usageErr("%s: key is %d bytes, want 1 to %d", file, len(raw), api.MaxKeySize)
	}
	return nil, raw, nil
}

// refusedBeforeLogging reports whether err is the broker's refusal of a
// request (a 4xx error answer): the broker decided before logging
// anything, so nothing it holds depends on the request.
func refusedBeforeLogging(err error) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500
}

func cmdKeyPut(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("key put", "--manifest FILE --client-key FILE --id ID (--file F | --generate --out F) [--receipt R]",
		`Verifies the broker, then uploads a key sealed to its attested HPKE key and
signed with your client key, and verifies the receipt of the upload.
--file takes a key file or raw key bytes; a key file's Key-Version is set
to the version uploaded. --generate makes a 32-byte AES-256 key and writes
it as a key file (mode 0600) to --out before uploading it; it is kept
unless the broker refused the upload. The receipt goes to a new file, by
default next to the key: F.v<version>.<log index>.receipt.`, useVerify)
	mf := fs.String("manifest", "", "your copy of the manifest (required)")
	keyPath := fs.String("client-key", "", "your client signing key, PEM (required)")
	id := fs.String("id", "", "key id (required)")
	file := fs.String("file", "", "key to upload: a key file or raw bytes")
	gen := fs.Bool("generate", false, "generate a 32-byte key")
	outFile := fs.String("out", "", "with --generate: where to write the key file")
	receiptFile := fs.String("receipt", "", "where to write the upload receipt, a new file (default F.v<version>.<log index>.receipt)")
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

	// Local preconditions, before anything reaches the broker.
	var (
		material []byte
		kf       *api.KeyFile // --file is a key file
		keyFile  = *file      // the key's file: receipts go next to it
	)
	if *gen {
		keyFile = *outFile
		if err := checkNewFile("--out", *outFile); err != nil {
			return err
		}
		material = make([]byte, 32)
		if _, err := rand.Read(material); err != nil {
			return err
		}
	} else {
		if kf, material, err = readKey(*file); err != nil {
			return err
		}
		if kf != nil {
			if kf.ID != *id {
				return usageErr("%s holds key %q, not %q", *file, kf.ID, *id)
			}
			// Its Key-Version is rewritten after the upload.
			if err := checkRewritable(*file); err != nil {
				return usageErr("--file %s: %v (its Key-Version is set to the version uploaded)", *file, err)
			}
		}
	}
	if *receiptFile != "" {
		if err := checkNewFile("--receipt", *receiptFile); err != nil {
			return err
		}
	} else if err := probeDir(filepath.Dir(keyFile)); err != nil {
		return usageErr("the receipt goes next to %s: %v (or pass --receipt)", keyFile, err)
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
		// The key is on disk before the broker can hold it.
		if err := writeNew(*outFile, (&api.KeyFile{ID: *id, Version: version, Material: material}).Marshal(), 0o600); err != nil {
			return err
		}
	}
	res, r, err := b.UploadKey(ctx, signer, ci.Name, *id, version, material)
	if err != nil {
		switch {
		case *gen && refusedBeforeLogging(err):
			os.Remove(*outFile)
		case *gen:
			// The broker may hold the key (a timeout, a receipt that
			// does not verify): never delete the only other copy.
			return withHint(err, fmt.Sprintf("the key file %s is kept: the broker may hold this key as %s version %d ('kbsctl key ls' shows it; 'kbsctl key rm' deletes it)", *outFile, *id, version))
		}
		return err
	}
	out := keyResult{ID: res.ID, Version: res.Version, Client: ci.Name, LogIndex: res.LogIndex}
	if out.Receipt, err = e.keepReceipt(*receiptFile, keyFile, res.Version, res.LogIndex, r.Raw); err != nil {
		return err
	}
	var was uint64
	switch {
	case *gen:
		out.KeyFile = *outFile
	case kf != nil && kf.Version != res.Version:
		// Keep the key file in step with what the broker holds.
		was = kf.Version
		kf.Version = res.Version
		if err := rewriteKeyFile(*file, kf); err != nil {
			return fmt.Errorf("uploaded %s version %d, but couldn't set %s's Key-Version to %d: %w", res.ID, res.Version, *file, res.Version, err)
		}
		out.KeyFile = *file
	}
	return e.out(out, func() {
		fmt.Fprintf(e.stdout, "uploaded %s version %d as client %s (broker verified, key sealed to its attested HPKE key)\n", res.ID, res.Version, ci.Name)
		fmt.Fprintf(e.stdout, "logged at index %d; receipt verified and written to %s\n", res.LogIndex, out.Receipt)
		switch {
		case *gen:
			fmt.Fprintf(e.stdout, "key written to %s (mode 0600)\n", *outFile)
		case was != 0:
			fmt.Fprintf(e.stdout, "%s now says Key-Version: %d (was %d)\n", *file, res.Version, was)
		case kf == nil:
			fmt.Fprintf(e.stdout, "encrypt prompts with it: kbsctl prompt encrypt --key %s --id %s --key-version %d\n", *file, res.ID, res.Version)
		}
	})
}

// checkRewritable checks that file can be replaced by a new version of
// itself (rewriteKeyFile).
func checkRewritable(file string) error {
	f, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	f.Close()
	return probeDir(filepath.Dir(file))
}

// rewriteKeyFile replaces the key file file with kf, keeping its mode.
func rewriteKeyFile(file string, kf *api.KeyFile) error {
	fi, err := os.Stat(file)
	if err != nil {
		return err
	}
	return client.WriteFileAtomic(file, kf.Marshal(), fi.Mode().Perm())
}

func cmdKeyRm(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("key rm", "[--manifest FILE] --client-key FILE --id ID [--receipt R]",
		`Verifies the broker, then deletes (crypto-shreds) every version of a key with
a deletion signed by your client key, verifies the receipt and writes it to
a new file (default STATE/receipts/<id>.deleted.v<version>.<log index>.receipt).
Without --manifest, the broker is verified against the manifest it was
verified against last time from this state directory. A key that is
already deleted is success (exit 0) and nothing is logged, so a retry is safe.`, useVerify)
	mf := fs.String("manifest", "", "your copy of the manifest (default: the one verified last time)")
	keyPath := fs.String("client-key", "", "your client signing key, PEM (required)")
	id := fs.String("id", "", "key id (required)")
	receiptFile := fs.String("receipt", "", "where to write the deletion receipt, a new file (default in STATE/receipts)")
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
	var made madeDirs
	defer made.undo()
	receiptBase := filepath.Join(e.g.state, "receipts", filepath.FromSlash(*id)+".deleted")
	if *receiptFile != "" {
		if err := checkNewFile("--receipt", *receiptFile); err != nil {
			return err
		}
	} else if err := made.mkdirAll(filepath.Dir(receiptBase)); err != nil {
		return usageErr("the receipt goes to %s: %v (or pass --receipt)", filepath.Dir(receiptBase), err)
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
	info, err := b.Client().Key(ctx, *id)
	var ae *api.Error
	switch {
	case errors.As(err, &ae) && ae.Code == api.CodeNotFound:
		return &exitError{code: 2, errCode: "not_found", err: fmt.Errorf("the broker has no key %q", *id), hint: "'kbsctl key ls' lists its keys"}
	case err != nil:
		return err
	case info.Deleted:
		out := keyResult{ID: info.ID, Version: info.Version, Client: ci.Name, AlreadyDeleted: true}
		return e.out(out, func() {
			fmt.Fprintf(e.stdout, "%s is already deleted (versions up to %d); nothing to do, nothing logged\n", info.ID, info.Version)
		})
	}
	res, r, err := b.DeleteKey(ctx, signer, ci.Name, *id, info.Version)
	if err != nil {
		return err
	}
	made = nil // the receipt goes there now
	out := keyResult{ID: res.ID, Version: res.Version, Client: ci.Name, LogIndex: res.LogIndex}
	if out.Receipt, err = e.keepReceipt(*receiptFile, receiptBase, res.Version, res.LogIndex, r.Raw); err != nil {
		return err
	}
	return e.out(out, func() {
		fmt.Fprintf(e.stdout, "deleted %s (versions up to %d) as client %s; logged at index %d\n", res.ID, res.Version, ci.Name, res.LogIndex)
		fmt.Fprintf(e.stdout, "receipt verified and written to %s\n", out.Receipt)
	})
}

func cmdKeyLs(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("key ls", "[--prefix P]", `Lists key metadata: ids, the latest version, who uploaded it and when
(VERSION CREATED), and whether the key was deleted. Never key material.
--prefix lists only the key ids that start with it (e.g. acme/). The
broker answers in pages of up to 10,000 keys; ls reads them all.
--json adds when each key id was first created.`, useBroker)
	prefix := fs.String("prefix", "", "list only the key ids that start with this")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	c, _, err := e.client(false)
	if err != nil {
		return err
	}
	l, err := c.KeysWithPrefix(ctx, *prefix)
	if err != nil {
		return err
	}
	return e.out(l, func() {
		fmt.Fprintf(e.stdout, "%-32s %7s %-16s %-20s %s\n", "ID", "VERSION", "CLIENT", "VERSION CREATED", "STATE")
		for _, k := range l.Keys {
			state, created := "active", "-"
			if k.Deleted {
				state = "deleted"
			}
			if !k.VersionCreated.IsZero() {
				created = ts(k.VersionCreated)
			}
			fmt.Fprintf(e.stdout, "%-32s %7d %-16s %-20s %s\n", k.ID, k.Version, k.Client, created, state)
		}
	})
}

type getResult struct {
	Class    string        `json:"class"`
	LogIndex uint64        `json:"log_index"`
	Keys     []keyResult   `json:"keys"`
	Verify   *verifyResult `json:"broker"`
}

// checkKeyIDs checks ids before they reach the broker.
func checkKeyIDs(ids []string) error {
	if len(ids) == 0 {
		return usageErr("at least one --id is required")
	}
	for _, id := range ids {
		if err := api.ValidKeyID(id); err != nil {
			return usageErr("--id: %v", err)
		}
	}
	return nil
}

// fetchKeys verifies the broker, checks that it holds every key asked for,
// and obtains the keys with evidence from the TEE the flags select. A key
// the broker does not hold, or a release it refuses, is exit 1.
func fetchKeys(ctx context.Context, e *env, manifestFile string, tee *teeFlags, ids []string, pq bool) (*client.Broker, *client.Released, error) {
	iss, err := tee.issuer()
	if err != nil {
		return nil, nil, err
	}
	b, err := e.verifyBroker(ctx, manifestFile, false, false)
	if err != nil {
		return nil, nil, err
	}
	for _, id := range ids {
		k, err := b.Client().Key(ctx, id)
		var ae *api.Error
		if err != nil && !(errors.As(err, &ae) && ae.Code == api.CodeNotFound) {
			return nil, nil, err
		}
		if err != nil || k.Deleted {
			what := "has no key"
			if err == nil {
				what = "deleted the key"
			}
			return nil, nil, &exitError{code: 1, errCode: "not_found", err: fmt.Errorf("the broker %s %q: nothing was requested", what, id),
				hint: "'kbsctl key ls' lists the broker's keys"}
		}
	}
	kem := api.KEMX25519
	if pq {
		kem = api.KEMMLKEM768X25519
	}
	rel, err := b.FetchKeys(ctx, iss, ids, kem)
	var ae *api.Error
	if errors.As(err, &ae) && ae.Code == api.CodeNotFound {
		// Deleted since the check above: a refused release.
		return nil, nil, &exitError{code: 1, errCode: ae.Code, err: err}
	}
	if err != nil {
		return nil, nil, err
	}
	return b, rel, nil
}

// keyOutputs are the files 'key get' writes into its --out directory,
// DIR/<id>.key and DIR/<id>.v<version>.<log index>.receipt, and the receipts
// 'worker run' writes. prepare checks them before the release; a key file
// already there must be one of the same key id, and is kept as
// DIR/<id>.v<N>.key when a release of another version replaces it.
type keyOutputs struct {
	dir  string
	keys bool // write key files (key get), or only receipts (worker run)
	made madeDirs
	old  map[string]*api.KeyFile // key files found by prepare, by id
	raw  map[string][]byte
}

func (o *keyOutputs) keyFile(id string) string {
	return filepath.Join(o.dir, filepath.FromSlash(id)+".key")
}

func (o *keyOutputs) keptFile(id string, version uint64) string {
	return filepath.Join(o.dir, fmt.Sprintf("%s.v%d.key", filepath.FromSlash(id), version))
}

// prepare creates the directories the files need (undo removes them if
// nothing is written) and checks that no file would be clobbered.
func (o *keyOutputs) prepare(flagName string, ids []string) error {
	o.old, o.raw = map[string]*api.KeyFile{}, map[string][]byte{}
	for _, id := range ids {
		kf := o.keyFile(id)
		if err := o.made.mkdirAll(filepath.Dir(kf)); err != nil {
			return usageErr("%s %s: %v", flagName, o.dir, err)
		}
		if !o.keys {
			continue
		}
		fi, err := os.Lstat(kf)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		refuse := usageErr("%s exists and is not a key file of %s: refusing to overwrite it (move it away or choose another --out)", kf, id)
		if !fi.Mode().IsRegular() {
			return refuse
		}
		raw, err := os.ReadFile(kf)
		if err != nil {
			return err
		}
		k, err := api.ParseKeyFile(raw)
		if err != nil || k.ID != id {
			return refuse
		}
		if kept, err := os.ReadFile(o.keptFile(id, k.Version)); err == nil && !bytes.Equal(kept, raw) {
			return usageErr("%s and %s both exist and differ: refusing to overwrite either (move one away)", kf, o.keptFile(id, k.Version))
		}
		o.old[id], o.raw[id] = k, raw
	}
	return nil
}

// write writes a released key and its receipt into out.
func (o *keyOutputs) write(e *env, k client.ReleasedKey, receipt *client.Receipt, out *keyResult) error {
	base := filepath.Join(o.dir, filepath.FromSlash(k.ID))
	var err error
	if out.Receipt, err = e.keepReceipt("", base, k.Version, receipt.Index, receipt.Raw); err != nil {
		return err
	}
	if !o.keys {
		return nil
	}
	kf := o.keyFile(k.ID)
	out.KeyFile = kf
	data := (&api.KeyFile{ID: k.ID, Version: k.Version, Material: k.Material}).Marshal()
	old := o.old[k.ID]
	switch {
	case old == nil:
		return writeNew(kf, data, 0o600)
	case old.Version == k.Version && bytes.Equal(old.Material, k.Material):
		return nil // the same key file again
	case old.Version == k.Version:
		other := filepath.Join(o.dir, fmt.Sprintf("%s.v%d.%d.key", filepath.FromSlash(k.ID), k.Version, receipt.Index))
		if err := writeNew(other, data, 0o600); err != nil {
			return err
		}
		out.KeyFile = other
		return &exitError{code: 1, errCode: "key_mismatch", err: fmt.Errorf("the broker released %s version %d with other key bytes than %s holds for that version: both kept, the released key in %s", k.ID, k.Version, kf, other)}
	}
	kept := o.keptFile(k.ID, old.Version)
	if _, err := os.Stat(kept); errors.Is(err, fs.ErrNotExist) {
		if err := writeNew(kept, o.raw[k.ID], 0o600); err != nil {
			return fmt.Errorf("couldn't keep %s as %s: %w", kf, kept, err)
		}
	}
	out.PreviousKeyFile = kept
	return client.WriteFileAtomic(kf, data, 0o600)
}

func cmdKeyGet(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("key get", "--manifest FILE --tee snp|tdx|sim [--sim-dir DIR] [--sim-measurement HEX] --id ID [--id ID...] --out DIR",
		`The worker side: verifies the broker, gets a challenge, produces evidence
binding it and a fresh HPKE key, receives the keys sealed to that key,
verifies the release receipt, and writes each key to DIR/<id>.key (mode
0600) with the receipt DIR/<id>.v<version>.<log index>.receipt. Before any
request it checks that DIR can take the files: a key file already there
must hold the same key id (a release of another version keeps it as
DIR/<id>.v<N>.key), and no receipt is ever overwritten.`, useVerify|useTimeout)
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
	if err := checkKeyIDs(ids); err != nil {
		return err
	}
	outs := &keyOutputs{dir: *outDir, keys: true}
	defer func() { outs.made.undo() }()
	if err := outs.prepare("--out", ids); err != nil {
		return err
	}
	ctx, cancel := e.bound(ctx, defaultTimeout)
	defer cancel()
	b, rel, err := fetchKeys(ctx, e, *mf, &tee, ids, *pq)
	if err != nil {
		return err
	}
	outs.made = nil // files go there now
	out := getResult{Class: rel.Class, LogIndex: rel.Receipt.Index, Verify: newVerifyResult(e.g.addr, b)}
	var werr error
	for _, k := range rel.Keys {
		r := keyResult{ID: k.ID, Version: k.Version, LogIndex: rel.Receipt.Index}
		if err := outs.write(e, k, rel.Receipt, &r); err != nil && werr == nil {
			werr = err
		}
		clear(k.Material)
		out.Keys = append(out.Keys, r)
	}
	if werr != nil {
		return werr
	}
	return e.out(out, func() {
		fmt.Fprintf(e.stdout, "broker verified (manifest version %d, log size %d)\n", b.Manifest.Version(), b.Checkpoint.Size)
		fmt.Fprintf(e.stdout, "released to worker class %s; release logged at index %d, receipt verified\n", rel.Class, rel.Receipt.Index)
		fmt.Fprintf(e.stdout, "receipt witnesses: %s\n", newWitnessResult(b.Manifest, rel.Receipt.Cosigned, false))
		for _, k := range out.Keys {
			fmt.Fprintf(e.stdout, "  %s version %d -> %s (receipt %s)\n", k.ID, k.Version, k.KeyFile, k.Receipt)
			if k.PreviousKeyFile != "" {
				fmt.Fprintf(e.stdout, "    the key file of the version before is kept as %s\n", k.PreviousKeyFile)
			}
		}
	})
}
