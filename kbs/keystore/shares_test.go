package keystore

import (
	"bytes"
	"math/bits"
	"testing"
)

// slowMul is the textbook GF(2^8) product: carry-less multiplication, then
// reduction by 0x11b.
func slowMul(a, b byte) byte {
	var p uint16
	for i := range 8 {
		if b>>i&1 == 1 {
			p ^= uint16(a) << i
		}
	}
	for i := 15; i >= 8; i-- {
		if p>>i&1 == 1 {
			p ^= 0x11b << (i - 8)
		}
	}
	return byte(p)
}

func TestGFArithmetic(t *testing.T) {
	// FIPS-197 section 4.2: {57} * {83} = {c1}, {57} * {13} = {fe}.
	for _, c := range []struct{ a, b, want byte }{{0x57, 0x83, 0xc1}, {0x57, 0x13, 0xfe}, {0, 0x13, 0}, {1, 0xab, 0xab}} {
		if got := gfMul(c.a, c.b); got != c.want {
			t.Errorf("gfMul(%#x, %#x) = %#x, want %#x", c.a, c.b, got, c.want)
		}
	}
	for a := range 256 {
		for b := range 256 {
			if got, want := gfMul(byte(a), byte(b)), slowMul(byte(a), byte(b)); got != want {
				t.Fatalf("gfMul(%#x, %#x) = %#x, want %#x", a, b, got, want)
			}
		}
		if a != 0 {
			if p := gfMul(byte(a), gfInv(byte(a))); p != 1 {
				t.Fatalf("%#x * gfInv(%#x) = %#x, want 1", a, a, p)
			}
		}
	}
}

// subsets calls f with every subset of size k of n indices.
func subsets(n, k int, f func([]int)) {
	for m := uint(0); m < 1<<n; m++ {
		if bits.OnesCount(m) != k {
			continue
		}
		var idx []int
		for i := range n {
			if m>>i&1 == 1 {
				idx = append(idx, i)
			}
		}
		f(idx)
	}
}

func TestSplitCombine(t *testing.T) {
	secret := []byte("a 32-byte master key, for tests!")
	for n := 1; n <= 6; n++ {
		for k := 1; k <= n; k++ {
			shares, err := Split(secret, n, k)
			if err != nil {
				t.Fatalf("Split(%d of %d): %v", k, n, err)
			}
			for i, s := range shares {
				if s[0] != byte(i+1) || len(s) != len(secret)+1 {
					t.Fatalf("Split(%d of %d): share %d has x %d and %d bytes", k, n, i, s[0], len(s))
				}
			}
			for size := 1; size <= n; size++ {
				subsets(n, size, func(idx []int) {
					var sel []Share
					for _, i := range idx {
						sel = append(sel, shares[i])
					}
					got, err := Combine(sel)
					if err != nil {
						t.Fatalf("Combine(%v of %d-of-%d): %v", idx, k, n, err)
					}
					if ok := bytes.Equal(got, secret); ok != (size >= k) {
						t.Fatalf("Combine(%v of %d-of-%d) recovers the secret: %v, want %v", idx, k, n, ok, size >= k)
					}
				})
			}
		}
	}
}

// TestFewerSharesRevealNothing checks, for a one-byte secret and 2 of 3
// shares, that one share takes every value equally often whatever the
// secret: over all 256 polynomials of each secret, share 1's byte is each
// value exactly once.
func TestFewerSharesRevealNothing(t *testing.T) {
	for secret := range 256 {
		var count [256]int
		for a1 := range 256 {
			// f(x) = secret + a1 x at x = 1.
			count[gfMul(byte(a1), 1)^byte(secret)]++
		}
		for v, c := range count {
			if c != 1 {
				t.Fatalf("secret %d: share value %d occurs %d times", secret, v, c)
			}
		}
	}
}

func TestSplitCombineErrors(t *testing.T) {
	for _, c := range []struct {
		secret []byte
		n, k   int
	}{{nil, 3, 2}, {[]byte("s"), 3, 0}, {[]byte("s"), 2, 3}, {[]byte("s"), 256, 2}} {
		if _, err := Split(c.secret, c.n, c.k); err == nil {
			t.Errorf("Split(%q, %d, %d) succeeded", c.secret, c.n, c.k)
		}
	}
	for _, shares := range [][]Share{
		nil,
		{{1}},
		{{1, 2, 3}, {2, 3}},
		{{0, 2, 3}, {2, 3, 4}},
		{{1, 2, 3}, {1, 3, 4}},
	} {
		if _, err := Combine(shares); err == nil {
			t.Errorf("Combine(%v) succeeded", shares)
		}
	}
}

// FuzzShares splits arbitrary secrets and recombines a chosen subset: any
// k distinct shares give the secret back. Combine on the fuzzer's raw
// bytes never panics.
func FuzzShares(f *testing.F) {
	f.Add([]byte("a 32-byte master key, for tests!"), uint8(5), uint8(3), uint64(0b10101))
	f.Add([]byte{0}, uint8(1), uint8(1), uint64(1))
	f.Add([]byte{0xff, 0}, uint8(255), uint8(255), uint64(0))
	f.Fuzz(func(t *testing.T, secret []byte, n, k uint8, pick uint64) {
		raw := Share(secret)
		Combine([]Share{raw, append(Share{raw0(raw) + 1}, raw...)})
		if len(secret) == 0 || k == 0 || n < k || len(secret) > 512 {
			return
		}
		shares, err := Split(secret, int(n), int(k))
		if err != nil {
			t.Fatal(err)
		}
		// k shares: those pick selects, then the first ones not selected.
		var sel []Share
		used := map[int]bool{}
		for i := 0; i < int(n) && i < 64 && len(sel) < int(k); i++ {
			if pick>>i&1 == 1 {
				sel, used[i] = append(sel, shares[i]), true
			}
		}
		for i := 0; len(sel) < int(k); i++ {
			if !used[i] {
				sel = append(sel, shares[i])
			}
		}
		got, err := Combine(sel)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, secret) {
			t.Fatalf("%d of %d: recovered %x, want %x", k, n, got, secret)
		}
	})
}

func raw0(b []byte) byte {
	if len(b) == 0 {
		return 0
	}
	return b[0]
}
