// Package snp verifies AMD SEV-SNP attestation evidence, on top of
// github.com/google/go-sev-guest v0.15.0.
//
// # Where each thing is checked
//
//	evidence.go   ParseEvidence: the report's format (size, version, reserved
//	              bytes, signature algorithm) and the certificate table's
//	              structure; nothing else
//	verify.go     Verifier.Verify: the report's ECDSA P-384 signature under
//	              the VCEK or VLEK, that certificate's chain to a trusted AMD
//	              root at Options.Now, the report agreeing with its
//	              certificate (reported TCB, chip id), reported ≤ committed ≤
//	              current TCB, and the two hard rules: debugging off
//	              (ErrDebug) and REPORT_DATA equal to the caller's binding
//	              (ErrReportData)
//	roots.go      which roots are trusted: AMD's ARK/ASK/ASVK embedded in
//	              go-sev-guest (DefaultRoots), or the ones given (Options.Roots,
//	              RootsFromCerts)
//	cache.go      the disk cache of VCEKs and KDS downloads
//	validate.go   Validate: go-sev-guest's validation confirming the
//	              reference values, with the options kbs/policy builds from
//	              the manifest
//	simulated.go  IsSimulated: recognizing the simulated TEE's evidence, to
//	              route it; never a reason to trust it
//	errors.go     the errors callers branch on
//
// Reference values (measurement, host data, family and image id, guest
// policy, VMPL, minimum TCB and guest SVN, product, chip id) are decided by
// manifest.Match, which explains each field, and confirmed by Validate. The
// layout of a TCB_VERSION is attest.DecodeSNPTCB's.
//
// # Trust
//
// Only the roots in Options.Roots (by default AMD's). Claims of evidence
// that chains to any other root (the simulated TEE's) carry
// Simulated = true. The certificate table in the evidence is untrusted
// input; its ARK and ASK are ignored and the VCEK/VLEK is trusted only after
// it chains to a trusted root. The on-disk cache holds only endorsement
// certificates, which are re-verified against the roots whenever they are
// used for the first time.
//
// # Offline and online
//
// Offline is the default: the endorsement certificate comes from the
// evidence's certificate table or the cache, nothing is fetched and no CRL is
// consulted. Options.Online fetches missing certificates from AMD's KDS and
// checks the ASK against AMD's CRL.
//
// # Cost
//
// A successful chain verification is remembered per endorsement certificate
// (that is, per chip and TCB), so a warm Verify costs one signature check.
//
// # Errors
//
// A refusal of a hard rule wraps ErrDebug or ErrReportData; any other
// error's message names the check that failed (malformed evidence, no
// certificate, expired certificate, signature, chain, revocation, report and
// certificate disagreeing, TCB order).
package snp
