package manifest

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kbs-dev/kbs/kbs/attest"
)

// Claims are verified attestation claims, as a kbs/attest Verifier returns
// them: this package checks no evidence, Match compares claims with
// reference values. The names are aliases of kbs/attest's types, so that the
// claims a verifier returns are the claims Match reads, field for field,
// with no copy in between.
type (
	Claims    = attest.Claims
	SNPClaims = attest.SNPClaims
	TDXClaims = attest.TDXClaims
)

// Platform names used in Claims and reports.
const (
	PlatformSNP = "snp"
	PlatformTDX = "tdx"
)

// Check is one compared field.
type Check struct {
	Field    string `json:"field"`
	Expected string `json:"expected"`
	Actual   string `json:"actual"`
	OK       bool   `json:"ok"`
}

// Alternative is the comparison with one set of reference values.
type Alternative struct {
	// Name is the path of the values in the manifest, e.g. `snp[0]`.
	Name    string  `json:"name"`
	Matched bool    `json:"matched"`
	Checks  []Check `json:"checks"`

	index int // position in the class's list of its platform
}

// ClassResult is the comparison with one class.
type ClassResult struct {
	Class   string `json:"class"`
	Matched bool   `json:"matched"`
	// Checks are the class-wide checks (platform, simulated TEE).
	Checks       []Check       `json:"checks"`
	Alternatives []Alternative `json:"alternatives"`
}

// Report is the result of matching claims against one or more classes.
type Report struct {
	Platform  string        `json:"platform"`
	Simulated bool          `json:"simulated"`
	Classes   []ClassResult `json:"classes"`
}

// Matched returns the names of the classes that matched, in report order.
func (r *Report) Matched() []string {
	var out []string
	for _, c := range r.Classes {
		if c.Matched {
			out = append(out, c.Class)
		}
	}
	return out
}

// Failed returns the fields of the checks that failed, in report order
// (class-wide checks, then each alternative's), each as often as it failed.
func (r *Report) Failed() []string {
	var out []string
	for _, c := range r.Classes {
		for _, ch := range c.Checks {
			if !ch.OK {
				out = append(out, ch.Field)
			}
		}
		for _, a := range c.Alternatives {
			for _, ch := range a.Checks {
				if !ch.OK {
					out = append(out, ch.Field)
				}
			}
		}
	}
	return out
}

// OK reports whether some class matched.
func (r *Report) OK() bool { return len(r.Matched()) > 0 }

// String renders the report as a table, one line per checked field.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "platform %s", r.Platform)
	if r.Simulated {
		b.WriteString(" (simulated)")
	}
	b.WriteString("\n")
	mark := func(ok bool) string {
		if ok {
			return "ok  "
		}
		return "FAIL"
	}
	for _, c := range r.Classes {
		verdict := "no match"
		if c.Matched {
			verdict = "MATCH"
		}
		fmt.Fprintf(&b, "class %s: %s\n", c.Class, verdict)
		for _, ch := range c.Checks {
			fmt.Fprintf(&b, "  %s %-26s expected %s, actual %s\n", mark(ch.OK), ch.Field, ch.Expected, ch.Actual)
		}
		for _, a := range c.Alternatives {
			fmt.Fprintf(&b, "  %s: %s\n", a.Name, map[bool]string{true: "match", false: "no match"}[a.Matched])
			for _, ch := range a.Checks {
				fmt.Fprintf(&b, "    %s %-24s expected %s, actual %s\n", mark(ch.OK), ch.Field, ch.Expected, ch.Actual)
			}
		}
	}
	return b.String()
}

