// Package pcscache is the on-disk format of the TDX collateral that
// kbs/attest/tdx verifies quotes with: a directory of JSON files, one per
// Intel PCS response, named after what they hold:
//
//	tcbinfo-<fmspc>.json   TDX TCB info for one platform family (FMSPC)
//	qeidentity.json        TDX QE identity
//	pckcrl-<ca>.json       PCK CRL of the "platform" or "processor" CA
//	crl-<sha256(url)[:16]>.json  any other CRL (the root CA CRL, fetched
//	                       from the root certificate's distribution point)
//
// Each file holds {"url", "header", "body" (base64), "fetched"}: the PCS
// response exactly as received, so that go-tdx-guest verifies the signed
// bodies and issuer chains itself. Files are written atomically.
//
// The package only stores and finds responses; it trusts and checks
// nothing. kbs/attest/tdx verifies every response against its trusted roots
// whenever it uses one, and the simulated TEE (kbs/attest/sim) writes its
// collateral in this format.
package pcscache

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/google/go-tdx-guest/pcs"

	"github.com/kbs-dev/kbs/internal/atomicfile"
)

// MaxSize bounds one response body, fetched or cached.
const MaxSize = 1 << 20

// Response is one cached PCS response.
type Response struct {
	URL     string              `json:"url"`
	Header  map[string][]string `json:"header,omitempty"`
	Body    []byte              `json:"body"`
	Fetched time.Time           `json:"fetched"`
}

var (
	tcbInfoPrefix = pcs.TcbInfoURL("")
	hexFMSPC      = regexp.MustCompile(`^[0-9a-fA-F]{12}$`)
)

// FileName returns the name of the file that holds the response for url.
func FileName(url string) string {
	switch {
	case url == pcs.QeIdentityURL():
		return "qeidentity.json"
	case strings.HasPrefix(url, tcbInfoPrefix) && hexFMSPC.MatchString(url[len(tcbInfoPrefix):]):
		return "tcbinfo-" + strings.ToLower(url[len(tcbInfoPrefix):]) + ".json"
	case url == pcs.PckCrlURL("platform"):
		return "pckcrl-platform.json"
	case url == pcs.PckCrlURL("processor"):
		return "pckcrl-processor.json"
	}
	h := sha256.Sum256([]byte(url))
	return "crl-" + hex.EncodeToString(h[:8]) + ".json"
}

// Read returns the response for url cached in dir, or an error wrapping
// os.ErrNotExist when there is none.
func Read(dir, url string) (*Response, error) {
	if dir == "" {
		return nil, fmt.Errorf("no collateral directory: %w", os.ErrNotExist)
	}
	f, err := os.Open(filepath.Join(dir, FileName(url)))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 2*MaxSize))
	if err != nil {
		return nil, err
	}
	var r Response
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("collateral cache %s: %v", FileName(url), err)
	}
	if r.URL != url {
		return nil, fmt.Errorf("collateral cache %s holds %q, want %q", FileName(url), r.URL, url)
	}
	return &r, nil
}

// Write stores r in dir (created if needed), atomically: a temporary file,
// fsync, rename.
func Write(dir string, r *Response) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, FileName(r.URL)), b, 0o644)
}
