package kbs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/tlog"
)

// Challenge returns a fresh single-use nonce for one release
// (POST /v1/release/challenge). Its budget (ratelimit.go) is applied by
// the HTTP edge.
func (b *Broker) Challenge(ctx context.Context) (*api.Challenge, error) {
	return b.challenge(b.nonces, "challenges")
}

// challenge issues a nonce from table (releases' or handovers'), unless
// this broker handed over; a full table is a throttled refusal.
func (b *Broker) challenge(table *nonceTable, what string) (*api.Challenge, error) {
	if err := b.fencedNow(); err != nil {
		return nil, err
	}
	nonce, exp, ok := table.issue()
	if !ok {
		return nil, throttle(api.CodeRateLimited, time.Second, "too many pending %s; retry after some expire", what)
	}
	return &api.Challenge{Nonce: nonce[:], Expires: exp.UTC()}, nil
}

// checkEvidenceShape validates the shape of attested evidence in a
// request (release or handover): a known platform, a nonce of the right
// size, some evidence.
func checkEvidenceShape(platform string, nonce, evidence []byte) error {
	if platform != string(attest.SNP) && platform != string(attest.TDX) {
		return api.Errorf(api.CodeBadRequest, "platform %q: want snp or tdx", platform)
	}
	if len(nonce) != api.NonceSize {
		return api.Errorf(api.CodeBadRequest, "nonce is %d bytes, want %d", len(nonce), api.NonceSize)
	}
	if len(evidence) == 0 {
		return api.Errorf(api.CodeBadRequest, "no evidence")
	}
	return nil
}

// checkReleaseRequest validates the shape of a release request.
func checkReleaseRequest(req *api.ReleaseRequest) error {
	if err := checkEvidenceShape(req.Platform, req.Nonce, req.Evidence); err != nil {
		return err
	}
	if len(req.KeyIDs) == 0 || len(req.KeyIDs) > api.MaxReleaseKeys {
		return api.Errorf(api.CodeBadRequest, "%d key ids: want 1 to %d", len(req.KeyIDs), api.MaxReleaseKeys)
	}
	seen := map[string]bool{}
	for _, id := range req.KeyIDs {
		if err := api.ValidKeyID(id); err != nil {
			return api.Errorf(api.CodeBadRequest, "%v", err)
		}
		if seen[id] {
			return api.Errorf(api.CodeBadRequest, "key id %q requested twice", id)
		}
		seen[id] = true
	}
	return nil
}

// Release releases keys to a worker (POST /v1/release). The order is the
// security argument: consume the nonce, verify the evidence and its
// binding to the worker's key; then, as one step against the state (no
// deletion or manifest change in between): match the active manifest's
// class and key policy, take each key at the version the log says is live
// from its store record (which must match the log), and append the release
// entry durably; only then seal the keys to the worker key and answer with
// the receipt.
func (b *Broker) Release(ctx context.Context, req *api.ReleaseRequest) (*api.Release, error) {
	start := time.Now()
	if err := checkReleaseRequest(req); err != nil {
		return nil, err
	}
	workerKey, err := api.ParsePublicKey(req.HPKEPublicKey)
	if err != nil {
		return nil, api.Errorf(api.CodeBadRequest, "hpke_public_key: %v", err)
	}
	ctx, release, err := releaseSlots.acquireYielding(ctx) // a vendor fetch gives the slot back (fetchslot.go)
	if err != nil {
		return nil, err
	}
	defer release()
	if !b.nonces.consume(req.Nonce) {
		return nil, api.Errorf(api.CodeNonceInvalid, "nonce unknown, already used or expired; get a new one from %s", api.PathChallenge)
	}
	rd := api.ReportData(api.WorkerBinding(req.Nonce, req.HPKEPublicKey))
	claims, err := b.cfg.Verifier.Verify(ctx, attest.Evidence{Platform: attest.Platform(req.Platform), Data: req.Evidence}, rd)
	if err != nil {
		return nil, api.Errorf(api.CodeEvidenceRejected, "%v", err)
	}
	var (
		class string
		keys  []tlogKey
		entry []byte
		idx   uint64
		cp    tlog.SignedCheckpoint
	)
	defer func() {
		for _, k := range keys {
			clear(k.material)
		}
	}()
	err = b.shared(func() error {
		am := b.active.Load()
		var err error
		if class, err = b.authorize(am.m, claims, req.KeyIDs); err != nil {
			return err
		}
		keys = make([]tlogKey, 0, len(req.KeyIDs))
		for _, id := range req.KeyIDs {
			k, err := b.liveKey(id)
			if err != nil {
				return err
			}
			keys = append(keys, tlogKey{ref: tlog.KeyRef{ID: k.ID, Version: k.Version}, material: k.Material})
		}
		entry, err = tlog.EncodeEntry(&tlog.Entry{
			Type:    tlog.TypeRelease,
			Time:    b.now(),
			Release: releaseEntry(claims, class, keys, req.HPKEPublicKey, am.rec.Hash),
		})
		if err != nil {
			return fmt.Errorf("couldn't encode the release entry: %w", err)
		}
		idx, cp, err = b.appendShared(ctx, entry)
		return err
	})
	if err != nil {
		return nil, err
	}
	ans := &api.Release{LogIndex: idx, Class: class, Keys: make([]api.ReleasedKey, len(keys))}
	for i, k := range keys {
		sealed, err := api.SealTo(workerKey, api.ReleaseInfo(k.ref.ID, k.ref.Version, idx), k.material)
		if err != nil {
			return nil, fmt.Errorf("couldn't seal key %q: %w", k.ref.ID, err)
		}
		ans.Keys[i] = api.ReleasedKey{ID: k.ref.ID, Version: k.ref.Version, Sealed: sealed}
	}
	// Waiting for the witnesses is not work: give the slot to the next
	// release (its round may cover both entries).
	release()
	if ans.Receipt, err = b.receipt(ctx, fmt.Sprintf("the release was logged at index %d and its keys are withheld", idx), entry, idx, cp); err != nil {
		return nil, err
	}
	b.m.releases.Add(1)
	b.m.keysOut.Add(uint64(len(keys)))
	b.m.releaseLatency(time.Since(start))
	b.log.Info("released keys", "class", class, "keys", len(keys), "platform", req.Platform, "log_index", idx)
	return ans, nil
}

