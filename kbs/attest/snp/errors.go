package snp

import "errors"

// Errors that callers branch on. Verify's refusals of the two hard rules
// wrap them; every other error says in its message which check failed.
var (
	// ErrDebug: the guest policy allows debugging (bit 19): the host could
	// read and write the guest's memory. Never accepted.
	ErrDebug = errors.New("snp: guest policy allows debugging")
	// ErrReportData: REPORT_DATA is not the binding the caller expected
	// (another nonce or key, or replayed evidence).
	ErrReportData = errors.New("snp: REPORT_DATA does not match the expected binding")
)

// The kinds of the other refusals. Each error of Verify and Validate wraps
// exactly one of these or of the exported ones, so that the package's tests
// tell the checks apart; callers read the message.
var (
	errMalformed          = errors.New("snp: malformed evidence")
	errNoCertificate      = errors.New("snp: endorsement certificate (VCEK/VLEK) not in the evidence or the cache")
	errCertificateExpired = errors.New("snp: certificate not valid at the verification time")
	errSignature          = errors.New("snp: report signature does not verify")
	errChain              = errors.New("snp: endorsement key does not chain to a trusted AMD root")
	errRevoked            = errors.New("snp: revocation check failed")
	errCertMismatch       = errors.New("snp: report does not match its endorsement certificate")
	errTCBInconsistent    = errors.New("snp: TCB values inconsistent (want reported ≤ committed ≤ current)")
	errClaims             = errors.New("snp: claims are not verified SNP claims") // Validate
)
