package snp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/verify/trust"
	"github.com/kbs-dev/kbs/internal/atomicfile"
)

// The disk cache (Options.CacheDir): the VCEK of every verified report,
// named by chip id and reported TCB, so that later evidence without a
// certificate table verifies offline; and, online, AMD KDS downloads. Its
// content is untrusted: a cached VCEK is verified against the roots before
// use.

// vcekFileName names the cached VCEK of the chip and TCB of r.
func vcekFileName(r *spb.Report) string {
	return fmt.Sprintf("vcek-%s-%016x.der", hex.EncodeToString(r.GetChipId()), r.GetReportedTcb())
}

// storeCert writes a verified VCEK to the disk cache. Failures only cost a
// later offline verification, so they are ignored.
func (v *Verifier) storeCert(r *spb.Report, der []byte) {
	if v.cacheDir == "" {
		return
	}
	_ = writeFileAtomic(filepath.Join(v.cacheDir, vcekFileName(r)), der, 0o644)
}

func writeFileAtomic(name string, data []byte, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return err
	}
	if old, err := os.ReadFile(name); err == nil && bytes.Equal(old, data) {
		return nil
	}
	return atomicfile.WriteFile(name, data, perm)
}

// cachingGetter serves KDS certificate downloads from a directory, and
// fetches and stores them on a miss. CRLs are never cached on disk (the
// library keeps them in memory until their NextUpdate).
type cachingGetter struct {
	dir  string
	next trust.HTTPSGetter
}

func (g *cachingGetter) Get(url string) ([]byte, error) {
	return g.GetContext(context.Background(), url)
}

func (g *cachingGetter) GetContext(ctx context.Context, url string) ([]byte, error) {
	if bytes.HasSuffix([]byte(url), []byte("/crl")) {
		return trust.GetWith(ctx, g.next, url)
	}
	h := sha256.Sum256([]byte(url))
	name := filepath.Join(g.dir, "kds", hex.EncodeToString(h[:])+".bin")
	if b, err := os.ReadFile(name); err == nil {
		return b, nil
	}
	b, err := trust.GetWith(ctx, g.next, url)
	if err != nil {
		return nil, err
	}
	_ = writeFileAtomic(name, b, 0o644)
	return b, nil
}
