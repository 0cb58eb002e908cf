package tdx

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	"github.com/google/go-tdx-guest/validate"
	"github.com/kbs-dev/kbs/kbs/attest"
)

// Field names a reference value of a Policy.
type Field string

// The fields of a Policy, as manifests and errors name them.
const (
	FieldMRTD          Field = "mrtd"
	FieldRTMR0         Field = "rtmr0"
	FieldRTMR1         Field = "rtmr1"
	FieldRTMR2         Field = "rtmr2"
	FieldRTMR3         Field = "rtmr3"
	FieldMRConfigID    Field = "mrconfigid"
	FieldMROwner       Field = "mrowner"
	FieldMROwnerConfig Field = "mrownerconfig"
	FieldXFAM          Field = "xfam"
	FieldTDAttributes  Field = "td_attributes"
	FieldMinTEETCBSVN  Field = "min_tee_tcb_svn"
	FieldMRSeam        Field = "mrseam"
)

// Fields lists every field of a Policy.
var Fields = []Field{
	FieldMRTD, FieldRTMR0, FieldRTMR1, FieldRTMR2, FieldRTMR3, FieldMRConfigID,
	FieldMROwner, FieldMROwnerConfig, FieldXFAM, FieldTDAttributes, FieldMinTEETCBSVN, FieldMRSeam,
}

var rtmrFields = [4]Field{FieldRTMR0, FieldRTMR1, FieldRTMR2, FieldRTMR3}

// Policy holds the reference values a verified TDX quote must match. Every
// field must be either set or named in Any: leaving a field out is never a
// silent skip, so the zero Policy is rejected (ErrPolicy). Setting a field
// and naming it in Any is rejected too.
//
// The TD's DEBUG attribute is always rejected, whatever TDAttributes says.
type Policy struct {
	MRTD          []byte    // 48 bytes
	RTMR          [4][]byte // 48 bytes each
	MRConfigID    []byte    // 48 bytes
	MROwner       []byte    // 48 bytes
	MROwnerConfig []byte    // 48 bytes
	XFAM          *uint64   // exact value
	TDAttributes  *uint64   // exact value; bit 0 (DEBUG) must be clear
	// MinTEETCBSVN is the component-wise minimum TEE_TCB_SVN (16 bytes).
	MinTEETCBSVN []byte
	// MRSeam lists the allowed TDX module measurements (48 bytes each).
	MRSeam [][]byte

	// Any names the fields deliberately left unchecked.
	Any []Field
}

const measurementSize = 48

// check reports an invalid policy as an ErrPolicy error.
func (p *Policy) check() error {
	for _, f := range p.Any {
		if !slices.Contains(Fields, f) {
			return fmt.Errorf("%w: unknown field %q in Any", ErrPolicy, f)
		}
	}
	type fieldCheck struct {
		f    Field
		set  bool
		size int // 0: no length check
		val  []byte
	}
	checks := []fieldCheck{
		{FieldMRTD, p.MRTD != nil, measurementSize, p.MRTD},
		{FieldMRConfigID, p.MRConfigID != nil, measurementSize, p.MRConfigID},
		{FieldMROwner, p.MROwner != nil, measurementSize, p.MROwner},
		{FieldMROwnerConfig, p.MROwnerConfig != nil, measurementSize, p.MROwnerConfig},
		{FieldXFAM, p.XFAM != nil, 0, nil},
		{FieldTDAttributes, p.TDAttributes != nil, 0, nil},
		{FieldMinTEETCBSVN, p.MinTEETCBSVN != nil, 16, p.MinTEETCBSVN},
		{FieldMRSeam, p.MRSeam != nil, 0, nil},
	}
	for i, r := range p.RTMR {
		checks = append(checks, fieldCheck{rtmrFields[i], r != nil, measurementSize, r})
	}
	for _, c := range checks {
		anyOf := slices.Contains(p.Any, c.f)
		switch {
		case c.set && anyOf:
			return fmt.Errorf("%w: %s is both set and listed in Any", ErrPolicy, c.f)
		case !c.set && !anyOf:
			return fmt.Errorf("%w: %s is neither set nor listed in Any", ErrPolicy, c.f)
		case c.set && c.size != 0 && len(c.val) != c.size:
			return fmt.Errorf("%w: %s is %d bytes, want %d", ErrPolicy, c.f, len(c.val), c.size)
		}
	}
	if p.MRSeam != nil {
		if len(p.MRSeam) == 0 {
			return fmt.Errorf("%w: %s allow list is empty", ErrPolicy, FieldMRSeam)
		}
		for i, m := range p.MRSeam {
			if len(m) != measurementSize {
				return fmt.Errorf("%w: %s[%d] is %d bytes, want %d", ErrPolicy, FieldMRSeam, i, len(m), measurementSize)
			}
		}
	}
	if p.TDAttributes != nil && *p.TDAttributes&tdAttributesDebug != 0 {
		return fmt.Errorf("%w: %s allows DEBUG", ErrPolicy, FieldTDAttributes)
	}
	return nil
}

