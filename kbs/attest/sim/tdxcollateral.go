package sim

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"reflect"
	"time"

	"github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/pcs"
	"github.com/kbs-dev/kbs/kbs/attest/tdx/pcscache"
)

// Sim collateral: TCB info and QE identity in Intel PCS's JSON form, signed
// by the sim TCB signing key; PCK and root CA CRLs (empty) signed by the sim
// CAs; stored in the collateral cache exactly as PCS responses would be.

type pcsTCBComponent struct {
	SVN byte `json:"svn"`
}

type pcsTCB struct {
	SGX    []pcsTCBComponent `json:"sgxtcbcomponents,omitempty"`
	PCESVN *int              `json:"pcesvn,omitempty"`
	TDX    []pcsTCBComponent `json:"tdxtcbcomponents,omitempty"`
	ISVSVN *uint32           `json:"isvsvn,omitempty"`
}

type pcsTCBLevel struct {
	TCB         pcsTCB   `json:"tcb"`
	TCBDate     string   `json:"tcbDate"`
	TCBStatus   string   `json:"tcbStatus"`
	AdvisoryIDs []string `json:"advisoryIDs,omitempty"`
}

// TDXLevel is the TCB status and advisories the sim collateral gives the
// sim platform (its only TCB level). The zero value is UpToDate.
type TDXLevel struct {
	Status     string
	Advisories []string
}

// IssueTDXCollateral reissues the collateral of the TDX sim in dir, valid
// from now for a year, giving the platform the TCB level l: for tests of
// TCB status policy. GenerateTDX keeps it (it still verifies).
func IssueTDXCollateral(dir string, now time.Time, l TDXLevel) error {
	pki, err := loadTDX(dir)
	if err != nil {
		return err
	}
	return writeTDXCollateral(dir, pki, now, l)
}

type pcsTDXModule struct {
	ID             string        `json:"id,omitempty"`
	MRSigner       string        `json:"mrsigner"`
	Attributes     string        `json:"attributes"`
	AttributesMask string        `json:"attributesMask"`
	TCBLevels      []pcsTCBLevel `json:"tcbLevels,omitempty"`
}

type pcsTCBInfo struct {
	ID                      string         `json:"id"`
	Version                 int            `json:"version"`
	IssueDate               time.Time      `json:"issueDate"`
	NextUpdate              time.Time      `json:"nextUpdate"`
	FMSPC                   string         `json:"fmspc"`
	PCEID                   string         `json:"pceId"`
	TCBType                 int            `json:"tcbType"`
	TCBEvaluationDataNumber int            `json:"tcbEvaluationDataNumber"`
	TDXModule               pcsTDXModule   `json:"tdxModule"`
	TDXModuleIdentities     []pcsTDXModule `json:"tdxModuleIdentities"`
	TCBLevels               []pcsTCBLevel  `json:"tcbLevels"`
}

type pcsQEIdentity struct {
	ID                      string        `json:"id"`
	Version                 int           `json:"version"`
	IssueDate               time.Time     `json:"issueDate"`
	NextUpdate              time.Time     `json:"nextUpdate"`
	TCBEvaluationDataNumber int           `json:"tcbEvaluationDataNumber"`
	MiscSelect              string        `json:"miscselect"`
	MiscSelectMask          string        `json:"miscselectMask"`
	Attributes              string        `json:"attributes"`
	AttributesMask          string        `json:"attributesMask"`
	MRSigner                string        `json:"mrsigner"`
	ISVProdID               uint32        `json:"isvprodid"`
	TCBLevels               []pcsTCBLevel `json:"tcbLevels"`
}

