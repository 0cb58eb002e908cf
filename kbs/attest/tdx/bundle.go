package tdx

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/kbs-dev/kbs/kbs/attest/tdx/pcscache"
)

// A collateral bundle is a directory of Intel PCS responses as PCS serves
// them, whichever tool fetched them. Files are recognized by what they hold,
// not by their names; the names below are the ones documented for operators
// (they are the fields of Intel's sgx_ql_qve_collateral_t):
//
//	tcb_info.json                 GET /tdx/certification/v4/tcb?fmspc=…: the
//	                              body {"tcbInfo": …, "signature": …}; one
//	                              file per FMSPC (any name)
//	tcb_info_issuer_chain.pem     its TCB-Info-Issuer-Chain header: PEM, or
//	                              the URL-escaped PEM as sent
//	qe_identity.json              GET /tdx/certification/v4/qe/identity: the
//	                              body {"enclaveIdentity": …, "signature": …}
//	qe_identity_issuer_chain.pem  its SGX-Enclave-Identity-Issuer-Chain header
//	pck_crl.der                   GET /sgx/certification/v4/pckcrl?ca=platform
//	                              (or processor): DER, PEM or hex, as PCS and
//	                              PCCS serve it
//	pck_crl_issuer_chain.pem      its SGX-PCK-CRL-Issuer-Chain header
//	                              (optional: the quote carries that chain)
//	root_ca_crl.der               the Intel SGX Root CA's CRL (its CRL
//	                              distribution point): DER, PEM or hex
//
// The issuer chains of TCB info and QE identity are the same chain (the
// TCB signing certificate and the root); one file serves both. Files in
// kbs's own cache format (kbs/attest/tdx/pcscache, what online mode and the
// simulated TEE write) and QVL-style collateral JSON (one object with
// tcb_info, tcb_info_signature, qe_identity, …, as dcap-qvl and Intel's
// QVL tools print it) are read too. Nothing in a bundle is trusted: every
// piece is verified against the trusted roots when it is used, and a piece
// that is missing or does not verify refuses the quote.
type Collateral struct {
	// TCBInfo maps a lower-case FMSPC to its TCB info response.
	TCBInfo map[string]*SignedCollateral
	// QEIdentity is the TD QE identity response.
	QEIdentity *SignedCollateral
	// PCKCRL maps "platform" and "processor" to the DER of that CA's CRL.
	PCKCRL map[string][]byte
	// RootCRL is the DER of the Intel SGX Root CA's CRL.
	RootCRL []byte
	// PCKCRLChain is the PCK CRL issuer chain, when the bundle has one.
	PCKCRLChain []*x509.Certificate
}

// SignedCollateral is a TCB info or QE identity response: the signed JSON
// object exactly as served, its signature, and its issuer chain.
type SignedCollateral struct {
	Body      []byte              // the whole response body
	Signed    json.RawMessage     // the "tcbInfo" or "enclaveIdentity" value, verbatim
	Signature string              // hex r||s
	Chain     []*x509.Certificate // TCB signing certificate, then the root
}

// Limits of a bundle.
const (
	maxBundleFiles    = 256
	maxBundleFileSize = pcscache.MaxSize
)

// LoadCollateral reads a collateral bundle directory (see Collateral). It
// fails for an unreadable directory or file, and for a file that looks like
// collateral but does not parse; files it does not recognize (READMEs) are
// ignored. It never fetches anything.
func LoadCollateral(dir string) (*Collateral, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("tdx: collateral bundle: %w", err)
	}
	if len(ents) > maxBundleFiles {
		return nil, fmt.Errorf("tdx: collateral bundle %s: more than %d files", dir, maxBundleFiles)
	}
	var files []bundleFile
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := readLimited(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("tdx: collateral bundle: %w", err)
		}
		files = append(files, bundleFile{name: e.Name(), data: b})
	}
	c, err := parseBundle(files)
	if err != nil {
		return nil, fmt.Errorf("tdx: collateral bundle %s: %w", dir, err)
	}
	return c, nil
}

