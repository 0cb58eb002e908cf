package kbs

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hpke"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/bbolt"
	"golang.org/x/mod/sumdb/note"
	sumdb "golang.org/x/mod/sumdb/tlog"

	"github.com/kbs-dev/kbs/internal/clock"
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
	"github.com/kbs-dev/kbs/kbs/attest/verify"
	"github.com/kbs-dev/kbs/kbs/keystore"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/boltlog"
	"github.com/kbs-dev/kbs/tlog/tlogtest"
	"github.com/kbs-dev/kbs/tlog/witnesstest"
)

var (
	simOnce sync.Once
	simDir  string
	simErr  error
)

// sharedSim returns a simulated TEE directory shared by all tests of the
// package (generating one takes a while).
func sharedSim(t testing.TB) string {
	t.Helper()
	simOnce.Do(func() {
		simDir, simErr = os.MkdirTemp("", "kbs-sim-")
		if simErr == nil {
			simErr = sim.Init(simDir)
		}
	})
	if simErr != nil {
		t.Fatal(simErr)
	}
	return simDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if simDir != "" {
		os.RemoveAll(simDir)
	}
	os.Exit(code)
}

// fakeClock is a settable clock for nonce expiry.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// env is a broker served by httptest, with its owners, client and sim.
type env struct {
	t        testing.TB
	dir      string
	simDir   string
	db       *bbolt.DB
	log      tlog.Backend // the backend; the broker's log is gate when set
	keys     *keystore.Store
	id       *Identity
	b        *Broker
	srv      *httptest.Server
	clock    *fakeClock
	verifier attest.Verifier
	owners   []*ecdsa.PrivateKey
	client   *ecdsa.PrivateKey
	manifest []byte
	logger   hclog.Logger
	// signV1 returns the version-1 signatures New is given. Optional;
	// default: every owner signs.
	signV1 func(e *env, body []byte) []string
	// openLog opens the log backend in e.db or e.dir. Optional; default
	// boltlog in e.db.
	openLog func(e *env) (tlog.Backend, error)
	// gate, when set, sits between the broker and its log (tlogtest.Gate),
	// and stays across reopening.
	gate *tlogtest.Gate
	// beforeNew and afterNew, when set, run right before and after New
	// (benchmarks time New alone).
	beforeNew, afterNew func()
	// witnesses learn the broker's log key before each New (witness
	// tests); witnessOpts is Config.Witnesses.
	witnesses   []*witnesstest.Fake
	witnessOpts WitnessOptions
}

