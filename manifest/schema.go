package manifest

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kbs-dev/kbs/internal/hpkekey"
	"github.com/kbs-dev/kbs/internal/witnesskey"
)

// Guest policy bits of SEV-SNP (SEV-SNP firmware ABI, GUEST_POLICY).
const (
	policySMT          = 1 << 16
	policyReserved17   = 1 << 17 // must be 1
	policyMigrateMA    = 1 << 18
	policyDebug        = 1 << 19
	policySingleSocket = 1 << 20
	policyCXLAllow     = 1 << 21
	policyMemAES256XTS = 1 << 22
	policyRAPLDis      = 1 << 23
	policyCTHiding     = 1 << 24
	policyPageSwapDis  = 1 << 25
	policyKnown        = 1<<26 - 1

	// Permissions: the report may set them only if max_policy does.
	policyPermissions = policySMT | policyMigrateMA | policyDebug | policyCXLAllow
	// Restrictions: the report must set them if max_policy does.
	policyRestrictions = policySingleSocket | policyMemAES256XTS | policyRAPLDis | policyCTHiding | policyPageSwapDis
)

// tdDebug is TD_ATTRIBUTES bit 0.
const tdDebug = 1

// The architecturally fixed bits of XFAM and TD_ATTRIBUTES that
// go-tdx-guest's validation enforces: the bits of xfamFixed1 must be set,
// and no bit outside xfamFixed0 or tdAttributesFixed0 may be.
const (
	xfamFixed1         = 0x3
	xfamFixed0         = 0x6dbe7
	tdAttributesFixed0 = 1 | 1<<28 | 1<<30 | 1<<63 // DEBUG, SEPT_VE_DISABLE, PKS, PERFMON
)

// PLATFORM_INFO bits of SEV-SNP reports (SEV-SNP firmware ABI): 0 SMT,
// 1 TSME, 2 ECC, 3 RAPL disabled, 4 ciphertext hiding, 5 alias check
// complete, 6 IOMMU write safe (Turin), 7 SEV-TIO.
const (
	platformSMT       = 1 << 0
	platformTIO       = 1 << 7
	platformInfoKnown = 1<<8 - 1
)

var (
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	keyIDRE  = regexp.MustCompile(`^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$`)
	prevRE   = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	hex64RE  = regexp.MustCompile(`^0x[0-9a-fA-F]{1,16}$`)
	prefixRE = regexp.MustCompile(`^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/?$`)
)

// MaxKeyIDLen is the longest key id, and the longest key id pattern.
const MaxKeyIDLen = 256

// CheckKeyID reports whether id is a valid key id: segments of letters,
// digits, '.', '_' and '-' separated by '/', none of them "." or "..", at
// most MaxKeyIDLen bytes.
func CheckKeyID(id string) error {
	if len(id) > MaxKeyIDLen || !keyIDRE.MatchString(id) {
		return fmt.Errorf("invalid key id %q: want segments of [A-Za-z0-9._-] separated by '/', at most %d bytes", clip(id), MaxKeyIDLen)
	}
	for _, seg := range strings.Split(id, "/") {
		if seg == "." || seg == ".." {
			return fmt.Errorf("invalid key id %q: \".\" and \"..\" are not allowed as segments", clip(id))
		}
	}
	return nil
}

// checkPattern validates a key id pattern: a key id; or a prefix of key id
// characters (which may end in '/') followed by a final '*'; or "*" alone.
func checkPattern(p string) error {
	if len(p) > MaxKeyIDLen {
		return fmt.Errorf("key id pattern longer than %d bytes", MaxKeyIDLen)
	}
	if p == "*" {
		return nil
	}
	if body, ok := strings.CutSuffix(p, "*"); ok {
		if !prefixRE.MatchString(body) {
			return fmt.Errorf("invalid key id pattern %q: '*' may only end a prefix of key id characters", p)
		}
		return nil
	}
	if err := CheckKeyID(p); err != nil {
		return fmt.Errorf("invalid key id pattern %q: want a key id, or a prefix followed by '*'", p)
	}
	return nil
}

// matchPattern reports whether key id matches pattern p.
func matchPattern(p, id string) bool {
	if body, ok := strings.CutSuffix(p, "*"); ok {
		return len(id) > len(body) && strings.HasPrefix(id, body)
	}
	return p == id
}

