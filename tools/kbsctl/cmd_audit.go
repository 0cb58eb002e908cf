package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// auditReport is what 'kbsctl audit' found.
type auditReport struct {
	Origin       string          `json:"origin"`
	Size         uint64          `json:"size"`
	RootHash     string          `json:"root_hash"`
	PreviousSize *uint64         `json:"previous_size,omitempty"`
	Manifests    []auditManifest `json:"manifests"`
	Identities   []auditIdentity `json:"identities"`
	KeyEvents    []auditKeyEvent `json:"key_events"`
	Releases     []auditRelease  `json:"releases"`
	Anomalies    []string        `json:"anomalies"`
	// Warnings are events that look odd but tell a consistent story: an
	// upload the log records twice (a retried request). They do not fail
	// the audit.
	Warnings  []string       `json:"warnings"`
	Counts    map[string]int `json:"counts"`
	manifests map[string]*manifest.Manifest
}

type auditManifest struct {
	Index    uint64    `json:"index"`
	Time     time.Time `json:"time"`
	Version  uint64    `json:"version"`
	Hash     string    `json:"hash"`
	Previous string    `json:"previous,omitempty"`
	Signers  []string  `json:"signers"`
	// SignaturesChecked is true when the broker's history supplied the
	// signatures and they verified against the previous version's owners.
	SignaturesChecked bool `json:"signatures_checked"`
}

type auditIdentity struct {
	Index     uint64    `json:"index"`
	Time      time.Time `json:"time"`
	NoteKey   string    `json:"note_key"`
	Platform  string    `json:"platform"`
	Simulated bool      `json:"simulated"`
}

type auditKeyEvent struct {
	Index   uint64    `json:"index"`
	Time    time.Time `json:"time"`
	Event   string    `json:"event"` // upload, delete, or upload-repeat (a benign duplicate of an upload)
	ID      string    `json:"id"`
	Version uint64    `json:"version"`
	Client  string    `json:"client"`
}

// auditRelease is one key of one release.
type auditRelease struct {
	Index           uint64    `json:"index"`
	Time            time.Time `json:"time"`
	ID              string    `json:"id"`
	Version         uint64    `json:"version"`
	WorkerClass     string    `json:"worker_class"`
	Platform        string    `json:"platform"`
	Simulated       bool      `json:"simulated"`
	Measurement     string    `json:"measurement"`
	ChipID          string    `json:"chip_id,omitempty"`
	TCB             string    `json:"tcb,omitempty"`
	ManifestVersion uint64    `json:"manifest_version"`
	ManifestHash    string    `json:"manifest_hash"`
	EvidenceDigest  string    `json:"evidence_digest"`
	WorkerKeyDigest string    `json:"worker_key_digest"`
}

// auditor replays the log's entries in order and checks that they tell a
// coherent story.
type auditor struct {
	r       *auditReport
	active  *manifest.Manifest
	allowed map[[2]string]bool // active.ReleaseAllowed(class, id), memoized
	keys    map[string]*keyState
	noteKey string
}

// keyState is what the replay knows of one key id.
type keyState struct {
	version  uint64 // latest uploaded version (0: none)
	client   string // who uploaded it
	uploaded uint64 // at which entry
	deleted  bool   // the latest version is deleted
	released bool   // the latest version was released
}

func (a *auditor) key(id string) *keyState {
	k := a.keys[id]
	if k == nil {
		k = &keyState{}
		a.keys[id] = k
	}
	return k
}

func (a *auditor) anomaly(index uint64, format string, args ...any) {
	a.r.Anomalies = append(a.r.Anomalies, fmt.Sprintf("entry %d: ", index)+fmt.Sprintf(format, args...))
}

func (a *auditor) warning(index uint64, format string, args ...any) {
	a.r.Warnings = append(a.r.Warnings, fmt.Sprintf("entry %d: ", index)+fmt.Sprintf(format, args...))
}

// decoded is an entry decoded (strictly) ahead of the replay.
type decoded struct {
	index uint64
	entry *tlog.Entry
	err   error
}

