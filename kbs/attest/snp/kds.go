package snp

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/asn1"
	"fmt"

	"github.com/google/go-sev-guest/abi"

	"github.com/kbs-dev/kbs/kbs/attest"
)

// The X.509 extensions AMD's Key Distribution Service puts in VCEK and VLEK
// certificates (AMD, "Versioned Chip Endorsement Key (VCEK) Certificate and
// KDS Interface Specification", 57230), under 1.3.6.1.4.1.3704.1:
//
//	.1     structVersion  INTEGER: 0 (Milan, Genoa), 1 (Turin)
//	.2     productName    IA5String: "Milan-B0", "Genoa", "Turin", ...
//	.3.1   blSPL          INTEGER: boot loader security patch level
//	.3.2   teeSPL         INTEGER
//	.3.3   snpSPL         INTEGER
//	.3.4-7 spl_4..spl_7   INTEGER: reserved, 0 (Turin leaves some out)
//	.3.8   ucodeSPL       INTEGER: microcode
//	.3.9   fmcSPL         INTEGER: Turin's first mutable code
//	.4     hwID           the raw CHIP_ID bytes: 64 (Milan, Genoa) or 8
//	                      (Turin, the first 8 bytes of CHIP_ID); VCEK only
//	.5     cspID          IA5String: the cloud provider; VLEK only
//
// go-sev-guest v0.15.0 reads only the Milan/Genoa form: it rejects the
// fmcSPL OID and 8-byte hardware ids, so real Turin VCEKs fail there.
// parseEndorsementExtensions reads all three product lines.
var (
	oidAMDKDS     = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1}
	oidAuthKeyID  = asn1.ObjectIdentifier{2, 5, 29, 35}
	turinHWIDSize = 8
)

// endorsementExtensions are the KDS extensions of a VCEK or VLEK.
type endorsementExtensions struct {
	StructVersion int
	ProductName   string
	// TCB is the TCB_VERSION the certificate was issued for, in the
	// product line's layout (reserved bytes as the certificate gives them).
	TCB uint64
	// HWID is the hardware id of a VCEK: the 64-byte CHIP_ID, or Turin's
	// 8-byte one. Nil for a VLEK.
	HWID []byte
	// CSPID names the cloud provider of a VLEK. Empty for a VCEK.
	CSPID string
}