// decodeDocument converts and validates a parsed JSON tree.
func decodeDocument(root *node) (*Document, error) {
	o, err := asObject(root, "")
	if err != nil {
		return nil, err
	}
	d := &Document{}
	if n, p := o.get("schema"); n != nil {
		s, err := asString(n, p)
		o.fail(err)
		if err == nil && s != Schema {
			o.fail(fieldErr(p, "unsupported schema %q, want %q", s, Schema))
		}
		d.Schema = s
	}
	if n, p := o.get("version"); n != nil {
		v, err := asUint(n, p, 1<<53-1)
		o.fail(err)
		if err == nil && v == 0 {
			o.fail(fieldErr(p, "versions start at 1"))
		}
		d.Version = v
	}
	if n, p := o.get("previous"); n != nil {
		s, err := asString(n, p)
		o.fail(err)
		switch {
		case err != nil:
		case d.Version == 1 && s != "":
			o.fail(fieldErr(p, "must be empty in version 1"))
		case d.Version > 1 && !prevRE.MatchString(s):
			o.fail(fieldErr(p, "want \"sha256:\" and 64 lowercase hex digits, got %q", s))
		}
		d.Previous = s
	}
	if n, p := o.get("allow_simulated"); n != nil {
		b, err := asBool(n, p)
		o.fail(err)
		d.AllowSimulated = b
	}
	if n, p := o.get("owners"); n != nil {
		ow, err := decodeOwners(n, p)
		o.fail(err)
		d.Owners = ow
	}
	if n, p := o.get("service"); n != nil {
		c, err := decodeClass(n, p)
		o.fail(err)
		d.Service = c
	}
	if n, p := o.get("workers"); n != nil {
		w, err := decodeWorkers(n, p)
		o.fail(err)
		d.Workers = w
	}
	if n, p := o.get("clients"); n != nil {
		c, err := decodeClients(n, p)
		o.fail(err)
		d.Clients = c
	}
	if n, p := o.get("keys"); n != nil {
		k, err := decodeKeyRules(n, p, d.Workers)
		o.fail(err)
		d.Keys = k
	}
	if n, p := o.optional("witnesses"); n != nil {
		w, err := decodeWitnesses(n, p)
		o.fail(err)
		d.Witnesses = w
	}
	if n, p := o.optional("recovery"); n != nil {
		r, err := decodeRecovery(n, p)
		o.fail(err)
		d.Recovery = r
	}
	if err := o.done(); err != nil {
		return nil, err
	}
	return d, nil
}

// decodeWitnesses reads the witness policy: "none", or {"threshold",
// "list"} with 1..MaxWitnesses witnesses of distinct names and keys.
func decodeWitnesses(n *node, path string) (*WitnessPolicy, error) {
	if n.kind == jString {
		if n.s != NoWitnessesValue {
			return nil, fieldErr(path, "want %q or an object {\"threshold\", \"list\"}, got %q", NoWitnessesValue, clip(n.s))
		}
		return NoWitnesses(), nil
	}
	o, err := asObject(n, path)
	if err != nil {
		return nil, fieldErr(path, "want %q or an object {\"threshold\", \"list\"}, got %v", NoWitnessesValue, n.kind)
	}
	wp := &WitnessPolicy{}
	var threshold uint64
	if tn, p := o.get("threshold"); tn != nil {
		threshold, err = asUint(tn, p, MaxWitnesses)
		o.fail(err)
		if err == nil && threshold == 0 {
			o.fail(fieldErr(p, "must be at least 1 (write \"witnesses\": %q for no witnesses)", NoWitnessesValue))
		}
	}
	if ln, p := o.get("list"); ln != nil {
		elems, err := asArray(ln, p)
		o.fail(err)
		if err == nil && len(elems) == 0 {
			o.fail(fieldErr(p, "empty: write \"witnesses\": %q for no witnesses", NoWitnessesValue))
		}
		if len(elems) > MaxWitnesses {
			o.fail(fieldErr(p, "at most %d witnesses", MaxWitnesses))
		}
		names := map[string]int{}
		keys := map[string]int{}
		ids := map[string]int{}
		for i, e := range elems {
			if o.err != nil {
				break
			}
			ep := indexPath(p, i)
			w, k, err := decodeWitness(e, ep)
			if err != nil {
				o.fail(err)
				break
			}
			if j, dup := names[w.Name]; dup {
				o.fail(fieldErr(ep+".name", "%q is also the name of list[%d]", w.Name, j))
				break
			}
			if j, dup := keys[string(k.Public)]; dup {
				o.fail(fieldErr(ep+".key", "the same public key as list[%d]: one key counts as one witness", j))
				break
			}
			id := fmt.Sprintf("%s+%08x", k.Name, k.Hash)
			if j, dup := ids[id]; dup {
				o.fail(fieldErr(ep+".key", "the same key name and ID as list[%d]", j))
				break
			}
			names[w.Name], keys[string(k.Public)], ids[id] = i, i, i
			wp.List = append(wp.List, w)
		}
		if o.err == nil && threshold > uint64(len(elems)) {
			o.fail(fieldErr(memberPath(path, "threshold"), "%d exceeds the number of witnesses (%d)", threshold, len(elems)))
		}
	}
	wp.Threshold = int(threshold)
	return wp, o.done()
}

