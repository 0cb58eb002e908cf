package attest

import "fmt"

// SNPTCB is an SEV-SNP TCB_VERSION (CURRENT_TCB, REPORTED_TCB, a VCEK's
// TCB, ...) split into the security patch levels reference values name.
// DecodeSNPTCB makes one; Encode turns it back into a TCB_VERSION.
//
// The layout of a TCB_VERSION depends on the product line, and this is the
// only place in kbs that knows it: the manifest's comparison, the vendor
// library's options and the log entries all decode through it.
type SNPTCB struct {
	// FMC is the security patch level of Turin's first mutable code (the
	// firmware the boot ROM loads first). Product lines before Turin have
	// none: it is 0 for them.
	FMC        uint8
	Bootloader uint8
	TEE        uint8
	SNP        uint8
	Microcode  uint8
}

// noByte marks a component a product line's TCB_VERSION does not have.
const noByte = 8

// snpTCBLayouts gives, per product line in release order, the byte of the
// little-endian TCB_VERSION that holds each component, in the order of
// SNPTCB's fields (AMD SEV-SNP firmware ABI, TCB_VERSION). Milan and Genoa
// put BOOT_LOADER, TEE, SNP and MICROCODE in bytes 0, 1, 6 and 7 (2-5 are
// reserved) and have no FMC. Turin puts FMC, BOOT_LOADER, TEE, SNP and
// MICROCODE in bytes 0, 1, 2, 3 and 7 (4-6 are reserved).
var snpTCBLayouts = []struct {
	product string
	bytes   [5]uint
}{
	{"Milan", [5]uint{noByte, 0, 1, 6, 7}},
	{"Genoa", [5]uint{noByte, 0, 1, 6, 7}},
	{"Turin", [5]uint{0, 1, 2, 3, 7}},
}

func snpTCBLayout(product string) ([5]uint, error) {
	for _, l := range snpTCBLayouts {
		if l.product == product {
			return l.bytes, nil
		}
	}
	return [5]uint{}, fmt.Errorf("unknown SNP product %q: TCB layout unknown", product)
}

// SNPProductLines returns the SEV-SNP product lines whose TCB layout
// DecodeSNPTCB knows, in release order: the values a manifest's "product"
// may name.
func SNPProductLines() []string {
	out := make([]string, len(snpTCBLayouts))
	for i, l := range snpTCBLayouts {
		out[i] = l.product
	}
	return out
}

// SNPHasFMC reports whether the product line's TCB_VERSION has an FMC
// component (Turin and later).
func SNPHasFMC(product string) bool {
	l, err := snpTCBLayout(product)
	return err == nil && l[0] != noByte
}

// DecodeSNPTCB splits the TCB_VERSION v of a chip of the given product
// line ("Milan", "Genoa", "Turin") into its components. It fails for a
// product line whose layout it does not know.
func DecodeSNPTCB(product string, v uint64) (SNPTCB, error) {
	l, err := snpTCBLayout(product)
	if err != nil {
		return SNPTCB{}, err
	}
	b := func(i uint) uint8 {
		if i == noByte {
			return 0
		}
		return uint8(v >> (8 * i))
	}
	return SNPTCB{FMC: b(l[0]), Bootloader: b(l[1]), TEE: b(l[2]), SNP: b(l[3]), Microcode: b(l[4])}, nil
}

// Encode returns the TCB_VERSION of t in the product line's layout, with
// every reserved byte zero. It fails for an unknown product line, and for
// an FMC level on a product line without FMC.
func (t SNPTCB) Encode(product string) (uint64, error) {
	l, err := snpTCBLayout(product)
	if err != nil {
		return 0, err
	}
	if l[0] == noByte && t.FMC != 0 {
		return 0, fmt.Errorf("SNP product %q has no FMC component (FMC %d)", product, t.FMC)
	}
	var v uint64
	for i, x := range []uint8{t.FMC, t.Bootloader, t.TEE, t.SNP, t.Microcode} {
		if l[i] != noByte {
			v |= uint64(x) << (8 * l[i])
		}
	}
	return v, nil
}

// LE reports whether every component of t is at most the same component
// of u.
func (t SNPTCB) LE(u SNPTCB) bool {
	return t.FMC <= u.FMC && t.Bootloader <= u.Bootloader && t.TEE <= u.TEE && t.SNP <= u.SNP && t.Microcode <= u.Microcode
}
