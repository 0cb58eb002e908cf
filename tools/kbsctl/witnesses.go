package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/kbs/policy"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// witnessResult is the witness part of a JSON result: the policy a
// checkpoint was judged by and who cosigned it.
type witnessResult struct {
	// Policy is "none" or "K of N"; ManifestVersion the version stating it.
	Policy          string `json:"policy"`
	ManifestVersion uint64 `json:"manifest_version"`
	// Cosigned are the witnesses whose valid cosignature the checkpoint
	// carries (at least K of them; a result is never printed otherwise).
	Cosigned []cosignatureResult `json:"cosigned"`
	// FreshnessChecked: the cosignatures had to be recent (nothing stored
	// for this log before).
	FreshnessChecked bool `json:"freshness_checked,omitempty"`
}

type cosignatureResult struct {
	Witness string    `json:"witness"`
	Time    time.Time `json:"time"`
}

func newWitnessResult(m *manifest.Manifest, cc *tlog.CosignedCheckpoint, fresh bool) *witnessResult {
	r := &witnessResult{Policy: m.Witnesses().String(), ManifestVersion: m.Version(), Cosigned: []cosignatureResult{}, FreshnessChecked: fresh}
	if cc != nil {
		for _, c := range cc.Cosignatures {
			r.Cosigned = append(r.Cosigned, cosignatureResult{Witness: c.Witness, Time: c.Time.UTC()})
		}
	}
	return r
}

// String is the one-line text form: what the policy requires and who
// cosigned.
func (r *witnessResult) String() string {
	switch {
	case r.Policy == manifest.NoWitnessesValue:
		return fmt.Sprintf("none required (manifest version %d says \"witnesses\": \"none\")", r.ManifestVersion)
	case len(r.Cosigned) == 0:
		return fmt.Sprintf("none required (manifest version %d names no witnesses)", r.ManifestVersion)
	}
	var names []string
	for _, c := range r.Cosigned {
		names = append(names, fmt.Sprintf("%s at %s", c.Witness, c.Time.Format(time.RFC3339)))
	}
	s := fmt.Sprintf("cosigned by %s (manifest version %d requires %s)", strings.Join(names, ", "), r.ManifestVersion, r.Policy)
	if r.FreshnessChecked {
		s += "; recent, as a first checkpoint must be"
	}
	return s
}

// rememberedManifest returns the manifest the last 'kbsctl verify' of
// --addr verified against, or nil.
func (e *env) rememberedManifest() (*manifest.Manifest, error) {
	st, err := e.state().Broker(e.g.addr)
	if err != nil || st == nil || st.Manifest == nil {
		return nil, err
	}
	m, err := manifest.Parse(st.Manifest)
	if err != nil {
		return nil, failErr("the manifest remembered for %s does not parse: %w", e.g.addr, err)
	}
	return m, nil
}

// manifestOrRemembered returns the manifest of file, else the one
// remembered for --addr, else nil.
func (e *env) manifestOrRemembered(file string) (*manifest.Manifest, error) {
	if file != "" {
		return readManifest(file)
	}
	return e.rememberedManifest()
}

// syncWitnessed fetches the log's latest checkpoint, verifies its
// signature, finds the manifest active in its tree through the signed,
// logged chain from anchor (nil: from version 1, for a caller that trusts
// the log's key), requires that manifest's witness quorum on the
// checkpoint, and advances lv to it with opts.
func (e *env) syncWitnessed(ctx context.Context, c *client.Client, lv *tlog.Verifier, anchor *manifest.Manifest, opts tlog.AdvanceOptions) (client.Synced, *witnessResult, error) {
	raw, err := c.Checkpoint(ctx)
	if err != nil {
		return client.Synced{}, nil, err
	}
	cp, err := lv.VerifyCheckpoint(raw)
	if err != nil {
		return client.Synced{}, nil, &client.VerifyError{Step: "checkpoint", Err: err}
	}
	q, m, err := c.WitnessPolicyAt(ctx, cp, anchor)
	if err != nil {
		return client.Synced{}, nil, err
	}
	synced, err := c.AdvanceTo(ctx, lv, raw, q, opts)
	if err != nil {
		return client.Synced{}, nil, err
	}
	return synced, newWitnessResult(m, synced.Cosigned, synced.FreshnessChecked), nil
}

// receiptQuorum returns the witness quorum receipts must carry: that of
// --manifest, else of the manifest remembered for --addr.
func (e *env) receiptQuorum(file string) (*tlog.Quorum, *manifest.Manifest, error) {
	m, err := e.manifestOrRemembered(file)
	if err != nil {
		return nil, nil, err
	}
	if m == nil {
		return nil, nil, usageErr("no manifest: pass --manifest FILE (its witness policy says whose cosignatures a receipt needs), or run 'kbsctl verify' for %s first", e.g.addr)
	}
	q, err := policy.Witnesses(m)
	if err != nil {
		return nil, nil, failErr("%v", err)
	}
	return q, m, nil
}

func cmdLogWitnesses(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("log witnesses", "",
		`Shows the broker's own account of its witnesses (GET /v1/witnesses): the
active manifest's witness policy; whether the broker acts (a quorum cosigned
its log since it started), is still checking, or is behind what a witness
cosigned, and what to do; the log's size and the size the quorum cosigned
(the entries in between are logged, not yet witnessed); and per witness the
last size and time it cosigned and why it did not in the last round. None of
it is signed: 'kbsctl log checkpoint' checks the cosignatures themselves.
Exits 1 unless the broker acts.`, useBroker)
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	c, _, err := e.client(true)
	if err != nil {
		return err
	}
	st, err := c.Witnesses(ctx)
	if err != nil {
		return err
	}
	err = e.out(st, func() {
		fmt.Fprintf(e.stdout, "witness policy  %s (manifest version %d)\n", st.Policy, st.ManifestVersion)
		fmt.Fprintf(e.stdout, "state           %s\n", st.State)
		if st.Reason != "" {
			fmt.Fprintf(e.stdout, "                %s\n", st.Reason)
		}
		fmt.Fprintf(e.stdout, "log size        %d, witnessed up to %d", st.LogSize, st.WitnessedSize)
		switch n := st.LogSize - st.WitnessedSize; {
		case st.LogSize <= st.WitnessedSize:
		case n == 1:
			fmt.Fprintf(e.stdout, " (1 entry not yet witnessed)")
		default:
			fmt.Fprintf(e.stdout, " (%d entries not yet witnessed)", n)
		}
		fmt.Fprintln(e.stdout)
		if len(st.Witnesses) > 0 {
			fmt.Fprintf(e.stdout, "%-20s %10s %-20s %s\n", "WITNESS", "COSIGNED", "AT", "LAST ROUND")
		}
		for _, w := range st.Witnesses {
			at, last := "-", "cosigned"
			if w.CosignedAt != nil {
				at = w.CosignedAt.Format(time.RFC3339)
			}
			if w.Error != "" {
				last = w.Error
			}
			fmt.Fprintf(e.stdout, "%-20s %10d %-20s %s\n", w.Name, w.CosignedSize, at, last)
		}
	})
	if err == nil && st.State != "acting" {
		return &exitError{code: 1, errCode: "witnesses_" + st.State, err: fmt.Errorf("the broker does not act: %s", st.Reason)}
	}
	return err
}