func readLimited(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxBundleFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxBundleFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, maxBundleFileSize)
	}
	return b, nil
}

type bundleFile struct {
	name string
	data []byte
}

// parseBundle classifies files by content. Unrecognized files are skipped.
func parseBundle(files []bundleFile) (*Collateral, error) {
	c := &Collateral{TCBInfo: map[string]*SignedCollateral{}, PCKCRL: map[string][]byte{}}
	var signingChains [][]*x509.Certificate
	var pending []*SignedCollateral // responses whose chain comes from another file
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	for _, f := range files {
		if err := c.add(f.data, nil, &signingChains, &pending); err != nil {
			return nil, fmt.Errorf("%s: %w", f.name, err)
		}
	}
	for _, s := range pending {
		if s.Chain != nil {
			continue
		}
		if len(signingChains) == 0 {
			return nil, errors.New("a TCB info or QE identity has no issuer chain (tcb_info_issuer_chain.pem)")
		}
		s.Chain = signingChains[0]
	}
	return c, nil
}

// add classifies one piece of collateral. header carries the response
// headers when data is a cached response body.
func (c *Collateral) add(data []byte, header map[string][]string, chains *[][]*x509.Certificate, pending *[]*SignedCollateral) error {
	if len(data) > 0 && data[0] == 0x30 { // DER, which must not be trimmed
		if der := crlDER(data); der != nil {
			return c.addCRL(der)
		}
		return nil
	}
	trimmed := bytes.TrimSpace(data)
	switch {
	case len(trimmed) > 0 && trimmed[0] == '{':
		return c.addJSON(trimmed, header, chains, pending)
	case bytes.HasPrefix(trimmed, []byte("-----BEGIN CERTIFICATE-----")) || bytes.HasPrefix(trimmed, []byte("-----BEGIN%20CERTIFICATE")):
		chain, err := parseIssuerChain(string(trimmed))
		if err != nil {
			return err
		}
		c.addChain(chain, chains)
		return nil
	}
	if der := crlDER(trimmed); der != nil {
		return c.addCRL(der)
	}
	return nil
}

func (c *Collateral) addChain(chain []*x509.Certificate, chains *[][]*x509.Certificate) {
	switch chain[0].Subject.CommonName {
	case "Intel SGX TCB Signing":
		*chains = append(*chains, chain)
	case "Intel SGX PCK Platform CA", "Intel SGX PCK Processor CA":
		c.PCKCRLChain = chain
	}
}

