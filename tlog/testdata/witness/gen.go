//go:build ignore

// gen writes the cosigned checkpoints that seed the witness fuzz targets
// (FuzzParseSignatureLines, FuzzSplitNote, FuzzVerifyQuorum): a log key and
// three witness keys derived from fixed seeds, and checkpoints carrying
// zero to three cosignatures. Run from the repository root:
//
//	go run ./tlog/testdata/witness/gen.go
//
// omniwitness.note is cosigned-0.note with a cosignature captured from a
// real omniwitness (its key, made by its own generate_keys, is in
// omniwitness.vkey), so that `make test` checks our verifier against an
// independent signer without running the witness:
//
//	d=$(mktemp -d); scripts/witness.sh up $d kbs/0123456789abcdef "$(head -1 tlog/testdata/witness/keys.txt)" witness.kbs.test/omniwitness
//	. <(sed 's/^/export /' $d/env)
//	{ printf 'old 0\n\n'; cat tlog/testdata/witness/cosigned-0.note; } |
//	  curl -sS --fail --data-binary @- $KBS_WITNESS_URL/add-checkpoint >/tmp/line
//	cat tlog/testdata/witness/cosigned-0.note /tmp/line >tlog/testdata/witness/omniwitness.note
//	echo "$KBS_WITNESS_VKEY" >tlog/testdata/witness/omniwitness.vkey
//	scripts/witness.sh down $d
package main

import (
	"crypto/ed25519"
	"crypto/sha256"
	"log"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/kbs-dev/kbs/tlog"
)

const dir = "tlog/testdata/witness"

func key(seed string) ed25519.PrivateKey {
	s := sha256.Sum256([]byte(seed))
	return ed25519.NewKeyFromSeed(s[:])
}

func main() {
	const origin = "kbs/0123456789abcdef"
	logSigner, _, logVKey, err := tlog.NewEd25519NoteKeys(origin, key("gen log"))
	must(err)
	at := time.Unix(1_750_000_000, 0)
	var ws []note.Signer
	vkeys := logVKey + "\n"
	for _, n := range []string{"a", "b", "c"} {
		c, err := tlog.NewCosigner("witness.example/"+n, key("gen witness "+n), func() time.Time { return at })
		must(err)
		ws = append(ws, c)
		vkeys += c.VerifierKey() + "\n"
	}
	write("keys.txt", []byte(vkeys))
	r := tlog.Root{Size: 1234, Hash: sha256.Sum256([]byte("root"))}
	text := string(tlog.FormatCheckpoint(origin, r))
	for i, name := range []string{"cosigned-0.note", "cosigned-1.note", "cosigned-2.note", "cosigned-3.note"} {
		msg, err := note.Sign(&note.Note{Text: text}, append([]note.Signer{logSigner}, ws[:i]...)...)
		must(err)
		write(name, msg)
	}
	empty, err := note.Sign(&note.Note{Text: string(tlog.FormatCheckpoint(origin, tlog.Root{Hash: tlog.EmptyRoot}))}, logSigner, ws[0])
	must(err)
	write("empty-cosigned.note", empty)
}

func write(name string, b []byte) {
	must(os.WriteFile(filepath.Join(dir, name), b, 0o644))
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
