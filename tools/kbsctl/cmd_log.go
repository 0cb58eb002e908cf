package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"

	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/tlog"
)

func cmdLog(ctx context.Context, e *env, args []string) error {
	return subcommand(ctx, e, "log", args, map[string]func(context.Context, *env, []string) error{
		"checkpoint": cmdLogCheckpoint,
		"verify":     cmdLogVerify,
		"witnesses":  cmdLogWitnesses,
	})
}

type checkpointResult struct {
	Origin       string  `json:"origin"`
	Size         uint64  `json:"size"`
	RootHash     string  `json:"root_hash"`
	Checkpoint   string  `json:"checkpoint"`
	PreviousSize *uint64 `json:"previous_size,omitempty"`
	// SignatureVerified: the checkpoint is signed by the log's key (always
	// true in a result; a bad signature is an error). NoteKeyFrom says
	// where that key came from.
	SignatureVerified bool   `json:"signature_verified"`
	NoteKeyFrom       string `json:"note_key_from"`
	// Consistent: the checkpoint extends the stored one (PreviousSize),
	// checked with a consistency proof from the broker. False when nothing
	// was stored for this log.
	Consistent bool `json:"consistent_with_stored"`
	// Stored: the checkpoint is now the stored one ('log verify' only).
	Stored bool `json:"stored"`
	// Witnesses: the witness quorum the checkpoint carries, under the
	// manifest active in its tree.
	Witnesses *witnessResult `json:"witnesses"`
}

func newCheckpointResult(cp tlog.SignedCheckpoint) *checkpointResult {
	return &checkpointResult{Origin: cp.Origin, Size: cp.Size, RootHash: base64.StdEncoding.EncodeToString(cp.Hash[:]), Checkpoint: string(cp.Note), SignatureVerified: true}
}

// noteKeyFrom says where the log key comes from: the --note-key flag's
// value noteKey, or the broker state of --addr.
func (e *env) noteKeyFrom(noteKey string) string {
	if noteKey != "" {
		return "--note-key"
	}
	return "learned by 'kbsctl verify' for " + e.g.addr
}

func cmdLogCheckpoint(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("log checkpoint", "[--note-key KEY] [--manifest FILE]",
		`Fetches the log's latest checkpoint, verifies its signature with the log's
key, the cosignatures of the witnesses that the manifest active in its tree
requires (found through the signed, logged manifest chain from your manifest:
--manifest, else the one 'kbsctl verify' remembered, else from version 1) and
its consistency with the checkpoint stored before (a consistency proof from
the broker), says so, and prints the checkpoint. It stores nothing (see
'kbsctl log verify'). A rolled back or forked log, or a checkpoint without
the witness quorum, exits 1.`, useBroker|useTimeout)
	noteKey := fs.String("note-key", "", "the log's note key (default: learned by 'kbsctl verify')")
	mf := fs.String("manifest", "", "your manifest: the chain to the checkpoint's manifest starts from it (default: remembered by 'kbsctl verify')")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	c, lv, err := e.logClient(*noteKey)
	if err != nil {
		return err
	}
	ctx, cancel := e.bound(ctx, defaultTimeout)
	defer cancel()
	anchor, err := e.manifestOrRemembered(*mf)
	if err != nil {
		return err
	}
	from := e.noteKeyFrom(*noteKey)
	synced, wr, err := e.syncWitnessed(ctx, c, lv, anchor, tlog.AdvanceOptions{DryRun: true})
	if err != nil {
		return err
	}
	res := synced.Advanced
	cp := res.Checkpoint
	r := newCheckpointResult(cp)
	r.NoteKeyFrom, r.Witnesses = from, wr
	if res.Previous != nil {
		s := res.Previous.Size
		r.PreviousSize, r.Consistent = &s, true
	}
	return e.out(r, func() {
		fmt.Fprintf(e.stdout, "checkpoint of log %s, size %d, root %s\n", cp.Origin, cp.Size, r.RootHash)
		fmt.Fprintf(e.stdout, "  signature     verified with the log key %s\n", from)
		fmt.Fprintf(e.stdout, "  witnesses     %s\n", wr)
		switch {
		case res.Previous != nil && res.Previous.Size == cp.Size:
			fmt.Fprintf(e.stdout, "  consistency   the stored checkpoint has this size and root; nothing to store\n")
		case res.Previous != nil:
			fmt.Fprintf(e.stdout, "  consistency   extends the stored checkpoint of size %d (proof verified); not stored\n", res.Previous.Size)
		default:
			fmt.Fprintf(e.stdout, "  consistency   not checked: no stored checkpoint for this log; not stored\n")
		}
		fmt.Fprintf(e.stdout, "\n%s", r.Checkpoint)
	})
}

