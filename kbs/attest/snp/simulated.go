package snp

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"sync"

	"github.com/google/uuid"

	"github.com/kbs-dev/kbs/kbs/attest"
)

// IsSimulated reports whether SNP evidence carries a simulated VCEK or VLEK:
// one whose subject holds attest.SimSNPMarker, as the simulated TEE
// (kbs/attest/sim) issues them. It verifies nothing and is no reason to
// trust anything: it routes evidence to a Verifier of the simulated roots,
// and a Verifier whose roots are AMD's rejects such evidence anyway.
//
// It runs on every piece of evidence a broker routes, so the answer for a
// certificate is remembered by the SHA-256 of its DER (a pure function of
// those bytes): only the first evidence with a given certificate pays for
// parsing it.
func IsSimulated(data []byte) bool {
	ev, err := ParseEvidence(data)
	if err != nil {
		return false
	}
	for _, guid := range []uuid.UUID{vcekGUID, vlekGUID} {
		der := ev.cert(guid)
		// Cheap pre-filter: hardware certificates never contain the marker.
		if der != nil && bytes.Contains(der, []byte(attest.SimSNPMarker)) && simMarked.get(der) {
			return true
		}
	}
	return false
}

// oidPseudonym is the subject attribute that holds the marker.
var oidPseudonym = asn1.ObjectIdentifier{2, 5, 4, 65}

// simMarked caches whether a certificate's subject holds the marker.
var simMarked = &markerCache{m: map[[32]byte]bool{}}

// maxMarkerCache bounds the marker cache; it is emptied when full.
const maxMarkerCache = 1024

type markerCache struct {
	mu sync.Mutex
	m  map[[32]byte]bool
}

func (c *markerCache) get(der []byte) bool {
	id := sha256.Sum256(der)
	c.mu.Lock()
	marked, ok := c.m[id]
	c.mu.Unlock()
	if ok {
		return marked
	}
	marked = hasSimMarker(der)
	c.mu.Lock()
	if len(c.m) >= maxMarkerCache {
		clear(c.m)
	}
	c.m[id] = marked
	c.mu.Unlock()
	return marked
}

// hasSimMarker parses der and reports whether its subject holds the marker
// as a pseudonym attribute (and not, say, in its common name).
func hasSimMarker(der []byte) bool {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return false
	}
	for _, n := range c.Subject.Names {
		if n.Type.Equal(oidPseudonym) && n.Value == attest.SimSNPMarker {
			return true
		}
	}
	return false
}
