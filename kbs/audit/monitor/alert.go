package monitor

import (
	"time"

	"github.com/kbs-dev/kbs/kbs/audit"
	"github.com/kbs-dev/kbs/manifest"
)

// An Alert is what the monitor raises: one JSON line on stdout, one POST
// to the webhook. Seq numbers a monitor's alerts from 1, in the order they
// were raised, without gaps; an alert delivered again after a crash (see
// Monitor) carries the same Seq and bytes, so a consumer that keeps the
// highest Seq it handled sees every alert once.
type Alert struct {
	Seq uint64 `json:"seq"`
	// Severity is info, warning or critical (the rule's), or emergency
	// (a fork or an inconsistency).
	Severity string `json:"severity"`
	// Rule is the name of the rule that fired; for the built-in alerts,
	// "fork" or "inconsistency".
	Rule string `json:"rule"`
	// Kind is the rule's kind (the Kind constants).
	Kind string `json:"kind"`
	// Log is the log's origin.
	Log string `json:"log"`
	// Raised is when the monitor raised the alert (its clock).
	Raised time.Time `json:"raised"`
	// Summary is one line for people.
	Summary string `json:"summary"`

	// Index and EntryTime are the log entry that fired the rule (nil for
	// alerts about the log as a whole).
	Index     *uint64    `json:"index,omitempty"`
	EntryTime *time.Time `json:"entry_time,omitempty"`
	// Manifest is the new version, for manifest alerts.
	Manifest *ManifestVersion `json:"manifest,omitempty"`
	// Releases are the released keys of the entry that matched the rule.
	Releases []audit.Release `json:"releases,omitempty"`
	// KeyEvent is the deletion, for key-delete alerts.
	KeyEvent *audit.KeyEvent `json:"key_event,omitempty"`
	// Rate is what release-rate counted.
	Rate *RateCount `json:"rate,omitempty"`
	// Checkpoint is the log's latest verified checkpoint, for log-stale,
	// not-witnessed and fork alerts (the conflicting one, for a fork).
	Checkpoint *CheckpointInfo `json:"checkpoint,omitempty"`
	// Witnesses says which witnesses cosigned what, for not-witnessed.
	Witnesses *WitnessState `json:"witnesses,omitempty"`
	// Fork is the evidence of a fork or rollback: both signed checkpoints.
	Fork *ForkEvidence `json:"fork,omitempty"`
	// Finding is the inconsistency, for inconsistency alerts.
	Finding string `json:"finding,omitempty"`
}

// ManifestVersion is a manifest entry of the log and what changed.
type ManifestVersion struct {
	Version  uint64    `json:"version"`
	Hash     string    `json:"hash"`
	Previous string    `json:"previous,omitempty"`
	Signers  []string  `json:"signers"`
	Index    uint64    `json:"index"`
	Time     time.Time `json:"time"`
	// Changes are the differences from the previous version, field by
	// field.
	Changes []manifest.Change `json:"changes"`
}

// RateCount is release-rate's count when it fired.
type RateCount struct {
	Count  uint64 `json:"count"`
	Max    uint64 `json:"max"`
	Window string `json:"window"`
}

// CheckpointInfo names a checkpoint.
type CheckpointInfo struct {
	Size     uint64 `json:"size"`
	RootHash string `json:"root_hash"`
	// Note is the signed checkpoint.
	Note string `json:"note"`
	// Since is when the log was last seen to grow (log-stale).
	Since *time.Time `json:"since,omitempty"`
}

// WitnessState is what the monitor knows of the witnesses of the policy in
// force.
type WitnessState struct {
	Threshold int      `json:"threshold"`
	Witnesses []string `json:"witnesses"`
	// Cosigned are the witnesses whose valid cosignature the latest
	// checkpoint carries.
	Cosigned []string `json:"cosigned"`
	// LastWitnessed is the time of the newest quorum of cosignatures the
	// monitor has seen (nil: never).
	LastWitnessed *time.Time `json:"last_witnessed,omitempty"`
	// Error says why the latest checkpoint did not count as witnessed.
	Error string `json:"error,omitempty"`
}

// ForkEvidence holds two signed checkpoints of one log that cannot both
// be honest.
type ForkEvidence struct {
	Rollback bool   `json:"rollback"`
	Reason   string `json:"reason"`
	// Verified is the checkpoint the monitor had verified and stored;
	// Conflicting is the one that contradicts it.
	Verified    string `json:"verified"`
	Conflicting string `json:"conflicting"`
}