// replayEntries streams the verified entries of the tree of cp to a.entry
// in log order. Strict decoding is the bulk of an audit's work, so it runs
// on every CPU while the tile client goes on fetching and verifying tiles;
// the replay is cheap and sequential. progress is called after each chunk.
func (a *auditor) replayEntries(ctx context.Context, tiles *tlog.TileClient, cp tlog.SignedCheckpoint, progress func(done uint64)) error {
	const chunkSize = 1024
	type chunk struct {
		raws [][]byte
		out  []decoded
		done chan struct{}
	}
	workers := runtime.GOMAXPROCS(0)
	jobs := make(chan *chunk, workers)
	ordered := make(chan *chunk, 2*workers+2)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range jobs {
				for i, raw := range c.raws {
					c.out[i].entry, c.out[i].err = tlog.DecodeEntry(raw)
				}
				close(c.done)
			}
		}()
	}
	replayed := make(chan struct{})
	go func() {
		defer close(replayed)
		var n uint64
		for c := range ordered {
			<-c.done
			for i := range c.out {
				c.out[i].index = n
				a.entry(c.out[i])
				n++
			}
			progress(n)
		}
	}()
	cur := &chunk{raws: make([][]byte, 0, chunkSize)}
	send := func() {
		cur.out = make([]decoded, len(cur.raws))
		cur.done = make(chan struct{})
		ordered <- cur // in order first: jobs may complete before this
		jobs <- cur
		cur = &chunk{raws: make([][]byte, 0, chunkSize)}
	}
	err := tiles.Entries(ctx, cp, 0, func(_ uint64, entry []byte) error {
		cur.raws = append(cur.raws, entry)
		if len(cur.raws) == chunkSize {
			send()
		}
		return nil
	})
	if err == nil && len(cur.raws) > 0 {
		send()
	}
	close(jobs)
	wg.Wait()
	close(ordered)
	<-replayed
	return err
}

func (a *auditor) entry(d decoded) {
	index, en := d.index, d.entry
	if d.err != nil {
		a.anomaly(index, "malformed entry: %v", d.err)
		return
	}
	a.r.Counts[en.Type]++
	switch en.Type {
	case tlog.TypeManifest:
		a.manifestEntry(index, en)
	case tlog.TypeIdentity:
		id := en.Identity
		a.r.Identities = append(a.r.Identities, auditIdentity{Index: index, Time: en.Time, NoteKey: id.NoteKey, Platform: id.Platform, Simulated: id.Simulated})
		if id.NoteKey != a.noteKey {
			a.anomaly(index, "identity entry names log key %s, the log is signed by %s", id.NoteKey, a.noteKey)
		}
	case tlog.TypeKeyUpload:
		a.uploadEntry(index, en)
	case tlog.TypeKeyDelete:
		k := en.KeyDelete
		a.r.KeyEvents = append(a.r.KeyEvents, auditKeyEvent{Index: index, Time: en.Time, Event: "delete", ID: k.ID, Version: k.Version, Client: k.Client})
		ks := a.key(k.ID)
		if ks.version != k.Version || ks.deleted {
			a.anomaly(index, "deletion of %s version %d, but the latest live version is %d", k.ID, k.Version, ks.version)
		}
		ks.deleted = true
	case tlog.TypeRelease:
		a.releaseEntry(index, en)
	}
}

// uploadEntry replays a key upload. Versions go up by one. The one
// exception is a repeat: the broker can log an upload and still report an
// error (the log append failed ambiguously), and the client's retry of the
// same version is then logged again. A repeat of the latest version by the
// same client, neither deleted nor released in between, is one logical
// upload: a warning, not an inconsistency. The same version uploaded by
// another client, re-uploaded after its deletion or after a release (when
// the key behind that version may have changed), fails the audit.
func (a *auditor) uploadEntry(index uint64, en *tlog.Entry) {
	k := en.KeyUpload
	ks := a.key(k.ID)
	ev := auditKeyEvent{Index: index, Time: en.Time, Event: "upload", ID: k.ID, Version: k.Version, Client: k.Client}
	if a.active == nil {
		a.anomaly(index, "upload before any manifest")
	} else if !a.active.MayWrite(k.Client, k.ID) {
		a.anomaly(index, "client %q may not write %s under manifest version %d", k.Client, k.ID, a.active.Version())
	}
	switch {
	case ks.version != 0 && k.Version == ks.version:
		switch {
		case k.Client != ks.client:
			a.anomaly(index, "upload of %s version %d by client %q, but entry %d uploaded that version by client %q", k.ID, k.Version, k.Client, ks.uploaded, ks.client)
		case ks.deleted:
			a.anomaly(index, "upload of %s version %d after that version was deleted", k.ID, k.Version)
		case ks.released:
			a.anomaly(index, "upload of %s version %d repeats entry %d after that version was released", k.ID, k.Version, ks.uploaded)
		default:
			ev.Event = "upload-repeat"
			a.warning(index, "upload of %s version %d by client %q repeats entry %d: one upload logged twice (a retried request), not a new key", k.ID, k.Version, k.Client, ks.uploaded)
		}
		a.r.KeyEvents = append(a.r.KeyEvents, ev)
		return
	case k.Version != ks.version+1:
		a.anomaly(index, "upload of %s version %d, want version %d", k.ID, k.Version, ks.version+1)
	}
	a.r.KeyEvents = append(a.r.KeyEvents, ev)
	if k.Version > ks.version {
		*ks = keyState{version: k.Version, client: k.Client, uploaded: index}
	}
}

