// Package dbedit edits a bbolt file the way a hostile host can, for tests
// that play the host against kbsd's database (kbs.db): copy a bucket back
// from an older copy of the file, delete, restore or swap records, change
// bytes. It edits through bbolt, so the file stays a valid bbolt file and
// what is tested is kbsd's answer to contents it did not write, not
// bbolt's answer to a torn file.
//
// Buckets and records are named by paths: the names of the nested buckets
// from the top level down, e.g. Path{"keystore", "keymeta"}.
package dbedit

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Path names a bucket: the names of its enclosing buckets, then its own.
type Path []string

func (p Path) String() string {
	s := ""
	for i, n := range p {
		if i > 0 {
			s += "/"
		}
		s += n
	}
	return s
}

// Open opens the bbolt file at path for editing; it fails (after a second)
// while another process, such as a running kbsd, holds it.
func Open(path string) (*bbolt.DB, error) {
	return bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
}

func bucket(tx *bbolt.Tx, p Path) *bbolt.Bucket {
	if len(p) == 0 {
		return nil
	}
	b := tx.Bucket([]byte(p[0]))
	for _, n := range p[1:] {
		if b == nil {
			return nil
		}
		b = b.Bucket([]byte(n))
	}
	return b
}

// Buckets returns the path of every bucket of db, nested ones included,
// parents before children.
func Buckets(db *bbolt.DB) ([]Path, error) {
	var out []Path
	var walk func(p Path, b *bbolt.Bucket)
	walk = func(p Path, b *bbolt.Bucket) {
		out = append(out, p)
		b.ForEachBucket(func(k []byte) error {
			walk(append(slices.Clone(p), string(k)), b.Bucket(k))
			return nil
		})
	}
	err := db.View(func(tx *bbolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bbolt.Bucket) error {
			walk(Path{string(name)}, b)
			return nil
		})
	})
	return out, err
}

// ReplaceBucket makes the bucket at p in dst a copy of the bucket at p in
// src (records and nested buckets), as if the host had rolled that one
// bucket back to src's copy. If src has no such bucket, dst's is deleted.
func ReplaceBucket(dst, src *bbolt.DB, p Path) error {
	return src.View(func(stx *bbolt.Tx) error {
		return dst.Update(func(dtx *bbolt.Tx) error {
			parent := Path(p[:len(p)-1])
			name := []byte(p[len(p)-1])
			var del func([]byte) error
			var create func([]byte) (*bbolt.Bucket, error)
			if len(parent) == 0 {
				del, create = dtx.DeleteBucket, dtx.CreateBucket
			} else {
				pb := bucket(dtx, parent)
				if pb == nil {
					return fmt.Errorf("dbedit: no bucket %s", parent)
				}
				del, create = pb.DeleteBucket, pb.CreateBucket
			}
			if err := del(name); err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
				return err
			}
			sb := bucket(stx, p)
			if sb == nil {
				return nil
			}
			db, err := create(name)
			if err != nil {
				return err
			}
			return copyBucket(db, sb)
		})
	})
}

func copyBucket(dst, src *bbolt.Bucket) error {
	return src.ForEach(func(k, v []byte) error {
		if v != nil {
			return dst.Put(bytes.Clone(k), bytes.Clone(v))
		}
		nb, err := dst.CreateBucket(bytes.Clone(k))
		if err != nil {
			return err
		}
		return copyBucket(nb, src.Bucket(k))
	})
}

// Get returns a copy of the value of key in the bucket at p (nil if there
// is none).
func Get(db *bbolt.DB, p Path, key []byte) ([]byte, error) {
	var v []byte
	err := db.View(func(tx *bbolt.Tx) error {
		b := bucket(tx, p)
		if b == nil {
			return fmt.Errorf("dbedit: no bucket %s", p)
		}
		v = bytes.Clone(b.Get(key))
		return nil
	})
	return v, err
}

// Put sets key to value in the bucket at p.
func Put(db *bbolt.DB, p Path, key, value []byte) error {
	return db.Update(func(tx *bbolt.Tx) error {
		b := bucket(tx, p)
		if b == nil {
			return fmt.Errorf("dbedit: no bucket %s", p)
		}
		return b.Put(key, value)
	})
}

// Delete deletes key from the bucket at p.
func Delete(db *bbolt.DB, p Path, key []byte) error {
	return db.Update(func(tx *bbolt.Tx) error {
		b := bucket(tx, p)
		if b == nil {
			return fmt.Errorf("dbedit: no bucket %s", p)
		}
		return b.Delete(key)
	})
}

// Swap exchanges the values of keys a and b in the bucket at p.
func Swap(db *bbolt.DB, p Path, a, b []byte) error {
	return db.Update(func(tx *bbolt.Tx) error {
		bk := bucket(tx, p)
		if bk == nil {
			return fmt.Errorf("dbedit: no bucket %s", p)
		}
		va, vb := bytes.Clone(bk.Get(a)), bytes.Clone(bk.Get(b))
		if va == nil || vb == nil {
			return fmt.Errorf("dbedit: %s lacks %q or %q", p, a, b)
		}
		if err := bk.Put(a, vb); err != nil {
			return err
		}
		return bk.Put(b, va)
	})
}

// Keys returns the keys of the records (not nested buckets) of the bucket
// at p, in order.
func Keys(db *bbolt.DB, p Path) ([][]byte, error) {
	var out [][]byte
	err := db.View(func(tx *bbolt.Tx) error {
		b := bucket(tx, p)
		if b == nil {
			return fmt.Errorf("dbedit: no bucket %s", p)
		}
		return b.ForEach(func(k, v []byte) error {
			if v != nil {
				out = append(out, bytes.Clone(k))
			}
			return nil
		})
	})
	return out, err
}

// CorruptLast flips one bit near the end of the last record, in key order,
// of the bucket at p whose value starts with prefix (a log entry of some
// type, say): the record keeps its length and its framing.
func CorruptLast(db *bbolt.DB, p Path, prefix []byte) error {
	keys, err := Keys(db, p)
	if err != nil {
		return err
	}
	for i := len(keys) - 1; i >= 0; i-- {
		v, err := Get(db, p, keys[i])
		if err != nil {
			return err
		}
		if bytes.HasPrefix(v, prefix) && len(v) > 3 {
			v[len(v)-3] ^= 1
			return Put(db, p, keys[i], v)
		}
	}
	return fmt.Errorf("dbedit: no record of %s starts with %q", p, prefix)
}
