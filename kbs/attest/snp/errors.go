package snp

import "errors"

// Errors returned by Verify. Each rejection wraps exactly one of them.
var (
	ErrMalformed          = errors.New("snp: malformed evidence")
	ErrNoCertificate      = errors.New("snp: endorsement certificate (VCEK/VLEK) not in the evidence or the cache")
	ErrCertificateExpired = errors.New("snp: certificate not valid at the verification time")
	ErrSignature          = errors.New("snp: report signature does not verify")
	ErrChain              = errors.New("snp: endorsement key does not chain to a trusted AMD root")
	ErrRevoked            = errors.New("snp: revocation check failed")
	ErrCertMismatch       = errors.New("snp: report does not match its endorsement certificate")
	ErrTCBInconsistent    = errors.New("snp: TCB values inconsistent (want reported ≤ committed ≤ current)")
	ErrDebug              = errors.New("snp: guest policy allows debugging")
	ErrReportData         = errors.New("snp: REPORT_DATA does not match the expected binding")
)

// errClaims: Validate was given claims that did not come from Verify.
var errClaims = errors.New("snp: claims are not verified SNP claims")