func (a *auditor) manifestEntry(index uint64, en *tlog.Entry) {
	me := en.Manifest
	a.r.Manifests = append(a.r.Manifests, auditManifest{Index: index, Time: en.Time, Version: me.Version, Hash: me.Hash, Previous: me.Previous, Signers: me.Signers})
	m, err := manifest.Parse(me.Body)
	if err != nil {
		a.anomaly(index, "manifest version %d does not parse: %v", me.Version, err)
		return
	}
	if m.Hash() != me.Hash || m.Version() != me.Version || m.Previous() != me.Previous {
		a.anomaly(index, "manifest entry says version %d %s, its body is version %d %s", me.Version, me.Hash, m.Version(), m.Hash())
		return
	}
	// Who admitted it: the owners of the previous version (of itself for
	// version 1), at least their threshold.
	owners := a.active
	if a.active == nil {
		owners = m
		if m.Version() != 1 {
			a.anomaly(index, "the first manifest is version %d", m.Version())
		}
	} else if m.Version() != a.active.Version()+1 || m.Previous() != a.active.Hash() {
		a.anomaly(index, "manifest version %d (previous %s) does not follow version %d (%s)", m.Version(), m.Previous(), a.active.Version(), a.active.Hash())
	}
	fps := owners.OwnerFingerprints()
	for _, s := range me.Signers {
		if !slices.Contains(fps, s) {
			a.anomaly(index, "manifest version %d signer %s is not an owner of version %d", m.Version(), s, owners.Version())
		}
	}
	// Version 1 without signers was admitted by the operator's decision
	// (kbsd --manifest) alone, as clients admit it by their own file.
	if len(me.Signers) < owners.Threshold() && !(m.Version() == 1 && len(me.Signers) == 0) {
		a.anomaly(index, "manifest version %d has %d signer(s), version %d requires %d", m.Version(), len(me.Signers), owners.Version(), owners.Threshold())
	}
	a.r.manifests[m.Hash()] = m
	a.active = m
	a.allowed = map[[2]string]bool{}
}

// releaseAllowed is a.active.ReleaseAllowed, memoized: a log holds many
// releases of few keys to few classes.
func (a *auditor) releaseAllowed(class, id string) bool {
	k := [2]string{class, id}
	ok, seen := a.allowed[k]
	if !seen {
		if len(a.allowed) > 1<<16 {
			clear(a.allowed)
		}
		ok = a.active.ReleaseAllowed(class, id)
		a.allowed[k] = ok
	}
	return ok
}

func (a *auditor) releaseEntry(index uint64, en *tlog.Entry) {
	re := en.Release
	if a.active == nil {
		a.anomaly(index, "release before any manifest")
		return
	}
	if re.ManifestHash != a.active.Hash() {
		a.anomaly(index, "release under manifest %s, the active version is %d (%s)", re.ManifestHash, a.active.Version(), a.active.Hash())
	}
	for _, k := range re.Keys {
		a.r.Releases = append(a.r.Releases, auditRelease{
			Index: index, Time: en.Time, ID: k.ID, Version: k.Version, WorkerClass: re.WorkerClass,
			Platform: re.Platform, Simulated: re.Simulated, Measurement: re.Measurement, ChipID: re.ChipID, TCB: re.TCB,
			ManifestVersion: a.active.Version(), ManifestHash: re.ManifestHash,
			EvidenceDigest: re.EvidenceDigest, WorkerKeyDigest: re.WorkerKeyDigest,
		})
		ks := a.key(k.ID)
		if ks.version != k.Version || ks.deleted {
			a.anomaly(index, "release of %s version %d, but the latest live version is %d", k.ID, k.Version, ks.version)
		} else {
			ks.released = true
		}
		if !a.releaseAllowed(re.WorkerClass, k.ID) {
			a.anomaly(index, "manifest version %d does not release %s to class %q", a.active.Version(), k.ID, re.WorkerClass)
		}
	}
	if re.Simulated && !a.active.AllowSimulated() {
		a.anomaly(index, "release to simulated evidence under manifest version %d, which does not allow it", a.active.Version())
	}
}