// MatchedValues returns the reference values of class's alternatives that
// matched in r, in manifest order: SNP values for a report of SNP claims,
// TDX values for TDX claims. r must be a report m produced (MatchClass,
// MatchService, Match or AuthorizeRelease); a report of another manifest
// or one decoded from JSON gives wrong or no values. The values share
// memory with m: callers must not modify them.
func (m *Manifest) MatchedValues(r *Report, class string) (snp []SNPValues, tdx []TDXValues) {
	if r == nil {
		return nil, nil
	}
	var cl Class
	if class == ServiceClass {
		cl = m.doc.Service
	} else {
		var ok bool
		if cl, ok = m.doc.Workers[class]; !ok {
			return nil, nil
		}
	}
	for _, c := range r.Classes {
		if c.Class != class || !c.Matched {
			continue
		}
		for _, a := range c.Alternatives {
			if !a.Matched {
				continue
			}
			switch {
			case r.Platform == PlatformSNP && a.index < len(cl.SNP) && a.Name == indexPath("snp", a.index):
				snp = append(snp, cl.SNP[a.index])
			case r.Platform == PlatformTDX && a.index < len(cl.TDX) && a.Name == indexPath("tdx", a.index):
				tdx = append(tdx, cl.TDX[a.index])
			}
		}
	}
	return snp, tdx
}

// Summary is a one-line explanation fit for an error message: the matching
// classes, or for each class the fields that failed.
func (r *Report) Summary() string {
	if m := r.Matched(); len(m) > 0 {
		return "matches " + strings.Join(m, ", ")
	}
	var parts []string
	for _, c := range r.Classes {
		var fails []string
		for _, ch := range c.Checks {
			if !ch.OK {
				fails = append(fails, fmt.Sprintf("%s expected %s, actual %s", ch.Field, ch.Expected, ch.Actual))
			}
		}
		for _, a := range c.Alternatives {
			var af []string
			for _, ch := range a.Checks {
				if !ch.OK {
					af = append(af, fmt.Sprintf("%s expected %s, actual %s", ch.Field, ch.Expected, ch.Actual))
				}
			}
			fails = append(fails, a.Name+": "+strings.Join(af, "; "))
		}
		parts = append(parts, fmt.Sprintf("%s: %s", c.Class, strings.Join(fails, " | ")))
	}
	if len(parts) == 0 {
		return "no class to match"
	}
	return "matches no class: " + strings.Join(parts, "; ")
}

// MatchClass compares claims with one class: ServiceClass for the broker's
// own reference values, or a worker class name.
func (m *Manifest) MatchClass(class string, c *Claims) (*Report, error) {
	var cl Class
	if class == ServiceClass {
		cl = m.doc.Service
	} else {
		var ok bool
		if cl, ok = m.doc.Workers[class]; !ok {
			return nil, fmt.Errorf("manifest: no worker class %q (have %s)", class, quoteAll(m.WorkerClasses()))
		}
	}
	r := newReport(c)
	r.Classes = append(r.Classes, m.matchClass(class, cl, c))
	return r, nil
}

// MatchService compares claims with the broker's own reference values.
func (m *Manifest) MatchService(c *Claims) *Report {
	r, _ := m.MatchClass(ServiceClass, c)
	return r
}

// Match compares claims with every worker class, in name order.
func (m *Manifest) Match(c *Claims) *Report {
	r := newReport(c)
	for _, name := range m.WorkerClasses() {
		r.Classes = append(r.Classes, m.matchClass(name, m.doc.Workers[name], c))
	}
	return r
}

func newReport(c *Claims) *Report {
	if c == nil {
		return &Report{}
	}
	return &Report{Platform: string(c.Platform), Simulated: c.Simulated}
}

// ErrNoMatch: the claims match no worker class.
var ErrNoMatch = errors.New("evidence matches no worker class")

// ErrKeyNotAllowed: a matching class may not receive a requested key.
var ErrKeyNotAllowed = errors.New("key may not be released to this worker")

// ReleaseError is the error of AuthorizeRelease; Report explains the match.
type ReleaseError struct {
	Err    error // ErrNoMatch or ErrKeyNotAllowed
	Report *Report
	// Denied are the key ids no matching class may receive.
	Denied []string
}

