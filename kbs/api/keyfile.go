package api

import (
	"bytes"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"
)

// A key file holds one key with its id and version, as PEM:
//
//	-----BEGIN KBS KEY-----
//	Key-Id: demo/prompt-key
//	Key-Version: 1
//
//	<base64 of the key bytes>
//	-----END KBS KEY-----
//
// `kbsctl key put --generate` and `kbsctl key get` write key files (mode
// 0600); `kbsctl prompt` and `kbsctl worker run` read them, so the key id
// travels with the key into the prompt header (SealPrompt).
//
// KeyFilePEMType is the PEM block type of a key file.
const KeyFilePEMType = "KBS KEY"

// A KeyFile is one key with its id and version, as a key file holds it.
type KeyFile struct {
	ID       string
	Version  uint64
	Material []byte
}

// Marshal returns the PEM text of k's key file.
func (k *KeyFile) Marshal() []byte {
	return pem.EncodeToMemory(&pem.Block{
		Type:    KeyFilePEMType,
		Headers: map[string]string{"Key-Id": k.ID, "Key-Version": strconv.FormatUint(k.Version, 10)},
		Bytes:   k.Material,
	})
}

// ParseKeyFile parses a key file strictly: one KBS KEY block with exactly
// the Key-Id and Key-Version headers, a valid key id, a canonical decimal
// version of at least 1, 1 to MaxKeySize key bytes, and nothing but white
// space around the block.
func ParseKeyFile(b []byte) (*KeyFile, error) {
	block, rest := pem.Decode(b)
	if block == nil {
		return nil, errors.New("not a key file: no PEM block")
	}
	if len(bytes.TrimSpace(rest)) != 0 || len(bytes.TrimSpace(b[:bytes.Index(b, []byte("-----BEGIN"))])) != 0 {
		return nil, errors.New("key file: data outside the PEM block")
	}
	if block.Type != KeyFilePEMType {
		return nil, fmt.Errorf("key file: PEM block is %q, want %q", block.Type, KeyFilePEMType)
	}
	if len(block.Headers) != 2 {
		return nil, fmt.Errorf("key file: %d headers, want Key-Id and Key-Version", len(block.Headers))
	}
	id, ok := block.Headers["Key-Id"]
	if !ok {
		return nil, errors.New("key file: no Key-Id header")
	}
	if err := ValidKeyID(id); err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	vs, ok := block.Headers["Key-Version"]
	if !ok {
		return nil, errors.New("key file: no Key-Version header")
	}
	v, err := strconv.ParseUint(vs, 10, 64)
	if err != nil || v == 0 || strconv.FormatUint(v, 10) != vs {
		return nil, fmt.Errorf("key file: bad Key-Version %q", vs)
	}
	if len(block.Bytes) == 0 || len(block.Bytes) > MaxKeySize {
		return nil, fmt.Errorf("key file: key is %d bytes, want 1 to %d", len(block.Bytes), MaxKeySize)
	}
	return &KeyFile{ID: id, Version: v, Material: block.Bytes}, nil
}
