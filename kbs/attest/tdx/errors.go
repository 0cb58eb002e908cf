package tdx

import (
	"errors"
	"fmt"
)

// Errors returned by Verify. Each names one failed check; errors.Is tells
// them apart, the message says what exactly differed.
var (
	// ErrNotTDX: the evidence is for another platform.
	ErrNotTDX = errors.New("tdx: evidence is not a TDX quote")
	// ErrMalformedQuote: the bytes are not a well-formed TDX quote v4.
	ErrMalformedQuote = errors.New("tdx: malformed quote")
	// ErrQEVendor: the quote was not produced by Intel's quoting enclave.
	ErrQEVendor = errors.New("tdx: quote is not from the Intel quoting enclave")
	// ErrCertChain: the PCK certificate chain in the quote is malformed or
	// its certificates do not have the form Intel issues.
	ErrCertChain = errors.New("tdx: invalid PCK certificate chain")
	// ErrCertExpired: a certificate of the PCK chain has expired at Now.
	ErrCertExpired = errors.New("tdx: certificate expired")
	// ErrCertNotYetValid: a certificate of the PCK chain is not valid yet at Now.
	ErrCertNotYetValid = errors.New("tdx: certificate not yet valid")
	// ErrUntrustedRoot: the PCK chain does not end at a trusted root.
	ErrUntrustedRoot = errors.New("tdx: PCK chain does not lead to a trusted root")
	// ErrQEReportSignature: the PCK key did not sign the QE report.
	ErrQEReportSignature = errors.New("tdx: bad QE report signature")
	// ErrAttestationKeyBinding: the QE report does not bind the attestation
	// key (REPORT_DATA of the QE report is not SHA-256(key || QE auth data)).
	ErrAttestationKeyBinding = errors.New("tdx: QE report does not bind the attestation key")
	// ErrQuoteSignature: the attestation key did not sign the quote header
	// and TD quote body.
	ErrQuoteSignature = errors.New("tdx: bad quote signature")
	// ErrCollateralUnavailable: Options.RequireCollateral is set and TCB info
	// or QE identity could not be obtained (offline cache miss or fetch
	// failure).
	ErrCollateralUnavailable = errors.New("tdx: collateral unavailable")
	// ErrCollateral: the collateral (TCB info, QE identity, CRLs) is invalid,
	// expired, or rejects the platform: TCB level not UpToDate, QE identity
	// mismatch, revoked certificate.
	ErrCollateral = errors.New("tdx: collateral check failed")
	// ErrReportData: REPORT_DATA differs from the expected binding.
	ErrReportData = errors.New("tdx: REPORT_DATA does not match the expected binding")
	// ErrDebug: TD_ATTRIBUTES has the DEBUG bit (bit 0) set. Verify and
	// Validate both reject it, whatever the policy says.
	ErrDebug = errors.New("tdx: TD is in debug mode (TD_ATTRIBUTES bit 0)")
)

// Errors returned by Validate.
var (
	// ErrPolicy: the policy itself is invalid (a field neither set nor
	// listed in Any, set and listed in Any, or of the wrong length).
	ErrPolicy = errors.New("tdx: invalid policy")
	// ErrClaims: the claims are not verified TDX claims.
	ErrClaims = errors.New("tdx: claims are not TDX claims")
	// ErrMRTD .. ErrMRSeam: a reference value differs.
	ErrMRTD          = errors.New("tdx: MRTD mismatch")
	ErrRTMR          = errors.New("tdx: RTMR mismatch")
	ErrMRConfigID    = errors.New("tdx: MRCONFIGID mismatch")
	ErrMROwner       = errors.New("tdx: MROWNER mismatch")
	ErrMROwnerConfig = errors.New("tdx: MROWNERCONFIG mismatch")
	ErrXFAM          = errors.New("tdx: XFAM mismatch")
	ErrTDAttributes  = errors.New("tdx: TD_ATTRIBUTES mismatch")
	ErrTEETCBSVN     = errors.New("tdx: TEE_TCB_SVN below minimum")
	ErrMRSeam        = errors.New("tdx: MRSEAM not in allow list")
	// ErrValidate: go-tdx-guest's validate rejected the claims after all
	// of our field checks passed (architecturally fixed XFAM or
	// TD_ATTRIBUTES bits).
	ErrValidate = errors.New("tdx: rejected by go-tdx-guest validate")
)

// CertificateError says which certificate of the PCK chain failed a time
// check. It unwraps to ErrCertExpired or ErrCertNotYetValid.
type CertificateError struct {
	Cert string // "PCK leaf", "intermediate CA" or "root CA"
	Err  error
	Msg  string
}

func (e *CertificateError) Error() string { return fmt.Sprintf("%v: %s %s", e.Err, e.Cert, e.Msg) }
func (e *CertificateError) Unwrap() error { return e.Err }

// MismatchError reports a policy field whose value differs from the
// reference. It unwraps to the field's sentinel (ErrMRTD, ErrRTMR, ...).
type MismatchError struct {
	Field Field
	Got   string // hex or decimal, as the field is usually written
	Want  string
	Err   error
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("%v: %s is %s, want %s", e.Err, e.Field, e.Got, e.Want)
}
func (e *MismatchError) Unwrap() error { return e.Err }
