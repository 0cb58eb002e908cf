package audit

import (
	"fmt"
	"strings"
	"time"

	"github.com/kbs-dev/kbs/manifest"
)

// A Filter selects the events an audit lists, for the accounting
// questions people ask: which keys of this client went where, what did
// this worker class receive last quarter. Every field is optional; an
// event is listed when it passes all the fields that apply to it.
// Manifest versions and findings are always listed, and every entry of
// the log is verified whatever the filter.
type Filter struct {
	// Key is a key id pattern in the manifest's syntax (a key id, a prefix
	// ending in '*', or '*'): key events and releases of matching keys.
	Key string `json:"key,omitempty"`
	// Client: key events by this client, and releases of key versions
	// this client uploaded.
	Client string `json:"client,omitempty"`
	// Class: releases to this worker class. Key events have no class and
	// are not filtered by it.
	Class string `json:"class,omitempty"`
	// Since and Until bound the entries' time: Since <= time < Until.
	// Identities are filtered by time only.
	Since time.Time `json:"since,omitzero"`
	Until time.Time `json:"until,omitzero"`
}

// Check reports whether the filter is well formed.
func (f *Filter) Check() error {
	if f.Key != "" {
		if err := manifest.CheckPattern(f.Key); err != nil {
			return fmt.Errorf("audit: filter: %w", err)
		}
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Until.After(f.Since) {
		return fmt.Errorf("audit: filter: until (%s) is not after since (%s)", f.Until.Format(time.RFC3339), f.Since.Format(time.RFC3339))
	}
	return nil
}

// String describes the filter in words, "" for none.
func (f *Filter) String() string {
	if f == nil {
		return ""
	}
	var p []string
	if f.Key != "" {
		p = append(p, "keys "+f.Key)
	}
	if f.Client != "" {
		p = append(p, fmt.Sprintf("client %q", f.Client))
	}
	if f.Class != "" {
		p = append(p, fmt.Sprintf("worker class %q", f.Class))
	}
	if !f.Since.IsZero() {
		p = append(p, "since "+f.Since.UTC().Format(time.RFC3339))
	}
	if !f.Until.IsZero() {
		p = append(p, "until "+f.Until.UTC().Format(time.RFC3339))
	}
	return strings.Join(p, ", ")
}

func (f *Filter) inTime(t time.Time) bool {
	return (f.Since.IsZero() || !t.Before(f.Since)) && (f.Until.IsZero() || t.Before(f.Until))
}

func (f *Filter) key(id string) bool { return f.Key == "" || manifest.MatchPattern(f.Key, id) }

// Events returns an Events that passes to next what f selects.
func (f *Filter) Events(next Events) Events {
	return &filtered{f: f, next: next, owner: map[keyVersion]string{}}
}

type keyVersion struct {
	id      string
	version uint64
}

// filtered is a Filter applied to a stream of events. For the Client
// field it remembers who uploaded each key version (one string per key
// version).
type filtered struct {
	f     *Filter
	next  Events
	owner map[keyVersion]string
}

func (x *filtered) Manifest(m Manifest) { x.next.Manifest(m) }
func (x *filtered) Finding(f Finding)   { x.next.Finding(f) }

// Lifecycle events concern the whole log, not a key: kept in the time
// range.
func (x *filtered) Lifecycle(l Lifecycle) {
	if x.f.inTime(l.Time) {
		x.next.Lifecycle(l)
	}
}

func (x *filtered) Identity(id Identity) {
	if x.f.inTime(id.Time) {
		x.next.Identity(id)
	}
}

func (x *filtered) KeyEvent(k KeyEvent) {
	if x.f.Client != "" && k.Event == "upload" {
		if _, seen := x.owner[keyVersion{k.ID, k.Version}]; !seen {
			x.owner[keyVersion{k.ID, k.Version}] = k.Client
		}
	}
	if x.f.key(k.ID) && (x.f.Client == "" || k.Client == x.f.Client) && x.f.inTime(k.Time) {
		x.next.KeyEvent(k)
	}
}

func (x *filtered) Release(r Release) {
	if !x.f.key(r.ID) || (x.f.Class != "" && r.WorkerClass != x.f.Class) || !x.f.inTime(r.Time) {
		return
	}
	if x.f.Client != "" && x.owner[keyVersion{r.ID, r.Version}] != x.f.Client {
		return
	}
	x.next.Release(r)
}