func (c *Collateral) addJSON(data []byte, header map[string][]string, chains *[][]*x509.Certificate, pending *[]*SignedCollateral) error {
	var probe struct {
		TCBInfo         json.RawMessage `json:"tcbInfo"`
		EnclaveIdentity json.RawMessage `json:"enclaveIdentity"`
		Signature       string          `json:"signature"`
		// kbs's cache format
		URL    string              `json:"url"`
		Header map[string][]string `json:"header"`
		Body   []byte              `json:"body"`
		// QVL-style collateral
		QVLTCBInfo     string `json:"tcb_info"`
		QVLTCBSig      string `json:"tcb_info_signature"`
		QVLTCBChain    string `json:"tcb_info_issuer_chain"`
		QVLQEIdentity  string `json:"qe_identity"`
		QVLQESig       string `json:"qe_identity_signature"`
		QVLQEChain     string `json:"qe_identity_issuer_chain"`
		QVLPCKCRL      string `json:"pck_crl"`
		QVLPCKCRLChain string `json:"pck_crl_issuer_chain"`
		QVLRootCRL     string `json:"root_ca_crl"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return fmt.Errorf("not valid JSON: %v", err)
	}
	switch {
	case probe.TCBInfo != nil || probe.EnclaveIdentity != nil:
		s := &SignedCollateral{Body: data, Signed: probe.TCBInfo, Signature: probe.Signature}
		if probe.EnclaveIdentity != nil {
			s.Signed = probe.EnclaveIdentity
		}
		if h := headerValue(header, "Tcb-Info-Issuer-Chain", "Sgx-Enclave-Identity-Issuer-Chain", "Tcb-Info-Issuer-Chain"); h != "" {
			chain, err := parseIssuerChain(h)
			if err != nil {
				return fmt.Errorf("issuer chain header: %w", err)
			}
			s.Chain = chain
		}
		*pending = append(*pending, s)
		return c.addSigned(s, probe.TCBInfo != nil)
	case probe.URL != "":
		return c.add(probe.Body, probe.Header, chains, pending)
	case probe.QVLTCBInfo != "" && probe.QVLQEIdentity != "":
		tcbChain, err := parseIssuerChain(probe.QVLTCBChain)
		if err != nil {
			return fmt.Errorf("tcb_info_issuer_chain: %w", err)
		}
		qeChain, err := parseIssuerChain(probe.QVLQEChain)
		if err != nil {
			return fmt.Errorf("qe_identity_issuer_chain: %w", err)
		}
		ti := &SignedCollateral{Signed: json.RawMessage(probe.QVLTCBInfo), Signature: probe.QVLTCBSig, Chain: tcbChain}
		ti.Body = fmt.Appendf(nil, `{"tcbInfo":%s,"signature":%q}`, probe.QVLTCBInfo, probe.QVLTCBSig)
		qe := &SignedCollateral{Signed: json.RawMessage(probe.QVLQEIdentity), Signature: probe.QVLQESig, Chain: qeChain}
		qe.Body = fmt.Appendf(nil, `{"enclaveIdentity":%s,"signature":%q}`, probe.QVLQEIdentity, probe.QVLQESig)
		if err := c.addSigned(ti, true); err != nil {
			return err
		}
		if err := c.addSigned(qe, false); err != nil {
			return err
		}
		for _, crl := range []string{probe.QVLPCKCRL, probe.QVLRootCRL} {
			if der := crlDER([]byte(crl)); der != nil {
				if err := c.addCRL(der); err != nil {
					return err
				}
			}
		}
		if probe.QVLPCKCRLChain != "" {
			if chain, err := parseIssuerChain(probe.QVLPCKCRLChain); err == nil {
				c.addChain(chain, chains)
			}
		}
		return nil
	}
	return nil
}

// addSigned files a TCB info (tcb) or QE identity response.
func (c *Collateral) addSigned(s *SignedCollateral, tcb bool) error {
	if tcb {
		var ti struct {
			FMSPC string `json:"fmspc"`
		}
		if err := json.Unmarshal(s.Signed, &ti); err != nil || ti.FMSPC == "" {
			return errors.New("TCB info without an FMSPC")
		}
		fmspc := strings.ToLower(ti.FMSPC)
		if _, dup := c.TCBInfo[fmspc]; dup {
			return fmt.Errorf("a second TCB info for FMSPC %s", fmspc)
		}
		c.TCBInfo[fmspc] = s
		return nil
	}
	var qe struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(s.Signed, &qe); err != nil {
		return fmt.Errorf("QE identity: %v", err)
	}
	if qe.ID != "TD_QE" {
		return nil // an SGX QE or QVE identity: not for TDX
	}
	if c.QEIdentity != nil {
		return errors.New("a second TD QE identity")
	}
	c.QEIdentity = s
	return nil
}

// addCRL files a CRL by its issuer.
func (c *Collateral) addCRL(der []byte) error {
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return fmt.Errorf("CRL: %v", err)
	}
	switch crl.Issuer.CommonName {
	case "Intel SGX Root CA":
		if c.RootCRL != nil && !bytes.Equal(c.RootCRL, der) {
			return errors.New("a second root CA CRL")
		}
		c.RootCRL = der
	case "Intel SGX PCK Platform CA", "Intel SGX PCK Processor CA":
		ca := "platform"
		if crl.Issuer.CommonName == "Intel SGX PCK Processor CA" {
			ca = "processor"
		}
		if prev := c.PCKCRL[ca]; prev != nil && !bytes.Equal(prev, der) {
			return fmt.Errorf("a second PCK CRL of the %s CA", ca)
		}
		c.PCKCRL[ca] = der
	}
	return nil
}

// crlDER returns the DER of a CRL given as DER, PEM or hex, or nil.
func crlDER(b []byte) []byte {
	if blk, _ := pem.Decode(b); blk != nil && blk.Type == "X509 CRL" {
		return blk.Bytes
	}
	if len(b) > 0 && b[0] == 0x30 {
		if _, err := x509.ParseRevocationList(b); err == nil {
			return b
		}
	}
	if d, err := hex.DecodeString(string(bytes.TrimSpace(b))); err == nil && len(d) > 0 && d[0] == 0x30 {
		if _, err := x509.ParseRevocationList(d); err == nil {
			return d
		}
	}
	return nil
}

// parseIssuerChain reads an issuer chain: PEM certificates, possibly
// URL-escaped as in the PCS response header.
func parseIssuerChain(s string) ([]*x509.Certificate, error) {
	if strings.Contains(s, "%") {
		u, err := url.QueryUnescape(s)
		if err != nil {
			return nil, fmt.Errorf("issuer chain: %v", err)
		}
		s = u
	}
	rest := []byte(s)
	var out []*x509.Certificate
	for len(out) < 4 {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("issuer chain: PEM block %q", blk.Type)
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("issuer chain: %v", err)
		}
		out = append(out, cert)
	}
	if len(out) < 2 {
		return nil, fmt.Errorf("issuer chain: %d certificates, want the signer and the root", len(out))
	}
	return out, nil
}

func headerValue(h map[string][]string, names ...string) string {
	for _, n := range names {
		for k, v := range h {
			if strings.EqualFold(k, n) && len(v) > 0 {
				return v[0]
			}
		}
	}
	return ""
}

// collateralFromResponses builds a Collateral from PCS responses (online
// mode and the cache).
func collateralFromResponses(rs []*pcscache.Response) (*Collateral, error) {
	var files []bundleFile
	for i, r := range rs {
		b, err := json.Marshal(r)
		if err != nil {
			return nil, err
		}
		files = append(files, bundleFile{name: fmt.Sprintf("%03d", i), data: b})
	}
	return parseBundle(files)
}

// tcbInfoFor returns the TCB info for fmspc, or nil.
func (c *Collateral) tcbInfoFor(fmspc string) *SignedCollateral {
	if c == nil {
		return nil
	}
	return c.TCBInfo[strings.ToLower(fmspc)]
}

// Issued returns when the newest piece of c was issued: the latest issue
// date of its TCB infos and QE identity and this-update of its CRLs. A
// verification at an earlier time refuses the pieces issued after it.
func (c *Collateral) Issued() time.Time {
	var latest time.Time
	later := func(t time.Time) {
		if t.After(latest) {
			latest = t
		}
	}
	signed := slices.Collect(maps.Values(c.TCBInfo))
	if c.QEIdentity != nil {
		signed = append(signed, c.QEIdentity)
	}
	for _, s := range signed {
		var d struct {
			IssueDate time.Time `json:"issueDate"`
		}
		if json.Unmarshal(s.Signed, &d) == nil {
			later(d.IssueDate)
		}
	}
	for _, der := range append(slices.Collect(maps.Values(c.PCKCRL)), c.RootCRL) {
		if crl, err := x509.ParseRevocationList(der); err == nil {
			later(crl.ThisUpdate)
		}
	}
	return latest
}
