// Package api defines what crosses the wire between kbsd and its clients,
// workers, owners and auditors: the JSON request and response bodies of every
// HTTP endpoint, the error body and its stable codes, the evidence binding
// strings whose SHA-512 goes into REPORT_DATA, the HPKE sealing used for key
// uploads and key releases, the signed statements that authorize key
// uploads and deletions, and the two file formats that carry keys to the
// applications that use them: key files (KeyFile, a PEM block with the key
// id and version) and encrypted prompts and replies (SealPrompt,
// OpenPrompt: an authenticated text header naming the key, then
// AES-256-GCM); and the sealed requests and answer frames of encrypted
// inference between kbsctl proxy and kbsctl worker run
// (SealInferenceRequest, ResponseSealer, ResponseOpener; inference.go).
//
// The package holds no state and does no I/O. Both sides of the protocol use
// it: kbsd to decode requests and build answers, kbs/client and kbsctl to
// build requests and check answers. Everything here is deterministic, so a
// verifier written elsewhere can recompute every byte that is signed, sealed
// or bound into evidence.
//
// # Conventions
//
// Byte strings are standard base64 (RFC 4648 §4, with padding) in JSON,
// except where a field name ends in _sha256 or the text says hex. Nonces are
// 32 random bytes. JSON decoding on the server is strict: unknown fields are
// rejected.
//
// # Endpoints
//
//	GET    /v1/attestation?nonce=HEX&since=N  -> Attestation
//	GET    /v1/manifest                        -> Manifest
//	GET    /v1/manifest/history                -> ManifestHistory
//	PUT    /v1/manifest                        ManifestUpdate -> Manifest
//	POST   /v1/keys                            KeyUpload -> KeyUploadResult
//	DELETE /v1/keys/{id}                       KeyDelete -> KeyDeleteResult
//	GET    /v1/keys?prefix=&after=&limit=      -> KeyList (one page)
//	GET    /v1/keys/{id}                       -> KeyInfo
//	POST   /v1/release/challenge               (no body) -> Challenge
//	POST   /v1/release                         ReleaseRequest -> Release
//	GET    /v1/log/proof?index=&size=          -> InclusionProof
//	GET    /v1/log/consistency?old=&new=       -> ConsistencyProof
//	GET    /v1/witnesses                       -> WitnessesStatus
//	GET    /log/checkpoint, /log/tile/...      C2SP tlog-tiles (not JSON)
//	GET    /healthz, /metrics                  text
//
// Every error answer has a 4xx or 5xx status and an ErrorBody.
package api

import "time"

// Paths of the HTTP endpoints.
const (
	PathAttestation     = "/v1/attestation"
	PathManifest        = "/v1/manifest"
	PathManifestHistory = "/v1/manifest/history"
	PathKeys            = "/v1/keys" // POST, GET; GET and DELETE under PathKeys + "/" + id
	PathChallenge       = "/v1/release/challenge"
	PathRelease         = "/v1/release"
	PathLogProof        = "/v1/log/proof"
	PathLogConsistency  = "/v1/log/consistency"
	PathWitnesses       = "/v1/witnesses"
	PathLogPrefix       = "/log/" // C2SP tlog-tiles: checkpoint, tile/...
	PathHealth          = "/healthz"
	PathMetrics         = "/metrics"
)

// Body size limits the broker enforces. A larger body gets 413 and
// CodeTooLarge.
const (
	MaxManifestBody = 256 << 10 // PUT /v1/manifest: a 48 KiB manifest, base64, plus signatures
	MaxKeyBody      = 64 << 10  // POST and DELETE /v1/keys
	MaxReleaseBody  = 1 << 20   // POST /v1/release: evidence with its certificate table
	MaxKeySize      = 1024      // plaintext of one uploaded key, in bytes
	MaxReleaseKeys  = 64        // key ids in one release request
)

// NonceSize is the size of attestation and release nonces.
const NonceSize = 32

