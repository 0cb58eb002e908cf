package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/verify"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

func cmdManifest(ctx context.Context, e *env, args []string) error {
	return subcommand(ctx, e, "manifest", args, map[string]func(context.Context, *env, []string) error{
		"sign":    cmdManifestSign,
		"set":     cmdManifestSet,
		"next":    cmdManifestNext,
		"history": cmdManifestHistory,
		"check":   cmdManifestCheck,
	})
}

func cmdManifestSign(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("manifest sign", "--key FILE MANIFEST",
		`Prints the base64 detached signature of MANIFEST's exact bytes: ECDSA P-256
SHA-256 (DER) or Ed25519, the same as 'openssl dgst -sha256 -sign KEY | base64 -w0'
and 'cosign sign-blob --key'. Encrypted cosign keys read $COSIGN_PASSWORD.`, useJSON)
	keyFile := fs.String("key", "", "owner private key, PEM (required)")
	if err := parse(fs, args, 1); err != nil {
		return err
	}
	if *keyFile == "" {
		return usageErr("manifest sign: --key is required")
	}
	body, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	if _, err := manifest.Parse(body); err != nil {
		return fmt.Errorf("%s: %w", fs.Arg(0), err)
	}
	k, err := readSigner(*keyFile)
	if err != nil {
		return err
	}
	sig, err := manifest.Sign(k, body)
	if err != nil {
		return err
	}
	fp, _ := manifest.Fingerprint(k.Public())
	return e.out(map[string]string{"signature": sig, "signer": fp, "manifest_hash": manifest.HashOf(body)}, func() {
		fmt.Fprintln(e.stdout, sig)
	})
}

// readSignature reads a signature file: base64 text (what 'manifest sign'
// and 'openssl ... | base64' write) or raw DER (what openssl writes without
// base64).
func readSignature(file string) (string, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(raw))
	if _, err := base64.StdEncoding.DecodeString(s); err == nil && s != "" {
		return s, nil
	}
	if len(raw) > 2 && raw[0] == 0x30 {
		return base64.StdEncoding.EncodeToString(raw), nil
	}
	return "", usageErr("%s is neither a base64 signature nor a DER signature", file)
}

type setResult struct {
	Version  uint64   `json:"version"`
	Hash     string   `json:"hash"`
	LogIndex uint64   `json:"log_index"`
	Signers  []string `json:"signers"`
	Logged   bool     `json:"inclusion_verified"`
	Receipt  string   `json:"receipt_file,omitempty"`
	// AlreadyActive: the broker had activated this exact version before
	// (a retry); nothing was sent or logged. ActiveVersion is the
	// broker's active version when a later one superseded it.
	AlreadyActive bool   `json:"already_active,omitempty"`
	ActiveVersion uint64 `json:"active_version,omitempty"`
	// Witnesses: the cosignatures of the checkpoint the inclusion was
	// verified against (with Logged).
	Witnesses *witnessResult `json:"witnesses,omitempty"`
}