func pubPEM(t testing.TB, k *ecdsa.PrivateKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// otherMeasurement is a measurement no simulated evidence has by default.
var otherMeasurement = bytes.Repeat([]byte{0x42}, 48)

// testDocument is the version-1 manifest of the tests: two owners with
// threshold 2; classes demo-worker (sim defaults) and other-worker (another
// measurement); demo-client may write demo/* and secret/*; demo/* goes to
// demo-worker and secret/* to other-worker.
func testDocument(t testing.TB, cl manifest.Class, owners []*ecdsa.PrivateKey, client *ecdsa.PrivateKey) *manifest.Document {
	t.Helper()
	other := manifest.Class{}
	for _, v := range cl.SNP {
		v.Measurement = manifest.Hexes(otherMeasurement)
		other.SNP = append(other.SNP, v)
	}
	for _, v := range cl.TDX {
		v.MRTD = manifest.Hexes(otherMeasurement)
		other.TDX = append(other.TDX, v)
	}
	var ownerPEMs []string
	for _, o := range owners {
		ownerPEMs = append(ownerPEMs, pubPEM(t, o))
	}
	return &manifest.Document{
		Schema:         manifest.Schema,
		Version:        1,
		AllowSimulated: true,
		Owners:         manifest.Owners{Threshold: 2, Keys: ownerPEMs},
		Service:        cl,
		Workers:        map[string]manifest.Class{"demo-worker": cl, "other-worker": other},
		Clients:        []manifest.Client{{Name: "demo-client", PublicKey: pubPEM(t, client), Keys: []string{"demo/*", "secret/*"}}},
		Keys: []manifest.KeyRule{
			{Match: "demo/*", ReleaseTo: []string{"demo-worker"}},
			{Match: "secret/*", ReleaseTo: []string{"other-worker"}},
		},
	}
}

func signAll(t testing.TB, body []byte, keys ...*ecdsa.PrivateKey) []string {
	t.Helper()
	var sigs []string
	for _, k := range keys {
		s, err := manifest.Sign(k, body)
		if err != nil {
			t.Fatal(err)
		}
		sigs = append(sigs, s)
	}
	return sigs
}

// newEnv starts a broker in a fresh data directory.
func newEnv(t testing.TB) *env {
	t.Helper()
	return newEnvWith(t, nil, nil)
}

// newEnvWith starts a broker whose version-1 manifest is the test document
// changed by edit (when not nil), logging to logger (when not nil).
func newEnvWith(t testing.TB, edit func(*manifest.Document), logger hclog.Logger) *env {
	t.Helper()
	e, err := newEnvSigned(t, edit, logger, nil)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// newEnvSigned is newEnvWith with the version-1 signatures from signV1
// (when not nil); it returns New's error.
func newEnvSigned(t testing.TB, edit func(*manifest.Document), logger hclog.Logger, signV1 func(*env, []byte) []string) (*env, error) {
	t.Helper()
	return newEnvSetup(t, edit, logger, func(e *env) { e.signV1 = signV1 })
}

// newEnvSetup is newEnvSigned with setup run on the env before the broker
// starts (to set signV1, openLog, gate).
func newEnvSetup(t testing.TB, edit func(*manifest.Document), logger hclog.Logger, setup func(*env)) (*env, error) {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), simDir: sharedSim(t), clock: &fakeClock{t: clock.Now()}}
	if setup != nil {
		setup(e)
	}
	var err error
	e.verifier, err = verify.New(verify.Options{SimRootFile: sim.RootFile(e.simDir), Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	claims, err := sim.DefaultClaims(context.Background(), e.simDir, e.verifier)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := manifest.PinClass(claims...)
	if err != nil {
		t.Fatal(err)
	}
	e.owners = []*ecdsa.PrivateKey{newKey(t), newKey(t)}
	e.client = newKey(t)
	doc := testDocument(t, cl, e.owners, e.client)
	if edit != nil {
		edit(doc)
	}
	e.logger = logger
	e.manifest, err = manifest.Encode(doc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.close)
	return e, e.tryOpen(t)
}

// open (re)opens the database, store, log and broker of e.dir.
func (e *env) open(t testing.TB) {
	t.Helper()
	if err := e.tryOpen(t); err != nil {
		t.Fatal(err)
	}
}

func (e *env) tryOpen(t testing.TB) error {
	t.Helper()
	ctx := context.Background()
	var err error
	e.db, err = bbolt.Open(filepath.Join(e.dir, "kbs.db"), 0o600, nil)
	if err != nil {
		return err
	}
	e.keys, err = keystore.Open(ctx, e.db, &keystore.SimSealer{Path: filepath.Join(e.dir, "sealing.key")})
	if err != nil {
		return err
	}
	e.id, _, err = LoadIdentity(ctx, e.keys)
	if err != nil {
		return err
	}
	for _, f := range e.witnesses {
		f.AddLog(e.id.Checkpoints.Origin(), e.id.Checkpoints.Verifier())
	}
	if e.openLog != nil {
		e.log, err = e.openLog(e)
	} else {
		e.log, err = boltlog.New(e.db, boltlog.Config{Signer: e.id.Checkpoints})
	}
	if err != nil {
		return err
	}
	var lg tlog.Backend = e.log
	if e.gate != nil {
		e.gate.Backend = e.log
		lg = e.gate
	}
	issuer, err := sim.NewIssuer(e.simDir, attest.SNP, sim.Options{})
	if err != nil {
		return err
	}
	sigs := signAll(t, e.manifest, e.owners...)
	if e.signV1 != nil {
		sigs = e.signV1(e, e.manifest)
	}
	if e.beforeNew != nil {
		e.beforeNew()
	}
	e.b, err = New(ctx, Config{
		DB: e.db, Log: lg, Keys: e.keys, Identity: e.id, Issuer: issuer, Verifier: e.verifier,
		Simulated:         true,
		InitialManifest:   e.manifest,
		InitialSignatures: sigs,
		Now:               e.clock.Now,
		Logger:            e.logger,
		NonceTTL:          time.Minute,
		MaxNonces:         64,
		AttestationRate:   1000,
		AttestationBurst:  1000,
		ManifestRate:      1000,
		ManifestBurst:     1000,
		PeerShare:         1, // the budgets have tests of their own (ratelimit_test.go)
		Witnesses:         e.witnessOpts,
	})
	if e.afterNew != nil {
		e.afterNew()
	}
	if err != nil {
		return err
	}
	e.srv = httptest.NewServer(e.b.Handler())
	return nil
}

func (e *env) close() {
	if e.srv != nil {
		e.srv.Close()
		e.srv = nil
	}
	if e.b != nil {
		if err := e.b.Shutdown(context.Background()); err != nil {
			e.t.Errorf("broker shutdown: %v", err)
		}
		e.b = nil
	}
	if e.log != nil {
		e.log.Close()
		e.log = nil
	}
	if e.db != nil {
		e.db.Close()
		e.db = nil
	}
}

// do sends a JSON request and decodes the answer into out (on 200) and
// returns the status and, for errors, the error body.
func (e *env) do(method, path string, body any, out any) (int, *api.Error) {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		// An error answer is exactly an error body: no key, sealed or not,
		// can ride along.
		var eb api.ErrorBody
		d := json.NewDecoder(bytes.NewReader(raw))
		d.DisallowUnknownFields()
		if err := d.Decode(&eb); err != nil || eb.Error == nil {
			e.t.Fatalf("%s %s: status %d with a body that is not an error body: %q", method, path, resp.StatusCode, raw)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			e.t.Errorf("%s %s: error Content-Type %q", method, path, ct)
		}
		return resp.StatusCode, eb.Error
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			e.t.Fatalf("%s %s: %v in %q", method, path, err, raw)
		}
	}
	return resp.StatusCode, nil
}

