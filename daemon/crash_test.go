package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/tlog"
)

// crashIterations is the number of kill -9 cycles: 3 in go test, more with
// KBS_CRASH_ITERATIONS (make crash-kbsd).
func crashIterations(t *testing.T) int {
	if s := os.Getenv("KBS_CRASH_ITERATIONS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("KBS_CRASH_ITERATIONS=%q", s)
		}
		return n
	}
	if testing.Short() {
		return 1
	}
	return 3
}

// TestCrashDuringReleases kills kbsd with SIGKILL at a random moment during
// a stream of concurrent releases and key uploads, many times. After each
// restart: the store reopens, the tree never shrank (the client's
// checkpoint verifier demands a consistency proof from the last checkpoint
// it saw), every receipt acknowledged before any kill proves its entry in
// the new tree (the entry is at its index and the receipt's checkpoint is
// consistent with the new one), and every acknowledged upload is in the key
// store.
func TestCrashDuringReleases(t *testing.T) {
	iterations := crashIterations(t)
	data := filepath.Join(t.TempDir(), "kbs-dev")
	d := startDaemon(t, data)
	c := newClient(t, d)
	c.verifyBroker()
	material := []byte("crash-test key material.........")
	c.upload("demo/crash", 1, material)

	var (
		mu       sync.Mutex
		receipts []string
		acked    uint64 // last acknowledged version of demo/crash-up
		next     uint64 = 1
	)
	upMaterial := func(v uint64) []byte { return []byte(fmt.Sprintf("upload version %d.........", v)) }
	const workers = 4
	for it := 0; it < iterations; it++ {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		// One client uploads new versions of a key while workers fetch.
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				res, err := c.tryUpload("demo/crash-up", next, upMaterial(next))
				if err != nil {
					return
				}
				mu.Lock()
				receipts = append(receipts, res.Receipt)
				acked = next
				mu.Unlock()
				next++
			}
		}()
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					keys, rel, err := fetch(d, attest.SNP, api.KEMX25519, "demo/crash")
					if err != nil {
						return // the daemon died under us
					}
					if !bytes.Equal(keys["demo/crash"], material) {
						t.Errorf("released key differs")
						return
					}
					mu.Lock()
					receipts = append(receipts, rel.Receipt)
					mu.Unlock()
				}
			}()
		}
		time.Sleep(time.Duration(50+rand.IntN(400)) * time.Millisecond)
		d.Kill()
		close(stop)
		wg.Wait()

		d = startDaemon(t, data)
		c.d = d
		c.verifyBroker() // fails if the tree shrank or forked
		cp, _, err := c.log.Latest()
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		checkReceipts(t, c, cp, receipts)
		n := len(receipts)
		mu.Unlock()
		// Every acknowledged upload is in the store; at most one more (logged,
		// not acknowledged) was committed at start.
		var list api.KeyList
		d.mustCall("GET", api.PathKeys, nil, &list)
		var stored uint64
		for _, k := range list.Keys {
			if k.ID == "demo/crash-up" {
				stored = k.Version
			}
		}
		if stored < acked || stored > acked+1 {
			t.Fatalf("iteration %d: demo/crash-up is at version %d after the crash, acknowledged %d", it, stored, acked)
		}
		if stored > 0 {
			keys, _, err := fetch(d, attest.SNP, api.KEMX25519, "demo/crash-up")
			if err != nil || !bytes.Equal(keys["demo/crash-up"], upMaterial(stored)) {
				t.Fatalf("iteration %d: version %d of demo/crash-up does not come back: %v", it, stored, err)
			}
		}
		next = stored + 1
		t.Logf("iteration %d: %d acknowledged releases and uploads all in the log of size %d; uploads acknowledged %d, stored %d", it, n, cp.Size, acked, stored)
	}
	d.stop()
	if len(receipts) == 0 {
		t.Fatal("no release was acknowledged; the test proved nothing")
	}
}

// checkReceipts checks every receipt against the checkpoint cp.
func checkReceipts(t *testing.T, c *client, cp tlog.SignedCheckpoint, receipts []string) {
	t.Helper()
	all := c.entries(0, cp.Size, cp.Size)
	proofs := map[uint64][]tlog.Hash{}
	for _, r := range receipts {
		vr, err := c.log.VerifyReceipt([]byte(r))
		if err != nil {
			t.Fatalf("receipt: %v", err)
		}
		if vr.Index >= cp.Size || !bytes.Equal(all[vr.Index], vr.Entry) {
			t.Fatalf("acknowledged release at index %d is missing from the log of size %d", vr.Index, cp.Size)
		}
		old := vr.Checkpoint
		if old.Size == cp.Size {
			if old.Hash != cp.Hash {
				t.Fatalf("receipt checkpoint forks from the log at size %d", old.Size)
			}
			continue
		}
		p, ok := proofs[old.Size]
		if !ok {
			var cons api.ConsistencyProof
			c.d.mustCall("GET", fmt.Sprintf("%s?old=%d&new=%d", api.PathLogConsistency, old.Size, cp.Size), nil, &cons)
			p = toHashes(cons.Proof)
			proofs[old.Size] = p
		}
		if err := tlog.CheckConsistency(old, cp, p); err != nil {
			t.Fatalf("receipt checkpoint of size %d is not consistent with the log: %v", old.Size, err)
		}
	}
}
