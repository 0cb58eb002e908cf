package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kbs-dev/kbs/kbs/attest"
)

// Schema is the value of the "schema" field of every manifest this package
// reads and writes.
const Schema = "kbs-manifest/v1"

// Any is the JSON value that explicitly allows any value of a reference
// field.
const Any = "any"

// ServiceClass names the broker's own reference values in MatchClass and in
// reports; it cannot be used as a worker class name.
const ServiceClass = "service"

// MaxSize is the largest manifest accepted, in bytes. Every manifest version
// is logged whole, base64-encoded inside a log entry, and log entries are at
// most 65535 bytes (the C2SP entry-bundle limit); 46 KiB leaves room for the
// entry's other fields with up to 32 signers.
const MaxSize = 46 << 10

// Known SEV-SNP product lines accepted in "product": those whose TCB
// layout kbs/attest knows.
var snpProducts = attest.SNPProductLines()

// Document is the content of a manifest (see docs/manifest.md). Parse fills
// one from a manifest's bytes; Encode turns one into new manifest bytes.
// Changing a Document never changes the Manifest it came from.
type Document struct {
	Schema   string `json:"schema"`
	Version  uint64 `json:"version"`
	Previous string `json:"previous"`
	// AllowSimulated accepts evidence from the simulated TEE (development).
	AllowSimulated bool             `json:"allow_simulated"`
	Owners         Owners           `json:"owners"`
	Service        Class            `json:"service"`
	Workers        map[string]Class `json:"workers"`
	Clients        []Client         `json:"clients"`
	Keys           []KeyRule        `json:"keys"`
	// Witnesses is the witness policy: who cosigns the broker's log
	// checkpoints and how many of them must (docs/witnesses.md). Nil when
	// the manifest has no "witnesses" field: manifests written before kbs
	// had witnesses, which require none. New manifests should state the
	// choice: NoWitnesses(), or a quorum.
	Witnesses *WitnessPolicy `json:"witnesses,omitempty"`
	// Recovery names the holders of the broker's recovery shares and how
	// many of them restore its master key (docs/operating.md, "Recovery").
	// Nil when the manifest has no "recovery" field: manifests written
	// before recovery existed, which name no holders. New manifests should
	// state the choice: NoRecovery(), or holders and a threshold.
	Recovery *RecoveryPolicy `json:"recovery,omitempty"`
}

// NoRecoveryValue is the JSON value of an explicit "no recovery holders"
// policy.
const NoRecoveryValue = "none"

// MaxRecoveryHolders is the most recovery holders a manifest may name.
const MaxRecoveryHolders = 16

// RecoveryPolicy is a manifest's explicit recovery choice: None, or
// Threshold of the Holders' shares restore the broker's master key.
type RecoveryPolicy struct {
	// None is the explicit choice of no recovery ("recovery": "none"): a
	// broker that loses its sealing key loses every key it holds.
	None bool
	// Threshold is how many holders' shares restore the master key:
	// 1..len(Holders).
	Threshold int
	// Holders are the holders, in the order owners wrote them.
	Holders []RecoveryHolder
}

// NoRecovery returns the explicit policy of no recovery holders.
func NoRecovery() *RecoveryPolicy { return &RecoveryPolicy{None: true} }

// RecoveryHolder is one holder of a recovery share.
type RecoveryHolder struct {
	// Name labels the holder in log entries, errors and diffs: 1-64 of
	// [A-Za-z0-9._-].
	Name string `json:"name"`
	// PublicKey is the holder's HPKE public key, base64 of its wire
	// encoding (KEM id, then the key: X25519 or MLKEM768-X25519), as
	// `kbsctl recover keygen` prints it. The broker seals the holder's
	// share to it.
	PublicKey string `json:"public_key"`
}

// Key returns the holder's public key in its wire encoding.
func (h RecoveryHolder) Key() []byte {
	b, _ := base64.StdEncoding.DecodeString(h.PublicKey) // checked by Parse
	return b
}