func cmdManifestSet(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("manifest set", "--sig FILE [--sig FILE...] [--receipt R] MANIFEST",
		`Proposes MANIFEST as the broker's next version with owner signatures. The
signatures are checked first against the owners of the broker's active
version; after the broker accepted it, its inclusion in the log is verified
and its receipt written to a new file (default MANIFEST.v<version>.<log
index>.receipt), when the broker was verified before at this address.
A version the broker already activated with the same hash (a retry after a
timeout) is success: nothing is sent or logged.`, useBroker)
	var sigFiles stringList
	fs.Var(&sigFiles, "sig", "file with a base64 (or DER) owner signature (repeatable; required)")
	receiptFile := fs.String("receipt", "", "where to write the receipt of the manifest entry, a new file (default MANIFEST.v<version>.<log index>.receipt)")
	if err := parse(fs, args, 1); err != nil {
		return err
	}
	if len(sigFiles) == 0 {
		return usageErr("manifest set: at least one --sig is required")
	}
	file := fs.Arg(0)
	next, err := readManifest(file)
	if err != nil {
		return err
	}
	var sigs []string
	for _, f := range sigFiles {
		s, err := readSignature(f)
		if err != nil {
			return err
		}
		sigs = append(sigs, s)
	}
	if *receiptFile == "" {
		if err := probeDir(filepath.Dir(file)); err != nil {
			return usageErr("the receipt goes next to %s: %v (or pass --receipt)", file, err)
		}
	}
	c, st, err := e.client(false)
	if err != nil {
		return err
	}
	cur, err := c.Manifest(ctx)
	if err != nil {
		return err
	}
	out := setResult{Version: next.Version(), Hash: next.Hash()}
	switch {
	case cur.Hash == next.Hash():
		out.AlreadyActive, out.LogIndex = true, cur.LogIndex
	case cur.Version > next.Version():
		// A retry whose version was activated, then superseded.
		h, err := c.ManifestHistory(ctx)
		if err != nil {
			return err
		}
		if n := next.Version(); n == 0 || n > uint64(len(h.Manifests)) || h.Manifests[n-1].Hash != next.Hash() {
			return &exitError{code: 1, errCode: "manifest_mismatch", err: fmt.Errorf("the broker is at version %d and its version %d is not %s", cur.Version, n, next.Hash()),
				hint: "'kbsctl manifest history' lists the broker's versions; write the next version with 'kbsctl manifest next'"}
		} else {
			out.AlreadyActive, out.LogIndex, out.ActiveVersion = true, h.Manifests[n-1].LogIndex, cur.Version
		}
	}
	if !out.AlreadyActive {
		if *receiptFile != "" {
			if err := checkNewFile("--receipt", *receiptFile); err != nil {
				return err
			}
		}
		prev, err := manifest.Parse(cur.Body)
		if err != nil {
			return fmt.Errorf("the broker's active manifest does not parse: %w", err)
		}
		if out.Signers, err = manifest.Verify(prev, next, sigs); err != nil {
			return failErr("version %d is not a valid successor of the active version %d: %w", next.Version(), prev.Version(), err)
		}
		res, err := c.PutManifest(ctx, next.Bytes(), sigs)
		if err != nil {
			return err
		}
		if res.Hash != next.Hash() || res.Version != next.Version() {
			return failErr("the broker answered version %d (%s), not %d (%s)", res.Version, res.Hash, next.Version(), next.Hash())
		}
		out.LogIndex = res.LogIndex
	}
	if st != nil {
		lv, err := c.LogVerifier(st.NoteKey)
		if err != nil {
			return err
		}
		synced, wr, err := e.syncWitnessed(ctx, c, lv, next, tlog.AdvanceOptions{})
		if err != nil {
			return err
		}
		out.Witnesses = wr
		r, err := c.ManifestReceipt(ctx, synced.Checkpoint, out.LogIndex, next)
		if err != nil {
			return err
		}
		out.Logged = true
		name := *receiptFile
		if name == "" {
			name = receiptName(file, next.Version(), out.LogIndex)
		}
		if _, err := os.Stat(name); out.AlreadyActive && err == nil {
			out.Receipt = name // kept from the first attempt
		} else if out.Receipt, err = e.keepReceipt(*receiptFile, file, next.Version(), out.LogIndex, r.Raw); err != nil {
			return err
		}
	}
	return e.out(out, func() {
		switch {
		case out.ActiveVersion != 0:
			fmt.Fprintf(e.stdout, "manifest version %d (%s) was activated before (same hash) and is now superseded by version %d: nothing to do, nothing logged\n", out.Version, out.Hash, out.ActiveVersion)
		case out.AlreadyActive:
			fmt.Fprintf(e.stdout, "manifest version %d (%s) is already active (same hash): nothing to do, nothing logged\n", out.Version, out.Hash)
		default:
			fmt.Fprintf(e.stdout, "manifest version %d (%s) is active, signed by %d owner(s)\n", out.Version, out.Hash, len(out.Signers))
		}
		if out.Logged {
			fmt.Fprintf(e.stdout, "logged at index %d: inclusion verified against a checkpoint consistent with the stored one; receipt in %s\n", out.LogIndex, out.Receipt)
			fmt.Fprintf(e.stdout, "witnesses: %s\n", out.Witnesses)
		} else {
			fmt.Fprintf(e.stdout, "logged at index %d (not verified, no receipt: run 'kbsctl verify' once to learn the log key)\n", out.LogIndex)
		}
		if !out.AlreadyActive {
			fmt.Fprintf(e.stdout, "clients and workers accept it with 'kbsctl verify --follow --manifest FILE'\n")
		}
	})
}

