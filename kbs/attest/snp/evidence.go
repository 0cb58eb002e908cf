package snp

import (
	"bytes"
	"fmt"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/uuid"

	"github.com/kbs-dev/kbs/kbs/attest"
)

// ReportSize is the size of an SEV-SNP ATTESTATION_REPORT in bytes.
const ReportSize = abi.ReportSize

// maxCertTableSize bounds the certificate table that may follow a report. The
// kernel hands out at most a few pages; real tables are under 10 KiB.
const maxCertTableSize = 64 << 10

// Evidence is parsed SNP evidence: the raw report and the certificate table
// that followed it, if any. Nothing in it is verified.
type Evidence struct {
	// Report is the 1184-byte attestation report.
	Report []byte
	// Proto is the decoded report.
	Proto *spb.Report
	// Certs are the entries of the certificate table, in table order. Empty
	// when the evidence is a bare report.
	Certs []abi.CertTableEntry
}

// ParseEvidence splits evidence bytes into the report and the certificate
// table and decodes both. It checks the report's format (size, version,
// reserved bytes, signature algorithm) and the table's structure (GUID
// headers, terminator, in-range offsets, no duplicate GUIDs), and nothing
// else. Errors wrap errMalformed. It never panics.
func ParseEvidence(data []byte) (ev *Evidence, err error) {
	defer func() {
		if r := recover(); r != nil {
			ev, err = nil, fmt.Errorf("%w: parser panic: %v", errMalformed, r)
		}
	}()
	if len(data) < ReportSize {
		return nil, fmt.Errorf("%w: %d bytes, an SNP report is %d bytes", errMalformed, len(data), ReportSize)
	}
	if len(data)-ReportSize > maxCertTableSize {
		return nil, fmt.Errorf("%w: certificate table of %d bytes exceeds %d", errMalformed, len(data)-ReportSize, maxCertTableSize)
	}
	report := bytes.Clone(data[:ReportSize])
	if err := abi.ValidateReportFormat(report); err != nil {
		return nil, fmt.Errorf("%w: %v", errMalformed, err)
	}
	if algo := abi.SignatureAlgo(report); algo != abi.SignEcdsaP384Sha384 {
		return nil, fmt.Errorf("%w: unknown signature algorithm %d", errMalformed, algo)
	}
	proto, err := abi.ReportToProto(report)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errMalformed, err)
	}
	ev = &Evidence{Report: report, Proto: proto}
	table := data[ReportSize:]
	if len(table) == 0 {
		return ev, nil
	}
	headers, err := abi.ParseSnpCertTableHeader(table)
	if err != nil {
		return nil, fmt.Errorf("%w: certificate table: %v", errMalformed, err)
	}
	for i, h := range headers {
		if uint64(h.Offset)+uint64(h.Length) > uint64(len(table)) {
			return nil, fmt.Errorf("%w: certificate table entry %d (offset %d, length %d) exceeds the %d-byte table", errMalformed, i, h.Offset, h.Length, len(table))
		}
	}
	var ct abi.CertTable
	if err := ct.Unmarshal(table); err != nil {
		return nil, fmt.Errorf("%w: certificate table: %v", errMalformed, err)
	}
	seen := make(map[uuid.UUID]bool, len(ct.Entries))
	for _, e := range ct.Entries {
		if seen[e.GUID] {
			return nil, fmt.Errorf("%w: certificate table: duplicate entry %s", errMalformed, e.GUID)
		}
		seen[e.GUID] = true
	}
	ev.Certs = ct.Entries
	return ev, nil
}

// UnverifiedReportData returns the REPORT_DATA of SNP evidence without
// verifying anything: for tools that verify evidence whose binding they do
// not know (kbsctl manifest check), and must then say so. It fails as
// ParseEvidence does.
func UnverifiedReportData(data []byte) ([attest.ReportDataSize]byte, error) {
	var rd [attest.ReportDataSize]byte
	ev, err := ParseEvidence(data)
	if err != nil {
		return rd, err
	}
	copy(rd[:], ev.Proto.GetReportData())
	return rd, nil
}

// Marshal returns the evidence bytes: the report followed by the certificate
// table when there is one. ParseEvidence(ev.Marshal()) yields the same
// report and entries.
func (ev *Evidence) Marshal() []byte {
	out := bytes.Clone(ev.Report)
	if len(ev.Certs) > 0 {
		out = append(out, (&abi.CertTable{Entries: ev.Certs}).Marshal()...)
	}
	return out
}

// The certificate table GUIDs of the endorsement keys, parsed once.
var (
	vcekGUID = uuid.MustParse(abi.VcekGUID)
	vlekGUID = uuid.MustParse(abi.VlekGUID)
)

// cert returns the table entry with the given GUID, or nil.
func (ev *Evidence) cert(guid uuid.UUID) []byte {
	for _, e := range ev.Certs {
		if e.GUID == guid {
			return e.RawCert
		}
	}
	return nil
}

// signer returns which key signed the report.
func (ev *Evidence) signer() (abi.ReportSigner, error) {
	info, err := abi.ParseSignerInfo(ev.Proto.GetSignerInfo())
	if err != nil {
		return 0, fmt.Errorf("%w: %v", errMalformed, err)
	}
	switch info.SigningKey {
	case abi.VcekReportSigner, abi.VlekReportSigner:
		return info.SigningKey, nil
	}
	return 0, fmt.Errorf("%w: report signed by %v, want VCEK or VLEK", errMalformed, info.SigningKey)
}
