// Package manifest reads, checks and applies kbs manifests: the signed JSON
// documents that say which hardware evidence the broker itself ("service")
// and each class of AI worker ("workers") must present, which clients may
// upload which keys, which worker classes may receive which keys, and which
// owners may sign the next version.
//
// # What it trusts and guarantees
//
// Parse trusts nothing: a document is accepted only if it is at most MaxSize
// bytes of valid UTF-8 JSON holding exactly one object, with no duplicate
// keys, no unknown or missing fields, values of the right types and ranges,
// and self-consistent policy (see docs/manifest.md). Every reference field
// must be given; a field that may take any value says so with "any". Debug
// guests are rejected by Match whatever the manifest says, and a manifest
// that would allow them does not parse. Errors are *FieldError values that
// name the field and the reason.
//
// A Manifest keeps the exact bytes it was parsed from; its identity (Hash)
// is "sha256:" and the hex SHA-256 of those bytes. Nothing is re-encoded:
// signatures are checked over, and logs record, the bytes as given.
//
// Trust in a manifest comes from outside the package: the first version a
// caller accepts (a client's own copy, the version 1 an operator
// configured) is its own decision, the anchor of a Chain. Each later
// version is accepted only through Verify, with threshold signatures of the
// previous version's owners (ECDSA P-256/SHA-256 in ASN.1 DER, or Ed25519,
// base64; verified with github.com/sigstore/sigstore, so
// `openssl dgst -sha256 -sign` and `cosign sign-blob --key` signatures
// work). VerifyChain checks a whole history that way, from its anchor: each
// version one more than the last, naming its hash as "previous", signed to
// threshold by its owners, with the differences (Diff) of each step; a
// version 1 anchor that carries signatures must be signed to threshold by
// its own owners. Clients following a broker, owners listing the history,
// auditors and the broker re-verifying its stored chain all use it.
//
// Match compares verified claims, as a kbs/attest Verifier returns them,
// against reference values and returns a Report listing every checked field
// with its expected and actual value. It decides and explains; this package
// verifies no evidence, and of kbs's own packages imports only kbs/attest's
// types (Claims, and the SEV-SNP TCB layout).
package manifest

import (
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"sort"
)

// Manifest is a parsed and validated manifest. It is immutable and safe for
// concurrent use.
type Manifest struct {
	raw     []byte
	hash    string
	digest  [32]byte
	doc     *Document
	owners  []*pubKey
	clients []*pubKey // parallel to doc.Clients
}

// Parse decodes and validates a manifest; b is copied. See the package
// documentation for what is checked.
func Parse(b []byte) (*Manifest, error) {
	if len(b) > MaxSize {
		return nil, fieldErr("", "document is %d bytes, more than the limit of %d", len(b), MaxSize)
	}
	root, err := parseTree(b)
	if err != nil {
		return nil, err
	}
	doc, err := decodeDocument(root)
	if err != nil {
		return nil, err
	}
	m := &Manifest{raw: append([]byte(nil), b...), doc: doc}
	m.digest = sha256.Sum256(m.raw)
	m.hash = "sha256:" + hex.EncodeToString(m.digest[:])
	for _, s := range doc.Owners.Keys {
		k, err := parsePublicKeyPEM(s)
		if err != nil { // checked by decodeDocument
			return nil, fieldErr("owners.keys", "%v", err)
		}
		m.owners = append(m.owners, k)
	}
	for _, c := range doc.Clients {
		k, err := parsePublicKeyPEM(c.PublicKey)
		if err != nil {
			return nil, fieldErr("clients", "%v", err)
		}
		m.clients = append(m.clients, k)
	}
	return m, nil
}

// Read reads a manifest of at most MaxSize bytes from r and parses it.
func Read(r io.Reader) (*Manifest, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("couldn't read manifest: %w", err)
	}
	return Parse(b)
}

// HashOf returns the manifest identity of b: "sha256:" and the hex SHA-256.
func HashOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Bytes returns a copy of the exact bytes the manifest was parsed from.
func (m *Manifest) Bytes() []byte { return append([]byte(nil), m.raw...) }

// Hash returns the manifest's identity, "sha256:<hex>" of its bytes.
func (m *Manifest) Hash() string { return m.hash }

// Digest returns the SHA-256 of the manifest's bytes.
func (m *Manifest) Digest() [32]byte { return m.digest }

// Version returns the manifest version (1, 2, …).
func (m *Manifest) Version() uint64 { return m.doc.Version }