func (e *ReleaseError) Error() string {
	if errors.Is(e.Err, ErrKeyNotAllowed) {
		return fmt.Sprintf("%v: classes %s may not receive %s", e.Err,
			quoteAll(e.Report.Matched()), quoteAll(e.Denied))
	}
	return fmt.Sprintf("%v: %s", e.Err, e.Report.Summary())
}

func (e *ReleaseError) Unwrap() error { return e.Err }

// AuthorizeRelease decides a key release: it matches claims against every
// worker class and returns the first matching class (in name order) that may
// receive every key in keyIDs, with the report. Otherwise it returns a
// *ReleaseError wrapping ErrNoMatch or ErrKeyNotAllowed.
func (m *Manifest) AuthorizeRelease(c *Claims, keyIDs []string) (string, *Report, error) {
	r := m.Match(c)
	matched := r.Matched()
	if len(matched) == 0 {
		return "", r, &ReleaseError{Err: ErrNoMatch, Report: r}
	}
	for _, class := range matched {
		ok := true
		for _, id := range keyIDs {
			ok = ok && m.ReleaseAllowed(class, id)
		}
		if ok {
			return class, r, nil
		}
	}
	var denied []string
	for _, id := range keyIDs {
		allowed := false
		for _, class := range matched {
			allowed = allowed || m.ReleaseAllowed(class, id)
		}
		if !allowed {
			denied = append(denied, id)
		}
	}
	if len(denied) == 0 {
		// Each key is allowed to some matching class, but no single class
		// may receive them all.
		denied = append(denied, keyIDs...)
	}
	return "", r, &ReleaseError{Err: ErrKeyNotAllowed, Report: r, Denied: denied}
}

func (m *Manifest) matchClass(name string, cl Class, c *Claims) ClassResult {
	res := ClassResult{Class: name}
	if c == nil {
		res.Checks = append(res.Checks, Check{Field: "claims", Expected: "verified claims", Actual: "none"})
		return res
	}
	var platforms []string
	if len(cl.SNP) > 0 {
		platforms = append(platforms, PlatformSNP)
	}
	if len(cl.TDX) > 0 {
		platforms = append(platforms, PlatformTDX)
	}
	platformOK := (c.Platform == PlatformSNP && len(cl.SNP) > 0 && c.SNP != nil) ||
		(c.Platform == PlatformTDX && len(cl.TDX) > 0 && c.TDX != nil)
	actual := string(c.Platform)
	if actual == "" {
		actual = "(none)"
	}
	if (c.Platform == PlatformSNP && c.SNP == nil) || (c.Platform == PlatformTDX && c.TDX == nil) {
		actual += " (claims incomplete)"
	}
	res.Checks = append(res.Checks, Check{Field: "platform", Expected: oneOf(platforms), Actual: actual, OK: platformOK})
	simOK := !c.Simulated || m.doc.AllowSimulated
	simExp := "real hardware"
	if m.doc.AllowSimulated {
		simExp = "real or simulated"
	}
	res.Checks = append(res.Checks, Check{Field: "simulated", Expected: simExp, Actual: map[bool]string{true: "simulated", false: "real hardware"}[c.Simulated], OK: simOK})
	if !platformOK {
		return res
	}
	switch c.Platform {
	case PlatformSNP:
		for i, v := range cl.SNP {
			a := matchSNP(v, c)
			a.Name, a.index = indexPath("snp", i), i
			res.Alternatives = append(res.Alternatives, a)
			res.Matched = res.Matched || a.Matched
		}
	case PlatformTDX:
		for i, v := range cl.TDX {
			a := matchTDX(v, c)
			a.Name, a.index = indexPath("tdx", i), i
			res.Alternatives = append(res.Alternatives, a)
			res.Matched = res.Matched || a.Matched
		}
	}
	res.Matched = res.Matched && simOK
	return res
}

type checker struct{ a Alternative }

func (k *checker) add(field, expected, actual string, ok bool) {
	k.a.Checks = append(k.a.Checks, Check{Field: field, Expected: expected, Actual: actual, OK: ok})
}

