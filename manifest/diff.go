package manifest

import (
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Change is one difference between two manifests.
type Change struct {
	// Field is a path such as `workers["gpu"].snp[0].measurement`.
	Field string `json:"field"`
	// Kind is "added", "removed" or "changed".
	Kind string `json:"kind"`
	Old  string `json:"old,omitempty"`
	New  string `json:"new,omitempty"`
}

func (c Change) String() string {
	switch c.Kind {
	case "changed":
		return fmt.Sprintf("%s: %s -> %s", c.Field, c.Old, c.New)
	case "added":
		if c.New == "" {
			return c.Field + ": added"
		}
		return fmt.Sprintf("%s: added %s", c.Field, c.New)
	default:
		if c.Old == "" {
			return c.Field + ": removed"
		}
		return fmt.Sprintf("%s: removed %s", c.Field, c.Old)
	}
}

// Diff lists what changed from old to new: reference values, worker
// classes, clients and their key patterns, key release rules, owners and
// threshold, the witness policy (quorum, and each witness's key and URL),
// the recovery policy (threshold, and each holder's key by fingerprint),
// and the header fields. Owner and client keys are shown by
// fingerprint. A class, alternative, client or rule that appears or
// disappears as a whole is one change. Changes are sorted by field.
func Diff(old, new *Manifest) []Change {
	a, b := flatten(old), flatten(new)
	var out []Change
	// An entity's ancestors are entities whose path is a prefix of it; a
	// leaf is compared only when all its ancestors exist on both sides.
	var entities []string
	for p, l := range a {
		if l.entity {
			entities = append(entities, p)
		}
	}
	for p, l := range b {
		if _, ok := a[p]; l.entity && !ok {
			entities = append(entities, p)
		}
	}
	ancestorsBoth := func(path string) bool {
		for _, p := range entities {
			if p != path && strings.HasPrefix(path, p) {
				_, inA := a[p]
				_, inB := b[p]
				if !inA || !inB {
					return false
				}
			}
		}
		return true
	}
	for p, la := range a {
		lb, ok := b[p]
		if !ancestorsBoth(p) {
			continue
		}
		switch {
		case !ok && la.entity:
			out = append(out, Change{Field: p, Kind: "removed"})
		case !ok:
			for _, v := range la.vals {
				out = append(out, Change{Field: p, Kind: "removed", Old: v})
			}
		case la.entity:
		case !la.set:
			if la.vals[0] != lb.vals[0] {
				out = append(out, Change{Field: p, Kind: "changed", Old: la.vals[0], New: lb.vals[0]})
			}
		default:
			in := map[string]bool{}
			for _, v := range lb.vals {
				in[v] = true
			}
			for _, v := range la.vals {
				if !in[v] {
					out = append(out, Change{Field: p, Kind: "removed", Old: v})
				}
			}
			in = map[string]bool{}
			for _, v := range la.vals {
				in[v] = true
			}
			for _, v := range lb.vals {
				if !in[v] {
					out = append(out, Change{Field: p, Kind: "added", New: v})
				}
			}
		}
	}
	for p, lb := range b {
		if _, ok := a[p]; ok || !ancestorsBoth(p) {
			continue
		}
		if lb.entity {
			out = append(out, Change{Field: p, Kind: "added"})
			continue
		}
		for _, v := range lb.vals {
			out = append(out, Change{Field: p, Kind: "added", New: v})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Field != out[j].Field {
			return out[i].Field < out[j].Field
		}
		if out[i].Kind != out[j].Kind {
			return out[i].Kind > out[j].Kind // removed before changed before added
		}
		return out[i].Old+out[i].New < out[j].Old+out[j].New
	})
	return out
}

// leaf is one flattened field: a scalar, a set of values, or an entity
// marker (a class, alternative, client or rule that exists).
type leaf struct {
	entity bool
	set    bool
	vals   []string
}

func flatten(m *Manifest) map[string]leaf {
	f := map[string]leaf{}
	if m == nil {
		return f
	}
	d := m.doc
	scalar := func(p, v string) { f[p] = leaf{vals: []string{v}} }
	set := func(p string, v []string) { f[p] = leaf{set: true, vals: v} }
	entity := func(p string) { f[p] = leaf{entity: true} }

	scalar("schema", d.Schema)
	scalar("version", strconv.FormatUint(d.Version, 10))
	scalar("previous", d.Previous)
	scalar("allow_simulated", strconv.FormatBool(d.AllowSimulated))
	scalar("owners.threshold", strconv.Itoa(d.Owners.Threshold))
	set("owners.keys", m.OwnerFingerprints())

	class := func(p string, c Class) {
		entity(p)
		for i, v := range c.SNP {
			ap := indexPath(p+".snp", i)
			entity(ap)
			set(ap+".measurement", hexVals(v.Measurement))
			set(ap+".host_data", hexVals(v.HostData))
			set(ap+".family_id", hexVals(v.FamilyID))
			set(ap+".image_id", hexVals(v.ImageID))
			scalar(ap+".max_policy", bitsVal(v.MaxPolicy))
			set(ap+".vmpl", uintVals(v.VMPL))
			scalar(ap+".min_tcb", v.MinTCB.String())
			scalar(ap+".min_guest_svn", minVal(v.MinGuestSVN))
			set(ap+".product", nameVals(v.Product))
			set(ap+".chip_ids", hexVals(v.ChipIDs))
			set(ap+".id_key_digest", hexVals(v.IDKeyDigest))
			set(ap+".author_key_digest", hexVals(v.AuthorKeyDigest))
			scalar(ap+".min_launch_tcb", optTCB(v.MinLaunchTCB))
		}
		for i, v := range c.TDX {
			ap := indexPath(p+".tdx", i)
			entity(ap)
			set(ap+".mrtd", hexVals(v.MRTD))
			set(ap+".rtmr0", hexVals(v.RTMR0))
			set(ap+".rtmr1", hexVals(v.RTMR1))
			set(ap+".rtmr2", hexVals(v.RTMR2))
			set(ap+".rtmr3", hexVals(v.RTMR3))
			set(ap+".mrconfigid", hexVals(v.MRConfigID))
			set(ap+".mrowner", hexVals(v.MROwner))
			set(ap+".mrownerconfig", hexVals(v.MROwnerConfig))
			set(ap+".xfam", bitsVals(v.XFAM))
			set(ap+".td_attributes", bitsVals(v.TDAttributes))
			scalar(ap+".min_tee_tcb_svn", hexVal(v.MinTEETCBSVN))
			set(ap+".mrseam", hexVals(v.MRSeam))
			set(ap+".mrsignerseam", hexVals(v.MRSignerSeam))
			scalar(ap+".min_tee_tcb_svn2", optHex(v.MinTEETCBSVN2))
			set(ap+".mrservicetd", hexVals(v.MRServiceTD))
			var ex []string
			for _, e := range v.TCBExceptions {
				ex = append(ex, e.String())
			}
			set(ap+".tcb_exceptions", ex)
		}
	}
	class("service", d.Service)
	for name, c := range d.Workers {
		class(keyPath("workers", name), c)
	}
	for i, c := range d.Clients {
		p := keyPath("clients", c.Name)
		entity(p)
		scalar(p+".public_key", m.clients[i].fingerprint)
		set(p+".keys", append([]string(nil), c.Keys...))
	}
	for _, r := range d.Keys {
		p := keyPath("keys", r.Match)
		entity(p)
		set(p+".release_to", append([]string(nil), r.ReleaseTo...))
	}
	scalar("witnesses", d.Witnesses.String())
	if d.Witnesses != nil {
		for _, w := range d.Witnesses.List {
			p := keyPath("witnesses", w.Name)
			entity(p)
			scalar(p+".key", w.Key)
			scalar(p+".url", w.URL)
		}
	}
	scalar("recovery", d.Recovery.String())
	if d.Recovery != nil {
		for _, h := range d.Recovery.Holders {
			p := keyPath("recovery", h.Name)
			entity(p)
			scalar(p+".public_key", h.Fingerprint())
		}
	}
	return f
}

func optTCB(t *TCB) string {
	if t == nil {
		return anyAbsent
	}
	return t.String()
}

func optHex(h *HexValue) string {
	if h == nil {
		return anyAbsent
	}
	return hexVal(*h)
}

func hexVals(l HexList) []string {
	if l.Any {
		return []string{Any}
	}
	out := make([]string, len(l.Values))
	for i, v := range l.Values {
		out[i] = hex.EncodeToString(v)
	}
	return out
}

func bitsVals(l BitsList) []string {
	if l.Any {
		return []string{Any}
	}
	out := make([]string, len(l.Values))
	for i, v := range l.Values {
		out[i] = hex64(v)
	}
	return out
}

func uintVals(l UintList) []string {
	if l.Any {
		return []string{Any}
	}
	out := make([]string, len(l.Values))
	for i, v := range l.Values {
		out[i] = strconv.FormatUint(uint64(v), 10)
	}
	return out
}

func nameVals(l NameList) []string {
	if l.Any {
		return []string{Any}
	}
	return append([]string(nil), l.Values...)
}

func bitsVal(b Bits) string {
	if b.Any {
		return Any
	}
	return hex64(b.Value)
}

func minVal(m MinUint) string {
	if m.Any {
		return Any
	}
	return strconv.FormatUint(uint64(m.Value), 10)
}

func hexVal(h HexValue) string {
	if h.Any {
		return Any
	}
	return hex.EncodeToString(h.Value)
}
