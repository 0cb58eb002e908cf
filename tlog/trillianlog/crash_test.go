package trillianlog

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/trillian"
	"github.com/kbs-dev/kbs/internal/testbin"
)

// TestCrash kills (SIGKILL) a process appending to a Trillian-backed log at
// random moments, reopens the log each time, and checks that every append
// the process acknowledged is in the log at the index it was given, that
// the reopened checkpoint covers every acknowledged checkpoint, and that
// the log's size never decreases.
func TestCrash(t *testing.T) { forEachType(t, testCrash) }

func testCrash(t *testing.T, typ trillian.TreeType) {
	addr, conn := trillianConn(t)
	tree := newTree(t, conn, typ)
	state := filepath.Join(t.TempDir(), "state")
	signer, _ := testSigner(t)
	ctx := context.Background()

	acked := map[uint64]string{}
	var maxAckedSize, lastSize uint64
	for round := range 6 {
		cmd := testbin.Command(t, os.Args[0], "-test.run=^TestCrashChild$")
		cmd.Env = append(os.Environ(), "KBS_CRASH_CHILD=1",
			"KBS_CRASH_TREE="+strconv.FormatInt(tree, 10), "KBS_CRASH_STATE="+state, fmt.Sprintf("KBS_CRASH_ROUND=%d", round))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.AfterFunc(time.Duration(300+rand.IntN(1200))*time.Millisecond, func() { cmd.Process.Kill() })
		sc := bufio.NewScanner(out)
		n := 0
		for sc.Scan() {
			var idx, size uint64
			var entry string
			if _, err := fmt.Sscanf(sc.Text(), "ack %d %d %s", &idx, &size, &entry); err != nil {
				t.Fatalf("child said %q: %v", sc.Text(), err)
			}
			if prev, dup := acked[idx]; dup {
				t.Fatalf("index %d acknowledged for %q and %q", idx, prev, entry)
			}
			acked[idx] = entry
			maxAckedSize = max(maxAckedSize, size)
			n++
		}
		cmd.Wait()

		l, err := New(ctx, Config{Addr: addr, TreeID: tree, Signer: signer, StatePath: state})
		if err != nil {
			t.Fatalf("round %d: reopening after kill -9: %v", round, err)
		}
		cp, _ := l.Checkpoint(ctx)
		if cp.Size < maxAckedSize || cp.Size < lastSize {
			t.Fatalf("round %d: reopened size %d, but %d was acknowledged and %d seen", round, cp.Size, maxAckedSize, lastSize)
		}
		lastSize = cp.Size
		all, err := l.Entries(ctx, 0, cp.Size)
		if err != nil {
			t.Fatal(err)
		}
		for idx, e := range acked {
			if string(all[idx]) != e {
				t.Fatalf("round %d: acknowledged entry %d is %q in the log, want %q", round, idx, all[idx], e)
			}
		}
		l.Close()
		t.Logf("round %d: %d acknowledged before the kill; log size %d", round, n, cp.Size)
	}
	if len(acked) == 0 {
		t.Fatal("no append was acknowledged in any round")
	}
}

// TestCrashChild is the process TestCrash kills.
func TestCrashChild(t *testing.T) {
	if os.Getenv("KBS_CRASH_CHILD") != "1" {
		t.Skip("run by TestCrash")
	}
	tree, _ := strconv.ParseInt(os.Getenv("KBS_CRASH_TREE"), 10, 64)
	signer, _ := testSigner(t)
	l, err := New(context.Background(), Config{Addr: os.Getenv("KBS_TRILLIAN_ADDR"), TreeID: tree, Signer: signer, StatePath: os.Getenv("KBS_CRASH_STATE")})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				e := fmt.Sprintf("r%s-g%d-i%d", os.Getenv("KBS_CRASH_ROUND"), g, i)
				idx, cp, err := l.Append(context.Background(), []byte(e))
				if err != nil {
					fmt.Fprintln(os.Stderr, "append:", err)
					return
				}
				mu.Lock()
				fmt.Fprintf(w, "ack %d %d %s\n", idx, cp.Size, strings.TrimSpace(e))
				w.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}