func (k *checker) done() Alternative {
	k.a.Matched = true
	for _, c := range k.a.Checks {
		k.a.Matched = k.a.Matched && c.OK
	}
	return k.a
}

func (k *checker) hexIn(field string, l HexList, v []byte) {
	if l.Absent() {
		k.add(field, anyAbsent, hexOrNone(v), true)
		return
	}
	if l.Any {
		k.add(field, Any, hexOrNone(v), true)
		return
	}
	ok := false
	exp := make([]string, len(l.Values))
	for i, x := range l.Values {
		ok = ok || bytes.Equal(x, v)
		exp[i] = hex.EncodeToString(x)
	}
	k.add(field, oneOf(exp), hexOrNone(v), ok)
}

func (k *checker) bitsIn(field string, l BitsList, v uint64) {
	if l.Any {
		k.add(field, Any, hex64(v), true)
		return
	}
	ok := false
	exp := make([]string, len(l.Values))
	for i, x := range l.Values {
		ok = ok || x == v
		exp[i] = hex64(x)
	}
	k.add(field, oneOf(exp), hex64(v), ok)
}

// anyAbsent is the expectation of an optional field the manifest leaves out.
const anyAbsent = Any + " (absent)"

// minTCB adds one check per component of a minimum TCB_VERSION: name.fmc
// (Turin, or a minimum that asks for one), name.bootloader, .tee, .snp and
// .microcode.
func (k *checker) minTCB(name string, min TCB, product string, raw uint64) {
	t, err := attest.DecodeSNPTCB(product, raw)
	if err != nil {
		k.add(name, "at least "+min.String(), fmt.Sprintf("%s (unknown product %q: layout unknown)", hex64(raw), product), false)
		return
	}
	if attest.SNPHasFMC(product) || min.FMC > 0 {
		actual := strconv.Itoa(int(t.FMC))
		if !attest.SNPHasFMC(product) {
			actual = "(none: " + product + " has no FMC)"
		}
		k.add(name+".fmc", "at least "+strconv.Itoa(int(min.FMC)), actual, attest.SNPHasFMC(product) && t.FMC >= min.FMC)
	}
	for _, p := range []struct {
		name     string
		min, got uint8
	}{
		{"bootloader", min.Bootloader, t.Bootloader},
		{"tee", min.TEE, t.TEE},
		{"snp", min.SNP, t.SNP},
		{"microcode", min.Microcode, t.Microcode},
	} {
		k.add(name+"."+p.name, "at least "+strconv.Itoa(int(p.min)), strconv.Itoa(int(p.got)), p.got >= p.min)
	}
}

// minBytes checks a byte-wise minimum (TEE_TCB_SVN).
func (k *checker) minBytes(field string, min, got []byte) {
	ok := len(got) == len(min)
	var low []string
	for i := 0; ok && i < len(got); i++ {
		if got[i] < min[i] {
			ok = false
			low = append(low, fmt.Sprintf("byte %d: %d < %d", i, got[i], min[i]))
		}
	}
	actual := hexOrNone(got)
	if len(low) > 0 {
		actual += " (" + strings.Join(low, ", ") + ")"
	} else if !ok {
		actual += fmt.Sprintf(" (want %d bytes)", len(min))
	}
	k.add(field, "at least "+hex.EncodeToString(min)+" in every byte", actual, ok)
}

func oneOf(v []string) string {
	if len(v) == 1 {
		return v[0]
	}
	return "one of [" + strings.Join(v, ", ") + "]"
}

func hexOrNone(b []byte) string {
	if len(b) == 0 {
		return "(none)"
	}
	return hex.EncodeToString(b)
}

