package audit_test

import (
	"context"
	"crypto/ecdh"
	"crypto/hpke"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/kbs-dev/kbs/internal/hpkekey"
	"github.com/kbs-dev/kbs/kbs/audit"
	"github.com/kbs-dev/kbs/kbs/audit/audittest"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

func (r *recorder) Lifecycle(l audit.Lifecycle) {
	r.events = append(r.events, fmt.Sprintf("%d %s: %s", l.Index, l.Type, l.Describe()))
}

// TestAuditLifecycle replays handovers and recoveries, consistent and not:
// a handover to a measurement the active manifest's service lists, shares
// for exactly its holders, a recovery by its threshold of them are
// consistent; a handover to an unlisted measurement or under another
// manifest, shares for other holders, a recovery by too few holders or of
// a share entry that does not exist are each an anomaly.
func TestAuditLifecycle(t *testing.T) {
	ctx := context.Background()
	l := audittest.New(t)
	l.AppendManifest(t)
	holder := func() string {
		sk, err := hpke.DHKEM(ecdh.X25519()).GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		return base64.StdEncoding.EncodeToString(hpkekey.Marshal(sk.PublicKey()))
	}
	d := l.Manifest.Document()
	d.Version, d.Previous = 2, l.Manifest.Hash()
	newM := strings.Repeat("ab", 48)
	d.Service.SNP[0].Measurement.Values = append(d.Service.SNP[0].Measurement.Values, must(hexDecode(newM)))
	d.Recovery = &manifest.RecoveryPolicy{Threshold: 2, Holders: []manifest.RecoveryHolder{{Name: "alice", PublicKey: holder()}, {Name: "bob", PublicKey: holder()}, {Name: "carol", PublicKey: holder()}}}
	v2 := must(manifest.Parse(must(manifest.Encode(d))))
	owner := must(manifest.ParsePrivateKey(must(os.ReadFile(audittest.Testdata("manifest/keys/owner1.key"))), nil))
	l.AppendVersion(t, v2, []string{must(manifest.Sign(owner, v2.Bytes()))}, l.Manifest.OwnerFingerprints())
	digest := "sha256:" + strings.Repeat("cd", 32)
	shares := func(hs []manifest.RecoveryHolder, k int) *tlog.Entry {
		e := &tlog.RecoverySharesEntry{ManifestHash: v2.Hash(), Threshold: k}
		for _, h := range hs {
			e.Shares = append(e.Shares, tlog.SealedShare{Holder: h.Name, Fingerprint: h.Fingerprint(), Sealed: []byte{1}, Commitment: digest})
		}
		return &tlog.Entry{Type: tlog.TypeRecoveryShares, RecoveryShares: e}
	}
	handover := func(m, manifestHash string) *tlog.Entry {
		return &tlog.Entry{Type: tlog.TypeHandover, Handover: &tlog.HandoverEntry{ManifestHash: manifestHash, FromEvidenceDigest: digest, Platform: "snp",
			Measurement: m, EvidenceDigest: digest, KeyDigest: digest}}
	}
	recovery := func(sharesIndex uint64, holders ...string) *tlog.Entry {
		return &tlog.Entry{Type: tlog.TypeRecovery, Recovery: &tlog.RecoveryEntry{SharesIndex: sharesIndex, Holders: holders, ManifestHash: v2.Hash(),
			Platform: "tdx", Measurement: strings.Repeat("ef", 48), EvidenceDigest: digest}}
	}
	hs := v2.Recovery().Holders
	good := l.Append(t, shares(hs, 2))                         // 2
	l.Append(t, handover(newM, v2.Hash()))                     // 3
	l.Append(t, recovery(good, "alice", "carol"))              // 4
	l.Append(t, shares(hs[:2], 2))                             // 5: not the manifest's holders
	l.Append(t, handover(strings.Repeat("01", 48), v2.Hash())) // 6: unlisted measurement
	l.Append(t, handover(newM, l.Manifest.Hash()))             // 7: not the active manifest
	l.Append(t, recovery(good, "alice"))                       // 8: below the threshold
	l.Append(t, recovery(3, "alice", "bob"))                   // 9: entry 3 is no shares entry
	l.Append(t, recovery(good, "alice", "dave"))               // 10: dave has no share
	c, lv := newClient(t, l, t.TempDir())
	var rec recorder
	r, err := audit.Audit(ctx, audit.Config{Client: c, Log: lv, Events: &rec, KeepEvents: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.OK() || len(r.LifecycleEvents) != 9 || r.Counts[tlog.TypeHandover] != 3 || r.Counts[tlog.TypeRecoveryShares] != 2 || r.Counts[tlog.TypeRecovery] != 4 {
		t.Fatalf("Audit: OK %v, %d lifecycle events, counts %v", r.OK(), len(r.LifecycleEvents), r.Counts)
	}
	wantAnomalies := []string{
		"entry 5: recovery shares for 2 of [alice bob], but manifest version 2 names 2 of 3 of other holders or keys",
		"entry 6: handover to a snp broker with measurement " + strings.Repeat("01", 48) + ", which the service reference values of manifest version 2 do not list",
		"entry 7: handover under manifest " + l.Manifest.Hash() + ", the active version is 2 (" + v2.Hash() + ")",
		"entry 8: recovery by 1 holder(s), entry 2 requires 2",
		"entry 9: recovery with the shares of entry 3, which is not an earlier recovery-shares entry",
		`entry 10: recovery names holder "dave", who has no share in entry 2`,
	}
	if !slices.Equal(r.Anomalies, wantAnomalies) {
		t.Errorf("anomalies:\n%s\nwant\n%s", strings.Join(r.Anomalies, "\n"), strings.Join(wantAnomalies, "\n"))
	}
	var events []string
	for _, e := range rec.events {
		if !strings.HasPrefix(e, "anomaly") {
			events = append(events, e)
		}
	}
	want := []string{
		"2 recovery-shares: master key split for recovery: 2 of [alice bob carol]",
		"3 handover: master key handed over to a snp broker with measurement " + strings.Repeat("ab", 12) + "… (72 more bytes)",
		"4 recovery: master key recovered by [alice carol] (shares of entry 2) on a tdx broker",
	}
	if got := events[2:5]; !slices.Equal(got, want) {
		t.Errorf("events:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// A replayer restored from a snapshot judges a recovery as one that
	// replayed the shares itself.
	rp := audit.NewReplayer(l.NoteKey, &recorder{})
	cp, err := lv.VerifyCheckpoint(l.Checkpoint(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := rp.ReplayTo(ctx, c.Tiles(), cp, 4, nil); err != nil {
		t.Fatal(err)
	}
	snap, err := rp.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var after recorder
	rp2 := audit.NewReplayer(l.NoteKey, &after)
	if err := rp2.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if err := rp2.ReplayTo(ctx, c.Tiles(), cp, 5, nil); err != nil {
		t.Fatal(err)
	}
	if rp2.Anomalies() != 0 {
		t.Errorf("the recovery after a restored snapshot: %v", after.events)
	}
}

func hexDecode(s string) ([]byte, error) { return hex.DecodeString(s) }
