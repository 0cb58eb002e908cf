package boltlog

import (
	"crypto/ed25519"
	"path/filepath"
	"testing"

	"github.com/kbs-dev/kbs/tlog"
	"github.com/kbs-dev/kbs/tlog/tlogtest"
	"golang.org/x/mod/sumdb/note"
)

const testOrigin = tlog.OriginPrefix + "test"

// testSigner returns a deterministic checkpoint signer for tests.
func testSigner(t testing.TB) (*tlog.CheckpointSigner, note.Verifier) {
	t.Helper()
	priv := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	s, v, _, err := tlog.NewEd25519NoteKeys(testOrigin, priv)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := tlog.NewCheckpointSigner(testOrigin, s, v)
	if err != nil {
		t.Fatal(err)
	}
	return cs, v
}

func TestConformance(t *testing.T) {
	signer, v := testSigner(t)
	paths := map[tlog.Backend]string{}
	tlogtest.Run(t, tlogtest.Harness{
		Origin:   testOrigin,
		Verifier: v,
		New: func(t *testing.T) tlog.Backend {
			path := filepath.Join(t.TempDir(), "kbs.db")
			l, err := Open(path, Config{Signer: signer})
			if err != nil {
				t.Fatal(err)
			}
			paths[l] = path
			return l
		},
		Reopen: func(t *testing.T, b tlog.Backend) tlog.Backend {
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			l, err := Open(paths[b], Config{Signer: signer})
			if err != nil {
				t.Fatalf("reopening: %v", err)
			}
			paths[l] = paths[b]
			return l
		},
	})
}
