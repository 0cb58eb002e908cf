package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/go-hclog"

	"github.com/kbs-dev/kbs/kbs"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/attest/verify"
	"github.com/kbs-dev/kbs/kbs/keystore"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// devSetup is what --dev prepares in the data directory.
type devSetup struct {
	sealer       keystore.Sealer
	issuer       attest.Issuer
	verifier     attest.Verifier
	simDir       string
	manifestFile string
	// restore says that manifestFile was missing while the database
	// exists: version 1 is written back from the database after start.
	restore bool
}

// prepareDev creates (or reuses) the development files in c.Data: the
// simulated TEE, owner and client keys, and the version-1 dev manifest
// signed by the owner key. A manifest file removed after the first start is
// not recreated: restoreManifest writes version 1 back from the database.
func prepareDev(ctx context.Context, c *Config, logger hclog.Logger) (*devSetup, error) {
	logger.Warn("DEVELOPMENT MODE: simulated TEE, sealing key in a plain file, dev keys unencrypted on disk; never use --dev in production")
	d := &devSetup{simDir: filepath.Join(c.Data, "sim"), manifestFile: filepath.Join(c.Data, "manifest.json")}
	// The stand-in for the hardware sealing key belongs to this broker:
	// in its own sim directory, or next to its database when it borrows
	// another broker's simulated TEE (a second broker that takes over).
	sealingKey := filepath.Join(d.simDir, "sealing.key")
	if c.SimDir != "" {
		d.simDir, sealingKey = c.SimDir, filepath.Join(c.Data, "sealing.key")
	}
	if err := sim.Init(d.simDir); err != nil {
		return nil, fmt.Errorf("couldn't set up the simulated TEE: %w", err)
	}
	d.sealer = &keystore.SimSealer{Path: sealingKey}
	if c.TEE == "tdx" {
		// Like the hardware: no sealing key (the master key comes from a
		// peer or the recovery holders at every start but the first).
		d.sealer = keystore.NoSealer{}
	}
	opts := sim.Options{Debug: c.SimDebug}
	if c.SimMeasurement != "" {
		opts.Measurement, _ = hex.DecodeString(c.SimMeasurement) // checked by Config.check
	}
	var err error
	if d.issuer, err = sim.NewIssuer(d.simDir, attest.Platform(c.TEE), opts); err != nil {
		return nil, fmt.Errorf("simulated %s: %w", c.TEE, err)
	}
	if d.verifier, err = verify.New(verify.Options{SimRootFile: sim.RootFile(d.simDir), CacheDir: c.CacheDir, Offline: true}); err != nil {
		return nil, err
	}
	if c.HandoverFrom != "" {
		// The manifest, the owners and the clients are the running
		// broker's: nothing of them is made here.
		return d, nil
	}
	ownerPub, err := devKey(filepath.Join(c.Data, "owner.key"), filepath.Join(c.Data, "owner.pub"))
	if err != nil {
		return nil, err
	}
	clientPub, err := devKey(filepath.Join(c.Data, "client.key"), filepath.Join(c.Data, "client.pub"))
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(d.manifestFile); errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Stat(filepath.Join(c.Data, "kbs.db")); err == nil {
			// The broker has a chain already: never a new version 1.
			d.restore = true
			return d, nil
		}
		if err := d.writeManifest(ctx, c, ownerPub, clientPub); err != nil {
			return nil, fmt.Errorf("couldn't create the dev manifest: %w", err)
		}
		logger.Info("created the dev manifest", "file", d.manifestFile, "witnesses", len(c.DevWitnesses))
	} else if len(c.DevWitnesses) > 0 {
		logger.Warn("--dev-witness applies only when the dev manifest is created; it exists, so its witness policy stands (change witnesses with a manifest version, or start over with a new --data)", "file", d.manifestFile)
	}
	return d, nil
}

// devKey loads or creates an ECDSA P-256 key pair as PKCS #8 and PKIX PEM
// files and returns the public key PEM.
func devKey(keyFile, pubFile string) (string, error) {
	if pub, err := os.ReadFile(pubFile); err == nil {
		if _, err := os.Stat(keyFile); err == nil {
			return string(pub), nil
		}
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return "", err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return "", err
	}
	pub := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	if err := os.WriteFile(pubFile, pub, 0o644); err != nil {
		return "", err
	}
	return string(pub), nil
}

