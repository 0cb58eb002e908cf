package policy

import (
	"fmt"

	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// Witnesses returns the witness policy of m as a tlog.Quorum: the quorum
// of no witnesses (which requires nothing) when m says "witnesses": "none"
// or has no "witnesses" field, else threshold out of the listed witnesses,
// each with its name, cosignature/v1 verifier key and submission URL. The
// manifest parser has checked everything tlog.NewQuorum checks, so an
// error here means m was not parsed by the manifest package.
func Witnesses(m *manifest.Manifest) (*tlog.Quorum, error) {
	p := m.Witnesses()
	if p == nil || p.None {
		return tlog.NewQuorum(0)
	}
	ws := make([]tlog.Witness, 0, len(p.List))
	for _, w := range p.List {
		tw, err := tlog.NewWitness(w.Name, w.Key, w.URL)
		if err != nil {
			return nil, fmt.Errorf("manifest version %d: %w", m.Version(), err)
		}
		ws = append(ws, tw)
	}
	q, err := tlog.NewQuorum(p.Threshold, ws...)
	if err != nil {
		return nil, fmt.Errorf("manifest version %d: %w", m.Version(), err)
	}
	return q, nil
}

// SameWitnesses reports whether two manifests name the same witness policy:
// the same threshold and the same witnesses (names, keys and URLs), in any
// order. "none" and an absent field are the same policy.
func SameWitnesses(a, b *manifest.Manifest) bool {
	pa, pb := a.Witnesses(), b.Witnesses()
	none := func(p *manifest.WitnessPolicy) bool { return p == nil || p.None }
	if none(pa) || none(pb) {
		return none(pa) == none(pb)
	}
	if pa.Threshold != pb.Threshold || len(pa.List) != len(pb.List) {
		return false
	}
	set := map[manifest.Witness]bool{}
	for _, w := range pa.List {
		set[w] = true
	}
	for _, w := range pb.List {
		if !set[w] {
			return false
		}
	}
	return true
}
