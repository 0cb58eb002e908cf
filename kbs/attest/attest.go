// Package attest is the evidence model kbs verifies: hardware evidence
// from confidential VMs (AMD SEV-SNP attestation reports, Intel TDX quotes)
// as it crosses the wire (Evidence), the verified, platform-neutral Claims a
// Verifier makes of it, and Issuers that produce it. It imports only the
// standard library, so that everything that reads claims (the manifest's
// comparison, the broker, clients, auditors) shares these types.
//
// The trust pipeline, and where each step lives:
//
//	kbs/attest/snp, kbs/attest/tdx  Verify: signature and certificate chain
//	                                to the vendor's root, collateral, and
//	                                the hard rules (debug never allowed,
//	                                REPORT_DATA bound to the challenge)
//	kbs/attest/verify               one Verifier for both platforms, and
//	                                which roots each may trust
//	manifest (Match)                decides: the claims against the
//	                                manifest's reference values, field by
//	                                field, explained
//	kbs/policy                      confirms: the vendor library's
//	                                validation (snp.Validate, tdx.Validate)
//	                                with options built from the values that
//	                                matched
//	kbs/attest/cvm                  issues the evidence of the CVM the code
//	                                runs in (configfs-tsm, /dev/sev-guest)
//	kbs/attest/sim                  the simulated TEE: issues evidence for
//	                                development and tests
//
// DecodeSNPTCB is the one place that knows the layout of an SEV-SNP
// TCB_VERSION per product line.
//
// The simulated TEE produces evidence in the same formats, signed under a
// locally generated vendor chain and marked (SimSNPMarker,
// SimTDXCRLPrefix) so that verifiers can route it; it is verified by the
// same code, and only when its root is passed explicitly. Claims from it
// carry Simulated = true. No verifier imports the simulator.
package attest

import (
	"context"
	"crypto/sha256"
	"time"
)

// Platform names a confidential-computing platform.
type Platform string

// The platforms kbs verifies.
const (
	SNP Platform = "snp"
	TDX Platform = "tdx"
)

// Marks of simulated evidence. The simulated TEE (kbs/attest/sim) puts them
// in the certificates it issues so that verifiers can route its evidence to
// the simulated roots, which they trust only when given explicitly
// (kbs/attest/verify). A mark is never a reason to trust evidence, and
// hardware certificates never carry one: evidence routed to the simulated
// roots fails unless it chains to them, and evidence that chains to them is
// marked Simulated in its claims.
const (
	// SimSNPMarker is a pseudonym attribute (OID 2.5.4.65) in the subject
	// of every simulated VCEK.
	SimSNPMarker = "kbs simulated TEE 5a4d3e77-a00c-4aae-a916-58117dfc77b4"
	// SimTDXCRLPrefix starts the CRL distribution point of the simulated
	// Intel root, PCK CA and TCB signing certificates.
	SimTDXCRLPrefix = "https://kbs-sim.invalid/"
	// SimTDXCollateralDir is where a simulated TEE keeps the TDX collateral
	// (in kbs/attest/tdx/pcscache's format) that its quotes verify with,
	// relative to the directory of its root.pem.
	SimTDXCollateralDir = "tdx/tdx-collateral"
)

// ReportDataSize is the size of the REPORT_DATA field of SNP reports and TDX
// quotes: 64 bytes, which kbs fills with SHA-512 of a binding string.
const ReportDataSize = 64

// Evidence is hardware evidence as it crosses the wire. For SNP, Data is the
// 1184-byte attestation report followed, when present, by the certificate
// table (the configfs-tsm auxblob / extended-report format holding the VCEK
// or VLEK). For TDX, Data is the raw quote.
type Evidence struct {
	Platform Platform
	Data     []byte
}

// Digest returns the SHA-256 of the evidence bytes, as recorded in log
// entries.
func (e Evidence) Digest() [32]byte { return sha256.Sum256(e.Data) }

// Issuer produces evidence whose REPORT_DATA is reportData. Implementations:
// configfs-tsm and /dev/sev-guest inside a CVM, and the simulated TEE.
type Issuer interface {
	Platform() Platform
	Issue(ctx context.Context, reportData [ReportDataSize]byte) (Evidence, error)
}

