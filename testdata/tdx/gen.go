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
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-tdx-guest/pcs"
	tdxtesting "github.com/google/go-tdx-guest/testing"
	"github.com/google/go-tdx-guest/testing/testdata"
	"github.com/kbs-dev/kbs/kbs/attest/tdx/pcscache"
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
	for _, r := range []*pcscache.Response{
		{URL: pcs.TcbInfoURL("50806f000000"), Header: tdxtesting.TcbInfoHeader, Body: testdata.TcbInfoBody},
		{URL: pcs.QeIdentityURL(), Header: tdxtesting.QeIdentityHeader, Body: testdata.QeIdentityBody},
		{URL: pcs.PckCrlURL("platform"), Header: tdxtesting.PckCrlHeader, Body: testdata.PckCrlBody},
		{URL: rootCRL, Body: testdata.RootCrlBody},
	} {
		r.Fetched = fetched
		if err := pcscache.Write(cdir, r); err != nil {
			log.Fatal(err)
		}
	}
}