// writeTDXCollateral issues collateral valid for a year from now.
func writeTDXCollateral(dir string, pki *tdxPKI, now time.Time, l TDXLevel) error {
	if l.Status == "" {
		l.Status = "UpToDate"
	}
	next := now.AddDate(1, 0, 0)
	date := now.Format(time.RFC3339)
	zeros := make([]pcsTCBComponent, 16)
	pcesvn := 0
	isvZero := uint32(0)
	var identities []pcsTDXModule
	for v := 1; v <= 16; v++ {
		identities = append(identities, pcsTDXModule{
			ID:             fmt.Sprintf("TDX_%02x", v),
			MRSigner:       hex.EncodeToString(make([]byte, abi.MrTdSize)),
			Attributes:     "0000000000000000",
			AttributesMask: "FFFFFFFFFFFFFFFF",
			TCBLevels:      []pcsTCBLevel{{TCB: pcsTCB{ISVSVN: &isvZero}, TCBDate: date, TCBStatus: "UpToDate"}},
		})
	}
	tcbInfo := pcsTCBInfo{
		ID: "TDX", Version: 3, IssueDate: now, NextUpdate: next,
		FMSPC: hex.EncodeToString(tdxFMSPC), PCEID: hex.EncodeToString(tdxPCEID),
		TCBEvaluationDataNumber: 1,
		TDXModule: pcsTDXModule{
			MRSigner:       hex.EncodeToString(make([]byte, abi.MrTdSize)),
			Attributes:     "0000000000000000",
			AttributesMask: "FFFFFFFFFFFFFFFF",
		},
		TDXModuleIdentities: identities,
		TCBLevels: []pcsTCBLevel{{
			TCB:         pcsTCB{SGX: zeros, PCESVN: &pcesvn, TDX: zeros},
			TCBDate:     date,
			TCBStatus:   l.Status,
			AdvisoryIDs: l.Advisories,
		}},
	}
	qeISVSVN := tdxQEISVSVN
	qeIdentity := pcsQEIdentity{
		ID: "TD_QE", Version: 2, IssueDate: now, NextUpdate: next, TCBEvaluationDataNumber: 1,
		MiscSelect: "00000000", MiscSelectMask: "FFFFFFFF",
		Attributes:     "11000000000000000000000000000000",
		AttributesMask: "FBFFFFFFFFFFFFFF0000000000000000",
		MRSigner:       hex.EncodeToString(tdxQEMRSigner),
		ISVProdID:      tdxQEProdID,
		TCBLevels:      []pcsTCBLevel{{TCB: pcsTCB{ISVSVN: &qeISVSVN}, TCBDate: date, TCBStatus: "UpToDate"}},
	}
	signed := func(field string, v any) ([]byte, error) {
		inner, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		sig, err := rawSign(pki.tcbSigningKey, inner)
		if err != nil {
			return nil, err
		}
		return fmt.Appendf(nil, `{%q:%s,"signature":%q}`, field, inner, hex.EncodeToString(sig)), nil
	}
	files := tdxCollateralFiles(pki)
	bodies := map[string]func() ([]byte, error){
		files[0].url: func() ([]byte, error) { return signed(files[0].field, tcbInfo) },
		files[1].url: func() ([]byte, error) { return signed(files[1].field, qeIdentity) },
		files[2].url: func() ([]byte, error) { return tdxCRL(pki.ca, pki.caKey, now, next, nil) },
		files[3].url: func() ([]byte, error) { return tdxCRL(pki.root, pki.rootKey, now, next, nil) },
	}
	for _, f := range files {
		body, err := bodies[f.url]()
		if err != nil {
			return err
		}
		if err := f.write(dir, body, now); err != nil {
			return err
		}
	}
	return nil
}

// tdxCollateralFile is one response of the sim collateral: its URL, the
// issuer chain header go-tdx-guest reads, and who signs it (the TCB signing
// key signs the JSON object named field; a CRL's issuer signs the CRL).
type tdxCollateralFile struct {
	url    string
	header string // "" for none
	chain  []*x509.Certificate
	field  string // "" for a CRL
	signer *x509.Certificate
}

// tdxCollateralFiles lists the sim collateral: TCB info, QE identity, PCK CRL
// and root CA CRL, in that order.
func tdxCollateralFiles(pki *tdxPKI) []tdxCollateralFile {
	return []tdxCollateralFile{
		{url: pcs.TcbInfoURL(TDXFMSPC), header: "Tcb-Info-Issuer-Chain", chain: []*x509.Certificate{pki.tcbSigning, pki.root}, field: "tcbInfo", signer: pki.tcbSigning},
		{url: pcs.QeIdentityURL(), header: "Sgx-Enclave-Identity-Issuer-Chain", chain: []*x509.Certificate{pki.tcbSigning, pki.root}, field: "enclaveIdentity", signer: pki.tcbSigning},
		{url: pcs.PckCrlURL("platform"), header: "Sgx-Pck-Crl-Issuer-Chain", chain: []*x509.Certificate{pki.ca, pki.root}, signer: pki.ca},
		{url: tdxRootCRLURL, signer: pki.root},
	}
}

