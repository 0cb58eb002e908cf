package main

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/kbs-dev/kbs/kbs/api"
)

// An encrypted prompt (or reply) is a text header followed by AES-256-GCM:
//
//	kbs-prompt-v1\n
//	kind: prompt\n            (or "reply")
//	key-id: demo/prompt-key\n
//	key-version: 1\n
//	\n
//	12-byte nonce || ciphertext || 16-byte tag
//
// The header is the GCM additional data, so the key id, the version and the
// direction are authenticated: a reply cannot be passed off as a prompt,
// and a message cannot be relabelled with another key id.
const (
	promptMagic = "kbs-prompt-v1"
	kindPrompt  = "prompt"
	kindReply   = "reply"
	// maxPromptSize bounds an encrypted message.
	maxPromptSize = 16 << 20
	// maxPromptHeader bounds the header.
	maxPromptHeader = 512
)

type promptHeader struct {
	Kind    string
	KeyID   string
	Version uint64
}

func (h *promptHeader) marshal() []byte {
	return []byte(promptMagic + "\nkind: " + h.Kind + "\nkey-id: " + h.KeyID + "\nkey-version: " + strconv.FormatUint(h.Version, 10) + "\n\n")
}

// parsePromptHeader splits an encrypted message into its header, the
// header's exact bytes, and the sealed body. It accepts only the exact
// form marshal writes.
func parsePromptHeader(msg []byte) (*promptHeader, []byte, []byte, error) {
	if len(msg) > maxPromptSize {
		return nil, nil, nil, fmt.Errorf("message is %d bytes, more than %d", len(msg), maxPromptSize)
	}
	end := bytes.Index(msg[:min(len(msg), maxPromptHeader)], []byte("\n\n"))
	if end < 0 {
		return nil, nil, nil, errors.New("not an encrypted kbs prompt: no header")
	}
	hdr := msg[:end+2]
	lines := strings.Split(string(msg[:end]), "\n")
	if len(lines) != 4 || lines[0] != promptMagic {
		return nil, nil, nil, errors.New("not an encrypted kbs prompt: bad header")
	}
	field := func(l, name string) (string, error) {
		v, ok := strings.CutPrefix(l, name+": ")
		if !ok {
			return "", fmt.Errorf("bad header: want %s", name)
		}
		return v, nil
	}
	h := &promptHeader{}
	var err error
	if h.Kind, err = field(lines[1], "kind"); err != nil {
		return nil, nil, nil, err
	}
	if h.Kind != kindPrompt && h.Kind != kindReply {
		return nil, nil, nil, fmt.Errorf("bad header: kind %q", h.Kind)
	}
	if h.KeyID, err = field(lines[2], "key-id"); err != nil {
		return nil, nil, nil, err
	}
	if err := api.ValidKeyID(h.KeyID); err != nil {
		return nil, nil, nil, fmt.Errorf("bad header: %w", err)
	}
	vs, err := field(lines[3], "key-version")
	if err != nil {
		return nil, nil, nil, err
	}
	h.Version, err = strconv.ParseUint(vs, 10, 64)
	if err != nil || h.Version == 0 || strconv.FormatUint(h.Version, 10) != vs {
		return nil, nil, nil, fmt.Errorf("bad header: key-version %q", vs)
	}
	body := msg[end+2:]
	if len(body) < 12+16 {
		return nil, nil, nil, errors.New("encrypted prompt is truncated")
	}
	return h, hdr, body, nil
}

func gcmFor(k *keyFile) (cipher.AEAD, error) {
	if len(k.Material) != 32 {
		return nil, fmt.Errorf("key %s is %d bytes; AES-256-GCM needs 32", k.ID, len(k.Material))
	}
	b, err := aes.NewCipher(k.Material)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// sealPrompt encrypts plaintext under k as a message of the given kind.
func sealPrompt(k *keyFile, kind string, plaintext []byte) ([]byte, error) {
	aead, err := gcmFor(k)
	if err != nil {
		return nil, err
	}
	if len(plaintext) > maxPromptSize-maxPromptHeader-28 {
		return nil, fmt.Errorf("prompt is %d bytes, too large", len(plaintext))
	}
	h := (&promptHeader{Kind: kind, KeyID: k.ID, Version: k.Version}).marshal()
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out := append(h, nonce...)
	return aead.Seal(out, nonce, plaintext, h), nil
}

// openPrompt decrypts a message of the given kind ("" for either) under k.
// The header's key id and version must be k's.
func openPrompt(k *keyFile, kind string, msg []byte) (*promptHeader, []byte, error) {
	h, hdr, body, err := parsePromptHeader(msg)
	if err != nil {
		return nil, nil, err
	}
	if kind != "" && h.Kind != kind {
		return nil, nil, fmt.Errorf("message is a %s, want a %s", h.Kind, kind)
	}
	if h.KeyID != k.ID || h.Version != k.Version {
		return nil, nil, fmt.Errorf("message is for key %s version %d, the key file holds %s version %d", h.KeyID, h.Version, k.ID, k.Version)
	}
	aead, err := gcmFor(k)
	if err != nil {
		return nil, nil, err
	}
	pt, err := aead.Open(nil, body[:12], body[12:], hdr)
	if err != nil {
		return nil, nil, errors.New("decryption failed: wrong key or tampered message")
	}
	return h, pt, nil
}