// checkHistory cross-checks the broker's manifest history (which carries the
// owner signatures the log entries only name) against the log.
func (a *auditor) checkHistory(h []historyVersion) {
	if len(h) != len(a.r.Manifests) {
		a.r.Anomalies = append(a.r.Anomalies, fmt.Sprintf("the broker's history has %d manifest versions, the log %d", len(h), len(a.r.Manifests)))
		return
	}
	var prev *manifest.Manifest
	for i, v := range h {
		lm := &a.r.Manifests[i]
		if v.Hash != lm.Hash || v.LogIndex != lm.Index {
			a.r.Anomalies = append(a.r.Anomalies, fmt.Sprintf("history version %d is %s at %d, the log has %s at %d", v.Version, v.Hash, v.LogIndex, lm.Hash, lm.Index))
			return
		}
		m := a.r.manifests[lm.Hash]
		if m == nil {
			return
		}
		if prev != nil {
			signers, err := manifest.Verify(prev, m, v.Signatures)
			if err != nil {
				a.r.Anomalies = append(a.r.Anomalies, fmt.Sprintf("manifest version %d signatures: %v", m.Version(), err))
			} else if !slices.Equal(signers, sorted(lm.Signers)) {
				a.r.Anomalies = append(a.r.Anomalies, fmt.Sprintf("manifest version %d: signatures are by %v, the log names %v", m.Version(), signers, lm.Signers))
			} else {
				lm.SignaturesChecked = true
			}
		}
		prev = m
	}
}

type historyVersion struct {
	Version    uint64
	Hash       string
	LogIndex   uint64
	Signatures []string
}

