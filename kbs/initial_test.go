package kbs

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/tlog"
)

// manifestEntry returns the decoded manifest entry of the active version.
func (e *env) manifestEntry(t *testing.T) *tlog.ManifestEntry {
	t.Helper()
	am := e.b.active.Load()
	ents, err := e.log.Entries(context.Background(), am.rec.LogIndex, am.rec.LogIndex+1)
	if err != nil {
		t.Fatal(err)
	}
	en, err := tlog.DecodeEntry(ents[0])
	if err != nil || en.Type != tlog.TypeManifest {
		t.Fatalf("entry %d = %+v, %v", am.rec.LogIndex, en, err)
	}
	return en.Manifest
}

// TestInitialManifestUnsigned: version 1 without signatures is accepted by
// configuration alone, with a warning; its log entry names no signers; the
// broker restarts on it, releases under it and accepts a signed version 2.
func TestInitialManifestUnsigned(t *testing.T) {
	var buf bytes.Buffer
	logger := hclog.New(&hclog.LoggerOptions{Output: &syncWriter{w: &buf}, Level: hclog.Info})
	e, err := newEnvSigned(t, nil, logger, func(*env, []byte) []string { return nil })
	if err != nil {
		t.Fatalf("New with an unsigned version 1: %v", err)
	}
	if me := e.manifestEntry(t); me.Version != 1 || len(me.Signers) != 0 {
		t.Fatalf("manifest entry = version %d, signers %v; want version 1, no signers", me.Version, me.Signers)
	}
	if !strings.Contains(buf.String(), "trusted by the operator's decision") {
		t.Errorf("no warning about the unsigned version 1 in the log:\n%s", buf.String())
	}
	// The stored chain re-verifies at restart.
	e.close()
	e.open(t)
	e.mustOK2(e.upload("demo/a", 1, []byte("0123456789abcdef0123456789abcdef")))
	w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
	e.mustOK2r(e.release(e.releaseReq(w, e.challenge(), "demo/a")))
	body := e.nextManifest(t)
	if st, ae := e.do("PUT", api.PathManifest, api.ManifestUpdate{Body: body, Signatures: signAll(t, body, e.owners...)}, nil); st != 200 {
		t.Fatalf("manifest version 2: %d %+v", st, ae)
	}
	if me := e.manifestEntry(t); me.Version != 2 || len(me.Signers) != 2 {
		t.Errorf("manifest entry = version %d, signers %v; want version 2 with 2 signers", me.Version, me.Signers)
	}
}

// TestInitialManifestSigned: signatures on version 1 are verified against
// its own owners and logged; a partial or foreign set is refused.
func TestInitialManifestSigned(t *testing.T) {
	e := newEnv(t)
	if me := e.manifestEntry(t); len(me.Signers) != 2 {
		t.Errorf("signed version 1: entry signers %v, want both owners", me.Signers)
	}
	for _, tc := range []struct {
		name string
		sign func(e *env, body []byte) []string
		want error
	}{
		{"below threshold", func(e *env, b []byte) []string { return signAll(t, b, e.owners[0]) }, ErrInitialSignatures},
		{"same owner twice", func(e *env, b []byte) []string { return signAll(t, b, e.owners[0], e.owners[0]) }, nil},
		{"not an owner", func(e *env, b []byte) []string { return signAll(t, b, e.owners[0], newKey(t)) }, nil},
		{"other bytes", func(e *env, b []byte) []string { return signAll(t, append(b, ' '), e.owners...) }, nil},
	} {
		ee, err := newEnvSigned(t, nil, nil, tc.sign)
		if err == nil {
			t.Errorf("%s: New succeeded", tc.name)
			continue
		}
		if tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: New = %v, want %v", tc.name, err, tc.want)
		}
		if size := ee.treeSize(); size > 1 {
			t.Errorf("%s: the log has %d entries, want at most the identity entry", tc.name, size)
		}
	}
}