func matchSNP(v SNPValues, c *Claims) Alternative {
	s := c.SNP
	var k checker
	k.hexIn("measurement", v.Measurement, c.Measurement)
	k.hexIn("host_data", v.HostData, s.HostData)
	k.hexIn("family_id", v.FamilyID, s.FamilyID)
	k.hexIn("image_id", v.ImageID, s.ImageID)

	k.add("policy.debug", "0 (never allowed)", strconv.FormatUint(s.Policy>>19&1, 10), s.Policy&policyDebug == 0)
	if v.MaxPolicy.Any {
		k.add("policy", Any+" (debug aside)", hex64(s.Policy), true)
	} else {
		why := policyViolations(v.MaxPolicy.Value, s.Policy)
		actual := hex64(s.Policy)
		if why != "" {
			actual += " (" + why + ")"
		}
		k.add("policy", "at most "+hex64(v.MaxPolicy.Value), actual, why == "")
	}

	if v.VMPL.Any {
		k.add("vmpl", Any, strconv.FormatUint(uint64(s.VMPL), 10), true)
	} else {
		ok := false
		exp := make([]string, len(v.VMPL.Values))
		for i, x := range v.VMPL.Values {
			ok = ok || x == s.VMPL
			exp[i] = strconv.FormatUint(uint64(x), 10)
		}
		k.add("vmpl", oneOf(exp), strconv.FormatUint(uint64(s.VMPL), 10), ok)
	}

	// What go-sev-guest's validation refuses whatever the reference values
	// say, explained here so that the report agrees with the library.
	k.add("policy.cxl_allow", "0 (never admitted)", strconv.FormatUint(s.Policy>>21&1, 10), s.Policy&policyCXLAllow == 0)
	smtOK := v.MaxPolicy.Any || v.MaxPolicy.Value&policySMT != 0
	if smtOK {
		k.add("platform_info.smt", Any+" (max_policy permits SMT)", strconv.FormatUint(s.PlatformInfo&platformSMT, 10), true)
	} else {
		k.add("platform_info.smt", "0 (max_policy forbids SMT)", strconv.FormatUint(s.PlatformInfo&platformSMT, 10), s.PlatformInfo&platformSMT == 0)
	}
	piBad := s.PlatformInfo &^ platformInfoKnown
	piWhy := hex64(s.PlatformInfo)
	switch {
	case s.PlatformInfo&platformTIO != 0:
		piWhy += " (SEV-TIO enabled)"
	case piBad != 0:
		piWhy += " (reserved bits " + hex64(piBad) + ")"
	}
	k.add("platform_info", "no SEV-TIO, no reserved bits", piWhy, s.PlatformInfo&platformTIO == 0 && piBad == 0)

	if v.MinTCB.Any {
		k.add("reported_tcb", Any, hex64(s.ReportedTCB), true)
	} else {
		k.minTCB("reported_tcb", v.MinTCB, s.Product, s.ReportedTCB)
	}
	k.add("tcb_order", "reported <= committed <= current in every byte",
		fmt.Sprintf("%s, %s, %s", hex64(s.ReportedTCB), hex64(s.CommittedTCB), hex64(s.CurrentTCB)),
		bytesLE(s.ReportedTCB, s.CommittedTCB) && bytesLE(s.CommittedTCB, s.CurrentTCB))
	switch {
	case v.MinLaunchTCB == nil:
		k.add("launch_tcb", anyAbsent, hex64(s.LaunchTCB), true)
	case v.MinLaunchTCB.Any:
		k.add("launch_tcb", Any, hex64(s.LaunchTCB), true)
	default:
		k.minTCB("launch_tcb", *v.MinLaunchTCB, s.Product, s.LaunchTCB)
	}

	if v.MinGuestSVN.Any {
		k.add("guest_svn", Any, strconv.FormatUint(uint64(s.GuestSVN), 10), true)
	} else {
		k.add("guest_svn", "at least "+strconv.FormatUint(uint64(v.MinGuestSVN.Value), 10), strconv.FormatUint(uint64(s.GuestSVN), 10), s.GuestSVN >= v.MinGuestSVN.Value)
	}

	prod := s.Product
	if prod == "" {
		prod = "(none)"
	}
	if v.Product.Any {
		k.add("product", Any, prod, true)
	} else {
		ok := false
		for _, p := range v.Product.Values {
			ok = ok || p == s.Product
		}
		k.add("product", oneOf(v.Product.Values), prod, ok)
	}
	k.chipIn(v.ChipIDs, s.ChipID)
	k.hexIn("id_key_digest", v.IDKeyDigest, s.IDKeyDigest)
	k.hexIn("author_key_digest", v.AuthorKeyDigest, s.AuthorKeyDigest)
	return k.done()
}

