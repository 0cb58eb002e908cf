// Package tdx verifies Intel TDX quotes, versions 4 and 5 (TD report 1.0
// and 1.5 bodies), with Intel's collateral, on top of
// github.com/google/go-tdx-guest v0.3.1.
//
// # Where each thing is checked
//
//	rawquote.go   parsing: a well-formed v4 or v5 quote split into header,
//	              body and signed data (kbs's own parser: go-tdx-guest v0.3.1
//	              parses v4 only; fuzzed against it on every shared field)
//	quote.go      the PCK chain of three PEM certificates with Intel's names
//	              and key types, the QE report's binding of the attestation
//	              key, the signatures; go-tdx-guest's v4 parser
//	verify.go     Verifier.Verify: Intel's quoting enclave, the chain to a
//	              trusted root at Options.Now, the QE report and quote
//	              signatures, the collateral (always), go-tdx-guest's
//	              verify.TdxQuote agreeing (v4), and the two hard rules:
//	              REPORT_DATA equal to the caller's binding (ErrReportData)
//	              and the debug bit clear (ErrDebug)
//	tcbeval.go    the collateral: signatures, freshness and revocation of
//	              TCB info, QE identity and CRLs, and the TCB levels of the
//	              platform, the TDX module and the QE (the TCB status and
//	              advisories of the claims)
//	bundle.go     collateral bundles: Intel PCS responses as served, read
//	              from a directory (LoadCollateral)
//	collateral.go fetching collateral from Intel PCS (online), and serving
//	              it to go-tdx-guest
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
// TD attributes, minimum TEE_TCB_SVN, MRSEAM, MRSIGNERSEAM, TEE_TCB_SVN2,
// MRSERVICETD, the TCB status) are decided by manifest.Match, which explains
// each field, and confirmed by Validate where go-tdx-guest has an option.
//
// # Trust
//
// The package trusts the roots in Options.TrustedRoots and nothing else: by
// default the Intel SGX Root CA (the certificate go-tdx-guest embeds, copied
// here as IntelRoot). The quote, the certificates in it and every collateral
// file, whether in a bundle, cached on disk or fetched, are untrusted input
// and are verified before use. Claims of a quote whose chain ends anywhere
// but at the Intel root carry Simulated = true; such roots are trusted only
// when the caller passes them.
//
// # What Verify guarantees
//
// A nil error from Verifier.Verify means, at Options.Now:
//
//   - the quote is a well-formed v4 or v5 TDX quote from Intel's quoting
//     enclave;
//   - its PCK certificate chain has Intel's form and ends at a trusted root,
//     and no certificate of it is expired or not yet valid;
//   - the PCK key signed the QE report, the QE report binds the attestation
//     key, and the attestation key signed the quote header and TD quote body;
//   - Intel's collateral for the platform (TCB info for its FMSPC, the TD QE
//     identity, the PCK and root CA CRLs) verified under the chain's root, is
//     current, revokes nothing in either chain, matches the PCK certificate,
//     the TDX module and the QE, and gives the platform a TCB level other than
//     Revoked: the status (the worst of the platform's, the module's and the
//     QE's) and Intel's advisory ids are in the claims, for the manifest to
//     judge;
//   - for v4 quotes, go-tdx-guest's verify.TdxQuote agrees;
//   - REPORT_DATA equals the expected binding;
//   - the TD is not a debug TD (TD_ATTRIBUTES bit 0 clear).
//
// A refusal of a hard rule wraps ErrDebug or ErrReportData; any other
// error's message names the check that failed (which certificate expired,
// which signature, which piece of collateral is missing or wrong). A panic
// inside go-tdx-guest becomes an error.
//
// # Offline and online collateral
//
// Collateral is never skipped. Offline (the default) it comes from
// Options.CollateralDir, a collateral bundle (see Collateral: Intel PCS
// responses as served, kbs's cache files, or QVL-style collateral JSON),
// read again on every cold verification; without one every quote is
// refused. Online mode (Options.Online) fetches it from Intel PCS on every
// cold verification, stores it in CollateralDir, and falls back to it when a
// fetch fails; fetches go through a kbs/attest/fetch gate (Options.Fetches:
// a few at once, each with a deadline, a failed URL not fetched again for a
// while).
//
// # Cost
//
// A Verifier caches, per PCK chain, quoting enclave and TDX module (see
// Options.ChainCacheTTL), everything but the quote signature, REPORT_DATA
// and the debug bit, so a warm verification costs one ECDSA P-256
// verification; a cold one reads the bundle, runs our checks and then (v4)
// go-tdx-guest's verify.TdxQuote, which repeats them.
//
// # go-tdx-guest traps handled here
//
// validate.TdxQuote does not reject debug TDs: Verify and Validate check
// TD_ATTRIBUTES bit 0 themselves. verify.TdxQuote accepts only the UpToDate
// TCB status and compares the FMSPC case-sensitively: it is asked about the
// collateral only where it can agree. verify.TdxQuote writes into its Options:
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
