package main

import (
	"context"
	"encoding/hex"
	"fmt"

	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/manifest"
)

type verifyResult struct {
	Addr             string  `json:"addr"`
	Platform         string  `json:"platform"`
	Simulated        bool    `json:"simulated"`
	Measurement      string  `json:"measurement"`
	ManifestVersion  uint64  `json:"manifest_version"`
	ManifestHash     string  `json:"manifest_hash"`
	ManifestLogIndex uint64  `json:"manifest_log_index"`
	Origin           string  `json:"origin"`
	NoteKey          string  `json:"note_key"`
	TLSSPKISHA256    string  `json:"tls_spki_sha256"`
	LogSize          uint64  `json:"log_size"`
	PreviousLogSize  *uint64 `json:"previous_log_size,omitempty"`
	// CheckpointStored reports whether the verified checkpoint is now the
	// stored one for this log; false when the stored one already had its
	// size and root (nothing to store).
	CheckpointStored bool              `json:"checkpoint_stored"`
	Followed         []followedVersion `json:"followed,omitempty"`
	Service          *manifest.Report  `json:"service"`
	// Witnesses: the cosignatures of the manifest's witnesses that the
	// checkpoint carries.
	Witnesses *witnessResult `json:"witnesses"`
}

type followedVersion struct {
	Version  uint64            `json:"version"`
	Hash     string            `json:"hash"`
	LogIndex uint64            `json:"log_index"`
	Signers  []string          `json:"signers"`
	Changes  []manifest.Change `json:"changes"`
}

func newVerifyResult(addr string, b *client.Broker) *verifyResult {
	r := &verifyResult{
		Addr: addr, Platform: string(b.Platform), Simulated: b.Simulated,
		Measurement:     hex.EncodeToString(b.Claims.Measurement),
		ManifestVersion: b.Manifest.Version(), ManifestHash: b.Manifest.Hash(), ManifestLogIndex: b.ManifestLogIndex,
		Origin: b.Origin, NoteKey: b.NoteKey, TLSSPKISHA256: b.TLSSPKISHA256,
		LogSize: b.Checkpoint.Size, Service: b.Service, CheckpointStored: b.CheckpointStored,
		Witnesses: newWitnessResult(b.Manifest, b.Cosigned, b.FreshnessChecked),
	}
	if b.Previous != nil {
		s := b.Previous.Size
		r.PreviousLogSize = &s
	}
	for _, f := range b.Followed {
		r.Followed = append(r.Followed, followedVersion{
			Version: f.Manifest.Version(), Hash: f.Manifest.Hash(), LogIndex: f.LogIndex, Signers: f.Signers, Changes: f.Changes,
		})
	}
	return r
}

func (r *verifyResult) print(e *env) {
	sim := ""
	if r.Simulated {
		sim = " (SIMULATED TEE: development only)"
	}
	fmt.Fprintf(e.stdout, "broker %s verified\n", r.Addr)
	fmt.Fprintf(e.stdout, "  platform      %s%s\n", r.Platform, sim)
	fmt.Fprintf(e.stdout, "  measurement   %s\n", r.Measurement)
	fmt.Fprintf(e.stdout, "  service       evidence matches the manifest's service reference values\n")
	fmt.Fprintf(e.stdout, "  manifest      version %d, %s (log index %d, included in the checkpoint)\n", r.ManifestVersion, r.ManifestHash, r.ManifestLogIndex)
	fmt.Fprintf(e.stdout, "  log           %s, size %d", r.Origin, r.LogSize)
	if r.PreviousLogSize != nil {
		fmt.Fprintf(e.stdout, " (consistent with the stored size %d)\n", *r.PreviousLogSize)
	} else {
		fmt.Fprintf(e.stdout, " (first checkpoint for this log: trusted on first use)\n")
	}
	fmt.Fprintf(e.stdout, "  witnesses     %s\n", r.Witnesses)
	if r.TLSSPKISHA256 != "" {
		fmt.Fprintf(e.stdout, "  tls key       sha256 %s (bound in the evidence)\n", r.TLSSPKISHA256)
	}
	for _, f := range r.Followed {
		fmt.Fprintf(e.stdout, "followed manifest version %d (%s, log index %d), signed by %d owner(s):\n", f.Version, f.Hash, f.LogIndex, len(f.Signers))
		if len(f.Changes) == 0 {
			fmt.Fprintf(e.stdout, "  (no content changes)\n")
		}
		for _, c := range f.Changes {
			fmt.Fprintf(e.stdout, "  %s\n", c)
		}
	}
	if r.CheckpointStored {
		fmt.Fprintf(e.stdout, "checkpoint stored\n")
	} else {
		fmt.Fprintf(e.stdout, "checkpoint unchanged (the stored one has the same size and root)\n")
	}
}

func cmdVerify(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("verify", "--manifest FILE [--follow] [--accept-new-log]",
		`Verifies the broker: fresh evidence bound to a nonce, its keys and its checkpoint,
checked against the service reference values of your manifest; the broker's
active manifest identical to yours and included in the log; the checkpoint
consistent with the one stored before. Stores the checkpoint only when all of
this holds. The checkpoint must carry the cosignatures of the witness quorum
the manifest names (recent ones the first time this log is seen). With
--follow, a later manifest is accepted through its signed,
logged chain; the changes are shown and the file is updated (the old one is
kept as FILE.v<N>). A broker presenting another log than the one verified at
this address before fails unless --accept-new-log.`, useVerify|useTimeout)
	file := fs.String("manifest", "", "your copy of the manifest (required)")
	follow := fs.Bool("follow", false, "accept a later manifest version through its signed, logged chain")
	acceptNew := fs.Bool("accept-new-log", false, "accept a broker whose log is not the one verified before at this address")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *file == "" {
		return usageErr("verify: --manifest is required")
	}
	ctx, cancel := e.bound(ctx, defaultTimeout)
	defer cancel()
	b, err := e.verifyBroker(ctx, *file, *follow, *acceptNew)
	if err != nil {
		return err
	}
	r := newVerifyResult(e.g.addr, b)
	return e.out(r, func() { r.print(e) })
}