// chipIn checks CHIP_ID against chip_ids: a 64-byte entry must equal it; an
// 8-byte entry (Turin's hardware id) must equal its first 8 bytes, the
// other 56 being zero.
func (k *checker) chipIn(l HexList, v []byte) {
	if l.Any {
		k.add("chip_id", Any, hexOrNone(v), true)
		return
	}
	ok := false
	exp := make([]string, len(l.Values))
	for i, x := range l.Values {
		ok = ok || ChipIDMatches(x, v)
		exp[i] = hex.EncodeToString(x)
	}
	k.add("chip_id", oneOf(exp), hexOrNone(v), ok)
}

// ChipIDMatches reports whether a chip_ids entry matches a report's
// CHIP_ID: equal, or (an 8-byte hardware id, as AMD's Turin VCEKs carry)
// equal to its first 8 bytes with the remaining 56 zero.
func ChipIDMatches(entry, chipID []byte) bool {
	switch {
	case len(entry) == 64:
		return bytes.Equal(entry, chipID)
	case len(entry) == 8 && len(chipID) == 64:
		return bytes.Equal(entry, chipID[:8]) && allZero(chipID[8:])
	}
	return false
}

// bytesLE reports whether every byte of a is at most the same byte of b:
// a TCB_VERSION order that holds in every product line's layout.
func bytesLE(a, b uint64) bool {
	for i := 0; i < 64; i += 8 {
		if uint8(a>>i) > uint8(b>>i) {
			return false
		}
	}
	return true
}

// policyViolations explains how a report's guest policy exceeds max, or
// returns "".
func policyViolations(max, got uint64) string {
	var why []string
	if got&policyReserved17 == 0 {
		why = append(why, "reserved bit 17 is 0")
	}
	if extra := got &^ uint64(policyKnown); extra != 0 {
		why = append(why, "unknown bits "+hex64(extra))
	}
	if abi, minABI := got&0xffff, max&0xffff; abi < minABI {
		why = append(why, fmt.Sprintf("ABI %d.%d below %d.%d", abi>>8, abi&0xff, minABI>>8, minABI&0xff))
	}
	names := []struct {
		bit  uint64
		name string
	}{
		{policySMT, "SMT"}, {policyMigrateMA, "MIGRATE_MA"}, {policyDebug, "DEBUG"}, {policyCXLAllow, "CXL_ALLOW"},
		{policySingleSocket, "SINGLE_SOCKET"}, {policyMemAES256XTS, "MEM_AES_256_XTS"}, {policyRAPLDis, "RAPL_DIS"},
		{policyCTHiding, "CIPHERTEXT_HIDING"}, {policyPageSwapDis, "PAGE_SWAP_DISABLE"},
	}
	for _, n := range names {
		if n.bit&policyPermissions != 0 && got&n.bit != 0 && max&n.bit == 0 {
			why = append(why, n.name+" set but not permitted")
		}
		if n.bit&policyRestrictions != 0 && max&n.bit != 0 && got&n.bit == 0 {
			why = append(why, n.name+" required but not set")
		}
	}
	return strings.Join(why, ", ")
}

// td10 marks a TD report 1.0 body, which has no TEE_TCB_SVN2 or MRSERVICETD.
const td10Note = " (TD report 1.0)"

