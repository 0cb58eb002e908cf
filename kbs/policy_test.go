package kbs

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/policy"
	"github.com/kbs-dev/kbs/manifest"
)

// TestLibraryValidationConsulted: every release and manifest update runs
// the vendor library's validation of the alternative the manifest matched,
// and with the real validation simulated SNP and TDX evidence is released.
func TestLibraryValidationConsulted(t *testing.T) {
	e := newEnv(t)
	e.mustOK2(e.upload("demo/a", 1, []byte("0123456789abcdef0123456789abcdef")))
	var calls []string
	e.b.confirm = func(m *manifest.Manifest, r *manifest.Report, class string, c *attest.Claims) error {
		sv, tv := m.MatchedValues(r, class)
		calls = append(calls, class+"/"+string(c.Platform))
		if len(sv)+len(tv) == 0 {
			t.Errorf("confirm(%s): no matched alternative", class)
		}
		return policy.Confirm(m, r, class, c)
	}
	for _, p := range simPlatforms(t, e.simDir) {
		w := e.newWorker(p, sim.Options{}, api.KEMX25519)
		e.mustOK2r(e.release(e.releaseReq(w, e.challenge(), "demo/a")))
	}
	body := e.nextManifest(t)
	if st, ae := e.do("PUT", api.PathManifest, api.ManifestUpdate{Body: body, Signatures: signAll(t, body, e.owners...)}, nil); st != 200 {
		t.Fatalf("manifest update: %d %+v", st, ae)
	}
	if len(calls) != 3 || calls[0] != "demo-worker/snp" || calls[1] != "demo-worker/tdx" || !strings.HasPrefix(calls[2], "service/") {
		t.Errorf("confirm calls = %q, want demo-worker/snp, demo-worker/tdx, service/…", calls)
	}
}

// TestLibraryDisagreementRefuses: when the library validation rejects what
// the manifest matched, the release is refused with policy_denied, nothing
// is logged or released, and the broker's log says it loudly. A manifest
// update whose service values the library rejects is refused likewise.
func TestLibraryDisagreementRefuses(t *testing.T) {
	var buf bytes.Buffer
	logger := hclog.New(&hclog.LoggerOptions{Output: &syncWriter{w: &buf}, Level: hclog.Info})
	e := newEnvWith(t, nil, logger)
	e.mustOK2(e.upload("demo/a", 1, []byte("0123456789abcdef0123456789abcdef")))
	libErr := errors.New("fake library: measurement rejected")
	var gotClass string
	e.b.confirm = func(m *manifest.Manifest, r *manifest.Report, class string, c *attest.Claims) error {
		gotClass = class
		return libErr
	}
	for _, p := range simPlatforms(t, e.simDir) {
		w := e.newWorker(p, sim.Options{}, api.KEMX25519)
		before := e.state()
		st, ae, rel := e.release(e.releaseReq(w, e.challenge(), "demo/a"))
		if st != 403 || ae == nil || ae.Code != api.CodePolicyDenied || rel.Keys != nil {
			t.Fatalf("%s: release with a disagreeing library = %d %+v %+v, want 403 %s", p, st, ae, rel, api.CodePolicyDenied)
		}
		if gotClass != "demo-worker" {
			t.Errorf("%s: library asked about class %q, want demo-worker", p, gotClass)
		}
		if after := e.state(); !reflect.DeepEqual(before, after) {
			t.Fatalf("%s: state changed: %+v -> %+v", p, before, after)
		}
	}
	if !strings.Contains(buf.String(), "INTERNAL INCONSISTENCY") || !strings.Contains(buf.String(), libErr.Error()) {
		t.Errorf("no inconsistency in the broker's log:\n%s", buf.String())
	}

	before := e.state()
	body := e.nextManifest(t)
	if st, ae := e.do("PUT", api.PathManifest, api.ManifestUpdate{Body: body, Signatures: signAll(t, body, e.owners...)}, nil); st != 409 || ae.Code != api.CodeConflict {
		t.Fatalf("manifest update with a disagreeing library: %d %+v, want 409", st, ae)
	}
	if gotClass != manifest.ServiceClass {
		t.Errorf("manifest update asked about class %q, want service", gotClass)
	}
	if after := e.state(); !reflect.DeepEqual(before, after) {
		t.Fatalf("state changed: %+v -> %+v", before, after)
	}

	// With the real validation the same requests succeed.
	e.b.confirm = policy.Confirm
	w := e.newWorker(attest.TDX, sim.Options{}, api.KEMX25519)
	e.mustOK2r(e.release(e.releaseReq(w, e.challenge(), "demo/a")))
}