func decodeWitness(n *node, path string) (Witness, witnesskey.Key, error) {
	var w Witness
	var k witnesskey.Key
	o, err := asObject(n, path)
	if err != nil {
		return w, k, err
	}
	if fn, p := o.get("name"); fn != nil {
		s, err := asString(fn, p)
		o.fail(err)
		if err == nil && !nameRE.MatchString(s) {
			o.fail(fieldErr(p, "invalid witness name %q: want 1-64 of [A-Za-z0-9._-], starting with a letter or digit", clip(s)))
		}
		w.Name = s
	}
	if fn, p := o.get("key"); fn != nil {
		s, err := asString(fn, p)
		o.fail(err)
		if err == nil {
			k, err = witnesskey.Parse(s)
			if err != nil {
				o.fail(fieldErr(p, "%v", err))
			}
		}
		w.Key = s
	}
	if fn, p := o.get("url"); fn != nil {
		s, err := asString(fn, p)
		o.fail(err)
		if err == nil {
			if err := witnesskey.CheckURL(s); err != nil {
				o.fail(fieldErr(p, "%v", err))
			}
		}
		w.URL = s
	}
	return w, k, o.done()
}

// decodeRecovery reads the recovery policy: "none", or {"threshold",
// "holders"} with 1..MaxRecoveryHolders holders of distinct names and
// keys.
func decodeRecovery(n *node, path string) (*RecoveryPolicy, error) {
	if n.kind == jString {
		if n.s != NoRecoveryValue {
			return nil, fieldErr(path, "want %q or an object {\"threshold\", \"holders\"}, got %q", NoRecoveryValue, clip(n.s))
		}
		return NoRecovery(), nil
	}
	o, err := asObject(n, path)
	if err != nil {
		return nil, fieldErr(path, "want %q or an object {\"threshold\", \"holders\"}, got %v", NoRecoveryValue, n.kind)
	}
	rp := &RecoveryPolicy{}
	var threshold uint64
	if tn, p := o.get("threshold"); tn != nil {
		threshold, err = asUint(tn, p, MaxRecoveryHolders)
		o.fail(err)
		if err == nil && threshold == 0 {
			o.fail(fieldErr(p, "must be at least 1 (write \"recovery\": %q for no recovery holders)", NoRecoveryValue))
		}
	}
	if ln, p := o.get("holders"); ln != nil {
		elems, err := asArray(ln, p)
		o.fail(err)
		if err == nil && len(elems) == 0 {
			o.fail(fieldErr(p, "empty: write \"recovery\": %q for no recovery holders", NoRecoveryValue))
		}
		if len(elems) > MaxRecoveryHolders {
			o.fail(fieldErr(p, "at most %d recovery holders", MaxRecoveryHolders))
		}
		names := map[string]int{}
		keys := map[string]int{}
		for i, e := range elems {
			if o.err != nil {
				break
			}
			ep := indexPath(p, i)
			h, err := decodeHolder(e, ep)
			if err != nil {
				o.fail(err)
				break
			}
			if j, dup := names[h.Name]; dup {
				o.fail(fieldErr(ep+".name", "%q is also the name of holders[%d]", h.Name, j))
				break
			}
			if j, dup := keys[string(h.Key())]; dup {
				o.fail(fieldErr(ep+".public_key", "the same public key as holders[%d]: one key holds one share", j))
				break
			}
			names[h.Name], keys[string(h.Key())] = i, i
			rp.Holders = append(rp.Holders, h)
		}
		if o.err == nil && threshold > uint64(len(elems)) {
			o.fail(fieldErr(memberPath(path, "threshold"), "%d exceeds the number of holders (%d)", threshold, len(elems)))
		}
	}
	rp.Threshold = int(threshold)
	return rp, o.done()
}

func decodeHolder(n *node, path string) (RecoveryHolder, error) {
	var h RecoveryHolder
	o, err := asObject(n, path)
	if err != nil {
		return h, err
	}
	if fn, p := o.get("name"); fn != nil {
		s, err := asString(fn, p)
		o.fail(err)
		if err == nil && !nameRE.MatchString(s) {
			o.fail(fieldErr(p, "invalid holder name %q: want 1-64 of [A-Za-z0-9._-], starting with a letter or digit", clip(s)))
		}
		h.Name = s
	}
	if fn, p := o.get("public_key"); fn != nil {
		s, err := asString(fn, p)
		o.fail(err)
		if err == nil {
			raw, err := base64.StdEncoding.Strict().DecodeString(s)
			if err == nil && base64.StdEncoding.EncodeToString(raw) != s {
				err = errors.New("not canonical base64")
			}
			if err == nil {
				_, err = hpkekey.Parse(raw)
			}
			if err != nil {
				o.fail(fieldErr(p, "want base64 of an HPKE public key (as kbsctl recover keygen prints it): %v", err))
			}
		}
		h.PublicKey = s
	}
	return h, o.done()
}

