package snp

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	"github.com/google/uuid"

	"github.com/kbs-dev/kbs/kbs/attest"
)

// The real Turin sample (testdata/README.md): an AMD EPYC 9xx5 report
// (version 5) and the VCEK AMD's KDS issued for its chip and TCB. It is
// verified an hour after the VCEK was issued: turinNow derives from the
// certificate, never from the wall clock.
func turinEvidence(t testing.TB) (attest.Evidence, *x509.Certificate, [64]byte) {
	t.Helper()
	report, err := os.ReadFile("../../../testdata/snp/turin-report.bin")
	if err != nil {
		t.Fatal(err)
	}
	vcek, err := os.ReadFile("../../../testdata/snp/turin-vcek.der")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(vcek)
	if err != nil {
		t.Fatal(err)
	}
	var rd [64]byte
	copy(rd[:], report[0x50:0x90])
	table := &abi.CertTable{Entries: []abi.CertTableEntry{{GUID: uuid.MustParse(abi.VcekGUID), RawCert: vcek}}}
	return attest.Evidence{Platform: attest.SNP, Data: append(report, table.Marshal()...)}, cert, rd
}

// TestRealTurin: a genuine Turin report and VCEK verify offline against the
// AMD Turin roots go-sev-guest embeds: kbs reads the VCEK's KDS extensions
// itself (fmcSPL, 8-byte hwID), the chain to ARK-Turin, the report's
// signature, its TCB (Turin layout, with FMC) against the certificate's,
// and CHIP_ID against the 8-byte hardware id.
func TestRealTurin(t *testing.T) {
	ev, cert, rd := turinEvidence(t)
	now := cert.NotBefore.Add(time.Hour)
	if _, err := kds.VcekCertificateExtensions(cert); err == nil {
		t.Log("go-sev-guest now reads Turin VCEKs: libraryReadsVCEKs can include Turin")
	}
	c, err := amdVerifier(t, now, "").Verify(context.Background(), ev, rd)
	if err != nil {
		t.Fatalf("Verify(real Turin evidence) = %v", err)
	}
	s := c.SNP
	if s.Product != "Turin" || c.Simulated || s.SignerKey != "vcek" || s.Version != 5 {
		t.Errorf("claims: product %q simulated %v signer %q version %d", s.Product, c.Simulated, s.SignerKey, s.Version)
	}
	tcb, err := attest.DecodeSNPTCB("Turin", s.ReportedTCB)
	if err != nil || tcb != (attest.SNPTCB{FMC: 1, Bootloader: 3, TEE: 2, SNP: 5, Microcode: 0x61}) {
		t.Errorf("reported TCB %+v, %v", tcb, err)
	}
	if got := hex.EncodeToString(s.ChipID[:8]); got != "0910b4f884ff4ba9" || !allZero(s.ChipID[8:]) {
		t.Errorf("CHIP_ID %x", s.ChipID)
	}
	x, err := parseEndorsementExtensions(cert, abi.VcekReportSigner, "Turin")
	if err != nil || x.StructVersion != 1 || x.ProductName != "Turin" || x.TCB != s.ReportedTCB || len(x.HWID) != 8 {
		t.Errorf("extensions = %+v, %v", x, err)
	}

	for _, tc := range []struct {
		name string
		off  int
		want error
	}{
		{"signature", 0x2a0 + 5, errSignature},
		{"measurement", 0x90, errSignature},
		{"chip id", 0x1a0, errSignature},
	} {
		bad := bytes.Clone(ev.Data)
		bad[tc.off] ^= 1
		if _, err := amdVerifier(t, now, "").Verify(context.Background(), attest.Evidence{Platform: attest.SNP, Data: bad}, rd); !errors.Is(err, tc.want) {
			t.Errorf("flipped %s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := amdVerifier(t, cert.NotAfter.Add(time.Hour), "").Verify(context.Background(), ev, rd); !errors.Is(err, errCertificateExpired) {
		t.Errorf("after the VCEK expired: %v", err)
	}
	if err := Validate(c, nil); err == nil {
		t.Error("Validate without options succeeded")
	}
}
