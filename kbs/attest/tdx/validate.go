package tdx

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	"github.com/google/go-tdx-guest/validate"
	"github.com/kbs-dev/kbs/kbs/attest"
)

// Validate has go-tdx-guest's validate.TdxQuote confirm claims that
// Verifier.Verify returned against opts. kbs/policy builds opts from the
// manifest's reference values (go-tdx-guest checks no field whose option is
// nil, so the builder sets each one the manifest means); the manifest's own
// comparison (manifest.Match) has decided before, and Validate is the
// library's second opinion. The library also enforces the architecturally
// fixed bits of XFAM and TD_ATTRIBUTES.
//
// go-tdx-guest does not reject debug TDs: Validate does (ErrDebug), as
// Verify did. REPORT_DATA, the quote header (QE vendor, QE and PCE SVN) and
// the signatures are Verify's job: Verify binds REPORT_DATA and fixes the
// vendor, the collateral judges the QE and PCE SVNs.
func Validate(c *attest.Claims, opts *validate.Options) error {
	if opts == nil {
		return errors.New("tdx: no validation options")
	}
	if c == nil || c.Platform != attest.TDX || c.TDX == nil {
		return fmt.Errorf("%w: need claims from tdx.Verifier.Verify", errClaims)
	}
	t := c.TDX
	if len(t.MRTD) != measurementSize || len(t.MRConfigID) != measurementSize || len(t.MROwner) != measurementSize ||
		len(t.MROwnerConfig) != measurementSize || len(t.MRSeam) != measurementSize || len(t.TEETCBSVN) != abi.TeeTcbSvnSize {
		return fmt.Errorf("%w: field of the wrong size", errClaims)
	}
	for _, r := range t.RTMR {
		if len(r) != measurementSize {
			return fmt.Errorf("%w: RTMR of the wrong size", errClaims)
		}
	}
	if t.TDAttributes&tdAttributesDebug != 0 {
		return fmt.Errorf("%w: TD_ATTRIBUTES %#016x", ErrDebug, t.TDAttributes)
	}
	if err := libValidate(quoteOf(c), opts); err != nil {
		return fmt.Errorf("tdx: go-tdx-guest validation: %w", err)
	}
	return nil
}

func libValidate(q *pb.QuoteV4, opts *validate.Options) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic in validate.TdxQuote: %v", r)
		}
	}()
	return validate.TdxQuote(q, opts)
}

// quoteOf rebuilds the parts of a quote that validate.TdxQuote reads from
// claims. validate.TdxQuote first checks the quote's shape (abi.CheckQuoteV4),
// so the parts it does not read are filled with zeros of the right size; the
// header carries Intel's QE vendor ID, which Verify enforced.
func quoteOf(c *attest.Claims) *pb.QuoteV4 {
	t := c.TDX
	z := func(n int) []byte { return make([]byte, n) }
	rtmrs := make([][]byte, 4)
	for i := range rtmrs {
		rtmrs[i] = t.RTMR[i]
	}
	return &pb.QuoteV4{
		Header: &pb.Header{
			Version:            abi.QuoteVersion,
			AttestationKeyType: abi.AttestationKeyType,
			TeeType:            abi.TeeTDX,
			QeSvn:              z(2),
			PceSvn:             z(2),
			QeVendorId:         intelQEVendorID,
			UserData:           z(20),
		},
		TdQuoteBody: &pb.TDQuoteBody{
			TeeTcbSvn:      t.TEETCBSVN,
			MrSeam:         t.MRSeam,
			MrSignerSeam:   orZero(t.MRSignerSeam, measurementSize),
			SeamAttributes: z(8),
			TdAttributes:   binary.LittleEndian.AppendUint64(nil, t.TDAttributes),
			Xfam:           binary.LittleEndian.AppendUint64(nil, t.XFAM),
			MrTd:           t.MRTD,
			MrConfigId:     t.MRConfigID,
			MrOwner:        t.MROwner,
			MrOwnerConfig:  t.MROwnerConfig,
			Rtmrs:          rtmrs,
			ReportData:     c.ReportData[:],
		},
		SignedData: &pb.Ecdsa256BitQuoteV4AuthData{
			Signature:           z(64),
			EcdsaAttestationKey: z(64),
			CertificationData: &pb.CertificationData{
				CertificateDataType: 6,
				QeReportCertificationData: &pb.QEReportCertificationData{
					QeReport: &pb.EnclaveReport{
						CpuSvn: z(16), Reserved1: z(28), Attributes: z(16), MrEnclave: z(32),
						Reserved2: z(32), MrSigner: z(32), Reserved3: z(96), Reserved4: z(60), ReportData: z(64),
					},
					QeReportSignature:       z(64),
					QeAuthData:              &pb.QeAuthData{},
					PckCertificateChainData: &pb.PCKCertificateChainData{CertificateDataType: 5},
				},
			},
		},
	}
}

func orZero(b []byte, n int) []byte {
	if len(b) == n {
		return b
	}
	return make([]byte, n)
}
