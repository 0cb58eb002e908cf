package keystore

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
)

// Shamir's secret sharing over GF(2^8), byte by byte: the recovery shares
// of the master key (docs/operating.md, "Recovery").
//
// Each byte of the secret is the constant term of its own random
// polynomial of degree k-1 over GF(2^8) (the AES field, reduction
// polynomial x^8+x^4+x^3+x+1); share i is the byte string of every
// polynomial evaluated at x_i, prefixed with x_i. Any k shares determine
// the polynomials (Lagrange interpolation at 0); k-1 shares are uniformly
// distributed whatever the secret, so they reveal nothing about it.
//
// This is the construction of HashiCorp Vault's shamir package and of
// SLIP-0039's inner layer without its checksums: a share that was changed
// yields another secret, not an error. Callers check what Combine returns
// (the broker checks each share against the commitment logged with it,
// and the master key against the store).
//
// Field arithmetic is branch-free and uses no tables indexed by secret
// bytes, so its timing does not depend on the secret.

// Share is one share: its x coordinate (1..255) followed by one byte per
// secret byte.
type Share []byte

// MaxShares is the most shares Split makes (the non-zero x coordinates).
const MaxShares = 255

// Split splits secret into n shares, any k of which recover it with
// Combine (1 <= k <= n <= MaxShares). Share i has x coordinate i+1. With
// k = 1 every share is the secret itself.
func Split(secret []byte, n, k int) ([]Share, error) {
	if len(secret) == 0 {
		return nil, errors.New("shamir: empty secret")
	}
	if k < 1 || n < k || n > MaxShares {
		return nil, fmt.Errorf("shamir: %d of %d shares: want 1 <= k <= n <= %d", k, n, MaxShares)
	}
	coeffs := make([]byte, (k-1)*len(secret))
	if _, err := rand.Read(coeffs); err != nil {
		return nil, err
	}
	defer clear(coeffs)
	shares := make([]Share, n)
	for i := range shares {
		x := byte(i + 1)
		s := make(Share, 1+len(secret))
		s[0] = x
		for j, c0 := range secret {
			// Horner: ((a_{k-1} x + a_{k-2}) x + ...) x + c0.
			var y byte
			for d := k - 2; d >= 0; d-- {
				y = gfMul(y, x) ^ coeffs[d*len(secret)+j]
			}
			s[1+j] = gfMul(y, x) ^ c0
		}
		shares[i] = s
	}
	return shares, nil
}

// Combine recovers the secret from shares made by one Split: at least k
// of them, with distinct x coordinates and equal lengths. Given fewer than
// k shares, or changed ones, it returns some other byte string: it cannot
// tell (see the comment at the top of this file).
func Combine(shares []Share) ([]byte, error) {
	if len(shares) == 0 {
		return nil, errors.New("shamir: no shares")
	}
	size := len(shares[0])
	if size < 2 {
		return nil, errors.New("shamir: share too short")
	}
	seen := map[byte]bool{}
	for i, s := range shares {
		if len(s) != size {
			return nil, fmt.Errorf("shamir: share %d is %d bytes, share 0 is %d", i, len(s), size)
		}
		if s[0] == 0 {
			return nil, fmt.Errorf("shamir: share %d has x coordinate 0", i)
		}
		if seen[s[0]] {
			return nil, fmt.Errorf("shamir: two shares with x coordinate %d", s[0])
		}
		seen[s[0]] = true
	}
	// The Lagrange basis at 0: l_i = prod_{j != i} x_j / (x_j - x_i), and
	// subtraction is XOR in GF(2^8).
	basis := make([]byte, len(shares))
	for i, si := range shares {
		num, den := byte(1), byte(1)
		for j, sj := range shares {
			if i == j {
				continue
			}
			num = gfMul(num, sj[0])
			den = gfMul(den, sj[0]^si[0])
		}
		basis[i] = gfMul(num, gfInv(den))
	}
	secret := make([]byte, size-1)
	for j := range secret {
		var v byte
		for i, s := range shares {
			v ^= gfMul(basis[i], s[1+j])
		}
		secret[j] = v
	}
	return secret, nil
}

// gfMul multiplies in GF(2^8) modulo x^8+x^4+x^3+x+1, in constant time.
func gfMul(a, b byte) byte {
	var p byte
	for range 8 {
		p ^= a & byte(subtle.ConstantTimeByteEq(b&1, 1)*0xff)
		hi := byte(subtle.ConstantTimeByteEq(a&0x80, 0x80) * 0xff)
		a = a<<1 ^ 0x1b&hi
		b >>= 1
	}
	return p
}

// gfInv returns the multiplicative inverse of a != 0: a^254, since
// a^255 = 1.
func gfInv(a byte) byte {
	// a^254 = a^(2+4+8+16+32+64+128).
	r := byte(1)
	sq := a
	for range 7 {
		sq = gfMul(sq, sq)
		r = gfMul(r, sq)
	}
	return r
}
