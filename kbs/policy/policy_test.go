package policy_test

import (
	"context"
	"crypto/sha512"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/attest/verify"
	"github.com/kbs-dev/kbs/kbs/policy"
	"github.com/kbs-dev/kbs/manifest"
)

func fake(label string, n int) []byte {
	s := sha512.Sum512([]byte("policy test: " + label))
	return s[:n]
}

var (
	simOnce sync.Once
	simDir  string
	simErr  error
)

// testSim returns a simulated TEE directory shared by the package's tests.
func testSim(t testing.TB) string {
	t.Helper()
	simOnce.Do(func() {
		if simDir, simErr = os.MkdirTemp("", "kbs-policy-sim-"); simErr == nil {
			simErr = sim.Init(simDir)
		}
	})
	if simErr != nil {
		t.Fatal(simErr)
	}
	return simDir
}

// verified returns the claims of ev, verified by a verifier that trusts the
// test sim.
func verified(t testing.TB, ev attest.Evidence, rd [attest.ReportDataSize]byte) *attest.Claims {
	t.Helper()
	v, err := verify.New(verify.Options{SimRootFile: sim.RootFile(testSim(t)), Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(context.Background(), ev, rd)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// simEvidence returns the verified claims of simulated evidence.
func simEvidence(t testing.TB, p attest.Platform, o sim.Options) *attest.Claims {
	t.Helper()
	iss, err := sim.NewIssuer(testSim(t), p, o)
	if err != nil {
		t.Fatal(err)
	}
	var rd [attest.ReportDataSize]byte
	ev, err := iss.Issue(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	return verified(t, ev, rd)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if simDir != "" {
		os.RemoveAll(simDir)
	}
	os.Exit(code)
}

// TestConfirmSimulated: claims of simulated evidence that a manifest
// matches pass the library validation of the matched alternative, on both
// platforms; claims of another guest, validated against the same values
// outside the manifest's comparison, are rejected by the library.
func TestConfirmSimulated(t *testing.T) {
	for _, p := range []attest.Platform{attest.SNP, attest.TDX} {
		t.Run(string(p), func(t *testing.T) {
			c := simEvidence(t, p, sim.Options{})
			mc := c
			var cl manifest.Class
			var sv *manifest.SNPValues
			var tv *manifest.TDXValues
			if p == attest.SNP {
				v, err := manifest.PinSNP(mc)
				if err != nil {
					t.Fatal(err)
				}
				cl.SNP, sv = []manifest.SNPValues{v}, &v
			} else {
				v, err := manifest.PinTDX(mc)
				if err != nil {
					t.Fatal(err)
				}
				cl.TDX, tv = []manifest.TDXValues{v}, &v
			}
			m := simManifest(t, cl)
			class, r, err := m.AuthorizeRelease(mc, []string{"demo/k"})
			if err != nil {
				t.Fatal(err)
			}
			if err := policy.Confirm(m, r, class, c); err != nil {
				t.Errorf("Confirm(matching sim evidence) = %v", err)
			}
			if err := policy.Confirm(m, m.MatchService(mc), manifest.ServiceClass, c); err != nil {
				t.Errorf("Confirm(service) = %v", err)
			}

			other := simEvidence(t, p, sim.Options{Measurement: fake("another guest", 48)})
			if err := policy.Validate(other, sv, tv); err == nil {
				t.Error("library validation accepted another guest's measurement")
			}
			// A report that matched nothing confirms nothing.
			if err := policy.Confirm(m, m.Match(other), class, other); !errors.Is(err, policy.ErrDisagreement) {
				t.Errorf("Confirm(no match) = %v, want ErrDisagreement", err)
			}
			// No values of the claims' platform: nothing to validate against.
			if err := policy.Validate(c, nil, nil); err == nil {
				t.Error("Validate(no values) succeeded")
			}
		})
	}
}

// simManifest is a development manifest whose service and demo-worker
// classes are cl.
func simManifest(t testing.TB, cl manifest.Class) *manifest.Manifest {
	t.Helper()
	const pub = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n"
	b, err := manifest.Encode(manifest.DevDocument(pub, pub, cl, cl))
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// bothReject checks the two layers on claims c and one alternative of
// reference values (exactly one of sv and tv): the manifest's comparison
// fails on exactly the field want, and the vendor library's validation with
// the options built from the same values rejects c on its own, with an
// error that names lib.
func bothReject(t *testing.T, c *attest.Claims, sv *manifest.SNPValues, tv *manifest.TDXValues, want, lib string) {
	t.Helper()
	var cl manifest.Class
	if sv != nil {
		cl.SNP = []manifest.SNPValues{*sv}
	} else {
		cl.TDX = []manifest.TDXValues{*tv}
	}
	r, err := simManifest(t, cl).MatchClass("demo-worker", c)
	if err != nil {
		t.Fatal(err)
	}
	if r.OK() || !slices.Equal(r.Failed(), []string{want}) {
		t.Errorf("manifest: matched %v, failing %q; want a refusal on exactly %q\n%s", r.OK(), r.Failed(), want, r)
	}
	if err := policy.Validate(c, sv, tv); err == nil || !strings.Contains(err.Error(), lib) {
		t.Errorf("library validation = %v, want a refusal naming %s", err, lib)
	}
}
