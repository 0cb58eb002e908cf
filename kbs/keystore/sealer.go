package keystore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/google/go-sev-guest/client"
)

// A Sealer yields the key-encryption key that seals the store's master key
// at rest. The key must be reproducible by the same broker after a restart
// and by nobody else: the point of a sealer is that the host, who can read
// every byte of the data directory, cannot derive it.
type Sealer interface {
	// Name identifies the sealer; the store records it and refuses to open
	// with a different sealer.
	Name() string
	// Key returns the 32-byte key-encryption key.
	Key(ctx context.Context) ([32]byte, error)
}

// NoSealer is the sealer of a TEE without a firmware sealing key (Intel
// TDX): the master key is not sealed at rest at all. A store opened with it
// creates its master key on first use and keeps it in memory only; every
// later Open fails with ErrSealer, and the master key comes back only
// through OpenWithMaster: from a running peer by handover, or from the
// recovery holders' shares (docs/operating.md, "TDX").
type NoSealer struct{}

// Name returns "none".
func (NoSealer) Name() string { return noSealerName }

// Key always fails: there is no key.
func (NoSealer) Key(context.Context) ([32]byte, error) {
	return [32]byte{}, errors.New("this TEE has no sealing key")
}

const noSealerName = "none"

// SimSealer keeps the key-encryption key in a plain file. It protects
// nothing against the host and exists only for development (kbsd --dev) and
// tests.
type SimSealer struct {
	// Path is the key file, created with mode 0600 when missing.
	Path string
}

// Name returns "sim".
func (s *SimSealer) Name() string { return "sim" }

// Key reads the key file, creating it with 32 random bytes the first time.
func (s *SimSealer) Key(ctx context.Context) ([32]byte, error) {
	var k [32]byte
	b, err := os.ReadFile(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		if _, err := rand.Read(k[:]); err != nil {
			return k, err
		}
		if err := os.MkdirAll(filepath.Dir(s.Path), 0o700); err != nil {
			return k, fmt.Errorf("couldn't create sealing key directory: %w", err)
		}
		f, err := os.OpenFile(s.Path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return k, fmt.Errorf("couldn't create simulated sealing key: %w", err)
		}
		if _, err := f.Write(k[:]); err != nil {
			f.Close()
			return k, err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return k, err
		}
		return k, f.Close()
	}
	if err != nil {
		return k, fmt.Errorf("couldn't read simulated sealing key: %w", err)
	}
	if len(b) != len(k) {
		return k, fmt.Errorf("simulated sealing key %s is %d bytes, want 32", s.Path, len(b))
	}
	copy(k[:], b)
	return k, nil
}

// SNPSealer derives the key-encryption key from the AMD SEV-SNP firmware
// (MSG_KEY_REQ) rooted in the chip's VCEK and mixing in the guest's launch
// measurement and guest policy. Only a guest with the same measurement and
// policy on the same chip gets the same key: a modified kbsd, a debug guest
// or another machine cannot unseal the store. TCB version and guest SVN are
// not mixed in, so firmware updates keep the key.
type SNPSealer struct {
	// Device is the SEV guest device. Optional: nil opens /dev/sev-guest.
	Device client.Device
}

// Name returns "snp".
func (s *SNPSealer) Name() string { return "snp" }

// Key asks the SNP firmware for the derived key.
func (s *SNPSealer) Key(ctx context.Context) ([32]byte, error) {
	var k [32]byte
	d := s.Device
	if d == nil {
		ld, err := client.OpenDevice()
		if err != nil {
			return k, fmt.Errorf("couldn't open the SEV guest device: %w", err)
		}
		defer ld.Close()
		d = ld
	}
	resp, err := client.GetDerivedKeyAcknowledgingItsLimitations(d, snpKeyRequest())
	if err != nil {
		return k, fmt.Errorf("couldn't get the SNP derived key: %w", err)
	}
	if resp.Status != 0 {
		return k, fmt.Errorf("SNP firmware refused the derived key request (status %#x)", resp.Status)
	}
	if resp.Data == k {
		return k, errors.New("SNP firmware returned an all-zero derived key")
	}
	// Domain-separate the firmware key from any other use of it.
	return sha256.Sum256(append([]byte("kbs-keystore-kek-v1\n"), resp.Data[:]...)), nil
}

func snpKeyRequest() *client.SnpDerivedKeyReq {
	return &client.SnpDerivedKeyReq{
		UseVCEK: true,
		GuestFieldSelect: client.GuestFieldSelect{
			Measurement: true,
			GuestPolicy: true,
		},
	}
}

// NewSealer returns the sealer for the named TEE: "snp" (the SNP derived
// key), "tdx" (NoSealer: TDX has no firmware sealing key), "sim" (a file at
// simPath; development only).
func NewSealer(tee, simPath string) (Sealer, error) {
	switch tee {
	case "snp":
		return &SNPSealer{}, nil
	case "sim":
		if simPath == "" {
			return nil, errors.New("the simulated sealer needs a key file path")
		}
		return &SimSealer{Path: simPath}, nil
	case "tdx":
		return NoSealer{}, nil
	default:
		return nil, fmt.Errorf("unknown sealer %q (want snp, tdx or sim)", tee)
	}
}