const maxOwners = 32

func decodeOwners(n *node, path string) (Owners, error) {
	var ow Owners
	o, err := asObject(n, path)
	if err != nil {
		return ow, err
	}
	var threshold uint64
	if tn, p := o.get("threshold"); tn != nil {
		threshold, err = asUint(tn, p, maxOwners)
		o.fail(err)
		if err == nil && threshold == 0 {
			o.fail(fieldErr(p, "must be at least 1"))
		}
	}
	if kn, p := o.get("keys"); kn != nil {
		elems, err := asArray(kn, p)
		o.fail(err)
		if err == nil && len(elems) == 0 {
			o.fail(fieldErr(p, "at least one owner key is required"))
		}
		if len(elems) > maxOwners {
			o.fail(fieldErr(p, "at most %d owner keys", maxOwners))
		}
		seen := map[string]int{}
		for i, e := range elems {
			ep := indexPath(p, i)
			s, err := asString(e, ep)
			if err != nil {
				o.fail(err)
				break
			}
			k, err := parsePublicKeyPEM(s)
			if err != nil {
				o.fail(fieldErr(ep, "%v", err))
				break
			}
			if j, dup := seen[k.fingerprint]; dup {
				o.fail(fieldErr(ep, "the same key as keys[%d] (%s)", j, k.fingerprint))
				break
			}
			seen[k.fingerprint] = i
			ow.Keys = append(ow.Keys, s)
		}
		if o.err == nil && threshold > uint64(len(elems)) {
			o.fail(fieldErr(memberPath(path, "threshold"), "%d exceeds the number of owner keys (%d)", threshold, len(elems)))
		}
	}
	ow.Threshold = int(threshold)
	return ow, o.done()
}

func decodeWorkers(n *node, path string) (map[string]Class, error) {
	if n.kind != jObject {
		return nil, fieldErr(path, "want an object of worker classes, got %v", n.kind)
	}
	w := make(map[string]Class, len(n.keys))
	for i, name := range n.keys {
		p := keyPath(path, name)
		if !nameRE.MatchString(name) {
			return nil, fieldErr(p, "invalid class name: want 1-64 of [A-Za-z0-9._-], starting with a letter or digit")
		}
		if name == ServiceClass {
			return nil, fieldErr(p, "%q is reserved for the broker's own reference values", ServiceClass)
		}
		c, err := decodeClass(n.vals[i], p)
		if err != nil {
			return nil, err
		}
		w[name] = c
	}
	return w, nil
}

func decodeClass(n *node, path string) (Class, error) {
	var c Class
	o, err := asObject(n, path)
	if err != nil {
		return c, err
	}
	if sn, p := o.optional("snp"); sn != nil {
		elems, err := asArray(sn, p)
		o.fail(err)
		if err == nil && len(elems) == 0 {
			o.fail(fieldErr(p, "empty: leave the field out to accept no SNP evidence"))
		}
		for i, e := range elems {
			v, err := decodeSNP(e, indexPath(p, i))
			if err != nil {
				o.fail(err)
				break
			}
			c.SNP = append(c.SNP, v)
		}
	}
	if tn, p := o.optional("tdx"); tn != nil {
		elems, err := asArray(tn, p)
		o.fail(err)
		if err == nil && len(elems) == 0 {
			o.fail(fieldErr(p, "empty: leave the field out to accept no TDX evidence"))
		}
		for i, e := range elems {
			v, err := decodeTDX(e, indexPath(p, i))
			if err != nil {
				o.fail(err)
				break
			}
			c.TDX = append(c.TDX, v)
		}
	}
	if err := o.done(); err != nil {
		return c, err
	}
	if len(c.SNP) == 0 && len(c.TDX) == 0 {
		return c, fieldErr(path, "no reference values: give \"snp\" or \"tdx\" alternatives")
	}
	return c, nil
}

