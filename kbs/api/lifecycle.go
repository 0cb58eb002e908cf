package api

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
)

// The broker's lifecycle: handing the master key over to a newcomer broker
// (an upgrade, a move to another host), and restoring it from the recovery
// holders' shares (docs/operating.md, "Upgrade by handover" and
// "Recovery").
//
//	POST /v1/handover/challenge             (no body) -> Challenge
//	POST /v1/handover                       HandoverRequest -> Handover
//	GET  /v1/handover/snapshot?token=HEX    the database, as a bbolt file
//	GET  /v1/recovery                       -> RecoveryStatus
//	POST /v1/recovery/share                 RecoveryShare -> RecoveryShareResult
const (
	PathHandoverChallenge = "/v1/handover/challenge"
	PathHandover          = "/v1/handover"
	PathHandoverSnapshot  = "/v1/handover/snapshot"
	PathRecovery          = "/v1/recovery"
	PathRecoveryShare     = "/v1/recovery/share"
)

// Body size limits of the lifecycle endpoints.
const (
	MaxHandoverBody = 1 << 20  // evidence with its certificate table
	MaxShareBody    = 64 << 10 // one sealed share
)

// HandoverRequest is the body of POST /v1/handover: a newcomer broker's
// fresh evidence, whose REPORT_DATA is SHA-512 of HandoverBinding(Nonce,
// HPKEPublicKey, the log's note key), and the HPKE key the master key is to
// be sealed to. Nonce comes from POST /v1/handover/challenge, single use.
type HandoverRequest struct {
	Platform      string `json:"platform"`
	Nonce         []byte `json:"nonce"`
	Evidence      []byte `json:"evidence"`
	HPKEPublicKey []byte `json:"hpke_public_key"`
}

// Handover is the answer to POST /v1/handover, sent only once the handover
// entry is durable in the log.
type Handover struct {
	// LogIndex is the index of the handover entry, and Receipt its C2SP
	// tlog-proof (the entry is its extra data).
	LogIndex uint64 `json:"log_index"`
	Receipt  string `json:"receipt"`
	// Platform and Evidence are the handing-over broker's own evidence for
	// this handover: its REPORT_DATA is SHA-512 of HandoverFromBinding(the
	// request's nonce, the digest of the newcomer's evidence, the broker's
	// note key, HPKE key and TLS key hash). The entry names its digest.
	Platform string `json:"platform"`
	Evidence []byte `json:"evidence"`
	// SealedMaster is the master key, sealed to the request's HPKE key
	// under HandoverInfo(LogIndex).
	SealedMaster []byte `json:"sealed_master"`
	// SnapshotToken authorizes one GET of PathHandoverSnapshot: the
	// broker's database as of the handover entry, which the newcomer
	// continues.
	SnapshotToken []byte `json:"snapshot_token"`
}

// RecoveryStatus is the answer to GET /v1/recovery: the recovery-shares
// entry a recovering broker waits for shares of, and which holders'
// shares it has.
type RecoveryStatus struct {
	// Recovering is false once the master key is restored (the broker then
	// serves as usual and answers the other fields empty).
	Recovering bool `json:"recovering"`
	// SharesIndex is the log index of the recovery-shares entry, and
	// Threshold how many shares restore the master key.
	SharesIndex uint64 `json:"shares_index"`
	Threshold   int    `json:"threshold"`
	// Holders lists every holder of that entry, and whether its share
	// has arrived.
	Holders []RecoveryHolderStatus `json:"holders"`
}

// RecoveryHolderStatus is one holder of a RecoveryStatus.
type RecoveryHolderStatus struct {
	Name     string `json:"name"`
	Received bool   `json:"received"`
}

// RecoveryShare is the body of POST /v1/recovery/share: a holder's share,
// opened by the holder and sealed again to the recovering broker's
// attested HPKE key under ShareReturnInfo(Holder, SharesIndex).
type RecoveryShare struct {
	Holder string `json:"holder"`
	Sealed []byte `json:"sealed"`
}

