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
	Bootloader uint8
	TEE        uint8
	SNP        uint8
	Microcode  uint8
}

// snpTCBLayouts gives, per product line in release order, the byte of the
// little-endian TCB_VERSION that holds each component, in the order of
// SNPTCB's fields (AMD SEV-SNP firmware ABI, TCB_VERSION). Milan and Genoa
// put BOOT_LOADER, TEE, SNP and MICROCODE in bytes 0, 1, 6 and 7 (2-5 are
// reserved). Turin puts FMC, BOOT_LOADER, TEE, SNP and MICROCODE in bytes
// 0, 1, 2, 3 and 7; its FMC level is not decoded yet.
var snpTCBLayouts = []struct {
	product string
	bytes   [4]uint
}{
	{"Milan", [4]uint{0, 1, 6, 7}},
	{"Genoa", [4]uint{0, 1, 6, 7}},
	{"Turin", [4]uint{1, 2, 3, 7}},
}

func snpTCBLayout(product string) ([4]uint, error) {
	for _, l := range snpTCBLayouts {
		if l.product == product {
			return l.bytes, nil
		}
	}
	return [4]uint{}, fmt.Errorf("unknown SNP product %q: TCB layout unknown", product)
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

// DecodeSNPTCB splits the TCB_VERSION v of a chip of the given product
// line ("Milan", "Genoa", "Turin") into its components. It fails for a
// product line whose layout it does not know.
func DecodeSNPTCB(product string, v uint64) (SNPTCB, error) {
	l, err := snpTCBLayout(product)
	if err != nil {
		return SNPTCB{}, err
	}
	b := func(i uint) uint8 { return uint8(v >> (8 * i)) }
	return SNPTCB{Bootloader: b(l[0]), TEE: b(l[1]), SNP: b(l[2]), Microcode: b(l[3])}, nil
}

// Encode returns the TCB_VERSION of t in the product line's layout, with
// every byte no field of t names (reserved bytes, Turin's FMC) zero.
func (t SNPTCB) Encode(product string) (uint64, error) {
	l, err := snpTCBLayout(product)
	if err != nil {
		return 0, err
	}
	return uint64(t.Bootloader)<<(8*l[0]) | uint64(t.TEE)<<(8*l[1]) | uint64(t.SNP)<<(8*l[2]) | uint64(t.Microcode)<<(8*l[3]), nil
}
