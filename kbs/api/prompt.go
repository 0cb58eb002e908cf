package api

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"strings"
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
//
// SealPrompt and OpenPrompt encrypt and decrypt under a KeyFile, whose id
// and version go into the header.
const (
	promptMagic = "kbs-prompt-v1"
	// KindPrompt and KindReply are the two message kinds: a client's
	// prompt to a worker and the worker's reply.
	KindPrompt = "prompt"
	KindReply  = "reply"
	// MaxPromptSize bounds an encrypted message.
	MaxPromptSize = 16 << 20
	// maxPromptHeader bounds the header.
	maxPromptHeader = 512
)

// A PromptHeader is the authenticated header of an encrypted prompt or
// reply.
type PromptHeader struct {
	Kind    string
	KeyID   string
	Version uint64
}

// Marshal returns the header's exact bytes, blank line included.
func (h *PromptHeader) Marshal() []byte {
	return []byte(promptMagic + "\nkind: " + h.Kind + "\nkey-id: " + h.KeyID + "\nkey-version: " + strconv.FormatUint(h.Version, 10) + "\n\n")
}

// ParsePromptHeader splits an encrypted message into its header, the
// header's exact bytes, and the sealed body (nonce, ciphertext and tag).
// It accepts only the exact form Marshal writes, and checks nothing
// cryptographic (OpenPrompt does).
func ParsePromptHeader(msg []byte) (*PromptHeader, []byte, []byte, error) {
	if len(msg) > MaxPromptSize {
		return nil, nil, nil, fmt.Errorf("message is %d bytes, more than %d", len(msg), MaxPromptSize)
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
	h := &PromptHeader{}
	var err error
	if h.Kind, err = field(lines[1], "kind"); err != nil {
		return nil, nil, nil, err
	}
	if h.Kind != KindPrompt && h.Kind != KindReply {
		return nil, nil, nil, fmt.Errorf("bad header: kind %q", h.Kind)
	}
	if h.KeyID, err = field(lines[2], "key-id"); err != nil {
		return nil, nil, nil, err
	}
	if err := ValidKeyID(h.KeyID); err != nil {
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

func gcmFor(k *KeyFile) (cipher.AEAD, error) {
	if len(k.Material) != 32 {
		return nil, fmt.Errorf("key %s is %d bytes; AES-256-GCM needs 32", k.ID, len(k.Material))
	}
	b, err := aes.NewCipher(k.Material)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// SealPrompt encrypts plaintext under k (a 32-byte AES-256-GCM key) as a
// message of the given kind (KindPrompt or KindReply), with a random nonce.
func SealPrompt(k *KeyFile, kind string, plaintext []byte) ([]byte, error) {
	if kind != KindPrompt && kind != KindReply {
		return nil, fmt.Errorf("message kind %q: want %q or %q", kind, KindPrompt, KindReply)
	}
	aead, err := gcmFor(k)
	if err != nil {
		return nil, err
	}
	if len(plaintext) > MaxPromptSize-maxPromptHeader-28 {
		return nil, fmt.Errorf("prompt is %d bytes, too large", len(plaintext))
	}
	h := (&PromptHeader{Kind: kind, KeyID: k.ID, Version: k.Version}).Marshal()
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out := append(h, nonce...)
	return aead.Seal(out, nonce, plaintext, h), nil
}

// OpenPrompt decrypts a message of the given kind ("" for either) under k.
// The header's key id and version must be k's; the header is
// authenticated with the body, so a relabelled or tampered message fails.
func OpenPrompt(k *KeyFile, kind string, msg []byte) (*PromptHeader, []byte, error) {
	h, hdr, body, err := ParsePromptHeader(msg)
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