func sorted(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

func cmdAudit(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("audit", "[--manifest FILE] [--note-key KEY] [--csv]",
		`Fetches every tile and entry of the log and verifies them against a fresh
checkpoint, checks that checkpoint's consistency with the stored one, replays
the entries (manifest chain and signers, uploads, deletions, releases under
the active manifest's policy), cross-checks the broker's manifest history and
its signatures, and reports the manifest history and every release. Any
inconsistency exits 1; the checkpoint is stored only when all holds.`)
	mf := fs.String("manifest", "", "your copy of a manifest version the log's chain must contain")
	noteKey := fs.String("note-key", "", "the log's note key (default: learned by 'kbsctl verify')")
	asCSV := fs.Bool("csv", false, "print every event as CSV")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *asCSV && e.g.json {
		return usageErr("audit: --csv and --json exclude each other")
	}
	var mine *manifest.Manifest
	if *mf != "" {
		var err error
		if mine, err = readManifest(*mf); err != nil {
			return err
		}
	}
	c, st, lv, cp, err := e.latestCheckpoint(ctx, *noteKey)
	if err != nil {
		return err
	}
	tiles := c.Tiles()
	// Consistency with the stored checkpoint, from authenticated tiles;
	// stored only after the replay found nothing wrong.
	prover := tiles.Prover(cp)
	checked, err := lv.Advance(ctx, cp.Note, prover, tlog.AdvanceOptions{DryRun: true})
	if err != nil {
		return err
	}

	r := &auditReport{Origin: cp.Origin, Size: cp.Size, Counts: map[string]int{}, manifests: map[string]*manifest.Manifest{},
		Manifests: []auditManifest{}, Identities: []auditIdentity{}, KeyEvents: []auditKeyEvent{}, Anomalies: []string{}, Warnings: []string{},
		// Most entries of a busy log are releases of one key; a few MB
		// up front save the first rounds of regrowing.
		Releases: make([]auditRelease, 0, min(cp.Size, 1<<16))}
	r.RootHash = newCheckpointResult(cp).RootHash
	if checked.Previous != nil {
		s := checked.Previous.Size
		r.PreviousSize = &s
	}
	a := &auditor{r: r, keys: map[string]*keyState{}, noteKey: *noteKey}
	if a.noteKey == "" {
		a.noteKey = st.NoteKey
	}
	prog := newProgress(e.stderr, cp.Size)
	err = a.replayEntries(ctx, tiles, cp, prog.update)
	prog.done()
	if err != nil {
		return &client.VerifyError{Step: "log tiles", Err: err}
	}
	h, err := c.ManifestHistory(ctx)
	if err != nil {
		return err
	}
	var hv []historyVersion
	for _, v := range h.Manifests {
		hv = append(hv, historyVersion{Version: v.Version, Hash: v.Hash, LogIndex: v.LogIndex, Signatures: v.Signatures})
	}
	a.checkHistory(hv)
	if mine != nil {
		if m, ok := r.manifests[mine.Hash()]; !ok || m.Version() != mine.Version() {
			r.Anomalies = append(r.Anomalies, fmt.Sprintf("your manifest (version %d, %s) is not in the log", mine.Version(), mine.Hash()))
		}
	}
	if len(r.Anomalies) == 0 {
		if _, err := lv.Advance(ctx, cp.Note, prover, tlog.AdvanceOptions{}); err != nil {
			return err
		}
	}
	if err := e.out(r, func() {
		if *asCSV {
			writeAuditCSV(e.stdout, r)
		} else {
			writeAuditTable(e.stdout, r)
		}
	}); err != nil {
		return err
	}
	if len(r.Anomalies) > 0 {
		return failErr("audit found %d inconsistencies:\n  %s", len(r.Anomalies), strings.Join(r.Anomalies, "\n  "))
	}
	return nil
}

func ts(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05Z") }

func writeAuditTable(out io.Writer, r *auditReport) {
	w := bufio.NewWriter(out)
	defer w.Flush()
	fmt.Fprintf(w, "log %s: %d entries fetched from tiles and verified against the checkpoint (root %s)\n", r.Origin, r.Size, r.RootHash)
	if r.PreviousSize != nil {
		fmt.Fprintf(w, "consistent with the stored checkpoint of size %d\n", *r.PreviousSize)
	} else {
		fmt.Fprintf(w, "no stored checkpoint for this log: trusted on first use\n")
	}
	fmt.Fprintf(w, "\nMANIFEST HISTORY\n%-7s %-9s %-20s %-71s %s\n", "VERSION", "LOG INDEX", "TIME", "HASH", "SIGNERS")
	for _, m := range r.Manifests {
		sig := fmt.Sprintf("%d", len(m.Signers))
		if m.Version == 1 && len(m.Signers) == 0 {
			sig = "none (version 1 trusted by the operator's decision)"
		}
		if m.SignaturesChecked {
			sig += " (signatures verified)"
		}
		fmt.Fprintf(w, "%-7d %-9d %-20s %-71s %s\n", m.Version, m.Index, ts(m.Time), m.Hash, sig)
	}
	fmt.Fprintf(w, "\nKEY EVENTS\n%-9s %-20s %-13s %-32s %-7s %s\n", "LOG INDEX", "TIME", "EVENT", "KEY", "VERSION", "CLIENT")
	for _, k := range r.KeyEvents {
		fmt.Fprintf(w, "%-9d %-20s %-13s %-32s %-7d %s\n", k.Index, ts(k.Time), k.Event, k.ID, k.Version, k.Client)
	}
	fmt.Fprintf(w, "\nRELEASES (per key)\n%-32s %-7s %-16s %-9s %-22s %-8s %-9s %s\n", "KEY", "VERSION", "WORKER CLASS", "PLATFORM", "MEASUREMENT", "MANIFEST", "LOG INDEX", "TIME")
	// Sort indices, not the (large) rows.
	order := make([]int32, len(r.Releases))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortStableFunc(order, func(a, b int32) int { return strings.Compare(r.Releases[a].ID, r.Releases[b].ID) })
	var line []byte
	for _, i := range order {
		line = appendReleaseRow(line[:0], &r.Releases[i])
		w.Write(line)
	}
	var parts []string
	for _, t := range []string{tlog.TypeIdentity, tlog.TypeManifest, tlog.TypeKeyUpload, tlog.TypeKeyDelete, tlog.TypeRelease} {
		parts = append(parts, fmt.Sprintf("%d %s", r.Counts[t], t))
	}
	fmt.Fprintf(w, "\n%s\n", strings.Join(parts, ", "))
	if len(r.Warnings) > 0 {
		fmt.Fprintf(w, "\nWARNINGS (not inconsistencies)\n")
		for _, s := range r.Warnings {
			fmt.Fprintf(w, "  %s\n", s)
		}
	}
	if len(r.Anomalies) == 0 {
		note := ""
		if len(r.Warnings) > 0 {
			note = fmt.Sprintf(" (%d warnings above)", len(r.Warnings))
		}
		fmt.Fprintf(w, "audit OK: every entry verified, no inconsistencies%s; checkpoint stored\n", note)
	} else {
		fmt.Fprintf(w, "audit FAILED: %d inconsistencies\n", len(r.Anomalies))
	}
}

// appendReleaseRow appends x's row of the releases table: what
// fmt.Sprintf("%-32s %-7d %-16s %-9s %-22s v%-7d %-9d %s\n", ...) prints,
// without its cost on logs of millions of releases.
func appendReleaseRow(b []byte, x *auditRelease) []byte {
	pl := x.Platform
	if x.Simulated {
		pl += "(sim)"
	}
	b = appendPadded(b, x.ID, 32)
	b = appendPadded(b, strconv.FormatUint(x.Version, 10), 7)
	b = appendPadded(b, x.WorkerClass, 16)
	b = appendPadded(b, pl, 9)
	b = appendPadded(b, short(x.Measurement), 22)
	b = append(b, 'v')
	b = appendPadded(b, strconv.FormatUint(x.ManifestVersion, 10), 7)
	b = appendPadded(b, strconv.FormatUint(x.Index, 10), 9)
	b = x.Time.UTC().AppendFormat(b, "2006-01-02T15:04:05Z")
	return append(b, '\n')
}

// appendPadded appends s left-aligned in a field of width runes (as fmt's
// %-Ns) and a separating space.
func appendPadded(b []byte, s string, width int) []byte {
	b = append(b, s...)
	for n := utf8.RuneCountInString(s); n < width; n++ {
		b = append(b, ' ')
	}
	return append(b, ' ')
}

func writeAuditCSV(w io.Writer, r *auditReport) {
	cw := csv.NewWriter(w)
	cw.Write([]string{"log_index", "time", "type", "key", "version", "client", "worker_class", "platform", "simulated",
		"measurement", "chip_id", "tcb", "manifest_version", "manifest_hash"})
	type row struct {
		idx uint64
		rec []string
	}
	var rows []row
	u := func(v uint64) string { return strconv.FormatUint(v, 10) }
	for _, m := range r.Manifests {
		rows = append(rows, row{m.Index, []string{u(m.Index), ts(m.Time), "manifest", "", "", "", "", "", "", "", "", "", u(m.Version), m.Hash}})
	}
	for _, k := range r.KeyEvents {
		rows = append(rows, row{k.Index, []string{u(k.Index), ts(k.Time), "key-" + k.Event, k.ID, u(k.Version), k.Client, "", "", "", "", "", "", "", ""}})
	}
	for _, x := range r.Releases {
		rows = append(rows, row{x.Index, []string{u(x.Index), ts(x.Time), "release", x.ID, u(x.Version), "", x.WorkerClass, x.Platform,
			strconv.FormatBool(x.Simulated), x.Measurement, x.ChipID, x.TCB, u(x.ManifestVersion), x.ManifestHash}})
	}
	slices.SortStableFunc(rows, func(a, b row) int { return cmp.Compare(a.idx, b.idx) })
	for _, rw := range rows {
		cw.Write(rw.rec)
	}
	cw.Flush()
}

// progress prints a progress bar on long logs to w (stderr).
type progress struct {
	w     io.Writer
	total uint64
	last  time.Time
	shown bool
}

const progressMin = 20000

func newProgress(w io.Writer, total uint64) *progress {
	return &progress{w: w, total: total, last: time.Now()}
}

func (p *progress) update(n uint64) {
	if p.total < progressMin || time.Since(p.last) < 250*time.Millisecond {
		return
	}
	p.last = time.Now()
	p.shown = true
	const width = 40
	filled := int(n * width / p.total)
	var b bytes.Buffer
	b.WriteString("\raudit [")
	b.WriteString(strings.Repeat("#", filled) + strings.Repeat(".", width-filled))
	fmt.Fprintf(&b, "] %d/%d entries", n, p.total)
	p.w.Write(b.Bytes())
}

func (p *progress) done() {
	if p.shown {
		fmt.Fprintf(p.w, "\raudit [%s] %d/%d entries\n", strings.Repeat("#", 40), p.total, p.total)
	}
}
