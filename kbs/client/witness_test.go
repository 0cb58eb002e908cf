package client_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/kbs-dev/kbs/internal/testbin"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/attest/verify"
	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/kbs/policy"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/witnesstest"
)

var noteKeyRE = regexp.MustCompile(`note_key="?([^"\s]+)`)

// witnessedKbsd is a kbsd --dev whose dev manifest names fake witnesses.
type witnessedKbsd struct {
	k       *testbin.Kbsd
	data    string
	noteKey string
	v       attest.Verifier
	mine    *manifest.Manifest
}

// startWitnessedKbsd starts kbsd --dev with the fakes as its dev manifest's
// witnesses (all required); the fakes learn the log's key once kbsd logs
// it, unless teach is false (the witnesses then never cosign).
func startWitnessedKbsd(t *testing.T, fakes []*witnesstest.Fake, teach bool) *witnessedKbsd {
	t.Helper()
	w := &witnessedKbsd{data: filepath.Join(t.TempDir(), "kbs")}
	args := []string{"--dev", "--listen-tcp", "none", "--attestation-rate", "1000", "--witness-retry", "50ms", "--witness-wait", "10s"}
	for _, f := range fakes {
		args = append(args, "--dev-witness", f.URL+","+f.Cosigner.VerifierKey())
	}
	w.k = testbin.StartKbsdUntil(t, kbsdBin, w.data, "kbsd serving", args...)
	t.Cleanup(func() { w.k.Stop() })
	m := noteKeyRE.FindStringSubmatch(w.k.Output())
	if m == nil {
		t.Fatalf("kbsd did not log its note key:\n%s", w.k.Output())
	}
	w.noteKey = m[1]
	if teach {
		v, err := note.NewVerifier(w.noteKey)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fakes {
			f.AddLog(v.Name(), v)
		}
		w.k.WaitHealthy()
	}
	var err error
	if w.v, err = verify.New(verify.Options{SimRootFile: sim.RootFile(filepath.Join(w.data, "sim")), Offline: true}); err != nil {
		t.Fatal(err)
	}
	if w.mine, err = manifest.Parse(mustRead(t, filepath.Join(w.data, "manifest.json"))); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *witnessedKbsd) client(t *testing.T, now func() time.Time) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Addr: "unix://" + w.k.Socket, Verifier: w.v, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestVerifyBrokerWitnessed: the Go client requires the manifest's witness