// mustOK fails the test unless a call returned 200.
func (e *env) mustOK(status int, ae *api.Error) {
	e.t.Helper()
	if status != http.StatusOK {
		e.t.Fatalf("status %d: %+v", status, ae)
	}
}

// upload uploads material as key id at version, signed by the env's client.
func (e *env) upload(id string, version uint64, material []byte) (int, *api.Error, *api.KeyUploadResult) {
	e.t.Helper()
	return e.uploadAs("demo-client", e.client, id, version, material)
}

func (e *env) uploadReq(client string, key *ecdsa.PrivateKey, id string, version uint64, material []byte) *api.KeyUpload {
	e.t.Helper()
	sealed, err := api.Seal(e.id.HPKEPublicKey, api.UploadInfo(id, version), material)
	if err != nil {
		e.t.Fatal(err)
	}
	sig, err := api.SignStatement(key, api.UploadStatement(client, id, version, e.id.HPKEPublicKey, sealed))
	if err != nil {
		e.t.Fatal(err)
	}
	return &api.KeyUpload{Client: client, ID: id, Version: version, Sealed: sealed, Signature: sig}
}

func (e *env) uploadAs(client string, key *ecdsa.PrivateKey, id string, version uint64, material []byte) (int, *api.Error, *api.KeyUploadResult) {
	e.t.Helper()
	var res api.KeyUploadResult
	st, ae := e.do("POST", api.PathKeys, e.uploadReq(client, key, id, version, material), &res)
	return st, ae, &res
}

// worker is a simulated worker: its HPKE key and evidence options.
type worker struct {
	platform attest.Platform
	opts     sim.Options
	kem      uint16
	sk       hpke.PrivateKey
	pub      []byte
}