func decodeSNP(n *node, path string) (SNPValues, error) {
	var v SNPValues
	o, err := asObject(n, path)
	if err != nil {
		return v, err
	}
	hexField := func(name string, size int, anyOK bool) HexList {
		fn, p := o.get(name)
		if fn == nil {
			return HexList{}
		}
		l, err := decodeHexList(fn, p, size, anyOK)
		o.fail(err)
		return l
	}
	v.Measurement = hexField("measurement", 48, false)
	v.HostData = hexField("host_data", 32, true)
	v.FamilyID = hexField("family_id", 16, true)
	v.ImageID = hexField("image_id", 16, true)
	if fn, p := o.get("max_policy"); fn != nil {
		b, err := decodeBits(fn, p)
		o.fail(err)
		if err == nil && !b.Any {
			switch {
			case b.Value&policyDebug != 0:
				o.fail(fieldErr(p, "sets DEBUG (bit 19): debug guests are never allowed"))
			case b.Value&policyReserved17 == 0:
				o.fail(fieldErr(p, "bit 17 is reserved and must be 1 (for example 0x30000)"))
			case b.Value&^uint64(policyKnown) != 0:
				o.fail(fieldErr(p, "sets reserved bits %s", hex64(b.Value&^uint64(policyKnown))))
			}
		}
		v.MaxPolicy = b
	}
	if fn, p := o.get("vmpl"); fn != nil {
		l, err := decodeUintList(fn, p, 3)
		o.fail(err)
		v.VMPL = l
	}
	if fn, p := o.get("min_tcb"); fn != nil {
		t, err := decodeTCBMin(fn, p)
		o.fail(err)
		v.MinTCB = t
	}
	if fn, p := o.get("min_guest_svn"); fn != nil {
		if isAny(fn) {
			v.MinGuestSVN = MinUint{Any: true}
		} else {
			x, err := asUint(fn, p, math.MaxUint32)
			if err != nil {
				err = fieldErr(p, "want an integer 0..%d or %q", uint32(math.MaxUint32), Any)
			}
			o.fail(err)
			v.MinGuestSVN = MinUint{Value: uint32(x)}
		}
	}
	if fn, p := o.get("product"); fn != nil {
		l, err := decodeNameList(fn, p, snpProducts)
		o.fail(err)
		v.Product = l
	}
	// A chip id is the 64-byte CHIP_ID, or Turin's 8-byte hardware id
	// (which Turin reports in the first 8 bytes of CHIP_ID, the rest zero).
	if fn, p := o.get("chip_ids"); fn != nil {
		l, err := decodeHexList(fn, p, 64, true, 8)
		o.fail(err)
		v.ChipIDs = l
	}
	optionalHex := func(name string, size int) HexList {
		fn, p := o.optional(name)
		if fn == nil {
			return HexList{}
		}
		l, err := decodeHexList(fn, p, size, true)
		o.fail(err)
		return l
	}
	v.IDKeyDigest = optionalHex("id_key_digest", 48)
	v.AuthorKeyDigest = optionalHex("author_key_digest", 48)
	if fn, p := o.optional("min_launch_tcb"); fn != nil {
		t, err := decodeTCBMin(fn, p)
		o.fail(err)
		v.MinLaunchTCB = &t
	}
	return v, o.done()
}

func decodeTDX(n *node, path string) (TDXValues, error) {
	var v TDXValues
	o, err := asObject(n, path)
	if err != nil {
		return v, err
	}
	hexField := func(name string, anyOK bool) HexList {
		fn, p := o.get(name)
		if fn == nil {
			return HexList{}
		}
		l, err := decodeHexList(fn, p, 48, anyOK)
		o.fail(err)
		return l
	}
	v.MRTD = hexField("mrtd", false)
	v.RTMR0 = hexField("rtmr0", true)
	v.RTMR1 = hexField("rtmr1", true)
	v.RTMR2 = hexField("rtmr2", true)
	v.RTMR3 = hexField("rtmr3", true)
	v.MRConfigID = hexField("mrconfigid", true)
	v.MROwner = hexField("mrowner", true)
	v.MROwnerConfig = hexField("mrownerconfig", true)
	if fn, p := o.get("xfam"); fn != nil {
		l, err := decodeBitsList(fn, p)
		o.fail(err)
		v.XFAM = l
	}
	if fn, p := o.get("td_attributes"); fn != nil {
		l, err := decodeBitsList(fn, p)
		o.fail(err)
		for i, x := range l.Values {
			if x&tdDebug != 0 {
				o.fail(fieldErr(indexPath(p, i), "sets DEBUG (bit 0): debug TDs are never allowed"))
			}
		}
		v.TDAttributes = l
	}
	if fn, p := o.get("min_tee_tcb_svn"); fn != nil {
		if isAny(fn) {
			v.MinTEETCBSVN = HexValue{Any: true}
		} else {
			b, err := decodeHex(fn, p, 16)
			o.fail(err)
			v.MinTEETCBSVN = HexValue{Value: b}
		}
	}
	v.MRSeam = hexField("mrseam", true)
	optionalHex := func(name string) HexList {
		fn, p := o.optional(name)
		if fn == nil {
			return HexList{}
		}
		l, err := decodeHexList(fn, p, 48, true)
		o.fail(err)
		return l
	}
	v.MRSignerSeam = optionalHex("mrsignerseam")
	v.MRServiceTD = optionalHex("mrservicetd")
	if fn, p := o.optional("min_tee_tcb_svn2"); fn != nil {
		if isAny(fn) {
			v.MinTEETCBSVN2 = &HexValue{Any: true}
		} else {
			b, err := decodeHex(fn, p, 16)
			o.fail(err)
			v.MinTEETCBSVN2 = &HexValue{Value: b}
		}
	}
	if fn, p := o.optional("tcb_exceptions"); fn != nil {
		l, err := decodeTCBExceptions(fn, p)
		o.fail(err)
		v.TCBExceptions = l
	}
	return v, o.done()
}

