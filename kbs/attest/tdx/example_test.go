package tdx_test

import (
	"context"
	"crypto/sha512"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/google/go-tdx-guest/validate"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/attest/tdx"
)

// A simulated TD attests; the verifier trusts the sim root only because it
// is passed explicitly, and marks the claims simulated.
func Example() {
	dir, err := os.MkdirTemp("", "tdx-sim")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := sim.Init(dir); err != nil {
		log.Fatal(err)
	}
	issuer, err := sim.NewIssuer(dir, attest.TDX, sim.Options{})
	if err != nil {
		log.Fatal(err)
	}
	binding := sha512.Sum512([]byte("kbs-release-v1\n..."))
	ev, err := issuer.Issue(context.Background(), binding)
	if err != nil {
		log.Fatal(err)
	}

	simDir := filepath.Join(dir, "tdx")
	roots, err := sim.TDXRoots(simDir)
	if err != nil {
		log.Fatal(err)
	}
	v, err := tdx.NewVerifier(tdx.Options{TrustedRoots: roots, CollateralDir: sim.TDXCollateralDir(simDir)})
	if err != nil {
		log.Fatal(err)
	}
	claims, err := v.Verify(context.Background(), ev, binding)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(claims.Platform, claims.Simulated, claims.TDX.TCBStatus)

	// go-tdx-guest's validation confirms reference values (kbs/policy builds
	// these options from a manifest).
	pinned := &validate.Options{TdQuoteBodyOptions: validate.TdQuoteBodyOptions{MrTd: sim.DefaultTDXMRTD[:]}}
	fmt.Println(tdx.Validate(claims, pinned))
	other := &validate.Options{TdQuoteBodyOptions: validate.TdQuoteBodyOptions{MrTd: make([]byte, 48)}}
	fmt.Println(tdx.Validate(claims, other) != nil)

	// The same quote under the default (Intel) root is rejected.
	hw, err := tdx.NewVerifier(tdx.Options{})
	if err != nil {
		log.Fatal(err)
	}
	_, err = hw.Verify(context.Background(), attest.Evidence{Platform: attest.TDX, Data: ev.Data}, binding)
	fmt.Println(err != nil)
	// Output:
	// tdx true UpToDate
	// <nil>
	// true
	// true
}
