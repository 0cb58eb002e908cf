package snp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"sync"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"github.com/kbs-dev/kbs/kbs/attest"
)

// Validate has go-sev-guest's validate.SnpAttestation confirm claims that
// Verifier.Verify returned against opts. kbs/policy builds opts from the
// manifest's reference values (go-sev-guest checks no field whose option is
// nil or zero, so the builder sets each one the manifest means); the
// manifest's own comparison (manifest.Match) has decided before, and
// Validate is the library's second opinion.
//
// It re-reads the signed report and the endorsement certificate the claims
// carry (Report, EndorsementKey), so it accepts only claims from Verify. The
// signature, the chain, the debug bit and the REPORT_DATA binding are
// Verify's job; opts repeats the last two.
//
// From the certificate the library reads only the TCB it was issued for
// and the hardware id, which Verify has already compared with the report.
// go-sev-guest v0.15.0 cannot parse Turin certificates (see kds.go): for
// Turin it is given libraryView's certificate, which carries the same TCB
// and hardware id in the Milan/Genoa form it parses.
func Validate(c *attest.Claims, opts *validate.Options) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("snp: go-sev-guest validation panicked: %v", r)
		}
	}()
	if opts == nil {
		return errors.New("snp: no validation options")
	}
	if c == nil || c.Platform != attest.SNP || c.SNP == nil || len(c.SNP.Report) != ReportSize || len(c.SNP.EndorsementKey) == 0 {
		return fmt.Errorf("%w: need claims from snp.Verifier.Verify", errClaims)
	}
	r, err := abi.ReportToProto(c.SNP.Report)
	if err != nil {
		return fmt.Errorf("%w: report: %v", errClaims, err)
	}
	key := abi.VcekReportSigner
	if c.SNP.SignerKey == signerName(abi.VlekReportSigner) {
		key = abi.VlekReportSigner
	}
	der := c.SNP.EndorsementKey
	if !libraryReadsVCEKs(c.SNP.Product) {
		if der, err = libraryView(der, key, c.SNP.Product); err != nil {
			return fmt.Errorf("%w: %v", errClaims, err)
		}
	}
	chain := &spb.CertificateChain{Extras: map[string][]byte{}}
	if key == abi.VlekReportSigner {
		chain.VlekCert = der
	} else {
		chain.VcekCert = der
	}
	if err := validate.SnpAttestation(&spb.Attestation{Report: r, CertificateChain: chain}, opts); err != nil {
		return fmt.Errorf("snp: go-sev-guest validation: %w", err)
	}
	return nil
}

// libraryView returns a certificate go-sev-guest v0.15.0 can read that
// carries what its validation reads from the endorsement certificate der
// (of productLine, which it cannot read): the TCB_VERSION, byte for byte in
// its Milan/Genoa slots (so that it compares the raw value with the
// report's), and the hardware id as the 64-byte CHIP_ID it stands for.
// The view is signed by a throwaway key: it is never a trust anchor, only
// the library's reading of a certificate Verify has checked.
func libraryView(der []byte, key abi.ReportSigner, productLine string) ([]byte, error) {
	sum := sha256.Sum256(der)
	viewMu.Lock()
	v, ok := views[sum]
	viewMu.Unlock()
	if ok {
		return v, nil
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	x, err := parseEndorsementExtensions(cert, key, productLine)
	if err != nil {
		return nil, err
	}
	oid := func(arc ...int) asn1.ObjectIdentifier {
		return append(append(asn1.ObjectIdentifier{}, oidAMDKDS...), arc...)
	}
	var exts []pkix.Extension
	add := func(id asn1.ObjectIdentifier, v any, params string) error {
		b, err := asn1.MarshalWithParams(v, params)
		if err != nil {
			return err
		}
		exts = append(exts, pkix.Extension{Id: id, Value: b})
		return nil
	}
	if err := add(oid(1), 0, ""); err != nil {
		return nil, err
	}
	if err := add(oid(2), productLine, "ia5"); err != nil {
		return nil, err
	}
	// go-sev-guest composes TCB_VERSION from blSPL (byte 0), teeSPL (1),
	// spl_4..spl_7 (2-5), snpSPL (6) and ucodeSPL (7).
	for i, arc := range []int{1, 2, 4, 5, 6, 7, 3, 8} {
		if err := add(oid(3, arc), int(uint8(x.TCB>>(8*i))), ""); err != nil {
			return nil, err
		}
	}
	if key == abi.VcekReportSigner {
		hwid := make([]byte, abi.ChipIDSize)
		copy(hwid, x.HWID)
		exts = append(exts, pkix.Extension{Id: oid(4), Value: hwid})
	} else if err := add(oid(5), x.CSPID, "ia5"); err != nil {
		return nil, err
	}
	signer, err := viewKey()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: cert.SerialNumber, Subject: cert.Subject, Issuer: cert.Issuer,
		NotBefore: cert.NotBefore, NotAfter: cert.NotAfter, ExtraExtensions: exts,
	}
	v, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, cert.PublicKey, signer)
	if err != nil {
		return nil, err
	}
	viewMu.Lock()
	if len(views) >= maxChains {
		clear(views)
	}
	views[sum] = v
	viewMu.Unlock()
	return v, nil
}

var (
	viewMu  sync.Mutex
	views   = map[[32]byte][]byte{}
	viewKey = sync.OnceValues(func() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P384(), rand.Reader) })
)
