package snp

import (
	"bytes"
	"context"
	"crypto/x509"
	"os"
	"slices"
	"testing"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	"github.com/kbs-dev/kbs/kbs/attest"
)

// fuzzSeeds adds the seed corpus and returns the simulated seed, signed
// with REPORT_DATA {1}.
func fuzzSeeds(f *testing.F) []byte {
	real := milanEvidence(f, true).Data
	sim, err := os.ReadFile("../../../testdata/snp/sim-evidence.bin")
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range [][]byte{real, real[:ReportSize], real[:ReportSize+abi.CertTableEntrySize], sim} {
		f.Add(s)
	}
	return sim
}

// FuzzParseEvidence checks that parsing never panics, is deterministic, and
// that accepted evidence survives a Marshal/Parse round trip unchanged.
func FuzzParseEvidence(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		sim1, sim2 := IsSimulated(data), IsSimulated(data)
		if sim1 != sim2 {
			t.Fatalf("IsSimulated is not deterministic")
		}
		ev, err := ParseEvidence(data)
		ev2, err2 := ParseEvidence(data)
		if (err == nil) != (err2 == nil) {
			t.Fatalf("non-deterministic: %v then %v", err, err2)
		}
		// REPORT_DATA (offset 0x50) is read from exactly what parses.
		rd, rdErr := UnverifiedReportData(data)
		if (rdErr == nil) != (err == nil) || (err == nil && !bytes.Equal(rd[:], data[0x50:0x90])) {
			t.Fatalf("UnverifiedReportData = %x, %v; ParseEvidence: %v", rd, rdErr, err)
		}
		if err != nil {
			if sim1 {
				t.Fatalf("IsSimulated(unparsable evidence) = true")
			}
			return
		}
		if !bytes.Equal(ev.Marshal(), ev2.Marshal()) {
			t.Fatalf("non-deterministic parse")
		}
		if !bytes.Equal(ev.Report, data[:ReportSize]) {
			t.Fatalf("Report is not the first %d bytes", ReportSize)
		}
		out := ev.Marshal()
		back, err := ParseEvidence(out)
		if err != nil {
			t.Fatalf("ParseEvidence(Marshal(ev)) = %v", err)
		}
		if !bytes.Equal(back.Report, ev.Report) || !slices.EqualFunc(back.Certs, ev.Certs, func(a, b abi.CertTableEntry) bool {
			return a.GUID == b.GUID && bytes.Equal(a.RawCert, b.RawCert)
		}) {
			t.Fatalf("round trip changed the evidence")
		}
		if !bytes.Equal(back.Marshal(), out) {
			t.Fatalf("Marshal is not a fixed point")
		}
	})
}

// FuzzVerify feeds mutated evidence to a verifier of the simulated chain:
// it must never panic, and it may accept only evidence whose signed report
// is the original one.
func FuzzVerify(f *testing.F) {
	dir := testSim(f)
	rd := [64]byte{1}
	seed := fuzzSeeds(f)
	v := simVerifier(f, dir)
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := v.Verify(context.Background(), attest.Evidence{Platform: attest.SNP, Data: data}, rd)
		if err != nil {
			return
		}
		if !bytes.Equal(data[:0x2A0], seed[:0x2A0]) {
			t.Fatalf("accepted a report that was not signed by the sim")
		}
		if c.ReportData != rd {
			t.Fatalf("claims carry the wrong REPORT_DATA")
		}
	})
}

// FuzzEndorsementExtensions: kbs's reader of AMD's KDS certificate
// extensions never panics, and on the certificates go-sev-guest v0.15.0
// reads (Milan, Genoa) it agrees with it: same TCB_VERSION, same hardware
// id, or both refuse. Inputs are DER certificates; the seeds are the real
// Milan and Turin VCEKs and the sim's.
func FuzzEndorsementExtensions(f *testing.F) {
	for _, name := range []string{"../../../testdata/snp/milan-vcek.der", "../../../testdata/snp/turin-vcek.der"} {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, "Milan")
		f.Add(b, "Turin")
	}
	f.Fuzz(func(t *testing.T, der []byte, line string) {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return
		}
		for _, key := range []abi.ReportSigner{abi.VcekReportSigner, abi.VlekReportSigner} {
			ours, err := parseEndorsementExtensions(cert, key, line)
			if err == nil && key == abi.VcekReportSigner && len(ours.HWID) != 8 && len(ours.HWID) != 64 {
				t.Fatalf("hwID of %d bytes accepted", len(ours.HWID))
			}
			if line != "Milan" && line != "Genoa" {
				continue
			}
			lib, lerr := kds.CertificateExtensions(cert, key)
			if err == nil && lerr == nil && (uint64(lib.TCBVersion) != ours.TCB || !bytes.Equal(lib.HWID, ours.HWID) || lib.CspID != ours.CSPID) {
				t.Fatalf("kbs reads TCB %#x hwID %x csp %q, go-sev-guest %#x %x %q", ours.TCB, ours.HWID, ours.CSPID, uint64(lib.TCBVersion), lib.HWID, lib.CspID)
			}
		}
	})
}
