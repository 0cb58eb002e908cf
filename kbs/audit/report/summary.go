// Package report turns an audit of a kbs log into a document people read:
// a self-contained HTML page (no scripts, no external assets: it opens on
// an air-gapped laptop and prints) with the log's identity and verified
// checkpoint, the manifest timeline with each version's diff, per key the
// uploads, releases and deletion, per worker class what it received,
// charts of releases over time, the alerts of monitor rules, the
// findings, and the commands that re-verify every number.
//
// A Summary collects what the page shows from the audit's events
// (audit.Config.Events), aggregated: its size grows with the number of
// keys, classes, distinct release circumstances (class, platform,
// measurement, chip, TCB, manifest version) and hours with releases, not
// with the number of releases.
package report

import (
	"sort"
	"time"

	"github.com/kbs-dev/kbs/kbs/audit"
)

// Bounds of a Summary.
const (
	// MaxKeyEvents is how many uploads and deletions a key lists.
	MaxKeyEvents = 200
	// MaxGroups is how many release groups a key lists; the releases
	// of further groups are counted in Other.
	MaxGroups = 200
	// MaxKeys is how many keys a Summary details; further keys are
	// counted only.
	MaxKeys = 5000
	// MaxIdentities is how many identity entries a Summary lists.
	MaxIdentities = 100
)

// maxMinutes bounds Summary.Minutes.
const maxMinutes = 2 * maxBars

// MaxHours bounds Summary.Hours: about 15 years of hours. A log whose
// release times span more (a hostile one) has the rest counted in
// HoursOmitted.
const MaxHours = 1 << 17

// A Summary aggregates the events of one audit. Its zero value is not
// ready: use NewSummary.
type Summary struct {
	// Keys by id, and the ids in order.
	Keys map[string]*Key
	// KeysOmitted counts keys beyond MaxKeys.
	KeysOmitted int
	// Classes by name.
	Classes map[string]*Class
	// Identities are the broker identity entries.
	Identities []audit.Identity
	// ReleaseEntries counts release entries; ReleasedKeys the keys they
	// released.
	ReleaseEntries, ReleasedKeys uint64
	// Uploads, Repeats (uploads logged twice) and Deletions count key
	// events.
	Uploads, Repeats, Deletions uint64
	// Simulated counts released keys on simulated TEEs.
	Simulated uint64
	// Hours counts released keys per UTC hour (Unix time / 3600), for at
	// most MaxHours hours; HoursOmitted counts those of other hours.
	Hours        map[int64]uint64
	HoursOmitted uint64
	// Minutes counts released keys per minute (Unix time / 60) while
	// they span few minutes; nil once they span more than maxMinutes.
	Minutes map[int64]uint64
	// First and Last are the times of the first and last release.
	First, Last time.Time

	lastRelease uint64
	anyRelease  bool
}

// Key is what the log says about one key id.
type Key struct {
	ID string
	// Events are its uploads and deletions, in log order (at most
	// MaxKeyEvents; EventsOmitted counts the rest).
	Events        []audit.KeyEvent
	EventsOmitted int
	// Releases counts its released versions; Groups break them down.
	Releases uint64
	Groups   []*Group
	// Other counts releases beyond MaxGroups groups.
	Other  uint64
	groups map[groupKey]*Group
}

// A Group is a set of releases of one key under the same circumstances.
type Group struct {
	Version         uint64
	Class           string
	Platform        string
	Simulated       bool
	Measurement     string
	ChipID          string
	TCB             string
	ManifestVersion uint64
	Count           uint64
	First, Last     time.Time
	// FirstIndex and LastIndex are the log indices of the first and last
	// release: 'kbsctl audit --key ID --csv' lists them all.
	FirstIndex, LastIndex uint64
}

type groupKey struct {
	version, manifest                uint64
	class, platform, meas, chip, tcb string
	sim                              bool
}

// Class is what one worker class received.
type Class struct {
	Name string
	// Releases counts the keys it received; Keys breaks them down by key
	// and version.
	Releases uint64
	Keys     []*ClassKey
	keys     map[keyVersion]*ClassKey
}

// ClassKey counts the releases of one key version to a class.
type ClassKey struct {
	ID          string
	Version     uint64
	Count       uint64
	First, Last time.Time
	// FirstIndex and LastIndex are log indices.
	FirstIndex, LastIndex uint64
}

type keyVersion struct {
	id string
	v  uint64
}

// NewSummary returns an empty Summary.
func NewSummary() *Summary {
	return &Summary{Keys: map[string]*Key{}, Classes: map[string]*Class{}, Hours: map[int64]uint64{}, Minutes: map[int64]uint64{}}
}

func (s *Summary) key(id string) *Key {
	k := s.Keys[id]
	if k == nil {
		if len(s.Keys) >= MaxKeys {
			s.KeysOmitted++
			return nil
		}
		k = &Key{ID: id, groups: map[groupKey]*Group{}}
		s.Keys[id] = k
	}
	return k
}