func (d *devSetup) writeManifest(ctx context.Context, c *Config, ownerPub, clientPub string) error {
	cl, err := devClass(ctx, d.simDir, d.verifier)
	if err != nil {
		return err
	}
	doc := manifest.DevDocument(ownerPub, clientPub, cl, cl)
	doc.Witnesses = manifest.NoWitnesses()
	if len(c.DevWitnesses) > 0 {
		if doc.Witnesses, err = devWitnessPolicy(c.DevWitnesses); err != nil {
			return err
		}
	}
	body, err := manifest.Encode(doc)
	if err != nil {
		return err
	}
	keyPEM, err := os.ReadFile(filepath.Join(c.Data, "owner.key"))
	if err != nil {
		return err
	}
	owner, err := manifest.ParsePrivateKey(keyPEM, nil)
	if err != nil {
		return err
	}
	sig, err := manifest.Sign(owner, body)
	if err != nil {
		return err
	}
	if err := os.WriteFile(d.manifestFile+".sig", []byte(sig+"\n"), 0o644); err != nil {
		return err
	}
	return os.WriteFile(d.manifestFile, body, 0o644)
}

// devClass returns the reference values of the dev manifest's service and
// worker class: they accept exactly the default evidence of every platform
// the simulated TEE in simDir provides, as v (which trusts the sim's root)
// verifies it.
func devClass(ctx context.Context, simDir string, v attest.Verifier) (manifest.Class, error) {
	claims, err := sim.DefaultClaims(ctx, simDir, v)
	if err != nil {
		return manifest.Class{}, err
	}
	return manifest.PinClass(claims...)
}

// restoreManifest writes the broker's version 1 back to manifestFile when
// it was missing at start.
func (d *devSetup) restoreManifest(b *kbs.Broker, logger hclog.Logger) error {
	if !d.restore {
		return nil
	}
	body, err := b.InitialManifest()
	if err != nil {
		return err
	}
	if err := os.WriteFile(d.manifestFile, body, 0o644); err != nil {
		return fmt.Errorf("couldn't restore the dev manifest: %w", err)
	}
	logger.Info("restored version 1 of the dev manifest from the database", "file", d.manifestFile, "hash", manifest.HashOf(body))
	return nil
}

// manifestMismatch explains an InitialManifestError: what happened to the
// manifest file and how to fix it.
func manifestMismatch(c *Config, dev *devSetup, e *kbs.InitialManifestError) error {
	held := "a file that is not a valid manifest"
	if e.ConfiguredVersion != 0 {
		held = fmt.Sprintf("manifest version %d", e.ConfiguredVersion)
	}
	what := fmt.Sprintf("%s holds %s (%s), but this broker's chain starts from another version 1 (%s) and is now at version %d.",
		c.Manifest, held, e.Configured, e.Initial, e.ActiveVersion)
	why := fmt.Sprintf("A client command given this file can rewrite it: 'kbsctl verify --follow --manifest %s' stores the version it followed there. Clients and workers must use their own copy (cp %s my-manifest.json).",
		c.Manifest, c.Manifest)
	if dev != nil && c.Manifest == dev.manifestFile {
		return fmt.Errorf("%s\n%s\nThe broker's state is intact. To fix it, move the file away and restart; kbsd --dev then writes version 1 back from its database:\n  mv %s %s.changed\n  kbsd --dev --data %s",
			what, why, c.Manifest, c.Manifest, c.Data)
	}
	return fmt.Errorf("%s\nLater versions come only through PUT %s (kbsctl manifest set), never from --manifest. %s\nThe broker's state is intact. To fix it, omit --manifest (it is needed only at the first start) or pass the exact version 1 file (%s)",
		what, api.PathManifest, why, e.Initial)
}

