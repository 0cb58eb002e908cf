package keystore

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// oldKeyRecord is a key id's record in the layout before "keymeta",
// "versions" and "pending" (bucket "keys"): every version and the staged
// change in one record.
type oldKeyRecord struct {
	ID         string          `json:"id"`
	Version    uint64          `json:"version"`
	Client     string          `json:"client"`
	Created    time.Time       `json:"created"`
	Deleted    bool            `json:"deleted,omitempty"`
	WrappedDEK []byte          `json:"wrapped_dek,omitempty"`
	Versions   []versionRecord `json:"versions,omitempty"`
	Pending    *struct {
		Op      string        `json:"op"`
		LogSize uint64        `json:"log_size"`
		Version versionRecord `json:"version"`
	} `json:"pending,omitempty"`
}

// migrateBatch is how many old records one transaction moves (a variable
// for tests).
var migrateBatch = 5000

// migrate moves the records of the old layout, if any, into the current
// one, migrateBatch key ids per transaction: each id's old record is
// deleted in the transaction that writes its new ones, so a crash leaves
// every id in one layout or the other and the next Open goes on. The old
// bucket is dropped once empty. A record that does not decode stops the
// migration with an error naming it (the store would not read back
// either).
func migrate(ctx context.Context, db *bbolt.DB) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		done := false
		err := db.Update(func(tx *bbolt.Tx) error {
			root := tx.Bucket(bucketRoot)
			old := root.Bucket(bucketOldKeys)
			if old == nil {
				done = true
				return nil
			}
			c := old.Cursor()
			n := 0
			for k, v := c.First(); k != nil && n < migrateBatch; k, v = c.First() {
				if err := migrateRecord(tx, string(k), v); err != nil {
					return err
				}
				if err := c.Delete(); err != nil {
					return err
				}
				n++
			}
			if k, _ := c.First(); k == nil {
				done = true
				return root.DeleteBucket(bucketOldKeys)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("couldn't migrate the key store to its per-version layout: %w", err)
		}
		if done {
			return nil
		}
	}
}

// migrateRecord writes the records of the current layout for the old
// record raw of key id.
func migrateRecord(tx *bbolt.Tx, id string, raw []byte) error {
	var rec oldKeyRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return fmt.Errorf("corrupt record for key %q: %w", id, err)
	}
	if rec.ID != id {
		return fmt.Errorf("corrupt record: key %q stored under %q", rec.ID, id)
	}
	if rec.Version > 0 {
		m := &metaRecord{ID: id, Version: rec.Version, Client: rec.Client, Created: rec.Created, Deleted: rec.Deleted}
		if !rec.Deleted {
			m.WrappedDEK = rec.WrappedDEK
			if n := len(rec.Versions); n > 0 {
				latest := rec.Versions[n-1]
				m.VersionCreated, m.SealedDigest = latest.Created, sealedDigest(latest.Ciphertext)
			}
		}
		if err := putJSON(tx, bucketKeyMeta, []byte(id), m); err != nil {
			return err
		}
		for i := range rec.Versions {
			if err := putJSON(tx, bucketVersions, versionKey(id, rec.Versions[i].Version), &rec.Versions[i]); err != nil {
				return err
			}
		}
	}
	if p := rec.Pending; p != nil {
		pr := &pendingRecord{ID: id, Op: p.Op, LogSize: p.LogSize, Version: p.Version}
		if p.Op == OpPut && (rec.Version == 0 || rec.Deleted) {
			// The fresh data key of a put staged for a new or deleted id.
			pr.WrappedDEK = rec.WrappedDEK
		}
		if err := putJSON(tx, bucketPending, []byte(id), pr); err != nil {
			return err
		}
	}
	return nil
}
