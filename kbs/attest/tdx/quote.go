package tdx

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"math/big"

	"github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"

	"github.com/kbs-dev/kbs/kbs/attest"
)

// MaxQuoteSize bounds the evidence Verify accepts. Real v4 quotes with their
// PCK chain are about 5 KiB.
const MaxQuoteSize = 64 << 10

// measurementSize is the size of MRTD, the RTMRs, MRCONFIGID, MROWNER,
// MROWNERCONFIG, MRSEAM and MRSIGNERSEAM: a SHA-384 digest.
const measurementSize = abi.MrTdSize

// intelQEVendorID is QE_VENDOR_ID of quotes from Intel's quoting enclave.
var intelQEVendorID = []byte{0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07}

// tdAttributesDebug is bit 0 of TD_ATTRIBUTES: the TD runs in debug mode,
// the host can read and write its memory.
const tdAttributesDebug = 1

// parseQuote turns raw bytes into a v4 quote. go-tdx-guest's parser slices
// without checking every length; a panic inside it becomes an error.
func parseQuote(raw []byte) (q *pb.QuoteV4, err error) {
	if len(raw) > MaxQuoteSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", errMalformedQuote, len(raw), MaxQuoteSize)
	}
	defer func() {
		if r := recover(); r != nil {
			q, err = nil, fmt.Errorf("%w: parser panic: %v", errMalformedQuote, r)
		}
	}()
	anyQuote, err := abi.QuoteToProto(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errMalformedQuote, err)
	}
	quote, ok := anyQuote.(*pb.QuoteV4)
	if !ok {
		return nil, fmt.Errorf("%w: unsupported quote type %T", errMalformedQuote, anyQuote)
	}
	if err := abi.CheckQuoteV4(quote); err != nil {
		return nil, fmt.Errorf("%w: %v", errMalformedQuote, err)
	}
	return quote, nil
}

// UnverifiedReportData returns the REPORT_DATA of a TDX quote without
// verifying anything: for tools that verify evidence whose binding they do
// not know (kbsctl manifest check), and must then say so. It fails for
// bytes that are not a well-formed v4 or v5 quote.
func UnverifiedReportData(quote []byte) ([attest.ReportDataSize]byte, error) {
	var rd [attest.ReportDataSize]byte
	q, err := parseRawQuote(quote)
	if err != nil {
		return rd, err
	}
	copy(rd[:], q.field(bodyReportData, attest.ReportDataSize))
	return rd, nil
}

// pckChain is the certificate chain carried in a quote.
type pckChain struct {
	leaf, intermediate, root *x509.Certificate
}

// parseChain extracts the PCK leaf, intermediate and root certificates from
// the quote's certification data: three concatenated PEM blocks, optionally
// followed by a NUL byte.
func parseChain(rest []byte) (*pckChain, error) {
	var certs []*x509.Certificate
	for i := 0; i < 3; i++ {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil || blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: want 3 PEM certificates, found %d", errCertChain, i)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: certificate %d: %v", errCertChain, i, err)
		}
		certs = append(certs, c)
	}
	if len(rest) != 0 && !bytes.Equal(rest, []byte{0}) {
		return nil, fmt.Errorf("%w: %d trailing bytes after the chain", errCertChain, len(rest))
	}
	return &pckChain{leaf: certs[0], intermediate: certs[1], root: certs[2]}, nil
}

// checkNames checks the form go-tdx-guest requires of each certificate
// (Intel's names, ECDSA P-256 with SHA-256, issuer equals parent subject),
// so that a chain we accept here is one the library accepts too.
func (c *pckChain) checkNames() error {
	for _, x := range []struct {
		cert, parent *x509.Certificate
		cn           string
	}{
		{c.root, c.root, "Intel SGX Root CA"},
		{c.intermediate, c.root, "Intel SGX PCK Platform CA"},
		{c.leaf, c.intermediate, "Intel SGX PCK Certificate"},
	} {
		// go-tdx-guest v0.3.1 accepts only the Platform CA as intermediate.
		cn := x.cn
		if x.cert.Subject.CommonName != cn {
			return fmt.Errorf("%w: subject CN %q, want %q", errCertChain, x.cert.Subject.CommonName, cn)
		}
		if x.cert.Version != 3 || x.cert.SignatureAlgorithm != x509.ECDSAWithSHA256 {
			return fmt.Errorf("%w: %q is not an X.509 v3 certificate signed with ECDSA-SHA256", errCertChain, cn)
		}
		pub, ok := x.cert.PublicKey.(*ecdsa.PublicKey)
		if !ok || pub.Curve != elliptic.P256() {
			return fmt.Errorf("%w: %q does not hold an ECDSA P-256 key", errCertChain, cn)
		}
		if x.cert.Issuer.String() != x.parent.Subject.String() {
			return fmt.Errorf("%w: %q issued by %q, want %q", errCertChain, cn, x.cert.Issuer, x.parent.Subject)
		}
	}
	return nil
}

// p256Key decodes the 64-byte X||Y attestation key of a quote.
func p256Key(b []byte) (*ecdsa.PublicKey, error) {
	if len(b) != 64 {
		return nil, fmt.Errorf("attestation key is %d bytes, want 64", len(b))
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append([]byte{4}, b...))
	if err != nil {
		return nil, fmt.Errorf("attestation key: %v", err)
	}
	return pub, nil
}

// verifyRawSignature checks a 64-byte r||s ECDSA signature over SHA-256(msg).
func verifyRawSignature(pub *ecdsa.PublicKey, msg, sig []byte) bool {
	if len(sig) != 64 {
		return false
	}
	h := sha256.Sum256(msg)
	return ecdsa.Verify(pub, h[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
}

// attestationKeyBound reports whether the QE report's REPORT_DATA is
// SHA-256(attestation key || QE auth data) followed by 32 zero bytes.
func attestationKeyBound(q *rawQuote) bool {
	h := sha256.New()
	h.Write(q.AttestKey)
	h.Write(q.QEAuthData)
	want := append(h.Sum(nil), make([]byte, 32)...)
	return bytes.Equal(want, q.QEReport[qeReportSize-64:])
}

// chainCacheKey identifies everything the cold path checks besides the quote
// signature: the header (and v5 body descriptor), the TDX module fields the
// collateral is matched against (TEE_TCB_SVN, MRSEAM, MRSIGNERSEAM,
// SEAMATTRIBUTES) and the whole signed data after the quote signature
// (attestation key, QE report and its signature, QE auth data, PCK chain,
// trailing bytes). The TD's own measurements, attributes and REPORT_DATA
// are excluded: they change per quote and are covered by the quote
// signature, checked on every call.
func chainCacheKey(q *rawQuote, raw []byte) [32]byte {
	h := sha256.New()
	h.Write(q.Signed[:len(q.Signed)-len(q.Body)])
	h.Write(q.Body[:bodyTDAttributes])
	h.Write(raw[q.sigEnd:])
	var k [32]byte
	h.Sum(k[:0])
	return k
}

func le64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }
