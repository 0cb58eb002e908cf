package tdx

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/go-tdx-guest/pcs"
)

// TCB level statuses of Intel's TCB info and QE identity collateral.
const (
	StatusUpToDate                          = "UpToDate"
	StatusSWHardeningNeeded                 = "SWHardeningNeeded"
	StatusConfigurationNeeded               = "ConfigurationNeeded"
	StatusConfigurationAndSWHardeningNeeded = "ConfigurationAndSWHardeningNeeded"
	StatusOutOfDate                         = "OutOfDate"
	StatusOutOfDateConfigurationNeeded      = "OutOfDateConfigurationNeeded"
	StatusRevoked                           = "Revoked"
)

// statusRank orders the statuses from best to worst; Verify refuses
// Revoked and any status it does not know, and passes the others on in the
// claims for the manifest to judge.
var statusRank = map[string]int{
	StatusUpToDate:                          0,
	StatusSWHardeningNeeded:                 1,
	StatusConfigurationNeeded:               2,
	StatusConfigurationAndSWHardeningNeeded: 3,
	StatusOutOfDate:                         4,
	StatusOutOfDateConfigurationNeeded:      5,
	StatusRevoked:                           6,
}

// converge combines two statuses of one platform (the platform TCB level,
// the TDX module's, the QE's): the worse one, where configuration and
// software hardening needed from two sources make both.
func converge(a, b string) string {
	if (a == StatusConfigurationNeeded && b == StatusSWHardeningNeeded) || (a == StatusSWHardeningNeeded && b == StatusConfigurationNeeded) {
		return StatusConfigurationAndSWHardeningNeeded
	}
	if (a == StatusOutOfDate && statusRank[b] == 2) || (b == StatusOutOfDate && statusRank[a] == 2) {
		return StatusOutOfDateConfigurationNeeded
	}
	if statusRank[b] > statusRank[a] {
		return b
	}
	return a
}

// tcbVerdict is what the collateral says of one platform.
type tcbVerdict struct {
	status     string
	advisories []string  // sorted, distinct
	notAfter   time.Time // earliest expiry of the collateral used
	fmspc      string    // as the TCB info writes it
}

// quoteTCB holds the fields of a quote the collateral is matched against.
type quoteTCB struct {
	teeTCBSVN      []byte // 16 bytes
	mrSignerSeam   []byte // 48 bytes
	seamAttributes []byte // 8 bytes
	qeReport       []byte // 384-byte SGX report of the QE
}

// QE report offsets (SGX REPORT_BODY).
const (
	qeMiscSelectOff = 0x10
	qeAttributesOff = 0x30
	qeMRSignerOff   = 0x80
	qeISVProdIDOff  = 0x100
	qeISVSVNOff     = 0x102
)

// evaluate verifies the collateral for a quote whose PCK chain verified at
// now, and returns the platform's TCB status. Every piece is required: TCB
// info for the PCK certificate's FMSPC, the TD QE identity, the PCK CRL of
// the issuing CA and the root CA CRL. Each must be signed under chain.root
// (the trusted root the PCK chain verified to), current at now, and agree
// with the quote; no certificate of either chain may be revoked. exts and
// ca are pckExtensions of the chain. An error wraps
// errCollateralUnavailable (a piece is missing) or errCollateral.
func (c *Collateral) evaluate(chain *pckChain, exts *pcs.PckExtensions, ca string, q quoteTCB, now time.Time) (*tcbVerdict, error) {
	missing := func(what string) error {
		return fmt.Errorf("%w: no %s in the collateral (offline verification needs a bundle: --collateral DIR)", errCollateralUnavailable, what)
	}
	tiResp := c.tcbInfoFor(exts.FMSPC)
	switch {
	case tiResp == nil:
		return nil, missing("TCB info for FMSPC " + strings.ToLower(exts.FMSPC))
	case c.QEIdentity == nil:
		return nil, missing("TD QE identity")
	case c.PCKCRL[ca] == nil:
		return nil, missing("PCK CRL of the " + ca + " CA")
	case len(c.RootCRL) == 0:
		return nil, missing("Intel SGX Root CA CRL")
	}
	v := &tcbVerdict{notAfter: chain.leaf.NotAfter}
	earliest := func(t time.Time) {
		if t.Before(v.notAfter) {
			v.notAfter = t
		}
	}

	// Revocation lists: the root's signs the intermediate's and the TCB
	// signing certificate's status, the intermediate's the PCK leaf's.
	rootCRL, err := checkCRL("root CA CRL", c.RootCRL, chain.root, now)
	if err != nil {
		return nil, err
	}
	pckCRL, err := checkCRL("PCK CRL", c.PCKCRL[ca], chain.intermediate, now)
	if err != nil {
		return nil, err
	}
	earliest(rootCRL.NextUpdate)
	earliest(pckCRL.NextUpdate)
	if revoked(rootCRL, chain.intermediate) {
		return nil, fmt.Errorf("%w: the PCK CA certificate is revoked by the root CA CRL", errCollateral)
	}
	if revoked(pckCRL, chain.leaf) {
		return nil, fmt.Errorf("%w: the PCK certificate is revoked by the PCK CRL", errCollateral)
	}

	var ti pcs.TcbInfo
	if err := verifySigned("TCB info", tiResp, &ti, chain.root, rootCRL, now, earliest); err != nil {
		return nil, err
	}
	var qe pcs.EnclaveIdentity
	if err := verifySigned("QE identity", c.QEIdentity, &qe, chain.root, rootCRL, now, earliest); err != nil {
		return nil, err
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", errCollateral, fmt.Sprintf(format, args...))
	}

	// TCB info: its platform, the TDX module, the TCB level.
	switch {
	case ti.ID != "TDX" || ti.Version != 3:
		return nil, bad("TCB info is %q version %d, want \"TDX\" version 3", ti.ID, ti.Version)
	case !strings.EqualFold(ti.Fmspc, exts.FMSPC):
		return nil, bad("TCB info is for FMSPC %s, the PCK certificate's is %s", ti.Fmspc, exts.FMSPC)
	case !strings.EqualFold(ti.PceID, exts.PCEID):
		return nil, bad("TCB info is for PCEID %s, the PCK certificate's is %s", ti.PceID, exts.PCEID)
	case !bytes.Equal(ti.TdxModule.Mrsigner.Bytes, q.mrSignerSeam):
		return nil, bad("MRSIGNERSEAM %x is not the TDX module signer %x of the TCB info", q.mrSignerSeam, ti.TdxModule.Mrsigner.Bytes)
	case !maskedEqual(q.seamAttributes, ti.TdxModule.AttributesMask.Bytes, ti.TdxModule.Attributes.Bytes):
		return nil, bad("SEAM_ATTRIBUTES %x do not match the TCB info's %x under mask %x", q.seamAttributes, ti.TdxModule.Attributes.Bytes, ti.TdxModule.AttributesMask.Bytes)
	}
	level, err := platformLevel(ti.TcbLevels, exts, q.teeTCBSVN)
	if err != nil {
		return nil, bad("%v", err)
	}
	v.fmspc = ti.Fmspc
	v.status = string(level.TcbStatus)
	v.advisories = append(v.advisories, level.AdvisoryIDs...)
	if q.teeTCBSVN[1] > 0 {
		m, err := moduleLevel(ti.TdxModuleIdentities, q)
		if err != nil {
			return nil, bad("%v", err)
		}
		v.status = converge(v.status, string(m.TcbStatus))
		v.advisories = append(v.advisories, m.AdvisoryIDs...)
	}

	// QE identity.
	r := q.qeReport
	if len(r) != 384 {
		return nil, bad("QE report of %d bytes", len(r))
	}
	isvSVN := uint32(binary.LittleEndian.Uint16(r[qeISVSVNOff:]))
	switch {
	case qe.ID != "TD_QE" || qe.Version != 2:
		return nil, bad("QE identity is %q version %d, want \"TD_QE\" version 2", qe.ID, qe.Version)
	case !maskedEqual(r[qeMiscSelectOff:qeMiscSelectOff+4], qe.MiscselectMask.Bytes, qe.Miscselect.Bytes):
		return nil, bad("QE MISCSELECT %x does not match the QE identity", r[qeMiscSelectOff:qeMiscSelectOff+4])
	case !maskedEqual(r[qeAttributesOff:qeAttributesOff+16], qe.AttributesMask.Bytes, qe.Attributes.Bytes):
		return nil, bad("QE ATTRIBUTES %x do not match the QE identity", r[qeAttributesOff:qeAttributesOff+16])
	case !bytes.Equal(r[qeMRSignerOff:qeMRSignerOff+32], qe.Mrsigner.Bytes):
		return nil, bad("QE MRSIGNER %x is not Intel's %x", r[qeMRSignerOff:qeMRSignerOff+32], qe.Mrsigner.Bytes)
	case binary.LittleEndian.Uint16(r[qeISVProdIDOff:]) != qe.IsvProdID:
		return nil, bad("QE ISVPRODID %d, want %d", binary.LittleEndian.Uint16(r[qeISVProdIDOff:]), qe.IsvProdID)
	}
	qeLevel := -1
	for i, l := range qe.TcbLevels {
		if l.Tcb.Isvsvn <= isvSVN {
			qeLevel = i
			break
		}
	}
	if qeLevel < 0 {
		return nil, bad("no QE identity TCB level for QE ISVSVN %d", isvSVN)
	}
	v.status = converge(v.status, string(qe.TcbLevels[qeLevel].TcbStatus))
	v.advisories = append(v.advisories, qe.TcbLevels[qeLevel].AdvisoryIDs...)

	if _, ok := statusRank[v.status]; !ok {
		return nil, bad("unknown TCB status %q", v.status)
	}
	if v.status == StatusRevoked {
		return nil, bad("the platform's TCB level is Revoked (advisories %s)", strings.Join(v.advisories, ", "))
	}
	slices.Sort(v.advisories)
	v.advisories = slices.Compact(v.advisories)
	return v, nil
}

// pckExtensions returns the SGX extensions of the PCK certificate and which
// CA issued it ("platform" or "processor").
func pckExtensions(chain *pckChain) (*pcs.PckExtensions, string, error) {
	exts, err := pcs.PckCertificateExtensions(chain.leaf)
	if err != nil {
		return nil, "", fmt.Errorf("%w: PCK SGX extensions: %v", errCertChain, err)
	}
	ca := "platform"
	if chain.leaf.Issuer.CommonName == "Intel SGX PCK Processor CA" {
		ca = "processor"
	}
	return exts, ca, nil
}

// verifySigned checks a TCB info or QE identity response: its issuer chain
// (the "Intel SGX TCB Signing" certificate under a trusted root, not
// revoked), the ECDSA signature over the signed JSON value, and that it is
// current at now. It decodes the signed value into out.
func verifySigned(what string, s *SignedCollateral, out any, root *x509.Certificate, rootCRL *x509.RevocationList, now time.Time, earliest func(time.Time)) error {
	if len(s.Chain) < 2 {
		return fmt.Errorf("%w: %s has no issuer chain", errCollateralUnavailable, what)
	}
	signer := s.Chain[0]
	if signer.Subject.CommonName != "Intel SGX TCB Signing" {
		return fmt.Errorf("%w: %s signed by %q, want \"Intel SGX TCB Signing\"", errCollateral, what, signer.Subject.CommonName)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	if _, err := signer.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("%w: %s signing certificate does not chain to the PCK chain's root: %v", errCollateral, what, err)
	}
	if revoked(rootCRL, signer) {
		return fmt.Errorf("%w: the %s signing certificate is revoked", errCollateral, what)
	}
	earliest(signer.NotAfter)
	pub, ok := signer.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return fmt.Errorf("%w: %s signing key is not ECDSA P-256", errCollateral, what)
	}
	sig, err := hex.DecodeString(s.Signature)
	if err != nil || !verifyRawSignature(pub, s.Signed, sig) {
		return fmt.Errorf("%w: %s signature does not verify", errCollateral, what)
	}
	if err := json.Unmarshal(s.Signed, out); err != nil {
		return fmt.Errorf("%w: %s: %v", errCollateral, what, err)
	}
	var dates struct {
		IssueDate  time.Time `json:"issueDate"`
		NextUpdate time.Time `json:"nextUpdate"`
	}
	if err := json.Unmarshal(s.Signed, &dates); err != nil || dates.NextUpdate.IsZero() {
		return fmt.Errorf("%w: %s has no nextUpdate", errCollateral, what)
	}
	if now.Before(dates.IssueDate) || now.After(dates.NextUpdate) {
		return fmt.Errorf("%w: %s is valid %s to %s, now is %s", errCollateral, what,
			dates.IssueDate.UTC().Format(time.RFC3339), dates.NextUpdate.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	earliest(dates.NextUpdate)
	return nil
}

// checkCRL parses a CRL and checks that issuer signed it and that it is
// current at now.
func checkCRL(what string, der []byte, issuer *x509.Certificate, now time.Time) (*x509.RevocationList, error) {
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errCollateral, what, err)
	}
	if err := crl.CheckSignatureFrom(issuer); err != nil {
		return nil, fmt.Errorf("%w: %s is not signed by %q: %v", errCollateral, what, issuer.Subject.CommonName, err)
	}
	if now.Before(crl.ThisUpdate) || (!crl.NextUpdate.IsZero() && now.After(crl.NextUpdate)) {
		return nil, fmt.Errorf("%w: %s is valid %s to %s, now is %s", errCollateral, what,
			crl.ThisUpdate.UTC().Format(time.RFC3339), crl.NextUpdate.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return crl, nil
}

func revoked(crl *x509.RevocationList, c *x509.Certificate) bool {
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(c.SerialNumber) == 0 {
			return true
		}
	}
	return false
}

// maskedEqual reports whether got AND mask equals want (all the same size).
func maskedEqual(got, mask, want []byte) bool {
	if len(got) != len(mask) || len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i]&mask[i] != want[i] {
			return false
		}
	}
	return true
}

// platformLevel finds the first TCB level (Intel's order, newest first)
// that the PCK certificate's CPUSVN components and PCESVN and the quote's
// TEE_TCB_SVN all reach. With a TDX module version (TEE_TCB_SVN[1] > 0)
// the first two TEE_TCB_SVN bytes are the module's and are judged by the
// module identity instead.
func platformLevel(levels []pcs.TcbLevel, exts *pcs.PckExtensions, tee []byte) (pcs.TcbLevel, error) {
	if len(tee) != 16 {
		return pcs.TcbLevel{}, fmt.Errorf("TEE_TCB_SVN of %d bytes", len(tee))
	}
	start := 0
	if tee[1] > 0 {
		start = 2
	}
	for _, l := range levels {
		sgx, tdx := l.Tcb.SgxTcbcomponents, l.Tcb.TdxTcbcomponents
		if len(sgx) != len(exts.TCB.CPUSvnComponents) || len(tdx) != 16 || exts.TCB.PCESvn < l.Tcb.Pcesvn {
			continue
		}
		ok := true
		for i := range sgx {
			ok = ok && exts.TCB.CPUSvnComponents[i] >= sgx[i].Svn
		}
		for i := start; i < 16; i++ {
			ok = ok && tee[i] >= tdx[i].Svn
		}
		if !ok {
			continue
		}
		return l, nil
	}
	return pcs.TcbLevel{}, fmt.Errorf("no TCB level of the TCB info matches the platform (CPUSVN %x, PCESVN %d, TEE_TCB_SVN %x): TCB not supported",
		exts.TCB.CPUSvnComponents, exts.TCB.PCESvn, tee)
}

// moduleLevel judges the TDX module: the identity "TDX_<version>" with the
// quote's MRSIGNERSEAM and SEAM attributes, and its first TCB level whose
// ISVSVN the module's SVN (TEE_TCB_SVN[0]) reaches.
func moduleLevel(ids []pcs.TdxModuleIdentity, q quoteTCB) (pcs.TcbLevel, error) {
	id := fmt.Sprintf("TDX_%02X", q.teeTCBSVN[1])
	for _, m := range ids {
		if !strings.EqualFold(m.ID, id) {
			continue
		}
		if !bytes.Equal(m.Mrsigner.Bytes, q.mrSignerSeam) {
			return pcs.TcbLevel{}, fmt.Errorf("MRSIGNERSEAM %x is not the signer %x of TDX module identity %s", q.mrSignerSeam, m.Mrsigner.Bytes, m.ID)
		}
		if !maskedEqual(q.seamAttributes, m.AttributesMask.Bytes, m.Attributes.Bytes) {
			return pcs.TcbLevel{}, fmt.Errorf("SEAM_ATTRIBUTES %x do not match TDX module identity %s", q.seamAttributes, m.ID)
		}
		for _, l := range m.TcbLevels {
			if uint32(q.teeTCBSVN[0]) >= l.Tcb.Isvsvn {
				return l, nil
			}
		}
		return pcs.TcbLevel{}, fmt.Errorf("no TCB level of TDX module identity %s for module SVN %d", m.ID, q.teeTCBSVN[0])
	}
	return pcs.TcbLevel{}, fmt.Errorf("the TCB info has no TDX module identity %s", id)
}
