//go:build ignore

// gen.go copies go-tdx-guest's real TDX sample data into this directory:
//
//	quote-spr.dat        the Sapphire Rapids quote v4 (tdx_prod_quote_SPR_E4.dat)
//	intel-collateral/    Intel PCS sample responses (TCB info, QE identity,
//	                     PCK CRL, root CA CRL) in kbs/attest/tdx's cache format
//
// Run from the repository root: go run ./testdata/tdx/gen.go
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-tdx-guest/pcs"
	tdxtesting "github.com/google/go-tdx-guest/testing"
	"github.com/google/go-tdx-guest/testing/testdata"
)

const dir = "testdata/tdx"

func main() {
	if err := os.WriteFile(filepath.Join(dir, "quote-spr.dat"), testdata.RawQuote, 0o644); err != nil {
		log.Fatal(err)
	}
	cdir := filepath.Join(dir, "intel-collateral")
	if err := os.MkdirAll(cdir, 0o755); err != nil {
		log.Fatal(err)
	}
	// The fetch time of go-tdx-guest's samples is not recorded; their
	// issue date stands in for it.
	fetched := time.Date(2023, time.June, 18, 8, 42, 58, 0, time.UTC)
	rootCRL := "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
	h := sha256.Sum256([]byte(rootCRL))
	for _, r := range []struct {
		file, url string
		header    map[string][]string
		body      []byte
	}{
		{"tcbinfo-50806f000000.json", pcs.TcbInfoURL("50806f000000"), tdxtesting.TcbInfoHeader, testdata.TcbInfoBody},
		{"qeidentity.json", pcs.QeIdentityURL(), tdxtesting.QeIdentityHeader, testdata.QeIdentityBody},
		{"pckcrl-platform.json", pcs.PckCrlURL("platform"), tdxtesting.PckCrlHeader, testdata.PckCrlBody},
		{"crl-" + hex.EncodeToString(h[:8]) + ".json", rootCRL, nil, testdata.RootCrlBody},
	} {
		b, err := json.MarshalIndent(map[string]any{
			"url": r.url, "header": r.header, "body": r.body, "fetched": fetched,
		}, "", "  ")
		if err != nil {
			log.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(cdir, r.file), b, 0o644); err != nil {
			log.Fatal(err)
		}
	}
}
