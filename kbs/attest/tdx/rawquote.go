package tdx

import (
	"encoding/binary"
	"fmt"
)

// Quote versions and TD quote body types (Intel TDX DCAP Quoting Library
// API, appendix A: quote format v4 and v5).
const (
	quoteV4 = 4
	quoteV5 = 5

	bodyTD10 = 2 // TD report 1.0 body (584 bytes): v4 quotes, and v5 on TDX 1.0
	bodyTD15 = 3 // TD report 1.5 body (648 bytes): adds TEE_TCB_SVN2 and MRSERVICETD

	headerSize      = 48
	bodyTD10Size    = 584
	bodyTD15Size    = 648
	descriptorSize  = 6 // v5: body type (2) and body size (4)
	attestKeyType   = 2 // ECDSA-256-with-P-256
	teeTypeTDX      = 0x81
	certDataQE      = 6 // QE report certification data
	certDataPCKPEM  = 5 // PCK certificate chain, PEM
	qeReportSize    = 384
	rawSigSize      = 64
	rawKeySize      = 64
	minSignedData   = rawSigSize + rawKeySize + 6
	minQECertData   = qeReportSize + rawSigSize + 2 + 6
	teeTCBSVNSize   = 16
	mrServiceTDSize = 48
)

// Offsets within a TD quote body.
const (
	bodyTEETCBSVN      = 0
	bodyMRSeam         = 16
	bodyMRSignerSeam   = 64
	bodySeamAttributes = 112
	bodyTDAttributes   = 120
	bodyXFAM           = 128
	bodyMRTD           = 136
	bodyMRConfigID     = 184
	bodyMROwner        = 232
	bodyMROwnerConfig  = 280
	bodyRTMR0          = 328
	bodyReportData     = 520
	bodyTEETCBSVN2     = 584 // TD report 1.5 only
	bodyMRServiceTD    = 600 // TD report 1.5 only
)

// rawQuote is a TDX quote, v4 or v5, split into the parts verification
// reads. Every slice aliases the parsed bytes. Nothing in it is verified.
type rawQuote struct {
	Version  int
	BodyType int    // bodyTD10 or bodyTD15
	Header   []byte // 48 bytes
	Body     []byte // 584 or 648 bytes
	// Signed is what the attestation key signs: the header, the v5 body
	// descriptor, and the body.
	Signed      []byte
	Signature   []byte // 64 bytes, r||s
	AttestKey   []byte // 64 bytes, X||Y
	QEReport    []byte // 384 bytes
	QEReportSig []byte // 64 bytes, r||s
	QEAuthData  []byte
	PCKChain    []byte // PEM certificates, as in the quote
	// sigEnd is the offset of the end of Signature in the quote.
	sigEnd int
}

// parseRawQuote splits a quote v4 or v5. It checks the structure (sizes,
// version, key and TEE type, certification data types) and nothing else,
// and never panics: every length is checked before it is used.
func parseRawQuote(b []byte) (*rawQuote, error) {
	if len(b) > MaxQuoteSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", errMalformedQuote, len(b), MaxQuoteSize)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", errMalformedQuote, fmt.Sprintf(format, args...))
	}
	if len(b) < headerSize {
		return nil, bad("%d bytes, shorter than a quote header", len(b))
	}
	q := &rawQuote{Version: int(binary.LittleEndian.Uint16(b[0:])), Header: b[:headerSize]}
	if kt := binary.LittleEndian.Uint16(b[2:]); kt != attestKeyType {
		return nil, bad("attestation key type %d, want %d (ECDSA P-256)", kt, attestKeyType)
	}
	if tt := binary.LittleEndian.Uint32(b[4:]); tt != teeTypeTDX {
		return nil, bad("TEE type %#x, want %#x (TDX)", tt, teeTypeTDX)
	}
	off := headerSize
	switch q.Version {
	case quoteV4:
		q.BodyType = bodyTD10
	case quoteV5:
		if len(b) < off+descriptorSize {
			return nil, bad("v5 quote without a body descriptor")
		}
		q.BodyType = int(binary.LittleEndian.Uint16(b[off:]))
		size := binary.LittleEndian.Uint32(b[off+2:])
		switch {
		case q.BodyType == bodyTD10 && size == bodyTD10Size, q.BodyType == bodyTD15 && size == bodyTD15Size:
		case q.BodyType == bodyTD10 || q.BodyType == bodyTD15:
			return nil, bad("body type %d of %d bytes", q.BodyType, size)
		default:
			return nil, bad("body type %d is not a TD report (2 or 3)", q.BodyType)
		}
		off += descriptorSize
	default:
		return nil, bad("quote version %d, want 4 or 5", q.Version)
	}
	bodySize := bodyTD10Size
	if q.BodyType == bodyTD15 {
		bodySize = bodyTD15Size
	}
	if len(b) < off+bodySize+4 {
		return nil, bad("%d bytes, too short for the TD quote body", len(b))
	}
	q.Body = b[off : off+bodySize]
	q.Signed = b[:off+bodySize]
	off += bodySize
	sdLen := int(binary.LittleEndian.Uint32(b[off:]))
	off += 4
	sd := b[off:]
	if sdLen < minSignedData || sdLen > len(sd) {
		return nil, bad("signed data of %d bytes, %d present", sdLen, len(sd))
	}
	sd = sd[:sdLen]
	q.Signature, q.AttestKey = sd[:rawSigSize], sd[rawSigSize:rawSigSize+rawKeySize]
	q.sigEnd = off + rawSigSize
	cd := sd[rawSigSize+rawKeySize:]
	if t := binary.LittleEndian.Uint16(cd); t != certDataQE {
		return nil, bad("certification data type %d, want %d (QE report)", t, certDataQE)
	}
	cdLen := int(binary.LittleEndian.Uint32(cd[2:]))
	cd = cd[6:]
	if cdLen < minQECertData || cdLen > len(cd) {
		return nil, bad("QE certification data of %d bytes, %d present", cdLen, len(cd))
	}
	cd = cd[:cdLen]
	q.QEReport, q.QEReportSig = cd[:qeReportSize], cd[qeReportSize:qeReportSize+rawSigSize]
	cd = cd[qeReportSize+rawSigSize:]
	adLen := int(binary.LittleEndian.Uint16(cd))
	cd = cd[2:]
	if adLen > len(cd)-6 {
		return nil, bad("QE auth data of %d bytes, %d present", adLen, len(cd)-6)
	}
	q.QEAuthData, cd = cd[:adLen], cd[adLen:]
	if t := binary.LittleEndian.Uint16(cd); t != certDataPCKPEM {
		return nil, bad("inner certification data type %d, want %d (PCK chain)", t, certDataPCKPEM)
	}
	chainLen := int(binary.LittleEndian.Uint32(cd[2:]))
	cd = cd[6:]
	if chainLen > len(cd) {
		return nil, bad("PCK chain of %d bytes, %d present", chainLen, len(cd))
	}
	q.PCKChain = cd[:chainLen]
	return q, nil
}

// field returns n bytes of the body at off.
func (q *rawQuote) field(off, n int) []byte { return q.Body[off : off+n] }

func (q *rawQuote) tcb() quoteTCB {
	return quoteTCB{
		teeTCBSVN:      q.field(bodyTEETCBSVN, teeTCBSVNSize),
		mrSignerSeam:   q.field(bodyMRSignerSeam, measurementSize),
		seamAttributes: q.field(bodySeamAttributes, 8),
		qeReport:       q.QEReport,
	}
}
