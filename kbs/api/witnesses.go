package api

import "time"

// WitnessesStatus is the answer of GET /v1/witnesses: the broker's own
// account of its witnesses, for operators and dashboards. Nothing in it is
// signed: clients check cosignatures on the checkpoints themselves.
type WitnessesStatus struct {
	// Policy is the active manifest's witness policy: "none" or "K of N".
	Policy string `json:"policy"`
	// ManifestVersion is the active manifest version, which states it.
	ManifestVersion uint64 `json:"manifest_version"`
	// State is "acting" (a quorum cosigned the log's checkpoint since
	// start and in the last round, or the policy names no witnesses);
	// "no_quorum" (the last round lacked a quorum: releases, uploads and
	// manifest changes are refused until a round has one again; the broker
	// retries by itself); "checking" (no quorum has cosigned since start:
	// they are refused too) or "behind" (a witness cosigned a larger or
	// another tree: they are refused until an operator restarts the broker
	// on the latest data directory).
	State string `json:"state"`
	// Reason says why the state is not "acting", and what to do.
	Reason string `json:"reason,omitempty"`
	// LogSize is the size of the log's latest checkpoint; WitnessedSize
	// that of the newest checkpoint the policy's quorum cosigned (the one
	// /log/checkpoint and attestations serve). Entries beyond
	// WitnessedSize are logged and not yet witnessed.
	LogSize       uint64 `json:"log_size"`
	WitnessedSize uint64 `json:"witnessed_size"`
	// Witnesses are the policy's witnesses, in the manifest's order.
	Witnesses []WitnessStatus `json:"witnesses"`
}

// WitnessStatus is what the broker knows of one witness.
type WitnessStatus struct {
	Name string `json:"name"`
	URL  string `json:"url"`
	// CosignedSize and CosignedAt are the size and cosignature time of the
	// last checkpoint the witness cosigned since the broker started
	// (absent: none yet).
	CosignedSize uint64     `json:"cosigned_size"`
	CosignedAt   *time.Time `json:"cosigned_at,omitempty"`
	// Error is why the witness did not cosign in the last round, if it
	// did not.
	Error string `json:"error,omitempty"`
}