func cmdLogVerify(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("log verify", "[--note-key KEY] [--manifest FILE]",
		`Fetches the log's latest checkpoint, verifies its signature, the cosignatures
of the witnesses the manifest active in its tree requires (as 'kbsctl log
checkpoint' finds it) and its consistency with the checkpoint stored before,
and stores it. A rolled back or forked log fails with both checkpoints
printed; a checkpoint without the witness quorum fails naming the missing
witnesses.`, useBroker|useTimeout)
	noteKey := fs.String("note-key", "", "the log's note key (default: learned by 'kbsctl verify')")
	mf := fs.String("manifest", "", "your manifest: the chain to the checkpoint's manifest starts from it (default: remembered by 'kbsctl verify')")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	c, lv, err := e.logClient(*noteKey)
	if err != nil {
		return err
	}
	ctx, cancel := e.bound(ctx, defaultTimeout)
	defer cancel()
	anchor, err := e.manifestOrRemembered(*mf)
	if err != nil {
		return err
	}
	synced, wr, err := e.syncWitnessed(ctx, c, lv, anchor, tlog.AdvanceOptions{})
	if err != nil {
		return err
	}
	cp, prev := synced.Checkpoint, synced.Previous
	r := newCheckpointResult(cp)
	r.Stored, r.NoteKeyFrom, r.Witnesses = synced.Stored, e.noteKeyFrom(*noteKey), wr
	if prev != nil {
		r.Consistent = true
		s := prev.Size
		r.PreviousSize = &s
	}
	return e.out(r, func() {
		switch {
		case prev != nil && !synced.Stored:
			fmt.Fprintf(e.stdout, "log %s: size %d, consistent with the stored size %d; the stored checkpoint has this size and root\n", cp.Origin, cp.Size, prev.Size)
		case prev != nil:
			fmt.Fprintf(e.stdout, "log %s: size %d, consistent with the stored size %d; checkpoint stored\n", cp.Origin, cp.Size, prev.Size)
		default:
			fmt.Fprintf(e.stdout, "log %s: size %d; first checkpoint for this log stored (trusted on first use)\n", cp.Origin, cp.Size)
		}
		fmt.Fprintf(e.stdout, "witnesses: %s\n", wr)
	})
}

type receiptResult struct {
	File           string      `json:"file"`
	Origin         string      `json:"origin"`
	Index          uint64      `json:"index"`
	CheckpointSize uint64      `json:"checkpoint_size"`
	Entry          *tlog.Entry `json:"entry"`
	// Witnesses: the cosignatures the receipt's checkpoint carries, under
	// the witness policy of the manifest given.
	Witnesses *witnessResult `json:"witnesses"`
}

func cmdReceipt(ctx context.Context, e *env, args []string) error {
	return subcommand(ctx, e, "receipt", args, map[string]func(context.Context, *env, []string) error{
		"verify": cmdReceiptVerify,
	})
}

func cmdReceiptVerify(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("receipt verify", "[--note-key KEY] [--manifest FILE] FILE...",
		`Verifies receipts (C2SP tlog-proof) offline: each checkpoint's signature by the
log key and the cosignatures of the witness quorum your manifest names
(--manifest, else the one 'kbsctl verify' remembered for --addr), and the
inclusion of the entry each receipt carries. Prints the entries. A receipt
without the quorum fails naming the missing witnesses. With --json, a list
with one result per file.`, useBroker)
	noteKey := fs.String("note-key", "", "the log's note key (default: learned by 'kbsctl verify' for --addr)")
	mf := fs.String("manifest", "", "the manifest whose witnesses must have cosigned (default: remembered by 'kbsctl verify' for --addr)")
	if err := parse(fs, args, -2); err != nil {
		return err
	}
	q, m, err := e.receiptQuorum(*mf)
	if err != nil {
		return err
	}
	key := *noteKey
	if key == "" {
		st, err := e.state().Broker(e.g.addr)
		if err != nil {
			return err
		}
		if st == nil {
			return usageErr("no log key: pass --note-key, or run 'kbsctl verify' for %s first", e.g.addr)
		}
		key = st.NoteKey
	}
	c, err := client.New(client.Config{Addr: "unix://offline"})
	if err != nil {
		return err
	}
	lv, err := c.LogVerifier(key)
	if err != nil {
		return usageErr("--note-key: %v", err)
	}
	var out []receiptResult
	for _, f := range fs.Args() {
		raw, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		r, err := client.VerifyReceiptOffline(raw, lv, q)
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		out = append(out, receiptResult{File: f, Origin: r.Checkpoint.Origin, Index: r.Index, CheckpointSize: r.Checkpoint.Size, Entry: r.Entry,
			Witnesses: newWitnessResult(m, r.Cosigned, false)})
	}
	return e.out(out, func() {
		for _, r := range out {
			if len(out) > 1 {
				fmt.Fprintf(e.stdout, "%s: ", r.File)
			}
			fmt.Fprintf(e.stdout, "receipt verified: entry %d is in log %s at size %d\n", r.Index, r.Origin, r.CheckpointSize)
			fmt.Fprintf(e.stdout, "  %s\n", describeEntry(r.Entry))
			fmt.Fprintf(e.stdout, "  witnesses: %s\n", r.Witnesses)
		}
	})
}

// describeEntry is a one-line description of an entry.
func describeEntry(en *tlog.Entry) string {
	t := en.Time.UTC().Format("2006-01-02T15:04:05Z")
	switch en.Type {
	case tlog.TypeManifest:
		return fmt.Sprintf("%s manifest version %d %s, %d signer(s)", t, en.Manifest.Version, en.Manifest.Hash, len(en.Manifest.Signers))
	case tlog.TypeIdentity:
		return fmt.Sprintf("%s broker identity %s (%s, simulated=%v)", t, en.Identity.NoteKey, en.Identity.Platform, en.Identity.Simulated)
	case tlog.TypeKeyUpload:
		return fmt.Sprintf("%s key upload %s version %d by %s", t, en.KeyUpload.ID, en.KeyUpload.Version, en.KeyUpload.Client)
	case tlog.TypeKeyDelete:
		return fmt.Sprintf("%s key delete %s version %d by %s", t, en.KeyDelete.ID, en.KeyDelete.Version, en.KeyDelete.Client)
	case tlog.TypeRelease:
		r := en.Release
		var keys string
		for i, k := range r.Keys {
			if i > 0 {
				keys += ", "
			}
			keys += fmt.Sprintf("%s v%d", k.ID, k.Version)
		}
		return fmt.Sprintf("%s release of %s to class %s (%s, measurement %s, manifest %s)", t, keys, r.WorkerClass, r.Platform, short(r.Measurement), short(r.ManifestHash))
	}
	return t + " " + en.Type
}
