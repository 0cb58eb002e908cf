// Package tdx verifies Intel TDX quotes (version 4), on top of
// github.com/google/go-tdx-guest v0.3.1.
//
// # Where each thing is checked
//
//	quote.go      parsing: a well-formed v4 quote, its PCK chain of three PEM
//	              certificates with Intel's names and key types, the QE
//	              report's binding of the attestation key, the signatures
//	verify.go     Verifier.Verify: Intel's quoting enclave, the chain to a
//	              trusted root at Options.Now, the QE report and quote
//	              signatures, the collateral through go-tdx-guest, and the two
//	              hard rules: REPORT_DATA equal to the caller's binding
//	              (ErrReportData) and the debug bit clear (ErrDebug)
//	collateral.go which collateral checks run, from the cache (pcscache) or
//	              Intel PCS
//	roots.go      which roots are trusted: Intel's SGX Root CA (IntelRoot),
//	              or the ones given (Options.TrustedRoots, RootsFromCerts)
//	validate.go   Validate: go-tdx-guest's validation confirming the
//	              reference values, with the options kbs/policy builds from
//	              the manifest, and the debug bit once more
//	simulated.go  IsSimulated: recognizing the simulated TEE's quotes, to
//	              route them; never a reason to trust them
//	errors.go     the errors callers branch on
//
// Reference values (MRTD, RTMR0-3, MRCONFIGID, MROWNER, MROWNERCONFIG, XFAM,
// TD attributes, minimum TEE_TCB_SVN, MRSEAM) are decided by manifest.Match,
// which explains each field, and confirmed by Validate.
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
// A refusal of a hard rule wraps ErrDebug or ErrReportData; any other
// error's message names the check that failed (which certificate expired,
// which signature, the collateral's verdict). A panic inside go-tdx-guest
// becomes an error.
//
// # Offline and online collateral
//
// Offline (the default) Verify uses only the quote and Options.CollateralDir,
// a cache of Intel PCS responses in kbs/attest/tdx/pcscache's format
// (tcbinfo-<fmspc>.json, qeidentity.json, pckcrl-<ca>.json,
// crl-<hash>.json). With TCB info for the platform's FMSPC
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
// at Now, or rejects the platform, Verify fails; it is never skipped.
// Options.RequireCollateral makes a missing TCB info or QE identity a
// refusal too. Online mode (Options.Online) fetches the
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
// The simulated TEE (kbs/attest/sim) issues quotes under its own "Intel SGX
// Root CA" with its own collateral; this package only recognizes them
// (IsSimulated) and verifies them like any other, under the roots it is
// given.
package tdx