// Previous returns the hash of the previous version, or "" for version 1.
func (m *Manifest) Previous() string { return m.doc.Previous }

// AllowSimulated reports whether evidence from the simulated TEE may match.
func (m *Manifest) AllowSimulated() bool { return m.doc.AllowSimulated }

// Document returns a fresh copy of the manifest's content.
func (m *Manifest) Document() *Document {
	root, err := parseTree(m.raw)
	if err != nil {
		panic("manifest: stored bytes no longer parse: " + err.Error())
	}
	d, err := decodeDocument(root)
	if err != nil {
		panic("manifest: stored bytes no longer decode: " + err.Error())
	}
	return d
}

// Threshold returns how many owners of this version must sign the next.
func (m *Manifest) Threshold() int { return m.doc.Owners.Threshold }

// OwnerFingerprints returns the fingerprints of the owner keys, in document
// order.
func (m *Manifest) OwnerFingerprints() []string {
	fps := make([]string, len(m.owners))
	for i, k := range m.owners {
		fps[i] = k.fingerprint
	}
	return fps
}

// WorkerClasses returns the worker class names, sorted.
func (m *Manifest) WorkerClasses() []string { return sortedClasses(m.doc.Workers) }

// ClientInfo describes a client the manifest lists.
type ClientInfo struct {
	Name        string
	Fingerprint string
	PublicKey   crypto.PublicKey
	// Keys are the key id patterns the client may write.
	Keys []string
}

func (m *Manifest) clientInfo(i int) ClientInfo {
	c := m.doc.Clients[i]
	return ClientInfo{
		Name:        c.Name,
		Fingerprint: m.clients[i].fingerprint,
		PublicKey:   m.clients[i].key,
		Keys:        append([]string(nil), c.Keys...),
	}
}

// ClientFor returns the client whose public key is pub.
func (m *Manifest) ClientFor(pub crypto.PublicKey) (ClientInfo, bool) {
	fp, err := Fingerprint(pub)
	if err != nil {
		return ClientInfo{}, false
	}
	return m.ClientByFingerprint(fp)
}

// ClientByFingerprint returns the client whose key has fingerprint fp
// ("sha256:<hex>").
func (m *Manifest) ClientByFingerprint(fp string) (ClientInfo, bool) {
	for i, k := range m.clients {
		if k.fingerprint == fp {
			return m.clientInfo(i), true
		}
	}
	return ClientInfo{}, false
}

// ClientByName returns the client called name.
func (m *Manifest) ClientByName(name string) (ClientInfo, bool) {
	for i, c := range m.doc.Clients {
		if c.Name == name {
			return m.clientInfo(i), true
		}
	}
	return ClientInfo{}, false
}

// Clients returns every client, in document order.
func (m *Manifest) Clients() []ClientInfo {
	out := make([]ClientInfo, len(m.doc.Clients))
	for i := range out {
		out[i] = m.clientInfo(i)
	}
	return out
}

// MayWrite reports whether the client called client may upload or delete
// the key keyID: keyID must be a valid key id (CheckKeyID) and match one of
// the client's patterns. A pattern is a key id, or a prefix followed by "*"
// that matches every key id that starts with the prefix and is longer.
func (m *Manifest) MayWrite(client, keyID string) bool {
	if CheckKeyID(keyID) != nil {
		return false
	}
	for _, c := range m.doc.Clients {
		if c.Name != client {
			continue
		}
		for _, p := range c.Keys {
			if matchPattern(p, keyID) {
				return true
			}
		}
	}
	return false
}

// ReleaseAllowed reports whether the key keyID may be released to workers
// of class: some rule of "keys" whose pattern matches keyID lists the class.
func (m *Manifest) ReleaseAllowed(class, keyID string) bool {
	if CheckKeyID(keyID) != nil {
		return false
	}
	for _, r := range m.doc.Keys {
		if !matchPattern(r.Match, keyID) {
			continue
		}
		for _, c := range r.ReleaseTo {
			if c == class {
				return true
			}
		}
	}
	return false
}

// ReleaseClasses returns the worker classes that may receive keyID, sorted.
func (m *Manifest) ReleaseClasses(keyID string) []string {
	set := map[string]bool{}
	for _, c := range m.WorkerClasses() {
		if m.ReleaseAllowed(c, keyID) {
			set[c] = true
		}
	}
	out := make([]string, 0, len(set))
	for c := range set {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}