// RecoveryShareResult is the answer to POST /v1/recovery/share.
type RecoveryShareResult struct {
	Received  int `json:"received"`
	Threshold int `json:"threshold"`
	// Restored is true when this share completed the threshold and the
	// broker restored its master key.
	Restored bool `json:"restored"`
}

// Binding-string prefixes of the lifecycle evidence.
const (
	handoverBindingPrefix     = "kbs-handover-v1\n"
	handoverFromBindingPrefix = "kbs-handover-from-v1\n"
)

// HandoverBinding returns the string whose SHA-512 is the REPORT_DATA of a
// newcomer broker's handover evidence:
//
//	"kbs-handover-v1\n" + hex(nonce) + "\n" + base64(hpkePublicKey) + "\n" + noteKey
//
// noteKey is the note verifier key of the log the newcomer is to continue.
func HandoverBinding(nonce, hpkePublicKey []byte, noteKey string) string {
	return handoverBindingPrefix + hex.EncodeToString(nonce) + "\n" +
		base64.StdEncoding.EncodeToString(hpkePublicKey) + "\n" + noteKey
}

// HandoverFromBinding returns the string whose SHA-512 is the REPORT_DATA
// of the handing-over broker's evidence in a Handover:
//
//	"kbs-handover-from-v1\n" + hex(nonce) + "\n" + newcomerEvidenceDigest + "\n" +
//	noteKey + "\n" + base64(hpkePublicKey) + "\n" + tlsSPKISHA256
//
// newcomerEvidenceDigest is "sha256:<hex>" of the newcomer's evidence.
func HandoverFromBinding(nonce []byte, newcomerEvidenceDigest, noteKey string, hpkePublicKey []byte, tlsSPKISHA256 string) string {
	return handoverFromBindingPrefix + hex.EncodeToString(nonce) + "\n" + newcomerEvidenceDigest + "\n" +
		noteKey + "\n" + base64.StdEncoding.EncodeToString(hpkePublicKey) + "\n" + tlsSPKISHA256
}

// Purposes of lifecycle HPKE sealing, bound into Info.
const (
	PurposeHandover      = "handover"       // master key, broker -> newcomer
	PurposeRecoveryShare = "recovery-share" // a share, broker -> holder -> recovering broker
)

// HandoverInfo is the Info of the master key sealed in the handover entry
// at logIndex.
func HandoverInfo(logIndex uint64) Info {
	return Info{Purpose: PurposeHandover, KeyID: "kbs/master", Version: 1, LogIndex: logIndex, HasLogIndex: true}
}

// ShareInfo is the Info of holder's share sealed to the holder's key, for
// the holders of manifest version manifestVersion.
func ShareInfo(holder string, manifestVersion uint64) Info {
	return Info{Purpose: PurposeRecoveryShare, KeyID: "kbs/recovery-share/" + holder, Version: manifestVersion}
}

// ShareReturnInfo is the Info of holder's share of the recovery-shares
// entry at sharesIndex, sealed by the holder to a recovering broker.
func ShareReturnInfo(holder string, sharesIndex uint64) Info {
	return Info{Purpose: PurposeRecoveryShare, KeyID: "kbs/recovery-return/" + holder, Version: 1, LogIndex: sharesIndex, HasLogIndex: true}
}

// ShareCommitment is what a recovery-shares entry logs of holder's share:
//
//	"sha256:" + hex(SHA-256("kbs-recovery-share-v1\n" + holder + "\n" + share))
//
// A share is 33 bytes of which 32 are uniformly random, so the commitment
// reveals nothing of it; a recovering broker and the holder check a share
// against it.
func ShareCommitment(holder string, share []byte) string {
	h := sha256.New()
	h.Write([]byte("kbs-recovery-share-v1\n" + holder + "\n"))
	h.Write(share)
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}
