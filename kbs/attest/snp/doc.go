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
//	kds.go        the KDS extensions of VCEKs and VLEKs (TCB, hardware id,
//	              product), read by kbs for Milan, Genoa and Turin:
//	              go-sev-guest v0.15.0 cannot read Turin's (fmcSPL, 8-byte
//	              hwID); Turin chains are checked without its
//	              verify.SnpAttestation, through the same root options
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
// policy, VMPL, minimum reported and launch TCB, guest SVN, product, chip
// id, ID and author key digests) are decided by manifest.Match, which
// explains each field, and confirmed by Validate (for Turin through
// libraryView, a certificate go-sev-guest v0.15.0 can read). The layout of a
// TCB_VERSION is attest.DecodeSNPTCB's.
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
// checks the ASK against AMD's CRL, through a kbs/attest/fetch gate
// (Options.Fetches): a few fetches at once, each with a deadline, a failed
// URL not fetched again for a while, and the caller's release slot given
// back meanwhile.
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
