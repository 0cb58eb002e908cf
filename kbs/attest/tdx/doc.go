// Package tdx verifies Intel TDX quotes (version 4) and checks them against
// reference values, on top of github.com/google/go-tdx-guest v0.3.1.
//
// # Trust
//
// The package trusts the roots in Options.TrustedRoots and nothing else: by
// default the Intel SGX Root CA (the certificate go-tdx-guest embeds, copied
// here as IntelRoot). The quote, the certificates in it and every collateral
// file, whether cached on disk or fetched, are untrusted input and are
// verified before use. Claims of a quote whose chain ends anywhere but at the
// Intel root carry Simulated = true; such roots are trusted only when the
// caller passes them.
//
// # What Verify guarantees
//
// A nil error from Verifier.Verify means, at Options.Now:
//
//   - the quote is a well-formed v4 TDX quote from Intel's quoting enclave;
//   - its PCK certificate chain has Intel's form and ends at a trusted root,
//     and no certificate of it is expired or not yet valid;
//   - the PCK key signed the QE report, the QE report binds the attestation
//     key, and the attestation key signed the quote header and TD quote body;
//   - when collateral is available (see below), go-tdx-guest has checked it
//     (signatures and issuer chains to the trusted root, freshness, FMSPC,
//     PCEID, TDX module identity, QE identity) and the platform's TCB level
//     is UpToDate; when the CRLs are available, neither the intermediate nor
//     the PCK certificate is revoked;
//   - REPORT_DATA equals the expected binding;
//   - the TD is not a debug TD (TD_ATTRIBUTES bit 0 clear).
//
// Reference values are not Verify's business: manifest.Match compares them,
// and Validate has go-tdx-guest's validation confirm them with the options
// kbs/policy builds from the manifest (and rejects a debug TD once more).
//
// Every failure of Verify is a distinct error (ErrQuoteSignature,
// ErrUntrustedRoot, *CertificateError, ErrReportData, ErrDebug, ...) for
// errors.Is and errors.As. A panic inside go-tdx-guest becomes an error.
//
// # Offline and online collateral
//
// Offline (the default) Verify uses only the quote and Options.CollateralDir,
// a cache of Intel PCS responses (tcbinfo-<fmspc>.json, qeidentity.json,
// pckcrl-<ca>.json, crl-<hash>.json). With TCB info for the platform's FMSPC
// and the QE identity cached, all collateral checks run; with the PCK CRL and
// root CA CRL cached too, so do revocation checks. What is missing is
// skipped:
//
//   - without TCB info or QE identity: no TCB level evaluation (TCBStatus is
//     empty), no TDX module (MRSIGNERSEAM, SEAM attributes) or QE identity
//     (MRSIGNER, ISVPRODID, ISVSVN) check, and no revocation check;
//   - without the CRLs: no revocation check of the intermediate and PCK
//     certificates, nor of the TCB signing certificate.
//
// Collateral that is present is always checked: if it is invalid, expired
// at Now, or rejects the platform, Verify fails with ErrCollateral; it is
// never skipped. Options.RequireCollateral turns a missing TCB info or QE identity into
// ErrCollateralUnavailable. Online mode (Options.Online) fetches the
// collateral from Intel PCS on every uncached verification, stores it in the
// cache, and falls back to the cache when a fetch fails.
//
// # Cost
//
// A Verifier caches, per PCK chain, quoting enclave and TDX module (see
// Options.ChainCacheTTL), everything but the quote signature, REPORT_DATA
// and the debug bit, so a warm verification costs one ECDSA P-256
// verification; a cold one runs our checks and then go-tdx-guest's
// verify.TdxQuote, which repeats them and adds the collateral.
//
// # go-tdx-guest traps handled here
//
// validate.TdxQuote does not reject debug TDs: Verify and Validate check
// TD_ATTRIBUTES bit 0 themselves. verify.TdxQuote writes into its Options:
// one is built per call. The library logs to stdout when it falls back to its
// embedded root: the root pool is always passed explicitly.
//
// # Simulated TDX
//
// GenerateSim, NewSimIssuer, SimRoots and SimVerifierOptions provide a
// simulated TEE for development and tests; see GenerateSim.
package tdx
