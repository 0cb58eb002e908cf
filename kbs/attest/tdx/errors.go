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

// errClaims: Validate was given claims that did not come from Verify.
var errClaims = errors.New("tdx: claims are not TDX claims")

// CertificateError says which certificate of the PCK chain failed a time
// check. It unwraps to ErrCertExpired or ErrCertNotYetValid.
type CertificateError struct {
	Cert string // "PCK leaf", "intermediate CA" or "root CA"
	Err  error
	Msg  string
}

func (e *CertificateError) Error() string { return fmt.Sprintf("%v: %s %s", e.Err, e.Cert, e.Msg) }
func (e *CertificateError) Unwrap() error { return e.Err }