// Attestation is the answer to GET /v1/attestation?nonce=HEX&since=N: the
// broker's fresh evidence, its identity, the active manifest with its
// inclusion proof, and a signed checkpoint.
//
// The evidence's REPORT_DATA is SHA-512 of BrokerBinding(nonce, NoteKey,
// HPKEPublicKey, TLSSPKISHA256, Checkpoint). A client recomputes it from the
// fields of this answer and its own nonce, verifies the evidence against the
// service reference values of its own manifest, checks that Manifest.Body is
// byte-identical to its manifest, checks the inclusion proof of
// Manifest.LogIndex and the consistency proof from its last tree size
// against Checkpoint, and only then trusts HPKEPublicKey.
type Attestation struct {
	// Platform is "snp" or "tdx".
	Platform string `json:"platform"`
	// Simulated is true when the evidence comes from the simulated TEE
	// (development only; clients reject it unless told to trust its root).
	Simulated bool `json:"simulated"`
	// Evidence is the raw evidence (SNP report plus certificate table, or TDX
	// quote).
	Evidence []byte `json:"evidence"`
	// NoteKey is the C2SP signed-note verifier key of the log's checkpoints.
	NoteKey string `json:"note_key"`
	// HPKEPublicKey is the broker's HPKE public key in the encoding of
	// MarshalPublicKey. Clients seal key uploads to it.
	HPKEPublicKey []byte `json:"hpke_public_key"`
	// TLSSPKISHA256 is the hex SHA-256 of the SubjectPublicKeyInfo of the
	// broker's TLS certificate. TCP clients pin it.
	TLSSPKISHA256 string `json:"tls_spki_sha256"`
	// Checkpoint is the signed checkpoint (C2SP signed note text) that
	// Manifest.InclusionProof and ConsistencyProof lead to.
	Checkpoint string `json:"checkpoint"`
	// Manifest is the active manifest.
	Manifest ManifestRef `json:"manifest"`
	// ConsistencyProof proves that the tree of size `since` is a prefix of
	// the checkpoint's tree. Present when since was given and is > 0.
	ConsistencyProof [][]byte `json:"consistency_proof,omitempty"`
	// Since echoes the since parameter.
	Since uint64 `json:"since,omitempty"`
	// Recovering is true when the broker waits for its recovery holders'
	// shares: HPKEPublicKey and TLSSPKISHA256 are then the keys of this
	// recovery only (the broker's identity is under its master key), to
	// which holders seal their shares; nothing else is served.
	Recovering bool `json:"recovering,omitempty"`
	// HandedOver is true when the broker has handed its master key over to
	// a successor: it takes no decision any more (410 handed_over).
	HandedOver bool `json:"handed_over,omitempty"`
}

// ManifestRef is the active manifest as carried in an Attestation.
type ManifestRef struct {
	Version uint64 `json:"version"`
	// Hash is "sha256:<hex>" of Body.
	Hash string `json:"hash"`
	// Body is the exact manifest bytes.
	Body []byte `json:"body"`
	// LogIndex is the index of the manifest's log entry.
	LogIndex uint64 `json:"log_index"`
	// Entry is the exact bytes of that log entry (a tlog manifest entry
	// whose body is Body), so that the client can check InclusionProof
	// without fetching it.
	Entry []byte `json:"entry"`
	// InclusionProof proves Entry at LogIndex in the attestation's
	// checkpoint.
	InclusionProof [][]byte `json:"inclusion_proof"`
}

// Manifest is the answer to GET /v1/manifest and PUT /v1/manifest: the
// active manifest with the owner signatures that made it valid.
type Manifest struct {
	Version uint64 `json:"version"`
	Hash    string `json:"hash"`
	Body    []byte `json:"body"`
	// Signatures are the detached owner signatures over Body, each the
	// base64 text of a DER ECDSA P-256/SHA-256 or Ed25519 signature (what
	// `kbsctl manifest sign`, `cosign sign-blob --key` and `openssl dgst
	// -sha256 -sign key.pem | base64 -w0` print). Version 1 has none: it is
	// trusted by configuration.
	Signatures []string `json:"signatures"`
	LogIndex   uint64   `json:"log_index"`
}

// ManifestHistory is the answer to GET /v1/manifest/history: every version
// the broker ever activated, oldest first.
type ManifestHistory struct {
	Manifests []Manifest `json:"manifests"`
}

// ManifestUpdate is the body of PUT /v1/manifest: version N+1 with the
// signatures of at least threshold distinct owners of version N over Body.
type ManifestUpdate struct {
	Body []byte `json:"body"`
	// Signatures are base64 detached signatures, as in Manifest.
	Signatures []string `json:"signatures"`
}

// KeyUpload is the body of POST /v1/keys. Sealed is the key material sealed
// with Seal to the broker's attested HPKE public key under
// UploadInfo(ID, Version). Signature is the client's signature over
// UploadStatement(Client, ID, Version, broker HPKE public key, Sealed), made
// with the key the manifest lists for Client.
//
// Version must be exactly one more than the key's last version (1 for a new
// id, and versions of deleted keys are never reused), so a replayed upload
// fails with CodeConflict.
type KeyUpload struct {
	Client    string `json:"client"`
	ID        string `json:"id"`
	Version   uint64 `json:"version"`
	Sealed    []byte `json:"sealed"`
	Signature []byte `json:"signature"`
}