func cmdManifestNext(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("manifest next", "[--add-owner PEM] [--threshold N] [--add-service-measurement P:HEX] [--add-recovery-holder NAME=FILE] [--recovery-threshold K] [--out FILE] MANIFEST",
		`Writes the skeleton of MANIFEST's next version: version + 1, previous set to
MANIFEST's hash, optionally with another owner key and a new threshold,
another accepted broker measurement (an upgrade: the service's first
alternative of platform P, snp or tdx, gets HEX, a MEASUREMENT or MRTD, as
one more accepted value), and recovery holders (FILE holds the public key
'kbsctl recover keygen' printed). Edit it further as needed, then sign it
with the owners of MANIFEST.`, 0)
	var addOwners, addMeasurements, addHolders stringList
	fs.Var(&addOwners, "add-owner", "PEM public key file of an owner to add (repeatable)")
	threshold := fs.Int("threshold", 0, "new owner threshold (default unchanged)")
	fs.Var(&addMeasurements, "add-service-measurement", "P:HEX: accept the broker measurement HEX on platform P (snp or tdx) too (repeatable)")
	fs.Var(&addHolders, "add-recovery-holder", "NAME=FILE: add a recovery holder whose public key is in FILE (repeatable)")
	recThreshold := fs.Int("recovery-threshold", 0, "recovery threshold k (default unchanged; 1 for a new policy)")
	outFile := fs.String("out", "", "output file (default stdout)")
	if err := parse(fs, args, 1); err != nil {
		return err
	}
	m, err := readManifest(fs.Arg(0))
	if err != nil {
		return err
	}
	d := m.Document()
	d.Version = m.Version() + 1
	d.Previous = m.Hash()
	for _, f := range addOwners {
		p, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		d.Owners.Keys = append(d.Owners.Keys, string(p))
	}
	if *threshold > 0 {
		d.Owners.Threshold = *threshold
	}
	for _, a := range addMeasurements {
		if err := addServiceMeasurement(d, a); err != nil {
			return usageErr("--add-service-measurement %s: %v", a, err)
		}
	}
	for _, a := range addHolders {
		name, file, ok := strings.Cut(a, "=")
		if !ok {
			return usageErr("--add-recovery-holder %q: want NAME=FILE", a)
		}
		pub, err := os.ReadFile(file)
		if err != nil {
			return usageErr("--add-recovery-holder: %v", err)
		}
		if d.Recovery == nil || d.Recovery.None {
			d.Recovery = &manifest.RecoveryPolicy{Threshold: 1}
		}
		d.Recovery.Holders = append(d.Recovery.Holders, manifest.RecoveryHolder{Name: name, PublicKey: strings.TrimSpace(string(pub))})
	}
	if *recThreshold > 0 {
		if d.Recovery == nil || d.Recovery.None {
			return usageErr("--recovery-threshold without recovery holders: add some with --add-recovery-holder")
		}
		d.Recovery.Threshold = *recThreshold
	}
	body, err := manifest.Encode(d)
	if err != nil {
		return usageErr("%v", err)
	}
	if *outFile == "" {
		_, err = e.stdout.Write(body)
		return err
	}
	return os.WriteFile(*outFile, body, 0o644)
}

type historyItem struct {
	Version  uint64            `json:"version"`
	Hash     string            `json:"hash"`
	LogIndex uint64            `json:"log_index"`
	Signers  []string          `json:"signers"`
	Changes  []manifest.Change `json:"changes"`
	Anchor   string            `json:"anchor,omitempty"`
}

// historyResult is 'manifest history --json': the chain, and the log
// checkpoint it was verified against.
type historyResult struct {
	// ChainVerified: each version after the first is signed by the
	// threshold of owners of the one before, and every version's log entry
	// is included in Log's checkpoint (always true in a result).
	ChainVerified bool          `json:"chain_verified"`
	Chain         []historyItem `json:"chain"`
	Active        uint64        `json:"active_version"`
	// YourVersion is the version --manifest matched (0 without it).
	YourVersion uint64 `json:"your_version,omitempty"`
	Log         struct {
		Origin string `json:"origin"`
		Size   uint64 `json:"size"`
		// PreviousSize is the stored checkpoint's size it is consistent
		// with (absent: none stored, trusted on first use).
		PreviousSize     *uint64 `json:"previous_size,omitempty"`
		CheckpointStored bool    `json:"checkpoint_stored"`
		// Witnesses: the cosignatures the checkpoint carries.
		Witnesses *witnessResult `json:"witnesses"`
	} `json:"log"`
}