func (e *env) newWorker(p attest.Platform, opts sim.Options, kem uint16) *worker {
	e.t.Helper()
	sk, err := api.GenerateKey(kem)
	if err != nil {
		e.t.Fatal(err)
	}
	return &worker{platform: p, opts: opts, kem: kem, sk: sk, pub: api.MarshalPublicKey(sk.PublicKey())}
}

// challenge gets a release nonce.
func (e *env) challenge() []byte {
	e.t.Helper()
	var ch api.Challenge
	e.mustOK(e.do("POST", api.PathChallenge, nil, &ch))
	return ch.Nonce
}

// releaseReq builds a release request with evidence bound to nonce and the
// worker's key.
func (e *env) releaseReq(w *worker, nonce []byte, ids ...string) *api.ReleaseRequest {
	e.t.Helper()
	iss, err := sim.NewIssuer(e.simDir, w.platform, w.opts)
	if err != nil {
		e.t.Fatal(err)
	}
	ev, err := iss.Issue(context.Background(), api.ReportData(api.WorkerBinding(nonce, w.pub)))
	if err != nil {
		e.t.Fatal(err)
	}
	return &api.ReleaseRequest{Platform: string(w.platform), Nonce: nonce, Evidence: ev.Data, HPKEPublicKey: w.pub, KeyIDs: ids}
}

func (e *env) release(req *api.ReleaseRequest) (int, *api.Error, *api.Release) {
	e.t.Helper()
	var rel api.Release
	st, ae := e.do("POST", api.PathRelease, req, &rel)
	return st, ae, &rel
}

// treeSize returns the log's current size.
func (e *env) treeSize() uint64 {
	e.t.Helper()
	cp, err := e.log.Checkpoint(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return cp.Size
}

// verifyReceipt checks a tlog-proof receipt with golang.org/x/mod (an
// implementation independent of the broker's): the checkpoint signature
// under the broker's note key, the inclusion of the extra data at the
// index, and returns the decoded entry.
func verifyReceipt(t testing.TB, noteKey, receipt string) (*tlog.Entry, uint64, uint64) {
	t.Helper()
	head, cpText, ok := strings.Cut(receipt, "\n\n")
	if !ok {
		t.Fatalf("receipt has no checkpoint: %q", receipt)
	}
	lines := strings.Split(head, "\n")
	if len(lines) < 3 || lines[0] != "c2sp.org/tlog-proof@v1" || !strings.HasPrefix(lines[1], "extra ") || !strings.HasPrefix(lines[2], "index ") {
		t.Fatalf("malformed receipt header: %q", head)
	}
	entryBytes, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(lines[1], "extra "))
	if err != nil {
		t.Fatal(err)
	}
	index, err := strconv.ParseUint(strings.TrimPrefix(lines[2], "index "), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	var proof sumdb.RecordProof
	for _, l := range lines[3:] {
		h, err := base64.StdEncoding.DecodeString(l)
		if err != nil || len(h) != 32 {
			t.Fatalf("bad proof line %q", l)
		}
		proof = append(proof, sumdb.Hash(h))
	}
	v, err := note.NewVerifier(noteKey)
	if err != nil {
		t.Fatal(err)
	}
	n, err := note.Open([]byte(cpText), note.VerifierList(v))
	if err != nil {
		t.Fatalf("receipt checkpoint: %v", err)
	}
	cl := strings.Split(n.Text, "\n")
	size, err := strconv.ParseInt(cl[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	rh, err := base64.StdEncoding.DecodeString(cl[2])
	if err != nil {
		t.Fatal(err)
	}
	if err := sumdb.CheckRecord(proof, size, sumdb.Hash(rh), int64(index), sumdb.RecordHash(entryBytes)); err != nil {
		t.Fatalf("receipt inclusion proof: %v", err)
	}
	entry, err := tlog.DecodeEntry(entryBytes)
	if err != nil {
		t.Fatalf("receipt entry: %v", err)
	}
	return entry, index, uint64(size)
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