// Validate checks verified TDX claims against p. It first compares each field
// itself, so that a mismatch yields a precise error (a *MismatchError that
// unwraps to ErrMRTD, ErrRTMR, ...), then hands the claims with every option
// p sets to go-tdx-guest's validate.TdxQuote, which also enforces the
// architecturally fixed bits of XFAM and TD_ATTRIBUTES (ErrValidate). It
// returns the first failure; ValidateAll returns them all.
//
// REPORT_DATA, the quote header (QE vendor, QE and PCE SVN) and the
// signatures are Verify's job: Verify binds REPORT_DATA and fixes the vendor,
// the collateral judges the QE and PCE SVNs.
func Validate(c *attest.Claims, p Policy) error {
	if errs := ValidateAll(c, p); len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// ValidateAll is Validate reporting every failure, for explaining field by
// field why evidence does not match: an invalid policy or claims alone, else
// the debug bit and each mismatching field in the order of Fields, else a
// rejection by go-tdx-guest. It returns nil when the claims satisfy p.
func ValidateAll(c *attest.Claims, p Policy) []error {
	if err := p.check(); err != nil {
		return []error{err}
	}
	if c == nil || c.Platform != attest.TDX || c.TDX == nil {
		return []error{ErrClaims}
	}
	t := c.TDX
	if len(t.MRTD) != measurementSize || len(t.MRConfigID) != measurementSize || len(t.MROwner) != measurementSize ||
		len(t.MROwnerConfig) != measurementSize || len(t.MRSeam) != measurementSize || len(t.TEETCBSVN) != 16 {
		return []error{fmt.Errorf("%w: field of the wrong size", ErrClaims)}
	}
	for _, r := range t.RTMR {
		if len(r) != measurementSize {
			return []error{fmt.Errorf("%w: RTMR of the wrong size", ErrClaims)}
		}
	}

	var errs []error
	if t.TDAttributes&tdAttributesDebug != 0 {
		errs = append(errs, fmt.Errorf("%w: TD_ATTRIBUTES %#016x", ErrDebug, t.TDAttributes))
	}
	mismatch := func(f Field, got, want []byte, err error) {
		if want != nil && !bytes.Equal(got, want) {
			errs = append(errs, &MismatchError{Field: f, Got: hex.EncodeToString(got), Want: hex.EncodeToString(want), Err: err})
		}
	}
	mismatch(FieldMRTD, t.MRTD, p.MRTD, ErrMRTD)
	for i, f := range rtmrFields {
		mismatch(f, t.RTMR[i], p.RTMR[i], ErrRTMR)
	}
	mismatch(FieldMRConfigID, t.MRConfigID, p.MRConfigID, ErrMRConfigID)
	mismatch(FieldMROwner, t.MROwner, p.MROwner, ErrMROwner)
	mismatch(FieldMROwnerConfig, t.MROwnerConfig, p.MROwnerConfig, ErrMROwnerConfig)
	if p.XFAM != nil && t.XFAM != *p.XFAM {
		errs = append(errs, &MismatchError{Field: FieldXFAM, Got: fmt.Sprintf("%#x", t.XFAM), Want: fmt.Sprintf("%#x", *p.XFAM), Err: ErrXFAM})
	}
	if p.TDAttributes != nil && t.TDAttributes != *p.TDAttributes {
		errs = append(errs, &MismatchError{Field: FieldTDAttributes, Got: fmt.Sprintf("%#x", t.TDAttributes), Want: fmt.Sprintf("%#x", *p.TDAttributes), Err: ErrTDAttributes})
	}
	if p.MinTEETCBSVN != nil {
		for i := range p.MinTEETCBSVN {
			if t.TEETCBSVN[i] < p.MinTEETCBSVN[i] {
				errs = append(errs, &MismatchError{Field: FieldMinTEETCBSVN, Got: hex.EncodeToString(t.TEETCBSVN),
					Want: fmt.Sprintf("at least %s (component %d)", hex.EncodeToString(p.MinTEETCBSVN), i), Err: ErrTEETCBSVN})
				break
			}
		}
	}
	var mrSeam []byte
	if p.MRSeam != nil {
		i := slices.IndexFunc(p.MRSeam, func(m []byte) bool { return bytes.Equal(m, t.MRSeam) })
		if i < 0 {
			errs = append(errs, &MismatchError{Field: FieldMRSeam, Got: hex.EncodeToString(t.MRSeam), Want: fmt.Sprintf("one of %d allowed values", len(p.MRSeam)), Err: ErrMRSeam})
		} else {
			mrSeam = p.MRSeam[i]
		}
	}
	if len(errs) > 0 {
		return errs
	}

	// The same checks once more, by go-tdx-guest.
	var rtmrs [][]byte
	if slices.ContainsFunc(p.RTMR[:], func(r []byte) bool { return r != nil }) {
		rtmrs = p.RTMR[:] // nil entries are skipped by the library
	}
	opts := &validate.Options{
		HeaderOptions: validate.HeaderOptions{
			// The header is not part of the claims. Verify fixes the QE
			// vendor; the collateral judges the QE and PCE SVNs.
			MinimumQeSvn:  0,
			MinimumPceSvn: 0,
			QeVendorID:    nil,
		},
		TdQuoteBodyOptions: validate.TdQuoteBodyOptions{
			MinimumTeeTcbSvn: p.MinTEETCBSVN,
			MrSeam:           mrSeam,
			TdAttributes:     le64Bytes(p.TDAttributes),
			Xfam:             le64Bytes(p.XFAM),
			MrTd:             p.MRTD,
			MrConfigID:       p.MRConfigID,
			MrOwner:          p.MROwner,
			MrOwnerConfig:    p.MROwnerConfig,
			Rtmrs:            rtmrs,
			ReportData:       c.ReportData[:], // bound to the expected value by Verify
		},
	}
	if err := libValidate(quoteOf(c), opts); err != nil {
		return []error{fmt.Errorf("%w: %v", ErrValidate, err)}
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

func le64Bytes(v *uint64) []byte {
	if v == nil {
		return nil
	}
	return binary.LittleEndian.AppendUint64(nil, *v)
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
