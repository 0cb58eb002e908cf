package tdx

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/pcs"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/attest/tdx/pcscache"
	"google.golang.org/protobuf/proto"
)

func fuzzSeeds(f *testing.F) {
	raw, err := os.ReadFile(realQuoteFile)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add(raw[:QuoteMinSizeForTest])
	f.Add(flip(raw, signatureOff))
	dir := f.TempDir()
	if err := sim.GenerateTDX(dir); err != nil {
		f.Fatal(err)
	}
	f.Add(simQuote(f, dir, sim.TDXOptions{}, reportData("fuzz")))
}

// QuoteMinSizeForTest is the shortest input go-tdx-guest's parser reads.
const QuoteMinSizeForTest = abi.QuoteMinSize

// FuzzParseQuote: parsing never panics, is deterministic, fails only with
// errMalformedQuote, and what parses serializes back to the same bytes.
func FuzzParseQuote(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		q1, err1 := parseQuote(data)
		q2, err2 := parseQuote(data)
		if (err1 == nil) != (err2 == nil) || (err1 != nil && err1.Error() != err2.Error()) {
			t.Fatalf("parseQuote not deterministic: %v, %v", err1, err2)
		}
		// REPORT_DATA (after the 48-byte header, at 520 into the TD quote
		// body) is read from exactly what parses.
		rd, rdErr := UnverifiedReportData(data)
		if (rdErr == nil) != (err1 == nil) || (err1 == nil && !bytes.Equal(rd[:], data[48+520:48+520+64])) {
			t.Fatalf("UnverifiedReportData = %x, %v; parseQuote: %v", rd, rdErr, err1)
		}
		if err1 != nil {
			if !errors.Is(err1, errMalformedQuote) {
				t.Fatalf("parseQuote error %v is not errMalformedQuote", err1)
			}
			return
		}
		out, err := abi.QuoteToAbiBytes(q1)
		if err != nil {
			t.Fatalf("QuoteToAbiBytes(parsed quote) = %v", err)
		}
		if !bytes.Equal(out, data) {
			t.Fatalf("round trip changed the quote: %d bytes in, %d out", len(data), len(out))
		}
		if !proto.Equal(q1, q2) {
			t.Fatalf("parseQuote not deterministic: two parses differ")
		}
		rq, err := parseRawQuote(data)
		if err != nil {
			t.Fatalf("parseRawQuote rejects a quote go-tdx-guest parses: %v", err)
		}
		_ = chainCacheKey(rq, data)
	})
}

// FuzzVerify: Verify never panics and gives the same answer cold and warm.
func FuzzVerify(f *testing.F) {
	fuzzSeeds(f)
	rd := realReportData(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		v := mustVerifier(t, realOptions())
		ev := tdxEvidence(data)
		c1, err1 := v.Verify(context.Background(), ev, rd)
		c2, err2 := v.Verify(context.Background(), ev, rd) // warm if the first passed
		if (err1 == nil) != (err2 == nil) || (err1 != nil && err1.Error() != err2.Error()) {
			t.Fatalf("Verify not deterministic: %v, %v", err1, err2)
		}
		if err1 == nil && (!bytes.Equal(c1.Measurement, c2.Measurement) || c1.EvidenceDigest != c2.EvidenceDigest) {
			t.Fatalf("Verify claims differ cold and warm")
		}
		if err1 == nil && c1.Simulated {
			t.Fatalf("quote verified under the Intel root is marked simulated")
		}
	})
}