func cmdManifestHistory(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("manifest history", "[--manifest FILE] [--note-key KEY]",
		`Lists every manifest version the broker activated and verifies the chain:
each version after the first signed by the threshold of owners of the one
before, each included in the log (checked against a checkpoint consistent
with the stored one, which it then stores). With --manifest, the chain must
contain your version.`, useBroker)
	mf := fs.String("manifest", "", "your copy of a manifest version the chain must contain")
	noteKey := fs.String("note-key", "", "the log's note key (default: learned by 'kbsctl verify')")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	c, lv, err := e.logClient(*noteKey)
	if err != nil {
		return err
	}
	var mine *manifest.Manifest
	if *mf != "" {
		if mine, err = readManifest(*mf); err != nil {
			return err
		}
	}
	synced, wr, err := e.syncWitnessed(ctx, c, lv, mine, tlog.AdvanceOptions{})
	if err != nil {
		return err
	}
	cp := synced.Checkpoint
	chain, err := c.ManifestChain(ctx, cp, nil, 0)
	if err != nil {
		return err
	}
	out := historyResult{ChainVerified: true, Chain: make([]historyItem, len(chain)), Active: uint64(len(chain))}
	out.Log.Origin, out.Log.Size, out.Log.CheckpointStored, out.Log.Witnesses = cp.Origin, cp.Size, synced.Stored, wr
	if synced.Previous != nil {
		s := synced.Previous.Size
		out.Log.PreviousSize = &s
	}
	items := out.Chain
	for i, v := range chain {
		m := v.Manifest
		items[i] = historyItem{Version: m.Version(), Hash: m.Hash(), LogIndex: v.LogIndex, Signers: v.Signers, Changes: v.Changes}
		if i == 0 {
			items[i].Anchor = "version 1: trusted by configuration"
		}
	}
	if mine != nil {
		n := mine.Version()
		if n == 0 || n > uint64(len(chain)) {
			return failErr("your manifest (version %d, %s) is not in the broker's chain", n, mine.Hash())
		}
		if m := chain[n-1].Manifest; m.Hash() != mine.Hash() {
			return failErr("the broker's version %d is %s, yours is %s", n, m.Hash(), mine.Hash())
		}
		items[n-1].Anchor = "your manifest"
		out.YourVersion = n
	}
	return e.out(out, func() {
		fmt.Fprintf(e.stdout, "%-7s %-73s %9s %s\n", "VERSION", "HASH", "LOG INDEX", "SIGNERS / CHANGES")
		for _, it := range items {
			note := it.Anchor
			if it.Version > 1 {
				note = fmt.Sprintf("%d signer(s), %d change(s)", len(it.Signers), len(it.Changes))
				if it.Anchor != "" {
					note += "; " + it.Anchor
				}
			}
			fmt.Fprintf(e.stdout, "%-7d %-73s %9d %s\n", it.Version, it.Hash, it.LogIndex, note)
			for _, ch := range it.Changes {
				fmt.Fprintf(e.stdout, "        %s\n", ch)
			}
		}
		fmt.Fprintf(e.stdout, "chain verified: signatures, and inclusion in the log of size %d\n", cp.Size)
		fmt.Fprintf(e.stdout, "witnesses: %s\n", wr)
	})
}

type checkResult struct {
	Platform        string           `json:"platform"`
	Simulated       bool             `json:"simulated"`
	Measurement     string           `json:"measurement"`
	ReportData      string           `json:"report_data"`
	ReportDataGiven bool             `json:"report_data_checked"`
	Report          *manifest.Report `json:"report"`
}