// releaseSlots admits releases two per core, in arrival order, from the
// nonce to the sealed answer; the rest wait. Without it, when the cores are
// saturated, the Go scheduler runs the goroutines of releases in progress
// ahead of connections whose request just arrived (those are found by the
// network poller and queued behind), and at 32 concurrent workers some
// requests waited 150-300 ms to start while the median took 15-25 ms. A
// slot is taken only after the body has been read and given back before
// the answer is written, so a slow client cannot hold one.
var releaseSlots = newFIFOSlots(2 * runtime.GOMAXPROCS(0))

// fifoSlots is a counting semaphore that serves waiters first come, first
// served (goroutines blocked sending on a channel are woken in order).
type fifoSlots chan struct{}

func newFIFOSlots(n int) fifoSlots { return make(fifoSlots, n) }

// acquire waits for a slot or for ctx to end, and returns the function that
// gives the slot back; calling it again does nothing.
func (s fifoSlots) acquire(ctx context.Context) (release func(), err error) {
	select {
	case s <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var once sync.Once
	return func() { once.Do(func() { <-s }) }, nil
}

type tlogKey struct {
	ref      tlog.KeyRef
	material []byte
}

func digestString(d [32]byte) string { return "sha256:" + hex.EncodeToString(d[:]) }

func releaseEntry(c *attest.Claims, class string, keys []tlogKey, workerKey []byte, manifestHash string) *tlog.ReleaseEntry {
	refs := make([]tlog.KeyRef, len(keys))
	for i, k := range keys {
		refs[i] = k.ref
	}
	e := &tlog.ReleaseEntry{
		Keys:            refs,
		WorkerClass:     class,
		Platform:        string(c.Platform),
		Simulated:       c.Simulated,
		Measurement:     hex.EncodeToString(c.Measurement),
		EvidenceDigest:  digestString(c.EvidenceDigest),
		WorkerKeyDigest: digestString(sha256.Sum256(workerKey)),
		ManifestHash:    manifestHash,
	}
	switch {
	case c.SNP != nil:
		e.ChipID = hex.EncodeToString(c.SNP.ChipID)
		e.TCB = snpTCB(c.SNP.Product, c.SNP.ReportedTCB)
	case c.TDX != nil:
		e.TCB = "tee_tcb_svn=" + hex.EncodeToString(c.TDX.TEETCBSVN)
	}
	return e
}

// snpTCB formats a reported TCB_VERSION for the log: by component when
// those say all it holds (attest.DecodeSNPTCB's components give it back),
// in hex otherwise (a product line whose layout is unknown, or whose TCB
// holds more, such as Turin's FMC level).
func snpTCB(product string, tcb uint64) string {
	if t, err := attest.DecodeSNPTCB(product, tcb); err == nil {
		if back, err := t.Encode(product); err == nil && back == tcb {
			s := fmt.Sprintf("bl=%d,tee=%d,snp=%d,ucode=%d", t.Bootloader, t.TEE, t.SNP, t.Microcode)
			if attest.SNPHasFMC(product) {
				s = fmt.Sprintf("fmc=%d,", t.FMC) + s
			}
			return s
		}
	}
	return fmt.Sprintf("reported_tcb=%016x", tcb)
}
