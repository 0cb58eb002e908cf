package audit

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// Manifest is a manifest entry of the log.
type Manifest struct {
	Index    uint64    `json:"index"`
	Time     time.Time `json:"time"`
	Version  uint64    `json:"version"`
	Hash     string    `json:"hash"`
	Previous string    `json:"previous,omitempty"`
	// Signers are the owner fingerprints the entry names.
	Signers []string `json:"signers"`
	// SignaturesChecked is true when the broker's history supplied the
	// signatures and they verified against the previous version's owners
	// (against version 1's own owners, for a signed version 1), naming
	// exactly Signers.
	SignaturesChecked bool `json:"signatures_checked"`
	// Changes are the differences, field by field, from the manifest that
	// was active before this entry (manifest.Diff); empty for the first
	// version and for an entry whose body does not parse.
	Changes []manifest.Change `json:"changes,omitempty"`

	parsed bool // the body parsed and matches the entry's header
}

// Parsed reports whether the entry's body parsed and matches its header:
// only such a version becomes the active manifest.
func (m Manifest) Parsed() bool { return m.parsed }

// Identity is an identity entry: the broker's keys at first boot or
// rotation.
type Identity struct {
	Index     uint64    `json:"index"`
	Time      time.Time `json:"time"`
	NoteKey   string    `json:"note_key"`
	Platform  string    `json:"platform"`
	Simulated bool      `json:"simulated"`
}

// KeyEvent is a key upload or deletion.
type KeyEvent struct {
	Index   uint64    `json:"index"`
	Time    time.Time `json:"time"`
	Event   string    `json:"event"` // upload, delete, or upload-repeat (a benign duplicate of an upload)
	ID      string    `json:"id"`
	Version uint64    `json:"version"`
	Client  string    `json:"client"`
}