// Verifier checks evidence: the signature and certificate chain to a trusted
// root, the collateral, the platform's fixed safety rules (debug is never
// allowed), and that REPORT_DATA equals reportData. It returns the claims of
// evidence that passes, and an error that says precisely what failed
// otherwise.
type Verifier interface {
	Verify(ctx context.Context, ev Evidence, reportData [ReportDataSize]byte) (*Claims, error)
}

// Claims are the verified contents of evidence, platform neutral where
// possible. Exactly one of SNP and TDX is set, matching Platform.
type Claims struct {
	Platform Platform
	// Simulated is true when the evidence chains to a simulated-TEE root.
	Simulated bool
	// ReportData is the 64-byte REPORT_DATA the evidence binds.
	ReportData [ReportDataSize]byte
	// Measurement is the launch measurement: SNP MEASUREMENT (48 bytes),
	// TDX MRTD (48 bytes).
	Measurement []byte
	// EvidenceDigest is the SHA-256 of the evidence bytes.
	EvidenceDigest [32]byte
	// VerifiedAt is the time the verifier checked certificates and
	// collateral at (its clock). Reference values that expire (a TCB
	// status exception) are judged at this time, so that a decision
	// depends on the verification, not on when it is read.
	VerifiedAt time.Time

	SNP *SNPClaims
	TDX *TDXClaims
}

// SNPClaims are the fields of a verified SEV-SNP attestation report.
type SNPClaims struct {
	Version         uint32
	GuestSVN        uint32
	Policy          uint64 // guest policy; bit 19 is DEBUG
	FamilyID        []byte // 16 bytes
	ImageID         []byte // 16 bytes
	VMPL            uint32
	CurrentTCB      uint64 // TCB_VERSION as 64-bit little-endian value (see DecodeSNPTCB)
	ReportedTCB     uint64
	CommittedTCB    uint64
	LaunchTCB       uint64
	HostData        []byte // 32 bytes
	IDKeyDigest     []byte // 48 bytes
	AuthorKeyDigest []byte // 48 bytes; zero without an author key
	ReportID        []byte // 32 bytes
	ChipID          []byte // 64 bytes
	Product         string // "Milan", "Genoa", ...
	// SignerKey says which key signed the report: "vcek" or "vlek".
	SignerKey string
	// PlatformInfo is the PLATFORM_INFO field (bit 0: SMT enabled on the
	// host, bit 1: TSME enabled).
	PlatformInfo uint64
	// Report is the raw, signature-verified 1184-byte report, and
	// EndorsementKey the DER certificate (VCEK or VLEK) that verified it;
	// policy validation re-reads both.
	Report         []byte
	EndorsementKey []byte
}

// TDXClaims are the fields of a verified TDX quote (v4, or v5 with a TD
// report 1.0 or 1.5 body).
type TDXClaims struct {
	// QuoteVersion is 4 or 5.
	QuoteVersion  int
	MRTD          []byte    // 48 bytes
	RTMR          [4][]byte // 48 bytes each
	MRConfigID    []byte    // 48 bytes
	MROwner       []byte    // 48 bytes
	MROwnerConfig []byte    // 48 bytes
	XFAM          uint64
	TDAttributes  uint64 // bit 0 is DEBUG
	TEETCBSVN     []byte // 16 bytes
	MRSeam        []byte // 48 bytes
	MRSignerSeam  []byte // 48 bytes
	// TEETCBSVN2 and MRServiceTD are fields of TD report 1.5 bodies (v5
	// quotes on TDX 1.5): the SVN of the TDX module the TD runs on after a
	// module update, and the measurement of bound service TDs (zero for
	// none). Nil for TD report 1.0 bodies.
	TEETCBSVN2  []byte // 16 bytes
	MRServiceTD []byte // 48 bytes
	// TCBStatus is the platform's TCB status from Intel's collateral: the
	// worst of the TCB level of the platform, of the TDX module and of the
	// quoting enclave ("UpToDate", "SWHardeningNeeded",
	// "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
	// "OutOfDate", "OutOfDateConfigurationNeeded"; Revoked is refused by
	// the verifier). AdvisoryIDs are the Intel security advisories those
	// levels name (INTEL-SA-…), sorted.
	TCBStatus   string
	AdvisoryIDs []string
}
