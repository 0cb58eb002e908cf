package kbs

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/tlogtest"
	"github.com/kbs-dev/kbs/tlog/trillianlog"
)

// logBackends are the log backends the sequencer tests run on: the
// embedded log always, and a Trillian tree when KBS_TRILLIAN_ADDR names a
// Trillian (make test-trillian starts one).
func logBackends(t *testing.T) map[string]func(*env) (tlog.Backend, error) {
	out := map[string]func(*env) (tlog.Backend, error){"bolt": nil}
	addr := os.Getenv("KBS_TRILLIAN_ADDR")
	if addr == "" {
		t.Log("no Trillian (KBS_TRILLIAN_ADDR): running on the embedded log only; `make test-trillian` runs both")
		return out
	}
	out["trillian"] = func(e *env) (tlog.Backend, error) {
		state := filepath.Join(e.dir, "trillian-state.json")
		treeFile := filepath.Join(e.dir, "trillian-tree")
		var tree int64
		if b, err := os.ReadFile(treeFile); err == nil {
			fmt.Sscan(string(b), &tree)
		} else {
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return nil, err
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if tree, err = trillianlog.CreateTree(ctx, conn, "kbs-sequencer-test"); err != nil {
				return nil, err
			}
			if err := os.WriteFile(treeFile, fmt.Append(nil, tree), 0o600); err != nil {
				return nil, err
			}
		}
		return trillianlog.New(context.Background(), trillianlog.Config{Addr: addr, TreeID: tree, Signer: e.id.Checkpoints, StatePath: state})
	}
	return out
}