// quorum on the attestation's checkpoint (fresh at first use) and on every
// receipt, and names the missing witnesses when it is not there.
func TestVerifyBrokerWitnessed(t *testing.T) {
	fakes := []*witnesstest.Fake{witnesstest.NewFake(t, "witness.example/w1", "w1", nil), witnesstest.NewFake(t, "witness.example/w2", "w2", nil)}
	w := startWitnessedKbsd(t, fakes, true)
	ctx := context.Background()
	if p := w.mine.Witnesses(); p == nil || p.String() != "2 of 2" || p.List[0].Name != "witness.example-w1" {
		t.Fatalf("dev manifest witness policy = %+v", p)
	}
	c := w.client(t, nil)
	b, err := c.VerifyBroker(ctx, w.mine, client.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if b.Cosigned == nil || len(b.Cosigned.Cosignatures) != 2 || !b.FreshnessChecked || b.Quorum.Threshold() != 2 {
		t.Fatalf("VerifyBroker: cosigned %+v, fresh %v", b.Cosigned, b.FreshnessChecked)
	}

	// Upload and release: each receipt carries both cosignatures, and
	// verifies offline against the manifest's witness keys.
	signer, err := readKey(t, filepath.Join(w.data, "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	_, up, err := b.UploadKey(ctx, signer, "demo-client", "demo/w", 1, bytes.Repeat([]byte{2}, 32))
	if err != nil {
		t.Fatal(err)
	}
	if len(up.Cosigned.Cosignatures) != 2 {
		t.Errorf("upload receipt cosigned by %d", len(up.Cosigned.Cosignatures))
	}
	iss, err := sim.NewIssuer(filepath.Join(w.data, "sim"), attest.SNP, sim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rel, err := b.FetchKeys(ctx, iss, []string{"demo/w"}, api.KEMX25519)
	if err != nil {
		t.Fatal(err)
	}
	q, _ := policy.Witnesses(w.mine)
	if _, err := client.VerifyReceiptOffline(rel.Receipt.Raw, b.Log(), q); err != nil {
		t.Errorf("VerifyReceiptOffline(release receipt) = %v", err)
	}
	// The same receipt without one cosignature fails, naming the witness.
	stripped := stripSignature(t, rel.Receipt.Raw, "witness.example/w2")
	var qe *tlog.QuorumError
	if _, err := client.VerifyReceiptOffline(stripped, b.Log(), q); !errors.As(err, &qe) || !strings.Contains(err.Error(), `"witness.example-w2"`) {
		t.Errorf("VerifyReceiptOffline(receipt without w2's cosignature) = %v", err)
	}

	// A client meeting the log for the first time 11 minutes from now
	// finds the cosignatures too old; one that stored a checkpoint proves
	// consistency instead and needs no fresh ones.
	later := func() time.Time { return time.Now().Add(11 * time.Minute) }
	if _, err := w.client(t, later).VerifyBroker(ctx, w.mine, client.VerifyOptions{}); !errors.As(err, &qe) || !strings.Contains(err.Error(), "must be recent") {
		t.Errorf("VerifyBroker(first use, 11 minutes later) = %v, want stale cosignatures", err)
	}
	store := &storeWith{notes: map[string][]byte{b.Origin: b.Checkpoint.Note}}
	cl, err := client.New(client.Config{Addr: "unix://" + w.k.Socket, Verifier: w.v, Now: later, Checkpoints: store})
	if err != nil {
		t.Fatal(err)
	}
	if b2, err := cl.VerifyBroker(ctx, w.mine, client.VerifyOptions{KnownOrigin: b.Origin}); err != nil || b2.FreshnessChecked {
		t.Errorf("VerifyBroker(stored checkpoint, 11 minutes later) = %v (fresh %v)", err, b2 != nil && b2.FreshnessChecked)
	}
	// SyncLog requires the quorum too.
	lv, _ := c.LogVerifier(b.NoteKey)
	if s, err := c.SyncLog(ctx, lv, q); err != nil || len(s.Cosigned.Cosignatures) != 2 {
		t.Errorf("SyncLog = %v", err)
	}
}

// TestVerifyBrokerNotWitnessed: a broker whose witnesses never cosigned
// (they do not know its log) serves a checkpoint without the quorum; a
// fresh client refuses it, naming the witnesses.
func TestVerifyBrokerNotWitnessed(t *testing.T) {
	fakes := []*witnesstest.Fake{witnesstest.NewFake(t, "witness.example/w1", "w1", nil)}
	w := startWitnessedKbsd(t, fakes, false)
	_, err := w.client(t, nil).VerifyBroker(context.Background(), w.mine, client.VerifyOptions{})
	var ve *client.VerifyError
	var qe *tlog.QuorumError
	if !errors.As(err, &ve) || ve.Step != "witnesses" || !errors.As(err, &qe) || !strings.Contains(err.Error(), `missing: "witness.example-w1"`) {
		t.Fatalf("VerifyBroker(no cosignatures) = %v", err)
	}
}

// stripSignature returns the receipt with the signature line by key name
// removed from its checkpoint.
func stripSignature(t *testing.T, receipt []byte, name string) []byte {
	t.Helper()
	var out []string
	for _, l := range strings.SplitAfter(string(receipt), "\n") {
		if strings.HasPrefix(l, "— "+name+" ") {
			continue
		}
		out = append(out, l)
	}
	if s := strings.Join(out, ""); s != string(receipt) {
		return []byte(s)
	}
	t.Fatalf("no signature by %s in the receipt:\n%s", name, receipt)
	return nil
}