// Fingerprint returns "sha256:<hex>" of the holder's public key in its
// wire encoding.
func (h RecoveryHolder) Fingerprint() string {
	sum := sha256.Sum256(h.Key())
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Recovery returns a copy of the manifest's recovery policy, or nil if the
// manifest has no "recovery" field (no recovery holders).
func (m *Manifest) Recovery() *RecoveryPolicy {
	if m.doc.Recovery == nil {
		return nil
	}
	p := *m.doc.Recovery
	p.Holders = append([]RecoveryHolder(nil), p.Holders...)
	return &p
}

// Active reports whether the policy names holders (it is neither nil nor
// None).
func (p *RecoveryPolicy) Active() bool { return p != nil && !p.None && len(p.Holders) > 0 }

// CheckRecoveryKept reports whether next may follow prev as far as the
// recovery policy goes: once a version states one, a later version must
// state one too. Dropping the "recovery" field would silently drop the
// holders; going without them takes an explicit "recovery": "none", which
// Diff shows.
func CheckRecoveryKept(prev, next *Manifest) error {
	if prev.doc.Recovery != nil && next.doc.Recovery == nil {
		return fieldErr("recovery", "version %d states a recovery policy (%s) and version %d leaves the field out: write \"recovery\": %q to go without recovery holders", prev.doc.Version, prev.doc.Recovery, next.doc.Version, NoRecoveryValue)
	}
	return nil
}

// MarshalJSON implements json.Marshaler: "none", or {"threshold",
// "holders"}.
func (p RecoveryPolicy) MarshalJSON() ([]byte, error) {
	if p.None {
		return json.Marshal(NoRecoveryValue)
	}
	list := p.Holders
	if list == nil {
		list = []RecoveryHolder{}
	}
	return json.Marshal(struct {
		Threshold int              `json:"threshold"`
		Holders   []RecoveryHolder `json:"holders"`
	}{p.Threshold, list})
}

// String summarizes the policy: "none", or "2 of 3".
func (p *RecoveryPolicy) String() string {
	switch {
	case p == nil:
		return "not stated (no recovery holders)"
	case p.None:
		return NoRecoveryValue
	}
	return fmt.Sprintf("%d of %d", p.Threshold, len(p.Holders))
}

// NoWitnessesValue is the JSON value of an explicit "no witnesses" policy.
const NoWitnessesValue = "none"

// MaxWitnesses is the most witnesses a manifest may name.
const MaxWitnesses = 16

// WitnessPolicy is a manifest's explicit witness choice: None, or a quorum
// of Threshold out of List.
type WitnessPolicy struct {
	// None is the explicit choice of no witnesses ("witnesses": "none").
	None bool
	// Threshold is how many witnesses of List must cosign a checkpoint
	// before anyone relies on it: 1..len(List).
	Threshold int
	// List are the witnesses, in the order owners wrote them.
	List []Witness
}

// NoWitnesses returns the explicit policy of no witnesses.
func NoWitnesses() *WitnessPolicy { return &WitnessPolicy{None: true} }

// Witness is one witness named by the owners.
type Witness struct {
	// Name labels the witness in errors, diffs and metrics: 1-64 of
	// [A-Za-z0-9._-].
	Name string `json:"name"`
	// Key is the witness's C2SP note verifier key for Ed25519
	// cosignature/v1 (type 0x04): "<key name>+<key ID>+<base64 key>".
	Key string `json:"key"`
	// URL is the witness's tlog-witness submission prefix (http or https);
	// the broker POSTs to URL + "/add-checkpoint".
	URL string `json:"url"`
}

// Witnesses returns a copy of the manifest's witness policy, or nil if
// the manifest has no "witnesses" field (no witnesses required).
func (m *Manifest) Witnesses() *WitnessPolicy {
	if m.doc.Witnesses == nil {
		return nil
	}
	p := *m.doc.Witnesses
	p.List = append([]Witness(nil), p.List...)
	return &p
}

// CheckWitnessesKept reports whether next may follow prev as far as the
// witness policy goes: once a version states a witness policy, a later
// version must state one too. Dropping the "witnesses" field would
// silently drop the witness requirement; going without witnesses takes an
// explicit "witnesses": "none", which Diff shows.
func CheckWitnessesKept(prev, next *Manifest) error {
	if prev.doc.Witnesses != nil && next.doc.Witnesses == nil {
		return fieldErr("witnesses", "version %d states a witness policy (%s) and version %d leaves the field out: write \"witnesses\": %q to go without witnesses", prev.doc.Version, prev.doc.Witnesses, next.doc.Version, NoWitnessesValue)
	}
	return nil
}

// MarshalJSON implements json.Marshaler: "none", or {"threshold", "list"}.
func (p WitnessPolicy) MarshalJSON() ([]byte, error) {
	if p.None {
		return json.Marshal(NoWitnessesValue)
	}
	list := p.List
	if list == nil {
		list = []Witness{}
	}
	return json.Marshal(struct {
		Threshold int       `json:"threshold"`
		List      []Witness `json:"list"`
	}{p.Threshold, list})
}

// String summarizes the policy: "none", or "2 of 3".
func (p *WitnessPolicy) String() string {
	switch {
	case p == nil:
		return "not stated (none required)"
	case p.None:
		return NoWitnessesValue
	}
	return fmt.Sprintf("%d of %d", p.Threshold, len(p.List))
}

// Owners are the keys that may sign the next version.
type Owners struct {
	Threshold int `json:"threshold"`
	// Keys are PEM-encoded PKIX public keys (ECDSA P-256 or Ed25519).
	Keys []string `json:"keys"`
}

// Class is a set of alternative reference values; evidence matches the class
// when it matches any one alternative of its platform.
type Class struct {
	SNP []SNPValues `json:"snp,omitempty"`
	TDX []TDXValues `json:"tdx,omitempty"`
}

// SNPValues are reference values for an AMD SEV-SNP attestation report.
type SNPValues struct {
	Measurement HexList  `json:"measurement"` // 48 bytes each; "any" is not allowed
	HostData    HexList  `json:"host_data"`   // 32 bytes each
	FamilyID    HexList  `json:"family_id"`   // 16 bytes each
	ImageID     HexList  `json:"image_id"`    // 16 bytes each
	MaxPolicy   Bits     `json:"max_policy"`  // most permissive guest policy accepted
	VMPL        UintList `json:"vmpl"`        // 0..3
	MinTCB      TCB      `json:"min_tcb"`     // component-wise minimum REPORTED_TCB
	MinGuestSVN MinUint  `json:"min_guest_svn"`
	Product     NameList `json:"product"`  // "Milan", "Genoa", "Turin"
	ChipIDs     HexList  `json:"chip_ids"` // 64 bytes each; 8 bytes (Turin's hardware id) allowed

	// Optional fields: absent means any value (the manifest's comparison
	// still shows them, as "any (absent)").
	IDKeyDigest     HexList `json:"id_key_digest,omitzero"`     // 48 bytes each: SHA-384 of the ID block's key
	AuthorKeyDigest HexList `json:"author_key_digest,omitzero"` // 48 bytes each: SHA-384 of the ID block's author key
	MinLaunchTCB    *TCB    `json:"min_launch_tcb,omitempty"`   // component-wise minimum LAUNCH_TCB
}

// TDXValues are reference values for an Intel TDX quote.
type TDXValues struct {
	MRTD          HexList  `json:"mrtd"` // 48 bytes each; "any" is not allowed
	RTMR0         HexList  `json:"rtmr0"`
	RTMR1         HexList  `json:"rtmr1"`
	RTMR2         HexList  `json:"rtmr2"`
	RTMR3         HexList  `json:"rtmr3"`
	MRConfigID    HexList  `json:"mrconfigid"`
	MROwner       HexList  `json:"mrowner"`
	MROwnerConfig HexList  `json:"mrownerconfig"`
	XFAM          BitsList `json:"xfam"`
	TDAttributes  BitsList `json:"td_attributes"`   // bit 0 (DEBUG) is never allowed
	MinTEETCBSVN  HexValue `json:"min_tee_tcb_svn"` // 16 bytes, compared byte by byte
	MRSeam        HexList  `json:"mrseam"`

	// Optional fields: absent means any value, except TCBExceptions,
	// whose absence admits the UpToDate TCB status only.
	MRSignerSeam  HexList   `json:"mrsignerseam,omitzero"`      // 48 bytes each: signer of the TDX module (zero for Intel's)
	MinTEETCBSVN2 *HexValue `json:"min_tee_tcb_svn2,omitempty"` // 16 bytes; TD report 1.5 (quote v5) only
	MRServiceTD   HexList   `json:"mrservicetd,omitzero"`       // 48 bytes each; TD report 1.5 only
	// TCBExceptions admit TCB statuses other than UpToDate, each for the
	// listed advisories and until a date.
	TCBExceptions []TCBException `json:"tcb_exceptions,omitempty"`
}

// TCBException admits a TDX platform whose TCB status (Intel's collateral,
// the worst of the platform, TDX module and QE levels) is Status, when each
// advisory Intel names for it is in Advisories, until Until (judged at the
// verification time of the claims).
type TCBException struct {
	// Status is "SWHardeningNeeded", "ConfigurationNeeded" or
	// "ConfigurationAndSWHardeningNeeded". OutOfDate and Revoked levels are
	// never admitted.
	Status string `json:"status"`
	// Advisories are Intel security advisory ids ("INTEL-SA-00615").
	Advisories []string `json:"advisories"`
	// Until is when the exception ends (RFC 3339).
	Until time.Time `json:"until"`
}

func (e TCBException) String() string {
	return fmt.Sprintf("%s for [%s] until %s", e.Status, strings.Join(e.Advisories, ", "), e.Until.UTC().Format(time.RFC3339))
}

// TCBExceptionStatuses are the TCB statuses a TCBException may admit.
var TCBExceptionStatuses = []string{"SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"}

// Client is a party that may upload keys whose ids match Keys.
type Client struct {
	Name      string   `json:"name"`
	PublicKey string   `json:"public_key"` // PEM PKIX, ECDSA P-256 or Ed25519
	Keys      []string `json:"keys"`       // key id patterns
}

// KeyRule says which worker classes may receive the keys whose ids match.
type KeyRule struct {
	Match     string   `json:"match"`
	ReleaseTo []string `json:"release_to"`
}

// HexList is an allow list of byte strings, written as hex, or "any".
type HexList struct {
	Any    bool
	Values [][]byte
}

// AnyHex allows any value.
var AnyHex = HexList{Any: true}

// Hexes is an allow list of the given values.
func Hexes(v ...[]byte) HexList { return HexList{Values: v} }

// BitsList is an allow list of 64-bit values written as "0x…" strings, or
// "any".
type BitsList struct {
	Any    bool
	Values []uint64
}

// Bits is a 64-bit value written as a "0x…" string, or "any".
type Bits struct {
	Any   bool
	Value uint64
}

// UintList is an allow list of small integers, or "any".
type UintList struct {
	Any    bool
	Values []uint32
}

// MinUint is a minimum, or "any".
type MinUint struct {
	Any   bool
	Value uint32
}

// NameList is an allow list of names, or "any".
type NameList struct {
	Any    bool
	Values []string
}

// HexValue is one byte string written as hex, or "any".
type HexValue struct {
	Any   bool
	Value []byte
}

// TCB is a component-wise minimum SEV-SNP TCB, or "any". FMC (the Turin
// firmware's first mutable code) exists on Turin only: a minimum above 0
// refuses product lines without it.
type TCB struct {
	Any        bool
	FMC        uint8
	Bootloader uint8
	TEE        uint8
	SNP        uint8
	Microcode  uint8
}

// Absent reports whether l is an optional list the manifest leaves out.
func (l HexList) Absent() bool { return !l.Any && len(l.Values) == 0 }

var anyJSON = []byte(`"` + Any + `"`)

// MarshalJSON implements json.Marshaler.
func (l HexList) MarshalJSON() ([]byte, error) {
	if l.Any {
		return anyJSON, nil
	}
	s := make([]string, len(l.Values))
	for i, v := range l.Values {
		s[i] = hex.EncodeToString(v)
	}
	return json.Marshal(s)
}

// MarshalJSON implements json.Marshaler.
func (l BitsList) MarshalJSON() ([]byte, error) {
	if l.Any {
		return anyJSON, nil
	}
	s := make([]string, len(l.Values))
	for i, v := range l.Values {
		s[i] = hex64(v)
	}
	return json.Marshal(s)
}

// MarshalJSON implements json.Marshaler.
func (b Bits) MarshalJSON() ([]byte, error) {
	if b.Any {
		return anyJSON, nil
	}
	return json.Marshal(hex64(b.Value))
}

// MarshalJSON implements json.Marshaler.
func (l UintList) MarshalJSON() ([]byte, error) {
	if l.Any {
		return anyJSON, nil
	}
	if l.Values == nil {
		return []byte("[]"), nil
	}
	return json.Marshal(l.Values)
}

// MarshalJSON implements json.Marshaler.
func (m MinUint) MarshalJSON() ([]byte, error) {
	if m.Any {
		return anyJSON, nil
	}
	return json.Marshal(m.Value)
}

// MarshalJSON implements json.Marshaler.
func (l NameList) MarshalJSON() ([]byte, error) {
	if l.Any {
		return anyJSON, nil
	}
	if l.Values == nil {
		return []byte("[]"), nil
	}
	return json.Marshal(l.Values)
}

// MarshalJSON implements json.Marshaler.
func (h HexValue) MarshalJSON() ([]byte, error) {
	if h.Any {
		return anyJSON, nil
	}
	return json.Marshal(hex.EncodeToString(h.Value))
}

// MarshalJSON implements json.Marshaler.
func (t TCB) MarshalJSON() ([]byte, error) {
	if t.Any {
		return anyJSON, nil
	}
	return json.Marshal(struct {
		FMC        uint8 `json:"fmc,omitempty"`
		Bootloader uint8 `json:"bootloader"`
		TEE        uint8 `json:"tee"`
		SNP        uint8 `json:"snp"`
		Microcode  uint8 `json:"microcode"`
	}{t.FMC, t.Bootloader, t.TEE, t.SNP, t.Microcode})
}

func hex64(v uint64) string { return "0x" + strconv.FormatUint(v, 16) }

func (t TCB) String() string {
	if t.Any {
		return Any
	}
	s := fmt.Sprintf("bootloader=%d tee=%d snp=%d microcode=%d", t.Bootloader, t.TEE, t.SNP, t.Microcode)
	if t.FMC > 0 {
		s = fmt.Sprintf("fmc=%d ", t.FMC) + s
	}
	return s
}

// SNPTCB returns the minimum as attest's TCB components.
func (t TCB) SNPTCB() attest.SNPTCB {
	return attest.SNPTCB{FMC: t.FMC, Bootloader: t.Bootloader, TEE: t.TEE, SNP: t.SNP, Microcode: t.Microcode}
}

// Encode returns the bytes of a manifest holding d: indented JSON with a final
// newline. It fails, naming the field, when d is not a valid manifest, so
// that what it returns always parses back to a Manifest with the same
// content.
func Encode(d *Document) ([]byte, error) {
	c := *d
	if c.Workers == nil {
		c.Workers = map[string]Class{}
	}
	if c.Clients == nil {
		c.Clients = []Client{}
	}
	if c.Keys == nil {
		c.Keys = []KeyRule{}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&c); err != nil {
		return nil, fmt.Errorf("couldn't encode manifest: %w", err)
	}
	root, err := parseTree(buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("couldn't encode manifest: %w", err)
	}
	var out bytes.Buffer
	format(&out, root, "")
	out.WriteByte('\n')
	if _, err := Parse(out.Bytes()); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// format writes n as indented JSON; arrays of scalars stay on one line.
func format(w *bytes.Buffer, n *node, indent string) {
	switch n.kind {
	case jNull:
		w.WriteString("null")
	case jBool:
		w.WriteString(strconv.FormatBool(n.b))
	case jNumber:
		w.WriteString(n.s)
	case jString:
		writeString(w, n.s)
	case jObject:
		if len(n.keys) == 0 {
			w.WriteString("{}")
			return
		}
		w.WriteString("{\n")
		for i, k := range n.keys {
			w.WriteString(indent + "  ")
			writeString(w, k)
			w.WriteString(": ")
			format(w, n.vals[i], indent+"  ")
			if i < len(n.keys)-1 {
				w.WriteByte(',')
			}
			w.WriteByte('\n')
		}
		w.WriteString(indent + "}")
	case jArray:
		flat := true
		for _, e := range n.elems {
			flat = flat && e.kind != jObject && e.kind != jArray
		}
		if flat {
			w.WriteByte('[')
			for i, e := range n.elems {
				if i > 0 {
					w.WriteString(", ")
				}
				format(w, e, indent)
			}
			w.WriteByte(']')
			return
		}
		w.WriteString("[\n")
		for i, e := range n.elems {
			w.WriteString(indent + "  ")
			format(w, e, indent+"  ")
			if i < len(n.elems)-1 {
				w.WriteByte(',')
			}
			w.WriteByte('\n')
		}
		w.WriteString(indent + "]")
	}
}

func writeString(w *bytes.Buffer, s string) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // strings always encode
	w.Write(bytes.TrimSuffix(b.Bytes(), []byte("\n")))
}

// DevDocument returns the content of a version-1 development manifest: one
// owner key, service reference values, one worker class "demo-worker", a
// client "demo-client" that may write keys matching "demo/*", and "demo/*"
// released to "demo-worker". Simulated evidence is allowed. ownerPEM and
// clientPEM are PEM PKIX public keys.
func DevDocument(ownerPEM, clientPEM string, service, worker Class) *Document {
	return &Document{
		Schema:         Schema,
		Version:        1,
		AllowSimulated: true,
		Owners:         Owners{Threshold: 1, Keys: []string{ownerPEM}},
		Service:        service,
		Workers:        map[string]Class{"demo-worker": worker},
		Clients:        []Client{{Name: "demo-client", PublicKey: clientPEM, Keys: []string{"demo/*"}}},
		Keys:           []KeyRule{{Match: "demo/*", ReleaseTo: []string{"demo-worker"}}},
	}
}

// PinSNP returns SNP reference values that accept exactly the given claims'
// measurement, host data, family and image id, guest policy, VMPL, reported
// TCB, guest SVN, product and chip id. It is meant for development manifests
// and as a starting point to edit; the DEBUG and unknown policy bits are
// cleared and the reserved bit 17 set.
func PinSNP(c *Claims) (SNPValues, error) {
	if c == nil || c.SNP == nil {
		return SNPValues{}, fmt.Errorf("manifest: claims hold no SNP fields")
	}
	s := c.SNP
	t, err := attest.DecodeSNPTCB(s.Product, s.ReportedTCB)
	if err != nil {
		return SNPValues{}, fmt.Errorf("manifest: %w", err)
	}
	launch, err := attest.DecodeSNPTCB(s.Product, s.LaunchTCB)
	if err != nil {
		return SNPValues{}, fmt.Errorf("manifest: %w", err)
	}
	v := SNPValues{
		Measurement: Hexes(clone(c.Measurement)),
		HostData:    Hexes(clone(s.HostData)),
		FamilyID:    Hexes(clone(s.FamilyID)),
		ImageID:     Hexes(clone(s.ImageID)),
		MaxPolicy:   Bits{Value: (s.Policy&^policyDebug | policyReserved17) & policyKnown},
		VMPL:        UintList{Values: []uint32{s.VMPL}},
		MinTCB:      tcbOf(t),
		MinGuestSVN: MinUint{Value: s.GuestSVN},
		Product:     NameList{Values: []string{s.Product}},
		ChipIDs:     Hexes(clone(s.ChipID)),
	}
	if len(s.IDKeyDigest) == 48 {
		v.IDKeyDigest = Hexes(clone(s.IDKeyDigest))
	}
	lt := tcbOf(launch)
	v.MinLaunchTCB = &lt
	// A report without an author key carries a zero digest: nothing to pin.
	if len(s.AuthorKeyDigest) == 48 && !allZero(s.AuthorKeyDigest) {
		v.AuthorKeyDigest = Hexes(clone(s.AuthorKeyDigest))
	}
	return v, nil
}

func tcbOf(t attest.SNPTCB) TCB {
	return TCB{FMC: t.FMC, Bootloader: t.Bootloader, TEE: t.TEE, SNP: t.SNP, Microcode: t.Microcode}
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// PinTDX returns TDX reference values that accept exactly the given claims.
// Like PinSNP it is meant for development manifests; the debug attribute is
// cleared.
func PinTDX(c *Claims) (TDXValues, error) {
	if c == nil || c.TDX == nil {
		return TDXValues{}, fmt.Errorf("manifest: claims hold no TDX fields")
	}
	t := c.TDX
	v := TDXValues{
		MRTD:          Hexes(clone(t.MRTD)),
		RTMR0:         Hexes(clone(t.RTMR[0])),
		RTMR1:         Hexes(clone(t.RTMR[1])),
		RTMR2:         Hexes(clone(t.RTMR[2])),
		RTMR3:         Hexes(clone(t.RTMR[3])),
		MRConfigID:    Hexes(clone(t.MRConfigID)),
		MROwner:       Hexes(clone(t.MROwner)),
		MROwnerConfig: Hexes(clone(t.MROwnerConfig)),
		XFAM:          BitsList{Values: []uint64{t.XFAM}},
		TDAttributes:  BitsList{Values: []uint64{t.TDAttributes &^ tdDebug}},
		MinTEETCBSVN:  HexValue{Value: clone(t.TEETCBSVN)},
		MRSeam:        Hexes(clone(t.MRSeam)),
	}
	if len(t.MRSignerSeam) == 48 {
		v.MRSignerSeam = Hexes(clone(t.MRSignerSeam))
	}
	if t.TEETCBSVN2 != nil {
		v.MinTEETCBSVN2 = &HexValue{Value: clone(t.TEETCBSVN2)}
		v.MRServiceTD = Hexes(clone(t.MRServiceTD))
	}
	return v, nil
}

// PinClass returns a class whose alternatives accept exactly the given
// claims: PinSNP of each SNP claims, PinTDX of each TDX claims. kbsd --dev
// builds its development manifest with it.
func PinClass(claims ...*Claims) (Class, error) {
	var cl Class
	for _, c := range claims {
		switch {
		case c == nil:
			return Class{}, fmt.Errorf("manifest: no claims to pin")
		case c.Platform == PlatformSNP:
			v, err := PinSNP(c)
			if err != nil {
				return Class{}, err
			}
			cl.SNP = append(cl.SNP, v)
		case c.Platform == PlatformTDX:
			v, err := PinTDX(c)
			if err != nil {
				return Class{}, err
			}
			cl.TDX = append(cl.TDX, v)
		default:
			return Class{}, fmt.Errorf("manifest: claims of unknown platform %q", c.Platform)
		}
	}
	if len(cl.SNP) == 0 && len(cl.TDX) == 0 {
		return Class{}, fmt.Errorf("manifest: no claims to pin")
	}
	return cl, nil
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

// sortedClasses returns the worker class names in order.
func sortedClasses(m map[string]Class) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func quoteAll(v []string) string {
	q := make([]string, len(v))
	for i, s := range v {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}