// parseEndorsementExtensions reads the KDS extensions of cert, a VCEK or
// VLEK (key) of a chip of productLine. It fails, naming the extension, for
// a missing, duplicate, malformed or unknown AMD extension, for a TCB
// component a product line does not have, and for a certificate whose
// form is not AMD's (subject common name, ECDSA P-384 key, RSASSA-PSS
// SHA-384 signature).
func parseEndorsementExtensions(cert *x509.Certificate, key abi.ReportSigner, productLine string) (*endorsementExtensions, error) {
	want := "SEV-VCEK"
	if key == abi.VlekReportSigner {
		want = "SEV-VLEK"
	}
	if cert.Subject.CommonName != want {
		return nil, fmt.Errorf("subject common name %q, want %q", cert.Subject.CommonName, want)
	}
	if cert.Version != 3 || cert.SignatureAlgorithm != x509.SHA384WithRSAPSS {
		return nil, fmt.Errorf("not an X.509 v3 certificate signed with RSASSA-PSS SHA-384")
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P384() {
		return nil, fmt.Errorf("public key is not ECDSA P-384")
	}
	ext := map[string][]byte{} // the OID's arc below 3704.1, e.g. "3.1"
	for _, e := range cert.Extensions {
		if e.Id.Equal(oidAuthKeyID) {
			continue
		}
		if len(e.Id) <= len(oidAMDKDS) || !e.Id[:len(oidAMDKDS)].Equal(oidAMDKDS) {
			continue // not AMD's: x509 has checked what it knows
		}
		arc := e.Id[len(oidAMDKDS):].String()
		switch arc {
		case "1", "2", "3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "3.7", "3.8", "3.9", "4", "5":
		default:
			return nil, fmt.Errorf("unknown AMD KDS extension %v", e.Id)
		}
		if _, dup := ext[arc]; dup {
			return nil, fmt.Errorf("duplicate AMD KDS extension %v", e.Id)
		}
		ext[arc] = e.Value
	}
	x := &endorsementExtensions{}
	var err error
	integer := func(arc, name string) (int, bool, error) {
		v, ok := ext[arc]
		if !ok {
			return 0, false, nil
		}
		var n int
		rest, err := asn1.Unmarshal(v, &n)
		if err != nil || len(rest) != 0 || n < 0 || n > 255 {
			return 0, true, fmt.Errorf("%s (%v.%s): not an INTEGER 0..255", name, oidAMDKDS, arc)
		}
		return n, true, nil
	}
	ia5 := func(arc, name string) (string, bool, error) {
		v, ok := ext[arc]
		if !ok {
			return "", false, nil
		}
		var s string
		if len(v) == 0 || v[0] != asn1.TagIA5String {
			return "", true, fmt.Errorf("%s: not an IA5String", name)
		}
		rest, err := asn1.UnmarshalWithParams(v, &s, "ia5")
		if err != nil || len(rest) != 0 {
			return "", true, fmt.Errorf("%s: not an IA5String", name)
		}
		return s, true, nil
	}
	var ok bool
	if x.StructVersion, ok, err = integer("1", "structVersion"); err != nil || !ok {
		return nil, orMissing(err, "structVersion")
	}
	if x.ProductName, ok, err = ia5("2", "productName"); err != nil || !ok {
		return nil, orMissing(err, "productName")
	}
	var spl [10]int // index by the last arc: 1 bl, 2 tee, 3 snp, 4-7 reserved, 8 ucode, 9 fmc
	for i := 1; i <= 9; i++ {
		v, present, err := integer(fmt.Sprintf("3.%d", i), fmt.Sprintf("SPL 3.%d", i))
		if err != nil {
			return nil, err
		}
		switch {
		case present:
			spl[i] = v
		case i == 1 || i == 2 || i == 3 || i == 8:
			return nil, fmt.Errorf("no SPL 3.%d (%s) extension", i, map[int]string{1: "blSPL", 2: "teeSPL", 3: "snpSPL", 8: "ucodeSPL"}[i])
		case i == 9 && attest.SNPHasFMC(productLine):
			return nil, fmt.Errorf("no fmcSPL (3.9) extension in a %s certificate", productLine)
		}
	}
	hasFMC := attest.SNPHasFMC(productLine)
	if _, present := ext["3.9"]; present && !hasFMC {
		return nil, fmt.Errorf("fmcSPL (3.9) extension in a %s certificate, which has no FMC", productLine)
	}
	t := attest.SNPTCB{FMC: uint8(spl[9]), Bootloader: uint8(spl[1]), TEE: uint8(spl[2]), SNP: uint8(spl[3]), Microcode: uint8(spl[8])}
	if x.TCB, err = t.Encode(productLine); err != nil {
		return nil, fmt.Errorf("TCB: %v", err)
	}
	for i := 4; i <= 7; i++ {
		switch {
		case spl[i] == 0:
		case hasFMC:
			return nil, fmt.Errorf("reserved SPL 3.%d is %d, want 0", i, spl[i])
		default:
			// Milan/Genoa: spl_4..spl_7 are TCB_VERSION bytes 2-5.
			x.TCB |= uint64(spl[i]) << (8 * (i - 2))
		}
	}

	hwid, hasHWID := ext["4"]
	csp, hasCSP, err := ia5("5", "cspID")
	if err != nil {
		return nil, err
	}
	switch key {
	case abi.VcekReportSigner:
		if hasCSP {
			return nil, fmt.Errorf("cspID (%q) in a VCEK", csp)
		}
		size := abi.ChipIDSize
		if hasFMC {
			size = turinHWIDSize
		}
		// AMD writes the raw bytes; a DER OCTET STRING of them (as
		// go-sev-guest's test signer writes) is read too.
		if hasHWID && len(hwid) != size {
			var inner []byte
			if rest, err := asn1.Unmarshal(hwid, &inner); err == nil && len(rest) == 0 {
				hwid = inner
			}
		}
		if !hasHWID || len(hwid) != size {
			return nil, fmt.Errorf("hwID of %d bytes, want %d for %s", len(hwid), size, productLine)
		}
		x.HWID = bytes.Clone(hwid)
	case abi.VlekReportSigner:
		if hasHWID {
			return nil, fmt.Errorf("hwID in a VLEK")
		}
		if !hasCSP || csp == "" {
			return nil, fmt.Errorf("no cspID in a VLEK")
		}
		x.CSPID = csp
	default:
		return nil, fmt.Errorf("unexpected endorsement key %v", key)
	}
	return x, nil
}

// chipIDMatches reports whether a report's CHIP_ID is the chip a VCEK's
// hardware id names: equal (64 bytes), or (Turin's 8 bytes) equal to its
// first 8 bytes with the rest zero.
func chipIDMatches(chipID, hwid []byte) bool {
	switch len(hwid) {
	case abi.ChipIDSize:
		return bytes.Equal(chipID, hwid)
	case turinHWIDSize:
		return len(chipID) == abi.ChipIDSize && bytes.Equal(chipID[:turinHWIDSize], hwid) && allZero(chipID[turinHWIDSize:])
	}
	return false
}

func orMissing(err error, name string) error {
	if err != nil {
		return err
	}
	return fmt.Errorf("no %s extension", name)
}