// Manifest implements audit.Events (manifests are in the audit.Report).
func (s *Summary) Manifest(audit.Manifest) {}

// Finding implements audit.Events (findings are in the audit.Report).
func (s *Summary) Finding(audit.Finding) {}

// Lifecycle implements audit.Events (lifecycle entries are in the
// audit.Report).
func (s *Summary) Lifecycle(audit.Lifecycle) {}

// Identity implements audit.Events.
func (s *Summary) Identity(id audit.Identity) {
	if len(s.Identities) < MaxIdentities {
		s.Identities = append(s.Identities, id)
	}
}

// KeyEvent implements audit.Events.
func (s *Summary) KeyEvent(e audit.KeyEvent) {
	switch e.Event {
	case "upload":
		s.Uploads++
	case "upload-repeat":
		s.Repeats++
	case "delete":
		s.Deletions++
	}
	k := s.key(e.ID)
	if k == nil {
		return
	}
	if len(k.Events) < MaxKeyEvents {
		k.Events = append(k.Events, e)
	} else {
		k.EventsOmitted++
	}
}

// Release implements audit.Events.
func (s *Summary) Release(x audit.Release) {
	if !s.anyRelease || x.Index != s.lastRelease {
		s.ReleaseEntries++
	}
	s.anyRelease, s.lastRelease = true, x.Index
	s.ReleasedKeys++
	if x.Simulated {
		s.Simulated++
	}
	t := x.Time.UTC()
	if h := t.Unix() / 3600; len(s.Hours) < MaxHours || s.Hours[h] > 0 {
		s.Hours[h]++
	} else {
		s.HoursOmitted++
	}
	if s.Minutes != nil {
		s.Minutes[t.Unix()/60]++
		if len(s.Minutes) > maxMinutes {
			s.Minutes = nil
		}
	}
	if s.First.IsZero() || t.Before(s.First) {
		s.First = t
	}
	if t.After(s.Last) {
		s.Last = t
	}
	c := s.Classes[x.WorkerClass]
	if c == nil {
		c = &Class{Name: x.WorkerClass, keys: map[keyVersion]*ClassKey{}}
		s.Classes[x.WorkerClass] = c
	}
	c.Releases++
	kv := keyVersion{x.ID, x.Version}
	ck := c.keys[kv]
	if ck == nil {
		ck = &ClassKey{ID: x.ID, Version: x.Version, First: t, FirstIndex: x.Index}
		c.keys[kv] = ck
		c.Keys = append(c.Keys, ck)
	}
	ck.Count++
	ck.Last, ck.LastIndex = t, x.Index

	k := s.key(x.ID)
	if k == nil {
		return
	}
	k.Releases++
	gk := groupKey{x.Version, x.ManifestVersion, x.WorkerClass, x.Platform, x.Measurement, x.ChipID, x.TCB, x.Simulated}
	g := k.groups[gk]
	if g == nil {
		if len(k.Groups) >= MaxGroups {
			k.Other++
			return
		}
		g = &Group{Version: x.Version, Class: x.WorkerClass, Platform: x.Platform, Simulated: x.Simulated, Measurement: x.Measurement,
			ChipID: x.ChipID, TCB: x.TCB, ManifestVersion: x.ManifestVersion, First: t, FirstIndex: x.Index}
		k.groups[gk] = g
		k.Groups = append(k.Groups, g)
	}
	g.Count++
	g.Last, g.LastIndex = t, x.Index
}

// SortedKeys returns the keys by id.
func (s *Summary) SortedKeys() []*Key {
	out := make([]*Key, 0, len(s.Keys))
	for _, k := range s.Keys {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// SortedClasses returns the classes by name, each one's keys by id and
// version.
func (s *Summary) SortedClasses() []*Class {
	out := make([]*Class, 0, len(s.Classes))
	for _, c := range s.Classes {
		sort.Slice(c.Keys, func(i, j int) bool {
			if c.Keys[i].ID != c.Keys[j].ID {
				return c.Keys[i].ID < c.Keys[j].ID
			}
			return c.Keys[i].Version < c.Keys[j].Version
		})
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Tee returns an audit.Events that passes every event to each of evs.
func Tee(evs ...audit.Events) audit.Events { return tee(evs) }

type tee []audit.Events

func (t tee) Manifest(m audit.Manifest) {
	for _, e := range t {
		e.Manifest(m)
	}
}

func (t tee) Identity(id audit.Identity) {
	for _, e := range t {
		e.Identity(id)
	}
}

func (t tee) Lifecycle(l audit.Lifecycle) {
	for _, e := range t {
		e.Lifecycle(l)
	}
}

func (t tee) KeyEvent(k audit.KeyEvent) {
	for _, e := range t {
		e.KeyEvent(k)
	}
}

func (t tee) Release(x audit.Release) {
	for _, e := range t {
		e.Release(x)
	}
}

func (t tee) Finding(f audit.Finding) {
	for _, e := range t {
		e.Finding(f)
	}
}
