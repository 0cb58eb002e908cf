package attest_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/internal/testbin"
)

const module = "github.com/kbs-dev/kbs"

// deps returns, for each of kbs's packages pkgs (paths inside the module),
// the packages it links: what go list -deps lists, test files excluded.
func deps(t *testing.T, pkgs ...string) map[string][]string {
	t.Helper()
	args := []string{"list", "-f", "{{.ImportPath}} {{join .Deps \" \"}}"}
	for _, p := range pkgs {
		args = append(args, module+"/"+p)
	}
	out, err := testbin.Command(t, "go", args...).Output()
	if err != nil {
		t.Fatalf("go %s: %v", strings.Join(args, " "), err)
	}
	m := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		m[strings.TrimPrefix(f[0], module+"/")] = f[1:]
	}
	if len(m) != len(pkgs) {
		t.Fatalf("go list answered for %d packages, want %d:\n%s", len(m), len(pkgs), out)
	}
	return m
}

// TestVerifiersDoNotLinkTheForge: a program that verifies evidence, a
// broker or a manifest cannot issue simulated evidence. The verifiers, the
// policy layer, the broker and the client library link neither the
// simulated TEE (kbs/attest/sim) nor the vendor libraries' test packages,
// which mint fake vendor chains (and go-sev-guest's registers global
// flags). Only the binaries that offer simulation on request link them:
// kbsd for --dev, kbsctl for --tee sim.
func TestVerifiersDoNotLinkTheForge(t *testing.T) {
	forge := []string{
		module + "/kbs/attest/sim",
		"github.com/google/go-sev-guest/testing",
		"github.com/google/go-tdx-guest/testing",
	}
	all := deps(t, "kbs/attest", "kbs/attest/snp", "kbs/attest/tdx", "kbs/attest/tdx/pcscache", "kbs/attest/verify",
		"kbs/attest/cvm", "kbs/policy", "kbs", "kbs/client", "kbs/api", "manifest", "tlog", "kbs/attest/sim")
	for pkg, ds := range all {
		if pkg == "kbs/attest/sim" {
			// The check sees the forge where it is linked.
			if !slices.Contains(ds, forge[1]) {
				t.Errorf("go list does not show kbs/attest/sim linking %s: the check proves nothing", forge[1])
			}
			continue
		}
		for _, d := range ds {
			for _, f := range forge {
				if d == f || strings.HasPrefix(d, f+"/") {
					t.Errorf("%s links %s", pkg, d)
				}
			}
		}
	}
}

// TestLayering: kbs/attest (the evidence and claims types) imports nothing
// but the standard library, and the manifest package, of kbs's own
// packages, only kbs/attest and the leaf parsers of witness keys
// (internal/witnesskey, shared with tlog) and HPKE public keys
// (internal/hpkekey, shared with kbs/api); neither links a vendor
// attestation library.
func TestLayering(t *testing.T) {
	allowed := map[string][]string{
		"kbs/attest": nil,
		"manifest":   {module + "/kbs/attest", module + "/internal/witnesskey", module + "/internal/hpkekey"},
	}
	for pkg, ds := range deps(t, "kbs/attest", "manifest") {
		for _, d := range ds {
			switch {
			case strings.HasPrefix(d, module+"/") && !slices.Contains(allowed[pkg], d):
				t.Errorf("%s links %s", pkg, d)
			case strings.HasPrefix(d, "github.com/google/go-sev-guest") || strings.HasPrefix(d, "github.com/google/go-tdx-guest"):
				t.Errorf("%s links the vendor library %s", pkg, d)
			case pkg == "kbs/attest" && strings.Contains(strings.Split(d, "/")[0], "."):
				t.Errorf("kbs/attest links %s, outside the standard library", d)
			}
		}
	}
}