// Release is one key of one release entry.
type Release struct {
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

// A Finding is something the replay judged: an anomaly (an inconsistency;
// the audit fails) or a warning (odd, but the story holds).
type Finding struct {
	// Index is the log index of the entry it is about; -1 for findings
	// about the log as a whole (the manifest history).
	Index int64
	// Warning distinguishes warnings from anomalies.
	Warning bool
	// Message says what is wrong. Text quoted from the log is clipped, so
	// a message is at most a few KiB.
	Message string
}

// String returns the message, after "entry N: " for a finding about an
// entry.
func (f Finding) String() string {
	if f.Index < 0 {
		return f.Message
	}
	return fmt.Sprintf("entry %d: %s", f.Index, f.Message)
}

// Events receives what a replay meets, in log order, on one goroutine: a
// Report collects them; a monitor alerts on them and keeps nothing.
type Events interface {
	Manifest(Manifest)
	Identity(Identity)
	KeyEvent(KeyEvent)
	// Release is called once per key of a release entry.
	Release(Release)
	// Lifecycle is called for each handover, recovery-shares and recovery
	// entry.
	Lifecycle(Lifecycle)
	Finding(Finding)
}

// maxMessage bounds a finding's message, which quotes broker-chosen text.
const maxMessage = 1024

// clip shortens s to at most max bytes on a rune boundary, saying how much
// was cut.
func clip(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s… (%d more bytes)", s[:cut], len(s)-cut)
}

// A Replayer replays a log's entries in order and checks that they tell a
// coherent story: the manifest chain as the log records it (versions in
// order, "previous" hashes, named signers among the previous version's
// owners and at least its threshold), uploads and deletions (versions in
// order, clients the active manifest allows), and releases (under the
// active manifest, of live key versions, to a class the key policy allows,
// simulated evidence only if the manifest allows it). What it meets goes
// to its Events.
//
// A Replayer keeps what the judgement needs and nothing per entry: the
// active manifest, the state of each key id, and the log's manifest
// entries, each bounded by its Limits. Replay can be called again as the
// log grows, continuing where the last call stopped, as a monitor does. It
// is not safe for concurrent use.
type Replayer struct {
	ev        Events
	noteKey   string
	limits    Limits
	limitErr  *LimitError // a limit was passed: the replay stops
	next      uint64
	active    *manifest.Manifest
	allowed   map[[2]string]bool // active.ReleaseAllowed(class, id), memoized
	keys      map[string]*keyState
	manifests []Manifest
	counts    map[string]int
	anomalies int
	// shares are the recovery-shares entries, by index.
	shares map[uint64]sharesRecord
}

// keyState is what the replay knows of one key id.
type keyState struct {
	version  uint64 // latest uploaded version (0: none)
	client   string // who uploaded it
	uploaded uint64 // at which entry
	deleted  bool   // the latest version is deleted
	released bool   // the latest version was released
}

// NewReplayer returns a replayer of the log signed with noteKey (identity
// entries must name it) that reports to ev, with the default Limits.
func NewReplayer(noteKey string, ev Events) *Replayer {
	return &Replayer{ev: ev, noteKey: noteKey, keys: map[string]*keyState{}, counts: map[string]int{}, shares: map[uint64]sharesRecord{}, limits: Limits{}.withDefaults()}
}

// Limits bound what a Replayer keeps, which grows with the log's key ids
// and manifest versions, not its length: a log that passes one is not
// judged further (Replay returns a *LimitError), so that a hostile log
// cannot exhaust the auditor's memory.
type Limits struct {
	// MaxKeyIDs is how many distinct key ids the replay tracks. Optional;
	// default DefaultMaxKeyIDs (about 200 MB of state at most).
	MaxKeyIDs int
	// MaxManifests is how many manifest entries the replay keeps (with
	// their changes), and how many recovery-shares entries. Optional; default DefaultMaxManifests. (A broker's
	// manifest history answer holds at most about 700 versions of the
	// largest size.)
	MaxManifests int
}

// Defaults of Limits.
const (
	DefaultMaxKeyIDs    = 1 << 20
	DefaultMaxManifests = 1 << 12
)

func (l Limits) withDefaults() Limits {
	if l.MaxKeyIDs <= 0 {
		l.MaxKeyIDs = DefaultMaxKeyIDs
	}
	if l.MaxManifests <= 0 {
		l.MaxManifests = DefaultMaxManifests
	}
	return l
}

// SetLimits replaces the replayer's limits (zero fields: the defaults).
func (a *Replayer) SetLimits(l Limits) { a.limits = l.withDefaults() }

// A LimitError reports that a log passed a bound the auditor set: more
// entries, more growth since the stored checkpoint, more key ids or more
// manifest versions than it accepts. The audit was not completed; it
// says nothing about the log's consistency.
type LimitError struct {
	// What names the bound ("entries", "entries since the stored
	// checkpoint", "key ids", "manifest entries"); Limit is its value and
	// Got what the log has (at least).
	What       string
	Limit, Got uint64
	// Index is the entry at which the replay stopped, or -1.
	Index int64
}

func (e *LimitError) Error() string {
	at := ""
	if e.Index >= 0 {
		at = fmt.Sprintf(" (at entry %d)", e.Index)
	}
	return fmt.Sprintf("audit: the log has %d %s, more than the %d this audit accepts%s", e.Got, e.What, e.Limit, at)
}

// Next returns the index of the next entry the replayer expects.
func (a *Replayer) Next() uint64 { return a.next }

// Manifests returns the log's manifest entries replayed so far, oldest
// first. The slice is the replayer's own: do not modify it.
func (a *Replayer) Manifests() []Manifest { return a.manifests }

// Counts returns how many entries of each type were replayed (malformed
// entries are not counted). The map is the replayer's own.
func (a *Replayer) Counts() map[string]int { return a.counts }

// Anomalies returns how many anomalies the replayer found so far.
func (a *Replayer) Anomalies() int { return a.anomalies }

// ActiveManifest returns the manifest the replayed log has active, or nil.
func (a *Replayer) ActiveManifest() *manifest.Manifest { return a.active }

// Logged reports whether the replayed log holds m as a well-formed
// manifest entry of m's version.
func (a *Replayer) Logged(m *manifest.Manifest) bool {
	for _, lm := range a.manifests {
		if lm.parsed && lm.Hash == m.Hash() && lm.Version == m.Version() {
			return true
		}
	}
	return false
}

// key returns the state of key id, creating it; nil once the log names
// more key ids than Limits.MaxKeyIDs (the replay then stops).
func (a *Replayer) key(index uint64, id string) *keyState {
	k := a.keys[id]
	if k == nil {
		if len(a.keys) >= a.limits.MaxKeyIDs {
			a.limitErr = &LimitError{What: "key ids", Limit: uint64(a.limits.MaxKeyIDs), Got: uint64(len(a.keys)) + 1, Index: int64(index)}
			return &keyState{} // judged, not kept
		}
		k = &keyState{}
		a.keys[id] = k
	}
	return k
}

func (a *Replayer) finding(index int64, warning bool, format string, args ...any) {
	if !warning {
		a.anomalies++
	}
	a.ev.Finding(Finding{Index: index, Warning: warning, Message: clip(fmt.Sprintf(format, args...), maxMessage)})
}

func (a *Replayer) anomaly(index uint64, format string, args ...any) {
	a.finding(int64(index), false, format, args...)
}

func (a *Replayer) warning(index uint64, format string, args ...any) {
	a.finding(int64(index), true, format, args...)
}

// Decoding runs in chunks of at most chunkEntries entries or chunkBytes
// bytes, whichever comes first, each copied out of its entry bundle into
// the chunk's own buffer; at most maxChunks chunks are in flight between
// the tile client and the judgement. So the pipeline holds at most about
// maxChunks * chunkBytes of entries (16 MiB, with their decoded forms),
// whatever the entries' size and however many CPUs decode them, on top of
// what tlog.TileClient.Entries buffers (tlog.DefaultMaxBuffered).
const (
	chunkEntries = 1024
	chunkBytes   = 1 << 20
	maxChunks    = 16
)

// Replay fetches the entries [Next(), cp.Size) of the log through tiles,
// each verified against cp (a verified checkpoint: tlog.TileClient.Entries),
// and replays them in order (ReplayTo with end cp.Size). Strict decoding (tlog.DecodeEntry) is the
// bulk of the work, so it runs on every CPU (up to 8) while the tile client goes on
// fetching and verifying; the judgement is sequential. progress, if not
// nil, is called with the number of entries replayed so far after each
// chunk, on the replaying goroutine. An error (a tile that does not
// verify, the log unreachable, a *LimitError) stops the replay after the
// last complete chunk; Next says where to resume.
func (a *Replayer) Replay(ctx context.Context, tiles *tlog.TileClient, cp tlog.SignedCheckpoint, progress func(done uint64)) error {
	return a.ReplayTo(ctx, tiles, cp, cp.Size, progress)
}

// errEnd stops tlog.TileClient.Entries at ReplayTo's end.
var errEnd = errors.New("audit: end of the range")

// ReplayTo is Replay of the entries [Next(), end) only, end at most
// cp.Size: a caller that saves the replayer's state (Snapshot) every so
// many entries, as a monitor catching up on a long log does, replays in
// steps of bounded size against one checkpoint.
func (a *Replayer) ReplayTo(ctx context.Context, tiles *tlog.TileClient, cp tlog.SignedCheckpoint, end uint64, progress func(done uint64)) error {
	if a.limitErr != nil {
		return a.limitErr
	}
	if cp.Size < a.next {
		return fmt.Errorf("audit: the checkpoint has %d entries, %d were replayed already", cp.Size, a.next)
	}
	if end < a.next || end > cp.Size {
		return fmt.Errorf("audit: can't replay to entry %d: %d were replayed already, the checkpoint has %d", end, a.next, cp.Size)
	}
	if end == a.next {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type decoded struct {
		entry *tlog.Entry
		err   error
	}
	type chunk struct {
		buf  []byte // the entries' bytes, copied out of their bundles
		raws [][]byte
		out  []decoded
		done chan struct{}
	}
	workers := min(runtime.GOMAXPROCS(0), maxChunks/2)
	jobs := make(chan *chunk, workers)
	// In order; with the chunk being filled, the one being judged and
	// those with the workers, at most maxChunks exist at once.
	ordered := make(chan *chunk, maxChunks-2-workers)
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
		for c := range ordered {
			<-c.done
			if a.limitErr != nil {
				continue // drain: nothing after the limit is judged
			}
			for _, d := range c.out {
				a.entry(a.next, d.entry, d.err)
				if a.limitErr != nil {
					cancel()
					break
				}
				a.next++
			}
			if progress != nil {
				progress(a.next)
			}
		}
	}()
	newChunk := func() *chunk {
		return &chunk{buf: make([]byte, 0, chunkBytes+tlog.MaxEntrySize), raws: make([][]byte, 0, chunkEntries)}
	}
	cur := newChunk()
	send := func() bool {
		cur.out = make([]decoded, len(cur.raws))
		cur.done = make(chan struct{})
		select {
		case ordered <- cur: // in order first: jobs may complete before this
		case <-ctx.Done():
			return false
		}
		jobs <- cur // a worker is free soon: ordered holds the rest
		cur = newChunk()
		return true
	}
	err := tiles.Entries(ctx, cp, a.next, func(index uint64, entry []byte) error {
		if index >= end {
			return errEnd
		}
		off := len(cur.buf)
		cur.buf = append(cur.buf, entry...)
		cur.raws = append(cur.raws, cur.buf[off:len(cur.buf):len(cur.buf)])
		if len(cur.raws) == chunkEntries || len(cur.buf) >= chunkBytes {
			if !send() {
				return ctx.Err()
			}
		}
		return nil
	})
	if errors.Is(err, errEnd) {
		err = nil
	}
	if err == nil && len(cur.raws) > 0 {
		send()
	}
	close(jobs)
	wg.Wait()
	close(ordered)
	<-replayed
	if a.limitErr != nil {
		return a.limitErr
	}
	return err
}

// entry judges one entry; err is its decoding error.
func (a *Replayer) entry(index uint64, en *tlog.Entry, err error) {
	if err != nil {
		a.anomaly(index, "malformed entry: %v", err)
		return
	}
	a.counts[en.Type]++
	switch en.Type {
	case tlog.TypeManifest:
		a.manifestEntry(index, en)
	case tlog.TypeIdentity:
		id := en.Identity
		a.ev.Identity(Identity{Index: index, Time: en.Time, NoteKey: id.NoteKey, Platform: id.Platform, Simulated: id.Simulated})
		if id.NoteKey != a.noteKey {
			a.anomaly(index, "identity entry names log key %s, the log is signed by %s", id.NoteKey, a.noteKey)
		}
	case tlog.TypeKeyUpload:
		a.uploadEntry(index, en)
	case tlog.TypeKeyDelete:
		k := en.KeyDelete
		a.ev.KeyEvent(KeyEvent{Index: index, Time: en.Time, Event: "delete", ID: k.ID, Version: k.Version, Client: k.Client})
		ks := a.key(index, k.ID)
		if ks.version != k.Version || ks.deleted {
			a.anomaly(index, "deletion of %s version %d, but the latest live version is %d", k.ID, k.Version, ks.version)
		}
		ks.deleted = true
	case tlog.TypeRelease:
		a.releaseEntry(index, en)
	case tlog.TypeHandover, tlog.TypeRecoveryShares, tlog.TypeRecovery:
		a.lifecycleEntry(index, en)
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
func (a *Replayer) uploadEntry(index uint64, en *tlog.Entry) {
	k := en.KeyUpload
	ks := a.key(index, k.ID)
	ev := KeyEvent{Index: index, Time: en.Time, Event: "upload", ID: k.ID, Version: k.Version, Client: k.Client}
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
		a.ev.KeyEvent(ev)
		return
	case k.Version != ks.version+1:
		a.anomaly(index, "upload of %s version %d, want version %d", k.ID, k.Version, ks.version+1)
	}
	a.ev.KeyEvent(ev)
	if k.Version > ks.version {
		*ks = keyState{version: k.Version, client: k.Client, uploaded: index}
	}
}

// manifestEntry replays a manifest entry: the version it records becomes
// active. The log names the signers but carries no signatures; CheckHistory
// verifies those against the broker's history.
func (a *Replayer) manifestEntry(index uint64, en *tlog.Entry) {
	me := en.Manifest
	lm := Manifest{Index: index, Time: en.Time, Version: me.Version, Hash: me.Hash, Previous: me.Previous, Signers: me.Signers}
	if len(a.manifests) >= a.limits.MaxManifests {
		a.limitErr = &LimitError{What: "manifest entries", Limit: uint64(a.limits.MaxManifests), Got: uint64(len(a.manifests)) + 1, Index: int64(index)}
		return
	}
	defer func() {
		a.manifests = append(a.manifests, lm)
		a.ev.Manifest(lm)
	}()
	m, err := manifest.Parse(me.Body)
	if err != nil {
		a.anomaly(index, "manifest version %d does not parse: %v", me.Version, err)
		return
	}
	if m.Hash() != me.Hash || m.Version() != me.Version || m.Previous() != me.Previous {
		a.anomaly(index, "manifest entry says version %d %s, its body is version %d %s", me.Version, me.Hash, m.Version(), m.Hash())
		return
	}
	lm.parsed = true
	if a.active != nil {
		lm.Changes = manifest.Diff(a.active, m)
	}
	// Who admitted it: the owners of the previous version (of itself for
	// version 1), at least their threshold.
	owners := a.active
	if a.active == nil {
		owners = m
		if m.Version() != 1 {
			a.anomaly(index, "the first manifest is version %d", m.Version())
		}
	} else if manifest.Follows(a.active, m) != nil {
		a.anomaly(index, "manifest version %d (previous %s) does not follow version %d (%s)", m.Version(), m.Previous(), a.active.Version(), a.active.Hash())
	} else if err := manifest.CheckWitnessesKept(a.active, m); err != nil {
		a.anomaly(index, "%v", err)
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
	a.active = m
	a.allowed = map[[2]string]bool{}
}

// releaseAllowed is a.active.ReleaseAllowed, memoized: a log holds many
// releases of few keys to few classes.
func (a *Replayer) releaseAllowed(class, id string) bool {
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

func (a *Replayer) releaseEntry(index uint64, en *tlog.Entry) {
	re := en.Release
	if a.active == nil {
		a.anomaly(index, "release before any manifest")
		return
	}
	if re.ManifestHash != a.active.Hash() {
		a.anomaly(index, "release under manifest %s, the active version is %d (%s)", re.ManifestHash, a.active.Version(), a.active.Hash())
	}
	for _, k := range re.Keys {
		a.ev.Release(Release{
			Index: index, Time: en.Time, ID: k.ID, Version: k.Version, WorkerClass: re.WorkerClass,
			Platform: re.Platform, Simulated: re.Simulated, Measurement: re.Measurement, ChipID: re.ChipID, TCB: re.TCB,
			ManifestVersion: a.active.Version(), ManifestHash: re.ManifestHash,
			EvidenceDigest: re.EvidenceDigest, WorkerKeyDigest: re.WorkerKeyDigest,
		})
		ks := a.key(index, k.ID)
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
