package audit

import (
	"slices"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/manifest"
)

// CheckHistory cross-checks the broker's manifest history, which carries
// the owner signatures that the log's manifest entries only name, against
// the manifest entries replayed so far: the same versions at the same log
// indices with the same bytes, each signed as manifest.VerifyChain
// requires (a version 1 that carries signatures by its own owners), by
// exactly the owners its entry names. A verified version is marked
// SignaturesChecked in Manifests. Disagreements are anomalies.
//
// After a version whose signatures fail, the check goes on from that
// version as a new anchor, so that every bad version is reported.
func (a *Replayer) CheckHistory(h []api.Manifest) {
	if len(h) != len(a.manifests) {
		a.finding(-1, false, "the broker's history has %d manifest versions, the log %d", len(h), len(a.manifests))
		return
	}
	var chain manifest.Chain
	for i, v := range h {
		lm := &a.manifests[i]
		if v.Hash != lm.Hash || v.LogIndex != lm.Index || manifest.HashOf(v.Body) != lm.Hash {
			a.finding(-1, false, "history version %d is %s at %d, the log has %s at %d", v.Version, v.Hash, v.LogIndex, lm.Hash, lm.Index)
			return
		}
		if !lm.parsed {
			return // reported by the replay
		}
		signed := manifest.SignedVersion{Body: v.Body, Signatures: v.Signatures}
		l, err := chain.Append(signed)
		if err != nil {
			a.finding(-1, false, "manifest version %d signatures: %v", lm.Version, err)
			// Go on from this version, unverified, as a new anchor.
			chain = manifest.Chain{}
			if _, err := chain.Append(manifest.SignedVersion{Body: v.Body}); err != nil {
				return
			}
			continue
		}
		if chain.Len() == 1 && (l.Manifest.Version() != 1 || len(v.Signatures) == 0) {
			continue // an anchor whose signatures are not checked
		}
		if !slices.Equal(l.Signers, sorted(lm.Signers)) {
			a.finding(-1, false, "manifest version %d: signatures are by %v, the log names %v", lm.Version, l.Signers, lm.Signers)
			continue
		}
		lm.SignaturesChecked = true
	}
}

func sorted(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}