func cmdManifestCheck(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("manifest check", "--manifest FILE --platform snp|tdx --evidence FILE [--class service|CLASS] [--report-data HEX] [--offline] [--collateral DIR]",
		`Verifies evidence (signature and certificate chain, platform rules) and
explains, field by field, why it does or does not match the reference values
of a class (default: every worker class). Exits 1 when nothing matches.

TDX evidence always needs Intel's collateral (TCB info, QE identity, PCK and
root CA CRLs): online it is fetched from Intel PCS; with --offline it comes
from --collateral DIR, a directory of PCS responses as served (file names in
docs/operating.md), and verification fails without it.

For development, 'kbsctl attest --tee sim --out FILE' writes simulated
evidence to check (with --sim-root).`, useSimRoot|useJSON|useOffline)
	mf := fs.String("manifest", "", "manifest file (required)")
	platform := fs.String("platform", "", "snp or tdx (required)")
	evFile := fs.String("evidence", "", "evidence file: SNP report (+ certificate table) or TDX quote (required)")
	class := fs.String("class", "", `class to match: "service" or a worker class (default: all worker classes)`)
	rdHex := fs.String("report-data", "", "expected REPORT_DATA, 128 hex digits (default: not checked)")
	offline := &e.g.offline
	collateral := fs.String("collateral", "", "collateral bundle: a directory of Intel PCS responses (TDX TCB info, QE identity, CRLs) for offline verification")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *mf == "" || *platform == "" || *evFile == "" {
		return usageErr("manifest check: --manifest, --platform and --evidence are required")
	}
	if *platform != "snp" && *platform != "tdx" {
		return usageErr("--platform %q: want snp or tdx", *platform)
	}
	m, err := readManifest(*mf)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(*evFile)
	if err != nil {
		return err
	}
	var rd [attest.ReportDataSize]byte
	given := *rdHex != ""
	if given {
		b, err := hex.DecodeString(*rdHex)
		if err != nil || len(b) != attest.ReportDataSize {
			return usageErr("--report-data: want 64 bytes as 128 hex digits")
		}
		copy(rd[:], b)
	} else {
		b, err := verify.UnverifiedReportData(attest.Evidence{Platform: attest.Platform(*platform), Data: data})
		if err != nil {
			return failErr("%s: %w", *evFile, err)
		}
		rd = b
	}
	if *collateral != "" {
		if fi, err := os.Stat(*collateral); err != nil || !fi.IsDir() {
			return usageErr("--collateral %s: not a directory", *collateral)
		}
	}
	v, err := e.verifier(*offline, *collateral)
	if err != nil {
		return err
	}
	claims, err := v.Verify(ctx, attest.Evidence{Platform: attest.Platform(*platform), Data: data}, rd)
	if err != nil {
		return failErr("evidence does not verify: %w", err)
	}
	var r *manifest.Report
	if *class == "" {
		r = m.Match(claims)
	} else if r, err = m.MatchClass(*class, claims); err != nil {
		return usageErr("%v", err)
	}
	out := checkResult{Platform: *platform, Simulated: claims.Simulated, Measurement: hex.EncodeToString(claims.Measurement),
		ReportData: hex.EncodeToString(rd[:]), ReportDataGiven: given, Report: r}
	if err := e.out(out, func() {
		fmt.Fprintf(e.stdout, "evidence verified: %s%s, measurement %s\n", *platform, map[bool]string{true: " (simulated)"}[claims.Simulated], out.Measurement)
		if given {
			fmt.Fprintf(e.stdout, "report data matches the given value\n")
		} else {
			fmt.Fprintf(e.stdout, "report data %s (not checked: no --report-data)\n", out.ReportData)
		}
		fmt.Fprint(e.stdout, r.String())
	}); err != nil {
		return err
	}
	if !r.OK() {
		return &exitError{code: 1, errCode: "no_match", err: fmt.Errorf("the evidence matches no class: %s", r.Summary())}
	}
	return nil
}

// addServiceMeasurement adds HEX as one more accepted measurement (SNP) or
// MRTD (TDX) of the service's first alternative of platform P ("P:HEX").
func addServiceMeasurement(d *manifest.Document, a string) error {
	p, h, ok := strings.Cut(a, ":")
	if !ok {
		return errors.New("want PLATFORM:HEX")
	}
	v, err := hex.DecodeString(h)
	if err != nil || len(v) != 48 {
		return errors.New("want 96 hex digits (48 bytes)")
	}
	switch p {
	case "snp":
		if len(d.Service.SNP) == 0 {
			return errors.New("the service has no snp alternative to add it to")
		}
		d.Service.SNP[0].Measurement.Values = append(d.Service.SNP[0].Measurement.Values, v)
	case "tdx":
		if len(d.Service.TDX) == 0 {
			return errors.New("the service has no tdx alternative to add it to")
		}
		d.Service.TDX[0].MRTD.Values = append(d.Service.TDX[0].MRTD.Values, v)
	default:
		return fmt.Errorf("platform %q: want snp or tdx", p)
	}
	return nil
}