// headers returns the response headers of f, as PCS sends them: the issuer
// chain as URL-escaped PEM.
func (f tdxCollateralFile) headers() map[string][]string {
	if f.header == "" {
		return nil
	}
	var b []byte
	for _, c := range f.chain {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return map[string][]string{f.header: {url.QueryEscape(string(b))}}
}

func (f tdxCollateralFile) write(dir string, body []byte, fetched time.Time) error {
	r := &pcscache.Response{URL: f.url, Header: f.headers(), Body: body, Fetched: fetched}
	if err := pcscache.Write(TDXCollateralDir(dir), r); err != nil {
		return fmt.Errorf("tdx sim: writing collateral: %w", err)
	}
	return nil
}

// check reads f from the sim collateral in dir and checks that it is what
// writeTDXCollateral wrote for this PKI, intact and valid at t: the same
// issuer chain, a signature by the sim's key, a next update after t.
func (f tdxCollateralFile) check(dir string, t time.Time) error {
	r, err := pcscache.Read(TDXCollateralDir(dir), f.url)
	if err != nil {
		return err
	}
	if !reflect.DeepEqual(r.Header, f.headers()) {
		return fmt.Errorf("%s: not the sim's issuer chain", f.url)
	}
	var next time.Time
	if f.field == "" {
		crl, err := x509.ParseRevocationList(r.Body)
		if err != nil {
			return fmt.Errorf("%s: %v", f.url, err)
		}
		if err := crl.CheckSignatureFrom(f.signer); err != nil {
			return fmt.Errorf("%s: %v", f.url, err)
		}
		next = crl.NextUpdate
	} else {
		var doc map[string]json.RawMessage
		var sig string
		if err := json.Unmarshal(r.Body, &doc); err != nil {
			return fmt.Errorf("%s: %v", f.url, err)
		}
		if err := json.Unmarshal(doc["signature"], &sig); err != nil {
			return fmt.Errorf("%s: signature: %v", f.url, err)
		}
		rs, err := hex.DecodeString(sig)
		if err != nil || len(rs) != 64 {
			return fmt.Errorf("%s: signature is not 64 bytes of hex", f.url)
		}
		pub, ok := f.signer.PublicKey.(*ecdsa.PublicKey)
		h := sha256.Sum256(doc[f.field])
		if !ok || !ecdsa.Verify(pub, h[:], new(big.Int).SetBytes(rs[:32]), new(big.Int).SetBytes(rs[32:])) {
			return fmt.Errorf("%s: signature does not verify", f.url)
		}
		var inner struct {
			NextUpdate time.Time `json:"nextUpdate"`
		}
		if err := json.Unmarshal(doc[f.field], &inner); err != nil {
			return fmt.Errorf("%s: %v", f.url, err)
		}
		next = inner.NextUpdate
	}
	if !next.After(t) {
		return fmt.Errorf("%s: next update %s is not after %s", f.url, next.Format(time.RFC3339), t.Format(time.RFC3339))
	}
	return nil
}

// checkTDXCollateral checks every file of the sim collateral in dir (see
// tdxCollateralFile.check).
func checkTDXCollateral(dir string, pki *tdxPKI, t time.Time) error {
	for _, f := range tdxCollateralFiles(pki) {
		if err := f.check(dir, t); err != nil {
			return err
		}
	}
	return nil
}

// tdxCRL issues a CRL of issuer listing the certificates with the given
// serial numbers.
func tdxCRL(issuer *x509.Certificate, key *ecdsa.PrivateKey, now, next time.Time, revoked []*big.Int) ([]byte, error) {
	tmpl := &x509.RevocationList{Number: big.NewInt(now.UnixNano()), ThisUpdate: now, NextUpdate: next}
	for _, n := range revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: now})
	}
	return x509.CreateRevocationList(rand.Reader, tmpl, issuer, key)
}

// RevokeTDXPCK rewrites the PCK CRL of the TDX sim in dir so that it lists
// the sim's PCK certificate as revoked at t (and stays valid for a month),
// for tests of revocation checking. GenerateTDX keeps the revocation: the
// CRL still verifies under the sim's CA.
func RevokeTDXPCK(dir string, t time.Time) error {
	pki, err := loadTDX(dir)
	if err != nil {
		return err
	}
	crl, err := tdxCRL(pki.ca, pki.caKey, t, t.AddDate(0, 1, 0), []*big.Int{pki.pck.SerialNumber})
	if err != nil {
		return err
	}
	return tdxCollateralFiles(pki)[2].write(dir, crl, t)
}
