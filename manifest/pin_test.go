package manifest_test

import (
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/manifest"
)

// TestPinClass: a class pinned to claims of both platforms matches exactly
// those claims.
func TestPinClass(t *testing.T) {
	cl, err := manifest.PinClass(snpClaims(), tdxClaims())
	if err != nil || len(cl.SNP) != 1 || len(cl.TDX) != 1 {
		t.Fatalf("PinClass = %d SNP, %d TDX alternatives, %v", len(cl.SNP), len(cl.TDX), err)
	}
	owner := string(readFile(t, "keys/owner1.pub"))
	client := string(readFile(t, "keys/client.pub"))
	m := mustParse(t, mustEncode(t, manifest.DevDocument(owner, client, cl, cl)))
	for _, c := range []*manifest.Claims{snpClaims(), tdxClaims()} {
		if r := m.MatchService(c); !r.OK() {
			t.Errorf("%s claims do not match their pinned class: %s", c.Platform, r.Summary())
		}
	}
	other := snpClaims()
	other.SNP.HostData = make([]byte, 32)
	if r := m.MatchService(other); r.OK() {
		t.Error("a pinned class accepts other host data")
	}
	for _, bad := range [][]*manifest.Claims{nil, {nil}, {{Platform: "sgx"}}, {{Platform: manifest.PlatformSNP}}} {
		if _, err := manifest.PinClass(bad...); err == nil {
			t.Errorf("PinClass(%v) succeeded", bad)
		}
	}
}

// TestReportFailed lists the failing fields of every alternative.
func TestReportFailed(t *testing.T) {
	m := mustParse(t, readFile(t, "valid/snp.json"))
	c := snpClaims()
	r, err := m.MatchClass("gpu-worker", c)
	if err != nil || len(r.Failed()) != 0 {
		t.Fatalf("MatchClass(gpu-worker) failed %q, %v", r.Failed(), err)
	}
	c.SNP.VMPL = 1
	c.SNP.GuestSVN = 0
	r, _ = m.MatchClass("gpu-worker", c)
	if got := strings.Join(r.Failed(), " "); got != "vmpl guest_svn" {
		t.Errorf("Failed() = %q, want vmpl guest_svn", got)
	}
}
