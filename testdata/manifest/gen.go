//go:build ignore

// gen writes the manifest test fixtures: deterministic keys, valid
// manifests, a signed version chain and invalid manifests, each invalid one
// with the error text it must produce. Run from the repository root:
//
//	go run ./testdata/manifest/gen.go
package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"

	"github.com/kbs-dev/kbs/internal/witnesskey"
	"github.com/kbs-dev/kbs/manifest"
)

const dir = "testdata/manifest"

func main() {
	for _, d := range []string{"keys", "valid", "chain", "invalid"} {
		must(os.MkdirAll(filepath.Join(dir, d), 0o755))
		old, _ := filepath.Glob(filepath.Join(dir, d, "*"))
		for _, f := range old {
			must(os.Remove(f))
		}
	}
	owner1 := p256Key("owner1")
	owner2 := p256Key("owner2")
	owner3 := ed25519Key("owner3")
	owner4 := p256Key("owner4") // joins in version 3
	client := p256Key("client")
	client2 := ed25519Key("client2")

	// A manifest with SNP service values and one SNP worker class.
	snpDoc := &manifest.Document{
		Schema:  manifest.Schema,
		Version: 1,
		Owners:  manifest.Owners{Threshold: 1, Keys: []string{pubPEM(owner1)}},
		Service: manifest.Class{SNP: []manifest.SNPValues{snpValues("service")}},
		Workers: map[string]manifest.Class{"gpu-worker": {SNP: []manifest.SNPValues{snpValues("gpu-worker")}}},
		Clients: []manifest.Client{{Name: "acme", PublicKey: pubPEM(client), Keys: []string{"acme/*"}}},
		Keys:    []manifest.KeyRule{{Match: "acme/*", ReleaseTo: []string{"gpu-worker"}}},
	}
	snp := encode(snpDoc)
	write("valid/snp.json", snp)

	tdxDoc := &manifest.Document{
		Schema:  manifest.Schema,
		Version: 1,
		Owners:  manifest.Owners{Threshold: 1, Keys: []string{pubPEM(owner3)}},
		Service: manifest.Class{TDX: []manifest.TDXValues{tdxValues("service")}},
		Workers: map[string]manifest.Class{"tdx-worker": {TDX: []manifest.TDXValues{tdxValues("tdx-worker")}}},
		Clients: []manifest.Client{{Name: "acme", PublicKey: pubPEM(client2), Keys: []string{"acme/model-key"}}},
		Keys:    []manifest.KeyRule{{Match: "acme/model-key", ReleaseTo: []string{"tdx-worker"}}},
	}
	write("valid/tdx.json", encode(tdxDoc))

	// Witness policies: a 2-of-3 quorum (on the SNP manifest), and the
	// explicit choice of none (on the TDX manifest).
	witDoc := *snpDoc
	witDoc.Witnesses = &manifest.WitnessPolicy{Threshold: 2, List: []manifest.Witness{
		{Name: "acme-witness", Key: witnessKey("witness.acme.example/w1", "witness a"), URL: "https://witness.acme.example/w1"},
		{Name: "armory", Key: witnessKey("witness.armory.example", "witness b"), URL: "https://armory.example/witness"},
		{Name: "local", Key: witnessKey("witness.kbs.test/w1", "witness c"), URL: "http://127.0.0.1:28180"},
	}}
	witnesses := encode(&witDoc)
	write("valid/witnesses.json", witnesses)
	noneDoc := *tdxDoc
	noneDoc.Witnesses = manifest.NoWitnesses()
	write("valid/no-witnesses.json", encode(&noneDoc))

	// The annotated example of docs/manifest.md.
	write("valid/full.json", encode(fullDoc(owner1, owner2, owner3, client, client2)))

	// A chain: version 1 (owners 1, 2, 3; threshold 2), version 2 signed by
	// owners 1 and 3 adding owner 4 and a worker class, version 3 signed by
	// owners 2 and 4.
	v1d := fullDoc(owner1, owner2, owner3, client, client2)
	v1 := encode(v1d)
	write("chain/v1.json", v1)
	v2d := fullDoc(owner1, owner2, owner3, client, client2)
	v2d.Version, v2d.Previous = 2, manifest.HashOf(v1)
	v2d.Owners.Keys = append(v2d.Owners.Keys, pubPEM(owner4))
	v2d.Workers["cpu-worker"] = manifest.Class{SNP: []manifest.SNPValues{snpValues("cpu-worker")}}
	v2d.Keys = append(v2d.Keys, manifest.KeyRule{Match: "acme/embeddings/*", ReleaseTo: []string{"cpu-worker"}})
	v2 := encode(v2d)
	write("chain/v2.json", v2)
	write("chain/v2.json.sig.owner1", []byte(sign(owner1, v2)+"\n"))
	write("chain/v2.json.sig.owner3", []byte(sign(owner3, v2)+"\n"))
	v3d := v2d
	v3d.Version, v3d.Previous = 3, manifest.HashOf(v2)
	v3d.Owners.Threshold = 3
	v3d.Workers["gpu-worker"].SNP[0].Measurement.Values = append(v3d.Workers["gpu-worker"].SNP[0].Measurement.Values, fake("gpu-worker v2", 48))
	v3 := encode(v3d)
	write("chain/v3.json", v3)
	write("chain/v3.json.sig.owner2", []byte(sign(owner2, v3)+"\n"))
	write("chain/v3.json.sig.owner4", []byte(sign(owner4, v3)+"\n"))

	for _, k := range []struct {
		name string
		key  crypto.Signer
	}{{"owner1", owner1}, {"owner2", owner2}, {"owner3", owner3}, {"owner4", owner4}, {"client", client}, {"client2", client2}} {
		der, err := x509.MarshalPKCS8PrivateKey(k.key)
		must(err)
		write("keys/"+k.name+".key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
		write("keys/"+k.name+".pub", []byte(pubPEM(k.key)))
	}

	// Invalid manifests: each a small edit of valid/snp.json, with the
	// text its error must contain.
	s := string(snp)
	for _, c := range []struct{ name, from, to, err string }{
		{"unknown-field", `"version": 1,`, `"version": 1, "extra": 1,`, `extra: unknown field`},
		{"case-variant-key", `"schema":`, `"Schema":`, `schema: required field is missing`},
		{"duplicate-key", `"version": 1,`, `"version": 1, "version": 1,`, `version: duplicate key`},
		{"wrong-type", `"version": 1,`, `"version": "1",`, `version: want an integer, got string`},
		{"fraction", `"version": 1,`, `"version": 1.0,`, `version: want a non-negative integer without fraction or exponent`},
		{"version-zero", `"version": 1,`, `"version": 0,`, `version: versions start at 1`},
		{"vmpl-out-of-range", `"vmpl": [0]`, `"vmpl": [4]`, `vmpl[0]: 4 is out of range`},
		{"missing-field", `"host_data": "any",`, ``, `host_data: required field is missing`},
		{"measurement-any", `"measurement": ["` + hexs(fake("service", 48)) + `"]`, `"measurement": "any"`, `service.snp[0].measurement: "any" is not allowed here`},
		{"debug-policy", `"max_policy": "0x30000"`, `"max_policy": "0xb0000"`, `sets DEBUG (bit 19): debug guests are never allowed`},
		{"reserved-policy-bit", `"max_policy": "0x30000"`, `"max_policy": "0x10000"`, `bit 17 is reserved and must be 1`},
		{"short-measurement", hexs(fake("service", 48)), hexs(fake("service", 47)), `service.snp[0].measurement[0]: want 48 bytes as 96 hex digits`},
		{"empty-list", `"vmpl": [0]`, `"vmpl": []`, `vmpl: empty list accepts nothing`},
		{"unknown-release-class", `"release_to": ["gpu-worker"]`, `"release_to": ["cpu-worker"]`, `keys[0].release_to[0]: unknown worker class "cpu-worker"`},
		{"threshold-too-high", `"threshold": 1,`, `"threshold": 2,`, `owners.threshold: 2 exceeds the number of owner keys (1)`},
		{"duplicate-owner", `"keys": ["` + jsonPEM(owner1) + `"]`, `"keys": ["` + jsonPEM(owner1) + `", "` + jsonPEM(owner1) + `"]`, `owners.keys[1]: the same key as keys[0]`},
		{"reserved-class-name", `"gpu-worker": {`, `"service": {`, `workers["service"]: "service" is reserved`},
		{"previous-in-v1", `"previous": "",`, `"previous": "sha256:` + strings.Repeat("0", 64) + `",`, `previous: must be empty in version 1`},
		{"wrong-schema", `"schema": "kbs-manifest/v1"`, `"schema": "kbs-manifest/v2"`, `unsupported schema "kbs-manifest/v2"`},
		{"invalid-utf8", `"name": "acme"`, "\"name\": \"ac\xffme\"", `document is not valid UTF-8`},
		{"p384-owner", jsonPEM(owner1), jsonPEM(p384Key("owner1")), `only P-256 is accepted`},
		{"bad-pattern", `"keys": ["acme/*"]`, `"keys": ["acme/*/x"]`, `invalid key id pattern "acme/*/x"`},
		{"unknown-product", `"Milan"`, `"milan"`, `product[0]: unknown value "milan"`},
		{"no-reference-values", `"gpu-worker": {
      "snp": [`, `"gpu-worker": {"tdx": []}, "x": {
      "snp": [`, `workers["gpu-worker"].tdx: empty`},
		{"missing-tcb-component", `"microcode": 0`, `"microcodes": 0`, `min_tcb.microcode: required field is missing`},
		{"null-value", `"allow_simulated": false,`, `"allow_simulated": null,`, `allow_simulated: want true or false, got null`},
	} {
		if strings.Count(s, c.from) < 1 {
			log.Fatalf("%s: %q not found", c.name, c.from)
		}
		write("invalid/"+c.name+".json", []byte(strings.Replace(s, c.from, c.to, 1)))
		write("invalid/"+c.name+".err", []byte(c.err+"\n"))
	}
	// Invalid witness policies: edits of valid/witnesses.json.
	w := string(witnesses)
	keyA := witnessKey("witness.acme.example/w1", "witness a")
	keyB := witnessKey("witness.armory.example", "witness b")
	// The same Ed25519 key as a plain note key (type 0x01), as logs use.
	var logKey string
	{
		k, err := witnesskey.New("witness.acme.example/w1", ed25519Key("witness a").Public().(ed25519.PublicKey))
		must(err)
		raw := append([]byte{0x01}, k.Public...)
		logKey = fmt.Sprintf("%s+%08x+%s", k.Name, witnesskey.KeyHash(k.Name, 0x01, k.Public), base64.StdEncoding.EncodeToString(raw))
	}
	for _, c := range []struct{ name, from, to, err string }{
		{"witnesses-word", `"witnesses": {`, `"witnesses": "no", "x": {`, `witnesses: want "none" or an object {"threshold", "list"}, got "no"`},
		{"witnesses-threshold-zero", `"threshold": 2,
    "list"`, `"threshold": 0,
    "list"`, `witnesses.threshold: must be at least 1`},
		{"witnesses-threshold-too-high", `"threshold": 2,
    "list"`, `"threshold": 4,
    "list"`, `witnesses.threshold: 4 exceeds the number of witnesses (3)`},
		{"witnesses-empty-list", `"threshold": 2,
    "list": [`, `"threshold": 2,
    "list": [], "x": [`, `witnesses.list: empty: write "witnesses": "none" for no witnesses`},
		{"witnesses-duplicate-name", `"name": "armory"`, `"name": "acme-witness"`, `witnesses.list[1].name: "acme-witness" is also the name of list[0]`},
		{"witnesses-duplicate-key", `"key": "` + keyB + `"`, `"key": "` + witnessKey("witness.other.example", "witness a") + `"`, `witnesses.list[1].key: the same public key as list[0]`},
		{"witnesses-log-key", `"key": "` + keyA + `"`, `"key": "` + logKey + `"`, `witnesses.list[0].key: verifier key has type 0x01`},
		{"witnesses-bad-key-id", `"key": "` + keyA + `"`, `"key": "` + strings.Replace(keyA, "+", "+0", 1)[:len(keyA)] + `"`, `witnesses.list[0].key: malformed verifier key`},
		{"witnesses-bad-url", `"url": "https://armory.example/witness"`, `"url": "ftp://armory.example/witness"`, `witnesses.list[1].url: bad witness URL "ftp://armory.example/witness": want an http or https URL`},
		{"witnesses-url-query", `"url": "https://armory.example/witness"`, `"url": "https://armory.example/witness?log=1"`, `witnesses.list[1].url: bad witness URL`},
		{"witnesses-missing-url", `,
        "url": "https://armory.example/witness"`, ``, `witnesses.list[1].url: required field is missing`},
		{"witnesses-unknown-field", `"name": "local",`, `"name": "local", "weight": 2,`, `witnesses.list[2].weight: unknown field`},
		{"witnesses-bad-name", `"name": "local"`, `"name": "local witness"`, `witnesses.list[2].name: invalid witness name`},
	} {
		if strings.Count(w, c.from) < 1 {
			log.Fatalf("%s: %q not found", c.name, c.from)
		}
		write("invalid/"+c.name+".json", []byte(strings.Replace(w, c.from, c.to, 1)))
		write("invalid/"+c.name+".err", []byte(c.err+"\n"))
	}
	write("invalid/trailing-data.json", []byte(s+"{}\n"))
	write("invalid/trailing-data.err", []byte("trailing data after the JSON document\n"))
	write("invalid/truncated.json", []byte(s[:len(s)-2]))
	write("invalid/truncated.err", []byte("invalid JSON: unexpected end of document\n"))
	big := s[:len(s)-2] + strings.Repeat(" ", manifest.MaxSize) + "}\n"
	write("invalid/oversize.json", []byte(big))
	write("invalid/oversize.err", []byte(fmt.Sprintf("more than the limit of %d\n", manifest.MaxSize)))
	write("invalid/top-level-array.json", []byte("[]\n"))
	write("invalid/top-level-array.err", []byte("want an object, got array\n"))
}

func fullDoc(owner1, owner2, owner3, client, client2 crypto.Signer) *manifest.Document {
	gpuSNP := snpValues("gpu-worker")
	gpuSNP.HostData = manifest.Hexes(fake("gpu-worker host data", 32))
	gpuSNP.Measurement = manifest.Hexes(fake("gpu-worker", 48), fake("gpu-worker previous image", 48))
	gpuSNP.Product = manifest.NameList{Values: []string{"Genoa", "Turin"}}
	return &manifest.Document{
		Schema:  manifest.Schema,
		Version: 1,
		Owners: manifest.Owners{Threshold: 2, Keys: []string{
			pubPEM(owner1), pubPEM(owner2), pubPEM(owner3)}},
		Service: manifest.Class{
			SNP: []manifest.SNPValues{snpValues("service")},
			TDX: []manifest.TDXValues{tdxValues("service")},
		},
		Workers: map[string]manifest.Class{
			"gpu-worker": {SNP: []manifest.SNPValues{gpuSNP}},
			"tdx-worker": {TDX: []manifest.TDXValues{tdxValues("tdx-worker")}},
		},
		Clients: []manifest.Client{
			{Name: "acme", PublicKey: pubPEM(client), Keys: []string{"acme/*"}},
			{Name: "acme-batch", PublicKey: pubPEM(client2), Keys: []string{"acme/batch/*", "shared/tokenizer-key"}},
		},
		Keys: []manifest.KeyRule{
			{Match: "acme/*", ReleaseTo: []string{"gpu-worker", "tdx-worker"}},
			{Match: "shared/tokenizer-key", ReleaseTo: []string{"tdx-worker"}},
		},
	}
}

func snpValues(label string) manifest.SNPValues {
	return manifest.SNPValues{
		Measurement: manifest.Hexes(fake(label, 48)),
		HostData:    manifest.AnyHex,
		FamilyID:    manifest.AnyHex,
		ImageID:     manifest.AnyHex,
		MaxPolicy:   manifest.Bits{Value: 0x30000},
		VMPL:        manifest.UintList{Values: []uint32{0}},
		MinTCB:      manifest.TCB{Bootloader: 3, TEE: 0, SNP: 8, Microcode: 0},
		MinGuestSVN: manifest.MinUint{Value: 1},
		Product:     manifest.NameList{Values: []string{"Milan"}},
		ChipIDs:     manifest.AnyHex,
	}
}

func tdxValues(label string) manifest.TDXValues {
	return manifest.TDXValues{
		MRTD:          manifest.Hexes(fake(label+" mrtd", 48)),
		RTMR0:         manifest.Hexes(fake(label+" rtmr0", 48)),
		RTMR1:         manifest.Hexes(fake(label+" rtmr1", 48)),
		RTMR2:         manifest.Hexes(fake(label+" rtmr2", 48)),
		RTMR3:         manifest.AnyHex,
		MRConfigID:    manifest.Hexes(make([]byte, 48)),
		MROwner:       manifest.Hexes(make([]byte, 48)),
		MROwnerConfig: manifest.Hexes(make([]byte, 48)),
		XFAM:          manifest.BitsList{Values: []uint64{0x61ae7}},
		TDAttributes:  manifest.BitsList{Values: []uint64{0x10000000}},
		MinTEETCBSVN:  manifest.HexValue{Value: []byte{3, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
		MRSeam:        manifest.AnyHex,
	}
}

// fake derives n deterministic bytes from label.
func fake(label string, n int) []byte {
	sum := sha512.Sum512([]byte("kbs test fixture: " + label))
	return sum[:n]
}

// witnessKey is the cosignature/v1 verifier key of a deterministic
// witness key.
func witnessKey(name, label string) string {
	k, err := witnesskey.New(name, ed25519Key(label).Public().(ed25519.PublicKey))
	must(err)
	return k.String()
}

func hexs(b []byte) string { return fmt.Sprintf("%x", b) }

func p256Key(label string) *ecdsa.PrivateKey {
	sum := sha256.Sum256([]byte("kbs test key: " + label))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), sum[:])
	must(err)
	return k
}

func p384Key(label string) *ecdsa.PrivateKey {
	sum := sha512.Sum384([]byte("kbs test key: " + label))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P384(), sum[:])
	must(err)
	return k
}

func ed25519Key(label string) ed25519.PrivateKey {
	sum := sha256.Sum256([]byte("kbs test key: " + label))
	return ed25519.NewKeyFromSeed(sum[:])
}

func pubPEM(k crypto.Signer) string {
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	must(err)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// jsonPEM is pubPEM as it appears inside a JSON string.
func jsonPEM(k crypto.Signer) string { return strings.ReplaceAll(pubPEM(k), "\n", `\n`) }

// sign makes deterministic signatures: RFC 6979 ECDSA, and Ed25519.
func sign(k crypto.Signer, body []byte) string {
	var sig []byte
	var err error
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		d := sha256.Sum256(body)
		sig, err = k.Sign(nil, d[:], crypto.SHA256)
	case ed25519.PrivateKey:
		sig = ed25519.Sign(k, body)
	}
	must(err)
	return base64.StdEncoding.EncodeToString(sig)
}

func encode(d *manifest.Document) []byte {
	b, err := manifest.Encode(d)
	must(err)
	return b
}

func write(name string, b []byte) { must(os.WriteFile(filepath.Join(dir, name), b, 0o644)) }

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
