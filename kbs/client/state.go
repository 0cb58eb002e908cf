package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/kbs-dev/kbs/internal/atomicfile"
	"github.com/kbs-dev/kbs/tlog"
)

// State is a client's directory of what it verified: the last verified
// checkpoint of each log (tlog.FileStore under checkpoints/) and, per
// broker address, the identity established by the last VerifyBroker
// (brokers/). Nothing in it is secret; all of it is integrity-relevant, so
// it is created with mode 0700.
type State struct {
	Dir string
}

// Checkpoints returns the store of last verified checkpoints.
func (s State) Checkpoints() tlog.CheckpointStore {
	return tlog.FileStore{Dir: filepath.Join(s.Dir, "checkpoints")}
}

// BrokerState is what a client remembers about a broker address after
// verifying it.
type BrokerState struct {
	Addr            string `json:"addr"`
	Origin          string `json:"origin"`
	NoteKey         string `json:"note_key"`
	TLSSPKISHA256   string `json:"tls_spki_sha256"`
	HPKEPublicKey   []byte `json:"hpke_public_key"`
	ManifestVersion uint64 `json:"manifest_version"`
	ManifestHash    string `json:"manifest_hash"`
	// Manifest is the exact bytes of that version: its witness policy
	// says which cosignatures receipts and checkpoints of this broker
	// need (kbsctl receipt verify). Absent in states written before kbs
	// had witnesses.
	Manifest []byte    `json:"manifest,omitempty"`
	Verified time.Time `json:"verified"`
}

func (s State) brokerFile(addr string) string {
	return filepath.Join(s.Dir, "brokers", url.QueryEscape(addr)+".json")
}

// Broker returns the stored state of addr, or nil if it was never verified.
func (s State) Broker(addr string) (*BrokerState, error) {
	raw, err := os.ReadFile(s.brokerFile(addr))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var b BrokerState
	if err := json.Unmarshal(raw, &b); err != nil {
		return nil, fmt.Errorf("corrupt broker state %s: %w", s.brokerFile(addr), err)
	}
	return &b, nil
}

// SaveBroker records a verified broker under its address.
func (s State) SaveBroker(b *Broker) error {
	st := &BrokerState{
		Addr: b.c.Addr(), Origin: b.Origin, NoteKey: b.NoteKey, TLSSPKISHA256: b.TLSSPKISHA256,
		HPKEPublicKey: b.HPKEPublicKey, ManifestVersion: b.Manifest.Version(), ManifestHash: b.Manifest.Hash(),
		Manifest: b.Manifest.Bytes(), Verified: b.c.cfg.Now().UTC(),
	}
	raw, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(s.brokerFile(st.Addr), append(raw, '\n'), 0o644)
}

// WriteFileAtomic writes data to name through a temporary file, fsync and
// rename, creating the parent directory (0700) if needed.
func WriteFileAtomic(name string, data []byte, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(name, data, perm)
}
