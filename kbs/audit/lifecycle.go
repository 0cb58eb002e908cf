package audit

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"slices"
	"time"

	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// Lifecycle is a handover, recovery-shares or recovery entry: the broker's
// master key moving to a newcomer, split for the recovery holders, or
// restored from their shares.
type Lifecycle struct {
	Index uint64    `json:"index"`
	Time  time.Time `json:"time"`
	// Type is the entry type (tlog.TypeHandover, TypeRecoveryShares,
	// TypeRecovery).
	Type         string `json:"type"`
	ManifestHash string `json:"manifest_hash"`
	// The broker the key moved to (handover) or that restored it
	// (recovery).
	Platform    string `json:"platform,omitempty"`
	Simulated   bool   `json:"simulated,omitempty"`
	Measurement string `json:"measurement,omitempty"`
	// Holders are the holders who got shares (recovery-shares) or sent
	// them (recovery); Threshold how many restore the key.
	Holders   []string `json:"holders,omitempty"`
	Threshold int      `json:"threshold,omitempty"`
	// SharesIndex is the recovery-shares entry a recovery used.
	SharesIndex uint64 `json:"shares_index,omitempty"`
}

// Describe says in one line what the entry did.
func (l Lifecycle) Describe() string {
	switch l.Type {
	case tlog.TypeHandover:
		return fmt.Sprintf("master key handed over to a %s broker with measurement %s", platformLabel(l.Platform, l.Simulated), clip(l.Measurement, 24))
	case tlog.TypeRecoveryShares:
		return fmt.Sprintf("master key split for recovery: %d of %v", l.Threshold, l.Holders)
	case tlog.TypeRecovery:
		return fmt.Sprintf("master key recovered by %v (shares of entry %d) on a %s broker", l.Holders, l.SharesIndex, platformLabel(l.Platform, l.Simulated))
	}
	return l.Type
}

func platformLabel(p string, sim bool) string {
	if sim {
		return p + "(sim)"
	}
	return p
}

// sharesRecord is what the replay keeps of a recovery-shares entry.
type sharesRecord struct {
	Threshold int      `json:"threshold"`
	Holders   []string `json:"holders"`
}

// lifecycleEntry judges a lifecycle entry. The master key may move only
// under the active manifest: to a newcomer its service reference values
// list (by measurement; the broker checked the whole evidence), split for
// exactly the holders it names, restored by at least the threshold of the
// holders of a logged recovery-shares entry.
func (a *Replayer) lifecycleEntry(index uint64, en *tlog.Entry) {
	l := Lifecycle{Index: index, Time: en.Time, Type: en.Type}
	defer func() { a.ev.Lifecycle(l) }()
	switch en.Type {
	case tlog.TypeHandover:
		h := en.Handover
		l.ManifestHash, l.Platform, l.Simulated, l.Measurement = h.ManifestHash, h.Platform, h.Simulated, h.Measurement
		if !a.underActive(index, "handover", h.ManifestHash) {
			return
		}
		if h.Simulated && !a.active.AllowSimulated() {
			a.anomaly(index, "handover to a simulated broker under manifest version %d, which does not allow simulated evidence", a.active.Version())
		}
		if !serviceMeasurement(a.active, h.Platform, h.Measurement) {
			a.anomaly(index, "handover to a %s broker with measurement %s, which the service reference values of manifest version %d do not list", h.Platform, clip(h.Measurement, 100), a.active.Version())
		}
	case tlog.TypeRecoveryShares:
		rs := en.RecoveryShares
		l.ManifestHash, l.Threshold = rs.ManifestHash, rs.Threshold
		for _, s := range rs.Shares {
			l.Holders = append(l.Holders, s.Holder)
		}
		if len(a.shares) >= a.limits.MaxManifests {
			// Kept like manifests, and bounded alike against a hostile log.
			a.limitErr = &LimitError{What: "recovery-shares entries", Limit: uint64(a.limits.MaxManifests), Got: uint64(len(a.shares)) + 1, Index: int64(index)}
			return
		}
		a.shares[index] = sharesRecord{Threshold: rs.Threshold, Holders: slices.Clone(l.Holders)}
		if !a.underActive(index, "recovery-shares", rs.ManifestHash) {
			return
		}
		p := a.active.Recovery()
		if !p.Active() {
			a.anomaly(index, "recovery shares under manifest version %d, which names no recovery holders", a.active.Version())
			return
		}
		same := p.Threshold == rs.Threshold && len(p.Holders) == len(rs.Shares)
		for i := 0; same && i < len(p.Holders); i++ {
			same = p.Holders[i].Name == rs.Shares[i].Holder && p.Holders[i].Fingerprint() == rs.Shares[i].Fingerprint
		}
		if !same {
			a.anomaly(index, "recovery shares for %d of %v, but manifest version %d names %s of other holders or keys", rs.Threshold, l.Holders, a.active.Version(), p)
		}
	case tlog.TypeRecovery:
		r := en.Recovery
		l.ManifestHash, l.Platform, l.Simulated, l.Measurement, l.Holders, l.SharesIndex = r.ManifestHash, r.Platform, r.Simulated, r.Measurement, r.Holders, r.SharesIndex
		if !a.underActive(index, "recovery", r.ManifestHash) {
			return
		}
		if r.Simulated && !a.active.AllowSimulated() {
			a.anomaly(index, "recovery on a simulated broker under manifest version %d, which does not allow simulated evidence", a.active.Version())
		}
		rec, ok := a.shares[r.SharesIndex]
		if !ok || r.SharesIndex >= index {
			a.anomaly(index, "recovery with the shares of entry %d, which is not an earlier recovery-shares entry", r.SharesIndex)
			return
		}
		l.Threshold = rec.Threshold
		for _, h := range r.Holders {
			if !slices.Contains(rec.Holders, h) {
				a.anomaly(index, "recovery names holder %q, who has no share in entry %d", h, r.SharesIndex)
			}
		}
		if len(r.Holders) < rec.Threshold {
			a.anomaly(index, "recovery by %d holder(s), entry %d requires %d", len(r.Holders), r.SharesIndex, rec.Threshold)
		}
	}
}

// underActive reports whether a lifecycle entry names the active manifest,
// and finds an anomaly when it does not.
func (a *Replayer) underActive(index uint64, what, hash string) bool {
	if a.active == nil {
		a.anomaly(index, "%s before any manifest", what)
		return false
	}
	if hash != a.active.Hash() {
		a.anomaly(index, "%s under manifest %s, the active version is %d (%s)", what, hash, a.active.Version(), a.active.Hash())
		return false
	}
	return true
}

// serviceMeasurement reports whether m's service reference values list the
// launch measurement hexM (SNP MEASUREMENT, TDX MRTD) on platform p.
func serviceMeasurement(m *manifest.Manifest, p, hexM string) bool {
	v, err := hex.DecodeString(hexM)
	if err != nil {
		return false
	}
	svc := m.Document().Service
	var lists []manifest.HexList
	switch p {
	case "snp":
		for _, alt := range svc.SNP {
			lists = append(lists, alt.Measurement)
		}
	case "tdx":
		for _, alt := range svc.TDX {
			lists = append(lists, alt.MRTD)
		}
	}
	for _, l := range lists {
		if l.Any || slices.ContainsFunc(l.Values, func(x []byte) bool { return bytes.Equal(x, v) }) {
			return true
		}
	}
	return false
}
