package attest

import (
	"slices"
	"testing"
)

func TestDecodeSNPTCB(t *testing.T) {
	for _, tt := range []struct {
		product string
		v       uint64
		want    SNPTCB
	}{
		// MICROCODE 0xd5, SNP 0x16, reserved, TEE 0, BOOT_LOADER 4.
		{"Milan", 0xd5_16_00000000_00_04, SNPTCB{Bootloader: 4, TEE: 0, SNP: 22, Microcode: 213}},
		{"Genoa", 0x08_03_00000000_01_02, SNPTCB{Bootloader: 2, TEE: 1, SNP: 3, Microcode: 8}},
		// MICROCODE 0xd1, reserved, SNP 8, TEE 1, BOOT_LOADER 3, FMC 9.
		{"Turin", 0xd1_000000_08_01_03_09, SNPTCB{FMC: 9, Bootloader: 3, TEE: 1, SNP: 8, Microcode: 0xd1}},
	} {
		got, err := DecodeSNPTCB(tt.product, tt.v)
		if err != nil || got != tt.want {
			t.Errorf("DecodeSNPTCB(%s, %#x) = %+v, %v; want %+v", tt.product, tt.v, got, err, tt.want)
		}
		back, err := got.Encode(tt.product)
		if err != nil || back != tt.v {
			t.Errorf("%+v.Encode(%s) = %#x, %v; want %#x", got, tt.product, back, err, tt.v)
		}
		if SNPHasFMC(tt.product) != (tt.product == "Turin") {
			t.Errorf("SNPHasFMC(%s) = %v", tt.product, !(tt.product == "Turin"))
		}
	}
	if _, err := DecodeSNPTCB("Venice", 1); err == nil {
		t.Error("DecodeSNPTCB(Venice) succeeded")
	}
	if _, err := (SNPTCB{}).Encode(""); err == nil {
		t.Error("Encode(no product) succeeded")
	}
	if _, err := (SNPTCB{FMC: 1}).Encode("Genoa"); err == nil {
		t.Error("Encode(an FMC level, Genoa) succeeded")
	}
	if !(SNPTCB{FMC: 1, Microcode: 2}).LE(SNPTCB{FMC: 1, Microcode: 3}) || (SNPTCB{FMC: 2}).LE(SNPTCB{FMC: 1, Microcode: 9}) {
		t.Error("LE is not component-wise")
	}
	if got := SNPProductLines(); !slices.Equal(got, []string{"Milan", "Genoa", "Turin"}) {
		t.Errorf("SNPProductLines() = %q", got)
	}
	for _, p := range SNPProductLines() {
		if _, err := DecodeSNPTCB(p, 0); err != nil {
			t.Errorf("no layout for listed product %s: %v", p, err)
		}
	}
}