// revokingManifest returns version 2 of the test manifest, in which demo/*
// keys go to other-worker only: the simulated worker loses them.
func (e *env) revokingManifest(t *testing.T) []byte {
	t.Helper()
	m, err := manifest.Parse(e.manifest)
	if err != nil {
		t.Fatal(err)
	}
	d := m.Document()
	d.Version, d.Previous = 2, m.Hash()
	for i := range d.Keys {
		if d.Keys[i].Match == "demo/*" {
			d.Keys[i].ReleaseTo = []string{"other-worker"}
		}
	}
	body, err := manifest.Encode(d)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func (e *env) deleteReq(id string, version uint64) *api.KeyDelete {
	e.t.Helper()
	sig, err := api.SignStatement(e.client, api.DeleteStatement("demo-client", id, version, e.id.HPKEPublicKey))
	if err != nil {
		e.t.Fatal(err)
	}
	return &api.KeyDelete{Client: "demo-client", Version: version, Signature: sig}
}

// changes returns the two contradicting changes the tests make: deleting
// demo/k (version 1), and activating revokingManifest.
func changes(t *testing.T) (deleteKey, revoke func(e *env) error) {
	deleteKey = func(e *env) error {
		_, err := e.b.DeleteKey(context.Background(), "demo/k", e.deleteReq("demo/k", 1))
		return err
	}
	revoke = func(e *env) error {
		body := e.revokingManifest(t)
		_, err := e.b.UpdateManifest(context.Background(), &api.ManifestUpdate{Body: body, Signatures: signAll(t, body, e.owners...)})
		return err
	}
	return deleteKey, revoke
}

// checkDecisions replays the whole log as an auditor would and fails the
// test if a release is logged where it contradicts the state at its own
// position: a key that is not live at that version, a manifest other than
// the active one, or a class the active manifest does not give the key.
func checkDecisions(t *testing.T, e *env) {
	t.Helper()
	ctx := context.Background()
	cp, err := e.log.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st := newAuthState()
	var active *manifest.Manifest
	err = tlog.ReadVerified(ctx, e.log, cp, 0, func(i uint64, raw []byte) error {
		en, err := tlog.DecodeEntry(raw)
		if err != nil {
			return fmt.Errorf("entry %d: %v", i, err)
		}
		if r := en.Release; r != nil {
			if active == nil || r.ManifestHash != active.Hash() {
				t.Errorf("release at %d names manifest %s, not the one active there", i, r.ManifestHash)
			}
			for _, k := range r.Keys {
				ks, ok := st.keys[k.ID]
				if !ok || ks.Deleted || ks.Version != k.Version {
					t.Errorf("release at %d of %s version %d, which the log does not hold live there (%+v)", i, k.ID, k.Version, ks)
				}
				if active != nil && !active.ReleaseAllowed(r.WorkerClass, k.ID) {
					t.Errorf("release at %d of %s to %s, which the manifest active there does not allow", i, k.ID, r.WorkerClass)
				}
			}
		}
		if ok, _ := st.apply(i, en); ok && en.Manifest != nil {
			if active, err = manifest.Parse(en.Manifest.Body); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// waitBlocked checks that done stays empty while another operation is held
// in its log append, and that nothing reaches the log meanwhile.
func waitBlocked[T any](t *testing.T, e *env, what string, done <-chan T) {
	t.Helper()
	size := e.treeSize()
	select {
	case r := <-done:
		t.Fatalf("%s finished while a decision made before it was still being logged: %v", what, r)
	case <-time.After(300 * time.Millisecond):
	}
	if got := e.treeSize(); got != size {
		t.Fatalf("%s: the log grew from %d to %d while an append was held", what, size, got)
	}
}

// TestDecideAndAppendOneStep holds an append in the log (tlogtest.Gate:
// the host stalling an fsync) and sends a contradicting request meanwhile:
// a deletion or manifest change waits for a release decided before it,
// and a release waits for a deletion or manifest change in progress and is
// then refused. In every case the log shows each release at a position
// where the state allows it.
func TestDecideAndAppendOneStep(t *testing.T) {
	for name, openLog := range logBackends(t) {
		t.Run(name, func(t *testing.T) {
			deleteKey, revoke := changes(t)
			for _, tc := range []struct {
				name string
				hold string // entry type held in the append
				// change is the contradicting change; its result is
				// checked by the test.
				change func(e *env) error
				// after is the status of a release after the change.
				after int
			}{
				{"release held, then deletion", tlog.TypeRelease, deleteKey, http.StatusNotFound},
				{"release held, then manifest revoking the key", tlog.TypeRelease, revoke, http.StatusForbidden},
				{"deletion held, then release", tlog.TypeKeyDelete, deleteKey, http.StatusNotFound},
				{"manifest held, then release", tlog.TypeManifest, revoke, http.StatusForbidden},
			} {
				t.Run(tc.name, func(t *testing.T) {
					e, err := newEnvSetup(t, nil, nil, func(e *env) { e.openLog, e.gate = openLog, tlogtest.NewGate(nil) })
					if err != nil {
						t.Fatal(err)
					}
					e.mustOK2(e.upload("demo/k", 1, []byte("the key that must not leave late")))
					w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
					req := e.releaseReq(w, e.challenge(), "demo/k")
					release := func() <-chan error {
						done := make(chan error, 1)
						go func() {
							_, err := e.b.Release(context.Background(), req)
							done <- err
						}()
						return done
					}
					change := func() <-chan error {
						done := make(chan error, 1)
						go func() { done <- tc.change(e) }()
						return done
					}
					p := e.gate.Pause(tlogtest.EntryType(tc.hold))
					t.Cleanup(p.Resume) // before the broker shuts down, also on failure
					var first, second <-chan error
					if tc.hold == tlog.TypeRelease {
						first = release()
						<-p.Held()
						second = change()
						waitBlocked(t, e, "the change", second)
					} else {
						first = change()
						<-p.Held()
						second = release()
						waitBlocked(t, e, "the release", second)
					}
					p.Resume()
					if err := <-first; err != nil {
						t.Fatalf("held operation: %v", err)
					}
					err = <-second
					if tc.hold == tlog.TypeRelease && err != nil {
						t.Fatalf("change after the release: %v", err)
					}
					if tc.hold != tlog.TypeRelease && err == nil {
						t.Fatal("a release after a contradicting change succeeded")
					}
					st, ae, _ := e.release(e.releaseReq(w, e.challenge(), "demo/k"))
					if st != tc.after {
						t.Errorf("release after the change: %d %+v, want %d", st, ae, tc.after)
					}
					checkDecisions(t, e)
				})
			}
		})
	}
}

// errUnknown is an append error of unknown outcome (tlog.ErrUnknownOutcome).
var errUnknown = fmt.Errorf("injected: %w", tlog.ErrUnknownOutcome)

// TestUnknownOutcomeSettles: when the log cannot tell whether an append
// took (tlog.ErrUnknownOutcome), the broker answers 503 and decides
// nothing more (not even releases) until a restart, which settles the
// change against the log: committed if its entry is there, dropped if not.
func TestUnknownOutcomeSettles(t *testing.T) {
	for name, openLog := range logBackends(t) {
		t.Run(name, func(t *testing.T) {
			deleteKey, revoke := changes(t)
			for _, tc := range []struct {
				name    string
				typ     string
				durable bool // the entry reached the log
				do      func(e *env) error
				check   func(e *env)
			}{
				{"upload logged", tlog.TypeKeyUpload, true, func(e *env) error {
					_, err := e.b.UploadKey(context.Background(), e.uploadReq("demo-client", e.client, "demo/u", 1, []byte("uploaded in doubt")))
					return err
				}, func(e *env) {
					w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
					st, ae, rel := e.release(e.releaseReq(w, e.challenge(), "demo/u"))
					e.mustOK(st, ae)
					if got, err := api.Open(w.sk, api.ReleaseInfo("demo/u", 1, rel.LogIndex), rel.Keys[0].Sealed); err != nil || string(got) != "uploaded in doubt" {
						t.Errorf("after restart: %q %v", got, err)
					}
				}},
				{"upload not logged", tlog.TypeKeyUpload, false, func(e *env) error {
					_, err := e.b.UploadKey(context.Background(), e.uploadReq("demo-client", e.client, "demo/u", 1, []byte("never logged")))
					return err
				}, func(e *env) {
					w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
					if st, ae, _ := e.release(e.releaseReq(w, e.challenge(), "demo/u")); st != http.StatusNotFound {
						t.Errorf("release of an upload never logged: %d %+v", st, ae)
					}
					e.mustOK2(e.upload("demo/u", 1, []byte("now for real")))
				}},
				{"deletion logged", tlog.TypeKeyDelete, true, deleteKey, func(e *env) {
					w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
					if st, ae, _ := e.release(e.releaseReq(w, e.challenge(), "demo/k")); st != http.StatusNotFound {
						t.Errorf("release of a key whose deletion was logged: %d %+v", st, ae)
					}
				}},
				{"deletion not logged", tlog.TypeKeyDelete, false, deleteKey, func(e *env) {
					w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
					e.mustOK2r(e.release(e.releaseReq(w, e.challenge(), "demo/k")))
				}},
				{"manifest logged", tlog.TypeManifest, true, revoke, func(e *env) {
					if _, v := e.b.ActiveManifest(); v != 2 {
						t.Errorf("active version %d after restart, want 2", v)
					}
				}},
			} {
				t.Run(tc.name, func(t *testing.T) {
					e, err := newEnvSetup(t, nil, nil, func(e *env) { e.openLog, e.gate = openLog, tlogtest.NewGate(nil) })
					if err != nil {
						t.Fatal(err)
					}
					e.mustOK2(e.upload("demo/k", 1, []byte("a key")))
					e.gate.Fail(tlogtest.EntryType(tc.typ), tc.durable, errUnknown)
					err = tc.do(e)
					var se *statusError
					if !errors.As(err, &se) || se.err.Code != api.CodeLogUnavailable {
						t.Fatalf("%s: %v, want log_unavailable", tc.name, err)
					}
					// Nothing is decided until the restart.
					w := e.newWorker(attest.SNP, sim.Options{}, api.KEMX25519)
					if st, ae, _ := e.release(e.releaseReq(w, e.challenge(), "demo/k")); st != http.StatusServiceUnavailable {
						t.Errorf("release while the broker is halted: %d %+v", st, ae)
					}
					if resp, err := http.Get(e.srv.URL + "/healthz"); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
						t.Errorf("healthz while halted: %v %v", resp, err)
					}
					select {
					case <-e.b.Halted():
						if !errors.Is(e.b.HaltCause(), tlog.ErrUnknownOutcome) {
							t.Errorf("halt cause %v", e.b.HaltCause())
						}
					default:
						t.Error("Halted is not closed") // kbsd exits on it
					}
					e.close()
					e.open(t)
					if p, _ := e.keys.PendingChanges(); len(p) != 0 {
						t.Errorf("staged changes left after the restart: %+v", p)
					}
					tc.check(e)
					checkDecisions(t, e)
				})
			}
		})
	}
}
