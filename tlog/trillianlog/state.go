package trillianlog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/kbs-dev/kbs/internal/atomicfile"
	"github.com/kbs-dev/kbs/tlog"
)

// state is what the Log persists after each signing: the tree it belongs
// to, the last signed checkpoint note, and the compact range of that tree
// (the roots of its perfect subtrees, left to right), from which the next
// root is recomputed from new leaves alone.
//
// On disk it is JSON: {"tree_id": N, "checkpoint": "<note>", "range":
// ["<base64 hash>", ...]}. The file is on the host's disk and untrusted:
// New verifies the checkpoint's signature and that the range hashes to its
// root.
type state struct {
	TreeID     int64    `json:"tree_id"`
	Checkpoint []byte   `json:"checkpoint"`
	Range      [][]byte `json:"range"`

	cp tlog.SignedCheckpoint // parsed Checkpoint, set by the Log
}

// maxStateSize bounds the state file: a checkpoint note and at most 63
// hashes.
const maxStateSize = 64 << 10

var errNoState = errors.New("trillianlog: no state file")

type stateJSON struct {
	TreeID     int64    `json:"tree_id"`
	Checkpoint string   `json:"checkpoint"`
	Range      [][]byte `json:"range"`
}

// marshalState encodes st.
func marshalState(st state) ([]byte, error) {
	rng := st.Range
	if rng == nil {
		rng = [][]byte{}
	}
	b, err := json.Marshal(stateJSON{TreeID: st.TreeID, Checkpoint: string(st.Checkpoint), Range: rng})
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// parseState decodes a state file strictly: unknown fields, trailing data,
// a non-positive tree id, more than 63 range hashes, or hashes that are not
// 32 bytes are errors. It does not verify the checkpoint.
func parseState(b []byte) (state, error) {
	if len(b) > maxStateSize {
		return state{}, fmt.Errorf("state file is %d bytes, more than %d", len(b), maxStateSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var sj stateJSON
	if err := dec.Decode(&sj); err != nil {
		return state{}, fmt.Errorf("malformed state file: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return state{}, errors.New("malformed state file: data after the JSON object")
	}
	if sj.TreeID <= 0 {
		return state{}, fmt.Errorf("malformed state file: tree id %d", sj.TreeID)
	}
	if sj.Checkpoint == "" {
		return state{}, errors.New("malformed state file: no checkpoint")
	}
	if len(sj.Range) > 63 {
		return state{}, fmt.Errorf("malformed state file: %d range hashes", len(sj.Range))
	}
	for _, h := range sj.Range {
		if len(h) != len(tlog.Hash{}) {
			return state{}, fmt.Errorf("malformed state file: a %d-byte range hash", len(h))
		}
	}
	return state{TreeID: sj.TreeID, Checkpoint: []byte(sj.Checkpoint), Range: sj.Range}, nil
}

// readState reads the state file at path; errNoState if there is none.
func readState(path string) (state, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return state{}, errNoState
	}
	if err != nil {
		return state{}, fmt.Errorf("trillianlog: couldn't read state: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStateSize+1))
	if err != nil {
		return state{}, fmt.Errorf("trillianlog: couldn't read state: %w", err)
	}
	st, err := parseState(b)
	if err != nil {
		return state{}, fmt.Errorf("trillianlog: %s: %w", path, err)
	}
	return st, nil
}

// writeState replaces the state file atomically and durably: a temporary
// file, fsync'd, renamed over path, and the directory fsync'd.
func writeState(path string, st state) error {
	b, err := marshalState(st)
	if err != nil {
		return fmt.Errorf("trillianlog: couldn't encode state: %w", err)
	}
	if err := atomicfile.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("trillianlog: couldn't write state: %w", err)
	}
	return nil
}
