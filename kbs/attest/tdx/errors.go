package tdx

import (
	"errors"
	"fmt"
)

// Errors that callers branch on. Verify's refusals of the two hard rules
// wrap them (Validate's too, for debug); every other error says in its
// message which check failed.
var (
	// ErrDebug: TD_ATTRIBUTES has the DEBUG bit (bit 0) set: the host could
	// read and write the TD's memory. Verify and Validate both reject it,
	// whatever the reference values say.
	ErrDebug = errors.New("tdx: TD is in debug mode (TD_ATTRIBUTES bit 0)")
	// ErrReportData: REPORT_DATA is not the binding the caller expected
	// (another nonce or key, or a replayed quote).
	ErrReportData = errors.New("tdx: REPORT_DATA does not match the expected binding")
)

// The kinds of the other refusals. Each error of Verify and Validate wraps
// exactly one of these or of the exported ones, so that the package's tests
// tell the checks apart; callers read the message.
var (
	// errNotTDX: the evidence is for another platform.
	errNotTDX = errors.New("tdx: evidence is not a TDX quote")
	// errMalformedQuote: the bytes are not a well-formed TDX quote v4.
	errMalformedQuote = errors.New("tdx: malformed quote")
	// errQEVendor: the quote was not produced by Intel's quoting enclave.
	errQEVendor = errors.New("tdx: quote is not from the Intel quoting enclave")
	// errCertChain: the PCK certificate chain in the quote is malformed or
	// its certificates do not have the form Intel issues.
	errCertChain = errors.New("tdx: invalid PCK certificate chain")
	// errCertExpired: a certificate of the PCK chain has expired at Now.
	errCertExpired = errors.New("tdx: certificate expired")
	// errCertNotYetValid: a certificate of the PCK chain is not valid yet
	// at Now.
	errCertNotYetValid = errors.New("tdx: certificate not yet valid")
	// errUntrustedRoot: the PCK chain does not end at a trusted root.
	errUntrustedRoot = errors.New("tdx: PCK chain does not lead to a trusted root")
	// errQEReportSignature: the PCK key did not sign the QE report.
	errQEReportSignature = errors.New("tdx: bad QE report signature")
	// errAttestationKeyBinding: the QE report does not bind the attestation
	// key (REPORT_DATA of the QE report is not SHA-256(key || QE auth data)).
	errAttestationKeyBinding = errors.New("tdx: QE report does not bind the attestation key")
	// errQuoteSignature: the attestation key did not sign the quote header
	// and TD quote body.
	errQuoteSignature = errors.New("tdx: bad quote signature")
	// errCollateralUnavailable: Options.RequireCollateral is set and TCB
	// info or QE identity could not be obtained (offline cache miss or fetch
	// failure).
	errCollateralUnavailable = errors.New("tdx: collateral unavailable")
	// errCollateral: the collateral (TCB info, QE identity, CRLs) is
	// invalid, expired, or rejects the platform: TCB level not UpToDate, QE
	// identity mismatch, revoked certificate.
	errCollateral = errors.New("tdx: collateral check failed")
	// errClaims: Validate was given claims that did not come from Verify.
	errClaims = errors.New("tdx: claims are not TDX claims")
)

// certificateError says which certificate of the PCK chain failed a time
// check. It unwraps to errCertExpired or errCertNotYetValid.
type certificateError struct {
	Cert string // "PCK leaf", "intermediate CA" or "root CA"
	Err  error
	Msg  string
}

func (e *certificateError) Error() string { return fmt.Sprintf("%v: %s %s", e.Err, e.Cert, e.Msg) }
func (e *certificateError) Unwrap() error { return e.Err }