var advisoryRE = regexp.MustCompile(`^INTEL-SA-[0-9]{5}$`)

// maxTCBExceptions bounds tcb_exceptions, and the advisories of each.
const maxTCBExceptions = 16

// decodeTCBExceptions reads [{"status", "advisories", "until"}]: a status
// of TCBExceptionStatuses, at least one Intel advisory id, and an RFC 3339
// end.
func decodeTCBExceptions(n *node, path string) ([]TCBException, error) {
	elems, err := asArray(n, path)
	if err != nil {
		return nil, err
	}
	if len(elems) == 0 {
		return nil, fieldErr(path, "empty: leave the field out to admit only the UpToDate TCB status")
	}
	if len(elems) > maxTCBExceptions {
		return nil, fieldErr(path, "at most %d exceptions", maxTCBExceptions)
	}
	var out []TCBException
	for i, e := range elems {
		ep := indexPath(path, i)
		o, err := asObject(e, ep)
		if err != nil {
			return nil, err
		}
		var x TCBException
		if fn, p := o.get("status"); fn != nil {
			s, err := asString(fn, p)
			o.fail(err)
			if err == nil && !slices.Contains(TCBExceptionStatuses, s) {
				o.fail(fieldErr(p, "unknown value %q, want one of %s (OutOfDate and Revoked are never admitted)", clip(s), quoteAll(TCBExceptionStatuses)))
			}
			x.Status = s
		}
		if fn, p := o.get("advisories"); fn != nil {
			l, err := asArray(fn, p)
			o.fail(err)
			if err == nil && (len(l) == 0 || len(l) > 64) {
				o.fail(fieldErr(p, "want 1 to 64 advisory ids: an exception names what it accepts"))
			}
			for j, a := range l {
				s, err := asString(a, indexPath(p, j))
				if err == nil && !advisoryRE.MatchString(s) {
					err = fieldErr(indexPath(p, j), "want an Intel advisory id such as \"INTEL-SA-00615\", got %q", clip(s))
				}
				if err == nil && slices.Contains(x.Advisories, s) {
					err = fieldErr(indexPath(p, j), "duplicate %q", s)
				}
				if err != nil {
					o.fail(err)
					break
				}
				x.Advisories = append(x.Advisories, s)
			}
		}
		if fn, p := o.get("until"); fn != nil {
			s, err := asString(fn, p)
			o.fail(err)
			if err == nil {
				t, err := time.Parse(time.RFC3339, s)
				if err != nil {
					o.fail(fieldErr(p, "want an RFC 3339 time such as \"2027-06-30T00:00:00Z\", got %q", clip(s)))
				}
				x.Until = t
			}
		}
		if err := o.done(); err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, nil
}

// decodeHex reads size bytes as hex, or (chip ids) one of the sizes
// alsoSizes.
func decodeHex(n *node, path string, size int, alsoSizes ...int) ([]byte, error) {
	s, err := asString(n, path)
	if err != nil {
		return nil, err
	}
	b, err := hex.DecodeString(s)
	if err == nil && len(b) == size {
		return b, nil
	}
	for _, a := range alsoSizes {
		if err == nil && len(b) == a {
			return b, nil
		}
	}
	if len(alsoSizes) > 0 {
		return nil, fieldErr(path, "want %d bytes as %d hex digits (or %d as %d), got %q", size, 2*size, alsoSizes[0], 2*alsoSizes[0], clip(s))
	}
	return nil, fieldErr(path, "want %d bytes as %d hex digits, got %q", size, 2*size, clip(s))
}

func decodeHexList(n *node, path string, size int, anyOK bool, alsoSizes ...int) (HexList, error) {
	if isAny(n) {
		if !anyOK {
			return HexList{}, fieldErr(path, "%q is not allowed here: list the accepted values", Any)
		}
		return HexList{Any: true}, nil
	}
	elems, err := listOrAny(n, path, anyOK)
	if err != nil {
		return HexList{}, err
	}
	var l HexList
	for i, e := range elems {
		b, err := decodeHex(e, indexPath(path, i), size, alsoSizes...)
		if err != nil {
			return HexList{}, err
		}
		for j, prev := range l.Values {
			if bytes.Equal(prev, b) {
				return HexList{}, fieldErr(indexPath(path, i), "duplicate of [%d]", j)
			}
		}
		l.Values = append(l.Values, b)
	}
	return l, nil
}

func listOrAny(n *node, path string, anyOK bool) ([]*node, error) {
	if n.kind != jArray {
		if anyOK {
			return nil, fieldErr(path, "want a list of accepted values or %q, got %v", Any, n.kind)
		}
		return nil, fieldErr(path, "want a list of accepted values, got %v", n.kind)
	}
	if len(n.elems) == 0 {
		return nil, fieldErr(path, "empty list accepts nothing: list values or say %q", Any)
	}
	return n.elems, nil
}

func decodeBits(n *node, path string) (Bits, error) {
	if isAny(n) {
		return Bits{Any: true}, nil
	}
	s, err := asString(n, path)
	if err != nil || !hex64RE.MatchString(s) {
		return Bits{}, fieldErr(path, "want a \"0x\"-prefixed hex value of at most 64 bits or %q", Any)
	}
	v, _ := strconv.ParseUint(s[2:], 16, 64)
	return Bits{Value: v}, nil
}

func decodeBitsList(n *node, path string) (BitsList, error) {
	if isAny(n) {
		return BitsList{Any: true}, nil
	}
	elems, err := listOrAny(n, path, true)
	if err != nil {
		return BitsList{}, err
	}
	var l BitsList
	for i, e := range elems {
		ep := indexPath(path, i)
		b, err := decodeBits(e, ep)
		if err != nil || b.Any {
			return BitsList{}, fieldErr(ep, "want a \"0x\"-prefixed hex value of at most 64 bits")
		}
		for j, prev := range l.Values {
			if prev == b.Value {
				return BitsList{}, fieldErr(ep, "duplicate of [%d]", j)
			}
		}
		l.Values = append(l.Values, b.Value)
	}
	return l, nil
}

func decodeUintList(n *node, path string, max uint64) (UintList, error) {
	if isAny(n) {
		return UintList{Any: true}, nil
	}
	elems, err := listOrAny(n, path, true)
	if err != nil {
		return UintList{}, err
	}
	var l UintList
	for i, e := range elems {
		ep := indexPath(path, i)
		x, err := asUint(e, ep, max)
		if err != nil {
			return UintList{}, err
		}
		for j, prev := range l.Values {
			if uint64(prev) == x {
				return UintList{}, fieldErr(ep, "duplicate of [%d]", j)
			}
		}
		l.Values = append(l.Values, uint32(x))
	}
	return l, nil
}

func decodeNameList(n *node, path string, known []string) (NameList, error) {
	if isAny(n) {
		return NameList{Any: true}, nil
	}
	elems, err := listOrAny(n, path, true)
	if err != nil {
		return NameList{}, err
	}
	var l NameList
	for i, e := range elems {
		ep := indexPath(path, i)
		s, err := asString(e, ep)
		if err != nil {
			return NameList{}, err
		}
		ok := false
		for _, k := range known {
			ok = ok || s == k
		}
		if !ok {
			return NameList{}, fieldErr(ep, "unknown value %q, want one of %s", clip(s), quoteAll(known))
		}
		for j, prev := range l.Values {
			if prev == s {
				return NameList{}, fieldErr(ep, "duplicate of [%d]", j)
			}
		}
		l.Values = append(l.Values, s)
	}
	return l, nil
}

func decodeTCBMin(n *node, path string) (TCB, error) {
	if isAny(n) {
		return TCB{Any: true}, nil
	}
	if n.kind != jObject {
		return TCB{}, fieldErr(path, "want an object {bootloader, tee, snp, microcode} or %q, got %v", Any, n.kind)
	}
	o, _ := asObject(n, path)
	var t TCB
	if fn, p := o.optional("fmc"); fn != nil {
		x, err := asUint(fn, p, 255)
		o.fail(err)
		t.FMC = uint8(x)
	}
	for _, f := range []struct {
		name string
		dst  *uint8
	}{{"bootloader", &t.Bootloader}, {"tee", &t.TEE}, {"snp", &t.SNP}, {"microcode", &t.Microcode}} {
		if fn, p := o.get(f.name); fn != nil {
			x, err := asUint(fn, p, 255)
			o.fail(err)
			*f.dst = uint8(x)
		}
	}
	return t, o.done()
}

const maxPatterns = 256

func decodeClients(n *node, path string) ([]Client, error) {
	elems, err := asArray(n, path)
	if err != nil {
		return nil, err
	}
	clients := []Client{}
	names := map[string]int{}
	fps := map[string]int{}
	for i, e := range elems {
		ep := indexPath(path, i)
		o, err := asObject(e, ep)
		if err != nil {
			return nil, err
		}
		var c Client
		if fn, p := o.get("name"); fn != nil {
			s, err := asString(fn, p)
			o.fail(err)
			if err == nil && !nameRE.MatchString(s) {
				o.fail(fieldErr(p, "invalid client name %q: want 1-64 of [A-Za-z0-9._-], starting with a letter or digit", clip(s)))
			} else if j, dup := names[s]; dup && err == nil {
				o.fail(fieldErr(p, "duplicate client name %q (also clients[%d])", s, j))
			}
			names[s] = i
			c.Name = s
		}
		if fn, p := o.get("public_key"); fn != nil {
			s, err := asString(fn, p)
			o.fail(err)
			if err == nil {
				k, err := parsePublicKeyPEM(s)
				if err != nil {
					o.fail(fieldErr(p, "%v", err))
				} else if j, dup := fps[k.fingerprint]; dup {
					o.fail(fieldErr(p, "the same key as clients[%d] (%s)", j, k.fingerprint))
				} else {
					fps[k.fingerprint] = i
				}
			}
			c.PublicKey = s
		}
		if fn, p := o.get("keys"); fn != nil {
			l, err := decodePatterns(fn, p)
			o.fail(err)
			c.Keys = l
		}
		if err := o.done(); err != nil {
			return nil, err
		}
		clients = append(clients, c)
	}
	return clients, nil
}

func decodePatterns(n *node, path string) ([]string, error) {
	elems, err := asArray(n, path)
	if err != nil {
		return nil, err
	}
	if len(elems) == 0 {
		return nil, fieldErr(path, "empty list: give at least one key id pattern")
	}
	if len(elems) > maxPatterns {
		return nil, fieldErr(path, "at most %d patterns", maxPatterns)
	}
	var l []string
	for i, e := range elems {
		ep := indexPath(path, i)
		s, err := asString(e, ep)
		if err != nil {
			return nil, err
		}
		if err := checkPattern(s); err != nil {
			return nil, fieldErr(ep, "%v", err)
		}
		for j, prev := range l {
			if prev == s {
				return nil, fieldErr(ep, "duplicate of [%d]", j)
			}
		}
		l = append(l, s)
	}
	return l, nil
}

func decodeKeyRules(n *node, path string, workers map[string]Class) ([]KeyRule, error) {
	elems, err := asArray(n, path)
	if err != nil {
		return nil, err
	}
	rules := []KeyRule{}
	seen := map[string]int{}
	for i, e := range elems {
		ep := indexPath(path, i)
		o, err := asObject(e, ep)
		if err != nil {
			return nil, err
		}
		var r KeyRule
		if fn, p := o.get("match"); fn != nil {
			s, err := asString(fn, p)
			if err == nil {
				if perr := checkPattern(s); perr != nil {
					err = fieldErr(p, "%v", perr)
				} else if j, dup := seen[s]; dup {
					err = fieldErr(p, "duplicate rule for %q (also keys[%d])", s, j)
				}
			}
			o.fail(err)
			seen[s] = i
			r.Match = s
		}
		if fn, p := o.get("release_to"); fn != nil {
			elems, err := asArray(fn, p)
			o.fail(err)
			if err == nil && len(elems) == 0 {
				o.fail(fieldErr(p, "empty list: give at least one worker class, or drop the rule"))
			}
			for j, c := range elems {
				cp := indexPath(p, j)
				s, err := asString(c, cp)
				if err != nil {
					o.fail(err)
					break
				}
				if _, ok := workers[s]; !ok && workers != nil {
					o.fail(fieldErr(cp, "unknown worker class %q", clip(s)))
					break
				}
				for k, prev := range r.ReleaseTo {
					if prev == s {
						o.fail(fieldErr(cp, "duplicate of [%d]", k))
					}
				}
				r.ReleaseTo = append(r.ReleaseTo, s)
			}
		}
		if err := o.done(); err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// clip shortens s for error messages.
func clip(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}