// FuzzCollateralCache: the collateral cache is on the host's disk, so its
// files are untrusted. A fuzzed TCB info or QE identity file never panics
// and never passes unless it still carries the collateral Intel's (here: the
// sim's) TCB signing key signed, and the answer is the same on every try.
func FuzzCollateralCache(f *testing.F) {
	dir := f.TempDir()
	if err := sim.GenerateTDX(dir); err != nil {
		f.Fatal(err)
	}
	src := sim.TDXCollateralDir(dir)
	files, err := os.ReadDir(src)
	if err != nil {
		f.Fatal(err)
	}
	orig := map[string][]byte{}
	for _, e := range files {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			f.Fatal(err)
		}
		orig[e.Name()] = b
	}
	tcbFile := pcscache.FileName(pcs.TcbInfoURL(sim.TDXFMSPC))
	qeFile := pcscache.FileName(pcs.QeIdentityURL())
	f.Add(false, orig[tcbFile])
	f.Add(true, orig[qeFile])
	rd := reportData("fuzz collateral")
	raw := simQuote(f, dir, sim.TDXOptions{}, rd)
	roots, err := sim.TDXRoots(dir)
	if err != nil {
		f.Fatal(err)
	}
	now := clock.Now()
	f.Fuzz(func(t *testing.T, qe bool, data []byte) {
		cdir := t.TempDir()
		for name, b := range orig {
			if err := os.WriteFile(filepath.Join(cdir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		target := tcbFile
		if qe {
			target = qeFile
		}
		if err := os.WriteFile(filepath.Join(cdir, target), data, 0o644); err != nil {
			t.Fatal(err)
		}
		var errs [2]error
		for i := range errs {
			v := mustVerifier(t, Options{Now: fixed(now), TrustedRoots: roots, CollateralDir: cdir})
			_, errs[i] = v.Verify(context.Background(), tdxEvidence(raw), rd)
		}
		if (errs[0] == nil) != (errs[1] == nil) || (errs[0] != nil && errs[0].Error() != errs[1].Error()) {
			t.Fatalf("Verify not deterministic: %v, %v", errs[0], errs[1])
		}
		if errs[0] != nil && !errors.Is(errs[0], errCollateral) && !errors.Is(errs[0], errCollateralUnavailable) {
			t.Fatalf("bad collateral gave %v, want errCollateral or errCollateralUnavailable", errs[0])
		}
		if errs[0] == nil {
			// Only a file that still holds the signed body may pass.
			var r pcscache.Response
			var o pcscache.Response
			if json.Unmarshal(data, &r) != nil || json.Unmarshal(orig[target], &o) != nil || !bytes.Equal(r.Body, o.Body) {
				t.Fatalf("altered collateral %q accepted", data)
			}
		}
	})
}

// FuzzRawQuote: kbs's own quote parser (v4 and v5) never panics, fails only
// with errMalformedQuote, and agrees with go-tdx-guest's v4 parser on every
// field both read: whatever the library parses as a v4 quote, parseRawQuote
// parses too, into the same header, body and signed data.
func FuzzRawQuote(f *testing.F) {
	fuzzSeeds(f)
	for _, name := range []string{v5QuoteFile, v5OutdatedQuoteFile, sprQuoteFile} {
		raw, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Add(simQuote(f, newSimDir(f), sim.TDXOptions{V5: true}, reportData("fuzz v5")))
	f.Fuzz(func(t *testing.T, data []byte) {
		q, err := parseRawQuote(data)
		if err != nil && !errors.Is(err, errMalformedQuote) {
			t.Fatalf("parseRawQuote error %v is not errMalformedQuote", err)
		}
		if err == nil {
			if len(q.Header) != headerSize || (len(q.Body) != bodyTD10Size && len(q.Body) != bodyTD15Size) ||
				len(q.Signature) != 64 || len(q.AttestKey) != 64 || len(q.QEReport) != qeReportSize || len(q.QEReportSig) != 64 {
				t.Fatalf("parseRawQuote returned parts of the wrong size")
			}
			if !bytes.Equal(q.Signed, data[:len(q.Signed)]) || !bytes.Equal(q.Body, q.Signed[len(q.Signed)-len(q.Body):]) {
				t.Fatalf("signed part is not the header and body")
			}
			_ = chainCacheKey(q, data)
		}
		lib, lerr := parseQuote(data)
		if lerr != nil {
			return
		}
		if err != nil {
			t.Fatalf("go-tdx-guest parses a v4 quote parseRawQuote rejects: %v", err)
		}
		b := lib.GetTdQuoteBody()
		sd := lib.GetSignedData()
		qe := sd.GetCertificationData().GetQeReportCertificationData()
		qeRaw, _ := qeReportBytesOf(lib)
		for _, c := range []struct {
			name      string
			ours, lib []byte
		}{
			{"MRTD", q.field(bodyMRTD, 48), b.GetMrTd()},
			{"TEE_TCB_SVN", q.field(bodyTEETCBSVN, 16), b.GetTeeTcbSvn()},
			{"MRSIGNERSEAM", q.field(bodyMRSignerSeam, 48), b.GetMrSignerSeam()},
			{"REPORT_DATA", q.field(bodyReportData, 64), b.GetReportData()},
			{"RTMR3", q.field(bodyRTMR0+3*48, 48), b.GetRtmrs()[3]},
			{"TD_ATTRIBUTES", q.field(bodyTDAttributes, 8), b.GetTdAttributes()},
			{"QE vendor", q.Header[12:28], lib.GetHeader().GetQeVendorId()},
			{"signature", q.Signature, sd.GetSignature()},
			{"attestation key", q.AttestKey, sd.GetEcdsaAttestationKey()},
			{"QE report", q.QEReport, qeRaw},
			{"QE report signature", q.QEReportSig, qe.GetQeReportSignature()},
			{"QE auth data", q.QEAuthData, qe.GetQeAuthData().GetData()},
			{"PCK chain", q.PCKChain, qe.GetPckCertificateChainData().GetPckCertChain()},
		} {
			if !bytes.Equal(c.ours, c.lib) {
				t.Fatalf("%s: parseRawQuote %x, go-tdx-guest %x", c.name, c.ours, c.lib)
			}
		}
	})
}

// qeReportBytesOf is the QE report of a library-parsed quote, as signed.
func qeReportBytesOf(q *pb.QuoteV4) ([]byte, error) {
	return abi.EnclaveReportToAbiBytes(q.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetQeReport())
}

// FuzzLoadCollateral: a collateral bundle is untrusted input. Parsing a
// bundle of one fuzzed file next to the real bundle never panics, and a
// quote verifies with it only if the real pieces still do the verifying.
func FuzzLoadCollateral(f *testing.F) {
	ents, err := os.ReadDir(realCollateral)
	if err != nil {
		f.Fatal(err)
	}
	orig := map[string][]byte{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(realCollateral, e.Name()))
		if err != nil {
			f.Fatal(err)
		}
		orig[e.Name()] = b
		f.Add(e.Name(), b)
	}
	raw := realQuote(f)
	rd := realReportData(f)
	f.Fuzz(func(t *testing.T, name string, data []byte) {
		if _, ok := orig[name]; !ok {
			name = "tcb_info.json"
		}
		dir := t.TempDir()
		for n, b := range orig {
			if n == name {
				b = data
			}
			if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := LoadCollateral(dir); err != nil {
			return
		}
		_, err := mustVerifier(t, Options{Now: fixed(realNow), CollateralDir: dir}).Verify(context.Background(), tdxEvidence(raw), rd)
		if err == nil && !bytes.Equal(data, orig[name]) && !strings.HasSuffix(name, "_chain.pem") {
			// Only whitespace around a JSON body, or a CRL in another
			// encoding, may still verify.
			if !bytes.Equal(bytes.TrimSpace(data), bytes.TrimSpace(orig[name])) && crlDER(data) == nil {
				t.Fatalf("altered %s accepted: %q", name, data)
			}
		}
	})
}
