package manifest_test

import (
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/manifest"
)

func TestDiffChain(t *testing.T) {
	v1 := mustParse(t, readFile(t, "chain/v1.json"))
	v2 := mustParse(t, readFile(t, "chain/v2.json"))
	v3 := mustParse(t, readFile(t, "chain/v3.json"))
	o4, _ := manifest.FingerprintPEM(string(readFile(t, "keys/owner4.pub")))

	var got []string
	for _, c := range manifest.Diff(v1, v2) {
		got = append(got, c.String())
	}
	want := []string{
		`keys["acme/embeddings/*"]: added`,
		"owners.keys: added " + o4,
		"previous:  -> " + v1.Hash(),
		"version: 1 -> 2",
		`workers["cpu-worker"]: added`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Diff(v1, v2):\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	got = nil
	for _, c := range manifest.Diff(v2, v3) {
		got = append(got, c.String())
	}
	want = []string{
		"owners.threshold: 2 -> 3",
		"previous: " + v1.Hash() + " -> " + v2.Hash(),
		"version: 2 -> 3",
		`workers["gpu-worker"].snp[0].measurement: added ` + hexOf(fake("gpu-worker v2", 48)),
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Diff(v2, v3):\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if d := manifest.Diff(v2, v2); len(d) != 0 {
		t.Errorf("Diff(v2, v2) = %v, want nothing", d)
	}
}

func TestDiffFields(t *testing.T) {
	a := mustParse(t, readFile(t, "valid/full.json"))
	d := a.Document()
	d.Service.TDX[0].RTMR3 = manifest.Hexes(fake("rtmr3", 48))
	d.Service.SNP[0].MinTCB.SNP = 9
	d.Workers["gpu-worker"].SNP[0].Product.Values = []string{"Genoa"}
	delete(d.Workers, "tdx-worker")
	d.Keys = d.Keys[:1]
	d.Keys[0].ReleaseTo = []string{"gpu-worker"}
	d.Clients[0].Keys = []string{"acme/*", "acme2/*"}
	d.Clients[1].PublicKey = string(readFile(t, "keys/owner4.pub"))
	d.AllowSimulated = true
	b := mustParse(t, mustEncode(t, d))
	var got []string
	for _, c := range manifest.Diff(a, b) {
		got = append(got, c.String())
	}
	o4, _ := manifest.FingerprintPEM(string(readFile(t, "keys/owner4.pub")))
	c2, _ := manifest.FingerprintPEM(string(readFile(t, "keys/client2.pub")))
	want := []string{
		"allow_simulated: false -> true",
		`clients["acme"].keys: added acme2/*`,
		`clients["acme-batch"].public_key: ` + c2 + " -> " + o4,
		`keys["acme/*"].release_to: removed tdx-worker`,
		`keys["shared/tokenizer-key"]: removed`,
		"service.snp[0].min_tcb: bootloader=3 tee=0 snp=8 microcode=0 -> bootloader=3 tee=0 snp=9 microcode=0",
		"service.tdx[0].rtmr3: removed any",
		"service.tdx[0].rtmr3: added " + hexOf(fake("rtmr3", 48)),
		`workers["gpu-worker"].snp[0].product: removed Turin`,
		`workers["tdx-worker"]: removed`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Diff:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, x := range b {
		out = append(out, digits[x>>4], digits[x&15])
	}
	return string(out)
}
