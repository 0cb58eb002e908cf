package api

import (
	"fmt"
	"net/http"
)

// ErrorBody is the body of every error answer:
//
//	{"error": {"code": "nonce_invalid", "message": "nonce unknown, used or expired"}}
type ErrorBody struct {
	Error *Error `json:"error"`
}

// Error is an error answer of the broker. Code is one of the Code constants
// and is stable: programs branch on it. Message is for people and may change.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Status is the HTTP status the error was (or will be) sent with. It is
	// not part of the JSON body.
	Status int `json:"-"`
}

func (e *Error) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("kbs: %s (%d %s): %s", e.Code, e.Status, http.StatusText(e.Status), e.Message)
	}
	return fmt.Sprintf("kbs: %s: %s", e.Code, e.Message)
}

// Stable error codes, with the HTTP status the broker sends each with.
const (
	CodeBadRequest       = "bad_request"        // 400: malformed body, parameter or encoding
	CodeTooLarge         = "too_large"          // 413: body over the endpoint's limit
	CodeUnauthorized     = "unauthorized"       // 401: missing or invalid client/owner signature
	CodeNonceInvalid     = "nonce_invalid"      // 401: release nonce unknown, used or expired
	CodeEvidenceRejected = "evidence_rejected"  // 403: evidence failed verification or binding
	CodePolicyDenied     = "policy_denied"      // 403: no worker class matches, or the key is not released to it
	CodeForbidden        = "forbidden"          // 403: client not allowed to write this key id
	CodeNotFound         = "not_found"          // 404: unknown key, path or manifest version
	CodeMethodNotAllowed = "method_not_allowed" // 405
	CodeConflict         = "conflict"           // 409: stale or replayed version (key or manifest)
	CodeHandedOver       = "handed_over"        // 410: this broker handed its master key over; its successor serves
	CodeRateLimited      = "rate_limited"       // 429: too many attestation or challenge requests
	CodeLogUnavailable   = "log_unavailable"    // 503: the log could not be written; nothing happened
	CodeUnavailable      = "unavailable"        // 503: shutting down, or challenge table full
	CodeRecovering       = "recovering"         // 503: the broker waits for its recovery holders' shares
	// CodeWitnessesUnavailable: too few of the manifest's witnesses answer
	// for the broker to show that its log is not behind what they cosigned
	// (at start), or to cosign the checkpoint a receipt needs. Nothing was
	// done, or the message says what was logged; retry later.
	CodeWitnessesUnavailable = "witnesses_unavailable" // 503
	// CodeBehindWitnesses: a witness cosigned a larger or another tree of
	// the broker's log than the broker holds (a restored copy of its data
	// directory, or a second broker with its key): it acts on nothing until
	// an operator restarts it on the latest data directory.
	CodeBehindWitnesses = "behind_witnesses" // 503
	CodeInternal        = "internal"         // 500: a bug; details are in the broker's log
)

// StatusOf returns the HTTP status the broker uses for code.
func StatusOf(code string) int {
	switch code {
	case CodeBadRequest:
		return http.StatusBadRequest
	case CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case CodeUnauthorized, CodeNonceInvalid:
		return http.StatusUnauthorized
	case CodeEvidenceRejected, CodePolicyDenied, CodeForbidden:
		return http.StatusForbidden
	case CodeNotFound:
		return http.StatusNotFound
	case CodeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case CodeConflict:
		return http.StatusConflict
	case CodeHandedOver:
		return http.StatusGone
	case CodeRateLimited:
		return http.StatusTooManyRequests
	case CodeLogUnavailable, CodeUnavailable, CodeRecovering, CodeWitnessesUnavailable, CodeBehindWitnesses:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// Errorf returns an *Error with code, the status StatusOf(code), and a
// formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Status: StatusOf(code)}
}
