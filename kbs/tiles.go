package kbs

import (
	"encoding/binary"
	"net/http"
	"strings"

	sumdb "golang.org/x/mod/sumdb/tlog"

	"github.com/kbs-dev/kbs/kbs/api"
)

// tileHeight is the C2SP tlog-tiles tile height (256 hashes per tile).
const tileHeight = 8

// handleTiles serves the C2SP tlog-tiles API under /log/: checkpoint, hash
// tiles tile/<L>/<N>[.p/<W>] and entry bundles tile/entries/<N>[.p/<W>].
func (b *Broker) handleTiles(w http.ResponseWriter, r *http.Request) error {
	p := r.PathValue("path")
	ctx := r.Context()
	cp, err := b.cfg.Log.Checkpoint(ctx)
	if err != nil {
		return logUnavailable(err)
	}
	if p == "checkpoint" {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(cp.Note)
		return nil
	}
	rest, ok := strings.CutPrefix(p, "tile/")
	if !ok {
		return api.Errorf(api.CodeNotFound, "no such log resource %q", p)
	}
	// Reuse x/mod's parser of the same layout: it expects the tile height
	// first and calls the entry level "data".
	if e, ok := strings.CutPrefix(rest, "entries/"); ok {
		rest = "data/" + e
	}
	t, err := sumdb.ParseTilePath("tile/8/" + rest)
	if err != nil || t.H != tileHeight || t.Path() != "tile/8/"+rest {
		return api.Errorf(api.CodeNotFound, "malformed tile path %q", p)
	}
	// Only tiles the latest checkpoint covers exist.
	start := uint64(t.N) << tileHeight
	level := t.L
	if level < 0 {
		level = 0
	}
	// Number of hashes at this level in the tree of size cp.Size.
	levelSize := cp.Size >> (uint(level) * tileHeight)
	end := start + uint64(t.W)
	if end > levelSize {
		return api.Errorf(api.CodeNotFound, "tile %s is beyond the tree of size %d", p, cp.Size)
	}
	var body []byte
	if t.L < 0 {
		entries, err := b.cfg.Log.Entries(ctx, start, end)
		if err != nil {
			return logUnavailable(err)
		}
		for _, e := range entries {
			body = binary.BigEndian.AppendUint16(body, uint16(len(e)))
			body = append(body, e...)
		}
	} else {
		body, err = b.cfg.Log.HashTile(ctx, t.L, uint64(t.N), t.W)
		if err != nil {
			return logUnavailable(err)
		}
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if t.W == 1<<tileHeight {
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	}
	w.Write(body)
	return nil
}
