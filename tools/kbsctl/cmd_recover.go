package main

import (
	"context"
	"crypto/hpke"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/client"
)

// holderKeyPEM is the PEM type of a recovery holder's private key file.
const holderKeyPEM = "KBS RECOVERY KEY"

func cmdRecover(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "keygen":
			return cmdRecoverKeygen(ctx, e, args[1:])
		case "status":
			return cmdRecoverStatus(ctx, e, args[1:])
		}
	}
	fs := e.newFlags("recover", "--manifest FILE --holder NAME --key FILE",
		`As a recovery holder, sends your share of the broker's master key to a
broker that is recovering it. First verifies the broker against your
manifest (following its signed chain): fresh evidence matching the service
reference values, its log and checkpoint. Then reads the recovery-shares
entry it waits on from its log (checked against that checkpoint), opens your
share with your key, checks it against the entry's commitment, and seals it
to the broker's attested key for this recovery only. Nothing is sent to a
broker that does not verify. Subcommands: 'recover keygen' makes a holder
key, 'recover status' shows whose shares the broker has.`, useVerify)
	file := fs.String("manifest", "", "your copy of the manifest (required)")
	holder := fs.String("holder", "", "your holder name in the manifest's recovery.holders (required)")
	keyFile := fs.String("key", "", "your holder private key file, from 'kbsctl recover keygen' (required)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *file == "" || *holder == "" || *keyFile == "" {
		return usageErr("recover: --manifest, --holder and --key are required")
	}
	k, err := readHolderKey(*keyFile)
	if err != nil {
		return err
	}
	b, err := e.verifyBroker(ctx, *file, true, false)
	if err != nil {
		return err
	}
	if !b.Recovering {
		return failErr("the broker at %s is not recovering: it holds its master key; your share stays with you", e.g.addr)
	}
	res, err := b.Recover(ctx, client.HolderKey{Name: *holder, Key: k})
	if err != nil {
		return err
	}
	out := struct {
		Holder    string `json:"holder"`
		Received  int    `json:"received"`
		Threshold int    `json:"threshold"`
		Restored  bool   `json:"restored"`
	}{*holder, res.Received, res.Threshold, res.Restored}
	return e.out(out, func() {
		fmt.Fprintf(e.stdout, "broker %s verified (recovering; manifest version %d)\n", e.g.addr, b.Manifest.Version())
		fmt.Fprintf(e.stdout, "share of %s sent: %d of %d shares received\n", *holder, res.Received, res.Threshold)
		if res.Restored {
			fmt.Fprintf(e.stdout, "master key restored: the broker logs the recovery and serves again\n")
		}
	})
}

func cmdRecoverKeygen(_ context.Context, e *env, args []string) error {
	fs := e.newFlags("recover keygen", "--out FILE [--pq]",
		`Makes a recovery holder key pair: writes the private key to FILE (mode
0600, a new file) and prints the public key to put in the manifest's
recovery.holders[].public_key. With --pq the key is MLKEM768-X25519 (hybrid
post-quantum), else X25519.`, 0)
	out := fs.String("out", "", "private key file to create (required)")
	pq := fs.Bool("pq", false, "a hybrid post-quantum key (MLKEM768-X25519)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *out == "" {
		return usageErr("recover keygen: --out is required")
	}
	kem := api.KEMX25519
	if *pq {
		kem = api.KEMMLKEM768X25519
	}
	sk, err := api.GenerateKey(kem)
	if err != nil {
		return err
	}
	raw, err := api.MarshalPrivateKey(sk)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return usageErr("%v", err)
	}
	_, err = f.Write(pem.EncodeToMemory(&pem.Block{Type: holderKeyPEM, Bytes: raw}))
	clear(raw)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	pub := api.MarshalPublicKey(sk.PublicKey())
	d := sha256.Sum256(pub)
	res := struct {
		PublicKey   string `json:"public_key"`
		Fingerprint string `json:"fingerprint"`
	}{base64.StdEncoding.EncodeToString(pub), "sha256:" + hex.EncodeToString(d[:])}
	return e.out(res, func() { fmt.Fprintln(e.stdout, res.PublicKey) })
}

func cmdRecoverStatus(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("recover status", "",
		`Shows what a recovering broker waits for: the recovery-shares entry, the
threshold, and whose shares arrived. Unverified: 'kbsctl recover' verifies
the broker before it sends anything.`, useBroker)
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	c, _, err := e.client(true)
	if err != nil {
		return err
	}
	st, err := c.RecoveryStatus(ctx)
	if err != nil {
		return err
	}
	return e.out(st, func() {
		if !st.Recovering {
			fmt.Fprintf(e.stdout, "the broker is not recovering\n")
			return
		}
		n := 0
		for _, h := range st.Holders {
			if h.Received {
				n++
			}
		}
		fmt.Fprintf(e.stdout, "recovering: %d of %d shares received (recovery-shares entry %d)\n", n, st.Threshold, st.SharesIndex)
		for _, h := range st.Holders {
			mark := "waiting"
			if h.Received {
				mark = "received"
			}
			fmt.Fprintf(e.stdout, "  %-20s %s\n", h.Name, mark)
		}
	})
}

// readHolderKey reads a holder key file made by 'recover keygen'.
func readHolderKey(file string) (hpke.PrivateKey, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, usageErr("%v", err)
	}
	blk, _ := pem.Decode(raw)
	if blk == nil || blk.Type != holderKeyPEM {
		return nil, usageErr("%s: not a %q PEM file (make one with 'kbsctl recover keygen')", file, holderKeyPEM)
	}
	k, err := api.ParsePrivateKey(blk.Bytes)
	if err != nil {
		return nil, usageErr("%s: %v", file, err)
	}
	return k, nil
}
