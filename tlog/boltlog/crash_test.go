package boltlog

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/internal/testbin"
	"github.com/kbs-dev/kbs/tlog"
	bolt "go.etcd.io/bbolt"
)

// TestCrash kills a process that appends as fast as it can, many times at
// random moments, and checks after each kill that every append the child
// saw acknowledged is in the log byte for byte, that the tree never shrank
// and stays consistent with every earlier checkpoint, and that the store
// opens clean (bbolt's own page check included).
//
// BOLTLOG_CRASH_ROUNDS sets the number of kills (default 6; `make
// crash-tlog` runs many more).
func TestCrash(t *testing.T) {
	if os.Getenv("BOLTLOG_CRASH_CHILD") != "" {
		crashChild(os.Getenv("BOLTLOG_CRASH_CHILD"))
		return
	}
	rounds := 6
	if s := os.Getenv("BOLTLOG_CRASH_ROUNDS"); s != "" {
		var err error
		if rounds, err = strconv.Atoi(s); err != nil {
			t.Fatalf("BOLTLOG_CRASH_ROUNDS: %v", err)
		}
	}
	path := filepath.Join(t.TempDir(), "kbs.db")
	signer, _ := testSigner(t)
	acked := map[uint64]string{} // index → hex SHA-256 of the entry
	var last tlog.SignedCheckpoint
	totalAcked := 0
	for round := 0; round < rounds; round++ {
		cmd := testbin.Command(t, os.Args[0], "-test.run=^TestCrash$", "-test.v=false")
		cmd.Env = append(os.Environ(), "BOLTLOG_CRASH_CHILD="+path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Wait for the first ack so every round kills a working
		// child, then let it run a random while.
		select {
		case l, ok := <-lines:
			if !ok {
				cmd.Wait()
				t.Fatalf("round %d: child exited without appending", round)
			}
			record(t, acked, l)
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: child made no progress", round)
		}
		n, _ := rand.Int(rand.Reader, big.NewInt(300))
		timer := time.After(time.Duration(n.Int64()) * time.Millisecond)
	collect:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break collect
				}
				record(t, acked, l)
			case <-timer:
				cmd.Process.Signal(syscall.SIGKILL)
				timer = nil
			}
		}
		wg.Wait()
		cmd.Wait()

		l, err := Open(path, Config{Signer: signer})
		if err != nil {
			t.Fatalf("round %d: store does not reopen after SIGKILL: %v", round, err)
		}
		cp, _ := l.Checkpoint(context.Background())
		if cp.Size < last.Size {
			t.Fatalf("round %d: tree size went from %d to %d", round, last.Size, cp.Size)
		}
		if last.Size > 0 {
			p, err := l.ConsistencyProof(context.Background(), last.Size, cp.Size)
			if err != nil {
				t.Fatal(err)
			}
			if err := tlog.CheckConsistency(last, cp, p); err != nil {
				t.Fatalf("round %d: log not consistent with the previous round: %v", round, err)
			}
		}
		for idx, h := range acked {
			if idx >= cp.Size {
				t.Fatalf("round %d: acknowledged entry %d is beyond the reopened log's size %d", round, idx, cp.Size)
			}
			es, err := l.Entries(context.Background(), idx, idx+1)
			if err != nil {
				t.Fatal(err)
			}
			if got := sha256.Sum256(es[0]); hex.EncodeToString(got[:]) != h {
				t.Fatalf("round %d: acknowledged entry %d changed", round, idx)
			}
		}
		err = l.db.View(func(tx *bolt.Tx) error {
			for err := range tx.Check() {
				return err
			}
			return nil
		})
		if err != nil {
			t.Fatalf("round %d: bbolt check: %v", round, err)
		}
		l.Close()
		totalAcked = len(acked)
		t.Logf("round %d: size %d, %d acknowledged so far", round, cp.Size, totalAcked)
		last = cp
	}
	if totalAcked == 0 {
		t.Fatal("no appends were acknowledged")
	}
}

func record(t *testing.T, acked map[uint64]string, line string) {
	idx, h, ok := strings.Cut(line, " ")
	if !ok {
		return // a line cut by the kill (cannot happen with one write, but be safe)
	}
	i, err := strconv.ParseUint(idx, 10, 64)
	if err != nil || len(h) != 64 {
		t.Fatalf("bad child line %q", line)
	}
	if prev, dup := acked[i]; dup && prev != h {
		t.Fatalf("index %d acknowledged for two different entries", i)
	}
	acked[i] = h
}

// crashChild appends from 8 goroutines until killed, printing "index
// sha256hex" for each acknowledged append with one write.
func crashChild(path string) {
	signer, _ := testSigner(nil)
	l, err := Open(path, Config{Signer: signer})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(1)
	}
	var mu sync.Mutex
	for g := 0; g < 8; g++ {
		go func(g int) {
			for i := 0; ; i++ {
				e := make([]byte, 16+i%200)
				rand.Read(e)
				idx, _, err := l.Append(context.Background(), e)
				if err != nil {
					fmt.Fprintln(os.Stderr, "child:", err)
					os.Exit(1)
				}
				h := sha256.Sum256(e)
				mu.Lock()
				os.Stdout.WriteString(strconv.FormatUint(idx, 10) + " " + hex.EncodeToString(h[:]) + "\n")
				mu.Unlock()
			}
		}(g)
	}
	select {}
}