// KeyUploadResult is the answer to POST /v1/keys.
type KeyUploadResult struct {
	ID       string `json:"id"`
	Version  uint64 `json:"version"`
	LogIndex uint64 `json:"log_index"`
	// Receipt is the tlog-proof of the key-upload entry.
	Receipt string `json:"receipt"`
}

// KeyDelete is the body of DELETE /v1/keys/{id}. It destroys every version
// of the key up to Version, which must be the key's latest version.
// Signature is the client's signature over DeleteStatement(Client, ID,
// Version, broker HPKE public key).
type KeyDelete struct {
	Client    string `json:"client"`
	Version   uint64 `json:"version"`
	Signature []byte `json:"signature"`
}

// KeyDeleteResult is the answer to DELETE /v1/keys/{id}.
type KeyDeleteResult struct {
	ID       string `json:"id"`
	Version  uint64 `json:"version"`
	LogIndex uint64 `json:"log_index"`
	Receipt  string `json:"receipt"`
}

// Pages of GET /v1/keys: the query parameters and the number of keys on
// a page.
const (
	// KeyListPrefix keeps only the key ids that start with it (any
	// string of key id characters, e.g. "acme/" or "acme/mod").
	KeyListPrefix = "prefix"
	// KeyListAfter starts the page after this key id: the Next of the
	// page before.
	KeyListAfter = "after"
	// KeyListLimit is the most keys on the page: 1 to MaxKeyListLimit,
	// DefaultKeyListLimit when absent.
	KeyListLimit        = "limit"
	DefaultKeyListLimit = 1000
	MaxKeyListLimit     = 10000
)

// KeyList is the answer to GET /v1/keys: one page of key metadata, sorted
// by id; metadata only, never key material.
type KeyList struct {
	Keys []KeyInfo `json:"keys"`
	// Next, when set, is the id of the last key on this page, and more
	// keys follow: ask again with after=Next for the next page.
	Next string `json:"next,omitempty"`
}

// KeyInfo is the metadata of one key id.
type KeyInfo struct {
	ID string `json:"id"`
	// Version is the latest version.
	Version uint64 `json:"version"`
	// Client is the name of the client that uploaded the latest version.
	Client string `json:"client"`
	// Created is when the key id's first version was stored;
	// VersionCreated when its latest version was (absent once the key is
	// deleted, and from brokers that predate it).
	Created        time.Time `json:"created"`
	VersionCreated time.Time `json:"version_created,omitzero"`
	// Deleted is true when the key was crypto-shredded; its versions are
	// never reused.
	Deleted bool `json:"deleted,omitempty"`
}

// Challenge is the answer to POST /v1/release/challenge: a single-use nonce
// for one release, valid until Expires.
type Challenge struct {
	Nonce   []byte    `json:"nonce"`
	Expires time.Time `json:"expires"`
}

// ReleaseRequest is the body of POST /v1/release. Evidence's REPORT_DATA must
// be SHA-512 of WorkerBinding(Nonce, HPKEPublicKey). Nonce must come from
// POST /v1/release/challenge, unused and unexpired. HPKEPublicKey is in the
// encoding of MarshalPublicKey; its KEM selects the sealing suite.
type ReleaseRequest struct {
	Platform      string   `json:"platform"`
	Nonce         []byte   `json:"nonce"`
	Evidence      []byte   `json:"evidence"`
	HPKEPublicKey []byte   `json:"hpke_public_key"`
	KeyIDs        []string `json:"key_ids"`
}

// Release is the answer to POST /v1/release. Each key is sealed with Seal to
// the request's HPKE public key under ReleaseInfo(id, version, LogIndex).
// Receipt is the C2SP tlog-proof of the release entry at LogIndex; its extra
// data is the entry itself.
type Release struct {
	Keys     []ReleasedKey `json:"keys"`
	LogIndex uint64        `json:"log_index"`
	Receipt  string        `json:"receipt"`
	// Class is the manifest worker class the evidence matched.
	Class string `json:"class"`
}

// ReleasedKey is one sealed key of a Release.
type ReleasedKey struct {
	ID      string `json:"id"`
	Version uint64 `json:"version"`
	Sealed  []byte `json:"sealed"`
}

// InclusionProof is the answer to GET /v1/log/proof?index=I&size=N.
type InclusionProof struct {
	Index    uint64   `json:"index"`
	TreeSize uint64   `json:"tree_size"`
	Proof    [][]byte `json:"proof"`
}

// ConsistencyProof is the answer to GET /v1/log/consistency?old=M&new=N.
type ConsistencyProof struct {
	Old   uint64   `json:"old"`
	New   uint64   `json:"new"`
	Proof [][]byte `json:"proof"`
}