func (d *devSetup) printNextSteps(w io.Writer, c *Config, addrs []string, noteKey string) {
	dir := c.Data
	q := func(s string) string {
		if strings.ContainsAny(s, " '\"$") {
			return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
		}
		return s
	}
	sock := ""
	if c.ListenUnix != "none" {
		sock = "unix://" + c.ListenUnix
	} else {
		sock = addrs[0]
	}
	root, mf := q(sim.RootFile(d.simDir)), "my-manifest.json"
	fmt.Fprintf(w, `
kbsd is running in DEVELOPMENT mode (simulated %s TEE) on %s.
State lives in %s and survives restarts (to start over, see the end).

Next steps, in another terminal in this directory:
  export KBS_ADDR=%s
  export KBS_STATE=$PWD/client-state   # what kbsctl verified: checkpoints, broker keys
  make build
  # 0. take your own copy of the manifest (once): kbsctl may update the file
  #    it is given (verify --follow), and kbsd needs %s to stay version 1
  [ -e %[7]s ] || cp %[6]s %[7]s
  # 1. verify the broker against your copy (stores the checkpoint)
  bin/kbsctl --sim-root %s verify --manifest %s
  # 2. upload a prompt key as the dev client
  bin/kbsctl --sim-root %s key put --manifest %s --client-key %s --id demo/prompt-key --generate --out prompt.key
  # 3. fetch it as a simulated worker, with its receipt
  bin/kbsctl --sim-root %s key get --manifest %s --tee sim --sim-dir %s --id demo/prompt-key --out worker-keys
  # 4. check the worker's receipt, then audit the whole log
  bin/kbsctl receipt verify --note-key %s worker-keys/demo/prompt-key.v*.receipt
  bin/kbsctl --sim-root %s audit --note-key %s
  # 5. as the owner, publish manifest version 2; the client follows it into its copy
  bin/kbsctl manifest next --out manifest-v2.json %s
  bin/kbsctl manifest sign --key %s manifest-v2.json > manifest-v2.json.sig
  bin/kbsctl --sim-root %s manifest set --sig manifest-v2.json.sig manifest-v2.json
  bin/kbsctl --sim-root %s verify --follow --manifest %s

To start over, stop kbsd and remove its state, the client's state and the files of these steps:
  rm -rf %s client-state my-manifest.json* prompt.key* worker-keys manifest-v2.json*

`, c.TEE, strings.Join(addrs, " and "), q(dir), q(sock),
		q(d.manifestFile), q(d.manifestFile), mf,
		root, mf,
		root, mf, q(filepath.Join(dir, "client.key")),
		root, mf, q(d.simDir),
		q(noteKey), root, q(noteKey),
		mf, q(filepath.Join(dir, "owner.key")), root, root, mf, q(dir))
	if len(c.DevWitnesses) > 0 {
		origin, _, _ := strings.Cut(noteKey, "+")
		fmt.Fprintf(w, `The dev manifest names witnesses (--dev-witness): until they cosign this log,
kbsd refuses uploads, releases and manifest changes (kbsctl log witnesses says
why). Configure each for the log %s with the note key
  %s
e.g. with a witness from scripts/witness.sh:
  scripts/witness.sh up WITNESS_DIR %s %s

`, origin, noteKey, origin, q(noteKey))
	}
}

// devWitnessPolicy returns the witness policy --dev-witness asks for: every
// witness named, all of them required. Each value is URL,VKEY; the
// witness's name in the manifest comes from its key name.
func devWitnessPolicy(vals []string) (*manifest.WitnessPolicy, error) {
	p := &manifest.WitnessPolicy{Threshold: len(vals)}
	seen := map[string]bool{}
	for _, v := range vals {
		u, vkey, ok := strings.Cut(v, ",")
		if !ok || u == "" || vkey == "" {
			return nil, fmt.Errorf("--dev-witness %q: want URL,VKEY (the witness's submission prefix, a comma, its verifier key)", v)
		}
		keyName, _, _ := strings.Cut(vkey, "+")
		name := devWitnessName(keyName)
		for i := 2; seen[name]; i++ {
			name = fmt.Sprintf("%s-%d", devWitnessName(keyName), i)
		}
		seen[name] = true
		if _, err := tlog.NewWitness(name, vkey, u); err != nil {
			return nil, fmt.Errorf("--dev-witness %q: %w", v, err)
		}
		p.List = append(p.List, manifest.Witness{Name: name, Key: vkey, URL: u})
	}
	return p, nil
}

// devWitnessName turns a witness key name (witness.example/w1) into a
// manifest witness name (witness.example-w1): 1-64 of [A-Za-z0-9._-].
func devWitnessName(keyName string) string {
	b := []byte(keyName)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) > 60 {
		b = b[:60]
	}
	if len(b) == 0 {
		return "witness"
	}
	return string(b)
}
