package hostilebroker_test

import (
	"context"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/internal/hostilebroker"
	"github.com/kbs-dev/kbs/internal/testbin"
	"github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/tlog"
)

// TestNotLinked: the fixture plays a broker that lies; no binary links it.
func TestNotLinked(t *testing.T) {
	const module = "github.com/kbs-dev/kbs"
	out, err := testbin.Command(t, "go", "list", "-deps", module+"/daemon", module+"/tools/kbsctl").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), module+"/internal/hostilebroker") {
		t.Fatal("kbsd or kbsctl links internal/hostilebroker")
	}
	if !strings.Contains(string(out), module+"/tlog\n") {
		t.Fatalf("go list -deps shows no tlog: the check proves nothing\n%s", out)
	}
}

// TestLogVerifies: the generated log is a real one, whose every entry
// verifies against its signed checkpoint through kbs's own tile client.
func TestLogVerifies(t *testing.T) {
	l := hostilebroker.NewLog(t, 1000, 1, hostilebroker.Malformed(100))
	s := hostilebroker.Serve(t, l.Handler(nil))
	c, err := client.New(client.Config{Addr: s.Addr})
	if err != nil {
		t.Fatal(err)
	}
	v, err := tlog.NewVerifier(hostilebroker.Origin, l.NoteKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cp, err := c.Tiles().Sync(ctx, v)
	if err != nil || cp.Size != 1000 {
		t.Fatalf("Sync = %v, %v", cp.Size, err)
	}
	n := uint64(0)
	if err := c.Tiles().Entries(ctx, cp, 0, func(i uint64, e []byte) error {
		if string(e) != string(l.Entry(i)) {
			t.Fatalf("entry %d = %q", i, e)
		}
		n++
		return nil
	}); err != nil || n != 1000 {
		t.Fatalf("Entries: %d entries, %v", n, err)
	}
}
