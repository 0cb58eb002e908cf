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
	})
}

type checkpointResult struct {
	Origin       string  `json:"origin"`
	Size         uint64  `json:"size"`
	RootHash     string  `json:"root_hash"`
	Checkpoint   string  `json:"checkpoint"`
	PreviousSize *uint64 `json:"previous_size,omitempty"`
	Stored       bool    `json:"stored"`
}

func newCheckpointResult(cp tlog.SignedCheckpoint) *checkpointResult {
	return &checkpointResult{Origin: cp.Origin, Size: cp.Size, RootHash: base64.StdEncoding.EncodeToString(cp.Hash[:]), Checkpoint: string(cp.Note)}
}

func cmdLogCheckpoint(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("log checkpoint", "[--note-key KEY]",
		`Fetches the log's latest checkpoint, verifies its signature and prints it.
It does not store it (see 'kbsctl log verify').`)
	noteKey := fs.String("note-key", "", "the log's note key (default: learned by 'kbsctl verify')")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	_, _, _, cp, err := e.latestCheckpoint(ctx, *noteKey)
	if err != nil {
		return err
	}
	r := newCheckpointResult(cp)
	return e.out(r, func() { fmt.Fprint(e.stdout, r.Checkpoint) })
}

func cmdLogVerify(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("log verify", "[--note-key KEY]",
		`Fetches the log's latest checkpoint, verifies its signature and its
consistency with the checkpoint stored before, and stores it. A rolled back
or forked log fails with both checkpoints printed.`)
	noteKey := fs.String("note-key", "", "the log's note key (default: learned by 'kbsctl verify')")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	c, st, err := e.client(true)
	if err != nil {
		return err
	}
	lv, err := e.logVerifier(c, st, *noteKey)
	if err != nil {
		return err
	}
	synced, err := c.SyncLog(ctx, lv)
	if err != nil {
		return err
	}
	cp, prev := synced.Checkpoint, synced.Previous
	r := newCheckpointResult(cp)
	r.Stored = true
	if prev != nil {
		s := prev.Size
		r.PreviousSize = &s
	}
	return e.out(r, func() {
		if prev != nil {
			fmt.Fprintf(e.stdout, "log %s: size %d, consistent with the stored size %d; checkpoint stored\n", cp.Origin, cp.Size, prev.Size)
		} else {
			fmt.Fprintf(e.stdout, "log %s: size %d; first checkpoint for this log stored (trusted on first use)\n", cp.Origin, cp.Size)
		}
	})
}

type receiptResult struct {
	Origin         string      `json:"origin"`
	Index          uint64      `json:"index"`
	CheckpointSize uint64      `json:"checkpoint_size"`
	Entry          *tlog.Entry `json:"entry"`
}

func cmdReceipt(ctx context.Context, e *env, args []string) error {
	return subcommand(ctx, e, "receipt", args, map[string]func(context.Context, *env, []string) error{
		"verify": cmdReceiptVerify,
	})
}

func cmdReceiptVerify(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("receipt verify", "[--note-key KEY] FILE",
		`Verifies a receipt (C2SP tlog-proof) offline: the checkpoint's signature by the
log key, and the inclusion of the entry the receipt carries. Prints the entry.`)
	noteKey := fs.String("note-key", "", "the log's note key (default: learned by 'kbsctl verify' for --addr)")
	if err := parse(fs, args, 1); err != nil {
		return err
	}
	raw, err := os.ReadFile(fs.Arg(0))
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
	r, err := client.VerifyReceiptOffline(raw, lv)
	if err != nil {
		return err
	}
	out := receiptResult{Origin: r.Checkpoint.Origin, Index: r.Index, CheckpointSize: r.Checkpoint.Size, Entry: r.Entry}
	return e.out(out, func() {
		fmt.Fprintf(e.stdout, "receipt verified: entry %d is in log %s at size %d\n", r.Index, r.Checkpoint.Origin, r.Checkpoint.Size)
		fmt.Fprintf(e.stdout, "  %s\n", describeEntry(r.Entry))
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
