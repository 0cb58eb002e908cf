//go:build ignore

// gen writes kbs.db.gz's kbs.db and sealing.key: a key store in the layout
// before per-version records (one record per key id in "keys"), with live,
// deleted and staged keys, for TestMigrateOldLayout. It ran against the
// keystore package of commit 3840297 (git worktree add /tmp/old 3840297;
// copy this file there; go run gen.go DIR; gzip -9 DIR/kbs.db): run
// against a later one it writes the current layout.
package main

import (
	"context"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/kbs-dev/kbs/kbs/keystore"
	"go.etcd.io/bbolt"
)

func main() {
	dir := os.Args[1]
	db, err := bbolt.Open(filepath.Join(dir, "kbs.db"), 0o600, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	s, err := keystore.Open(context.Background(), db, &keystore.SimSealer{Path: filepath.Join(dir, "sealing.key")})
	if err != nil {
		log.Fatal(err)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	must := func(err error) {
		if err != nil {
			log.Fatal(err)
		}
	}
	must(s.Put("demo/a", 1, "c1", []byte("demo/a version 1"), now))
	must(s.Put("demo/a", 2, "c2", []byte("demo/a version 2"), now.Add(time.Hour)))
	must(s.Put("demo/b", 1, "c1", []byte("demo/b version 1"), now))
	must(s.Delete("demo/b", 1, now.Add(time.Hour)))
	must(s.Put("demo/c", 1, "c1", []byte("demo/c version 1"), now))
	_, err = s.PreparePut("demo/c", 2, "c1", []byte("demo/c version 2, staged"), 10, now.Add(time.Hour))
	must(err)
	_, err = s.PreparePut("demo/d", 1, "c1", []byte("demo/d version 1, staged"), 11, now.Add(time.Hour))
	must(err)
	must(s.Put("demo/e", 1, "c1", []byte("demo/e version 1"), now))
	must(s.PrepareDelete("demo/e", 1, 12, now.Add(time.Hour)))
	must(s.Put("demo/f", 1, "c1", []byte("demo/f version 1"), now))
	must(s.Delete("demo/f", 1, now.Add(time.Hour)))
	_, err = s.PreparePut("demo/f", 2, "c1", []byte("demo/f version 2, staged"), 13, now.Add(2*time.Hour))
	must(err)
	must(s.PutSecret("identity", []byte("a broker secret")))
}