func matchTDX(v TDXValues, c *Claims) Alternative {
	t := c.TDX
	td10 := ""
	if t.TEETCBSVN2 == nil {
		td10 = td10Note
	}
	var k checker
	k.hexIn("mrtd", v.MRTD, t.MRTD)
	k.hexIn("rtmr0", v.RTMR0, t.RTMR[0])
	k.hexIn("rtmr1", v.RTMR1, t.RTMR[1])
	k.hexIn("rtmr2", v.RTMR2, t.RTMR[2])
	k.hexIn("rtmr3", v.RTMR3, t.RTMR[3])
	k.hexIn("mrconfigid", v.MRConfigID, t.MRConfigID)
	k.hexIn("mrowner", v.MROwner, t.MROwner)
	k.hexIn("mrownerconfig", v.MROwnerConfig, t.MROwnerConfig)
	k.bitsIn("xfam", v.XFAM, t.XFAM)
	// The architecturally fixed bits go-tdx-guest's validation enforces.
	k.add("xfam.fixed", fmt.Sprintf("bits %s set, none outside %s", hex64(xfamFixed1), hex64(xfamFixed0)), hex64(t.XFAM),
		t.XFAM&xfamFixed1 == xfamFixed1 && t.XFAM&^xfamFixed0 == 0)
	k.add("td_attributes.debug", "0 (never allowed)", strconv.FormatUint(t.TDAttributes&tdDebug, 10), t.TDAttributes&tdDebug == 0)
	k.bitsIn("td_attributes", v.TDAttributes, t.TDAttributes)
	k.add("td_attributes.fixed", "none outside "+hex64(tdAttributesFixed0), hex64(t.TDAttributes), t.TDAttributes&^tdAttributesFixed0 == 0)
	if v.MinTEETCBSVN.Any {
		k.add("tee_tcb_svn", Any, hexOrNone(t.TEETCBSVN), true)
	} else {
		k.minBytes("tee_tcb_svn", v.MinTEETCBSVN.Value, t.TEETCBSVN)
	}
	k.hexIn("mrseam", v.MRSeam, t.MRSeam)
	k.hexIn("mrsignerseam", v.MRSignerSeam, t.MRSignerSeam)
	switch {
	case v.MinTEETCBSVN2 == nil:
		k.add("tee_tcb_svn2", anyAbsent, hexOrNone(t.TEETCBSVN2)+td10, true)
	case v.MinTEETCBSVN2.Any:
		k.add("tee_tcb_svn2", Any, hexOrNone(t.TEETCBSVN2)+td10, true)
	default:
		k.minBytes("tee_tcb_svn2", v.MinTEETCBSVN2.Value, t.TEETCBSVN2)
	}
	k.hexIn("mrservicetd", v.MRServiceTD, t.MRServiceTD)
	k.tcbStatus(v.TCBExceptions, c)
	return k.done()
}

// tcbStatus checks the TDX TCB status of the claims: UpToDate, or a status
// an exception admits for every advisory the claims name, at the time the
// claims were verified.
func (k *checker) tcbStatus(ex []TCBException, c *Claims) {
	t := c.TDX
	actual := t.TCBStatus
	if actual == "" {
		actual = "(not evaluated)"
	}
	if len(t.AdvisoryIDs) > 0 {
		actual += " [" + strings.Join(t.AdvisoryIDs, ", ") + "]"
	}
	exp := []string{"UpToDate"}
	ok := t.TCBStatus == "UpToDate"
	var why []string
	for _, e := range ex {
		exp = append(exp, e.String())
		if ok || e.Status != t.TCBStatus {
			continue
		}
		var missing []string
		for _, a := range t.AdvisoryIDs {
			if !slices.Contains(e.Advisories, a) {
				missing = append(missing, a)
			}
		}
		switch {
		case len(missing) > 0:
			why = append(why, "not excepted: "+strings.Join(missing, ", "))
		case !c.VerifiedAt.Before(e.Until):
			why = append(why, "exception expired "+e.Until.UTC().Format(time.RFC3339)+", verified "+c.VerifiedAt.UTC().Format(time.RFC3339))
		default:
			ok = true
		}
	}
	if !ok && len(why) > 0 {
		actual += " (" + strings.Join(why, "; ") + ")"
	}
	k.add("tcb_status", oneOf(exp), actual, ok)
}
