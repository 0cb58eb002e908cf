package tlog

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var (
	testDigest  = "sha256:" + strings.Repeat("ab", 32)
	testDigest2 = "sha256:" + strings.Repeat("cd", 32)
	testTime    = time.Date(2026, 11, 27, 3, 0, 0, 123456789, time.UTC)
)

func testEntries() []*Entry {
	return []*Entry{
		{Type: TypeManifest, Time: testTime, Manifest: &ManifestEntry{Version: 1, Hash: testDigest, Body: []byte(`{"schema":"kbs-manifest/v1"}`), Signers: []string{testDigest2}}},
		{Type: TypeManifest, Time: testTime, Manifest: &ManifestEntry{Version: 1, Hash: testDigest, Body: []byte(`{"schema":"kbs-manifest/v1"}`)}},
		{Type: TypeManifest, Time: testTime, Manifest: &ManifestEntry{Version: 2, Hash: testDigest2, Previous: testDigest, Body: []byte("{}\n"), Signers: []string{testDigest, testDigest2}}},
		{Type: TypeIdentity, Time: testTime, Identity: &IdentityEntry{NoteKey: "kbs/test+01234567+AQID", HPKEPublicKey: []byte{1, 2, 3}, TLSSPKISHA256: strings.Repeat("0f", 32), Platform: "snp", Simulated: true, EvidenceDigest: testDigest}},
		{Type: TypeKeyUpload, Time: testTime, KeyUpload: &KeyEntry{ID: "demo/a", Version: 1, Client: "demo-client"}},
		{Type: TypeKeyDelete, Time: testTime, KeyDelete: &KeyEntry{ID: "demo/a", Version: 3, Client: "demo-client"}},
		{Type: TypeRelease, Time: testTime, Release: &ReleaseEntry{Keys: []KeyRef{{ID: "demo/a", Version: 1}, {ID: "demo/b", Version: 2}}, WorkerClass: "demo-worker", Platform: "tdx", Measurement: strings.Repeat("aa", 48), ChipID: "", TCB: "bl=3,tee=0,snp=8,ucode=115", EvidenceDigest: testDigest, WorkerKeyDigest: testDigest2, ManifestHash: testDigest}},
		{Type: TypeKeyUpload, Time: testTime, KeyUpload: &KeyEntry{ID: "demo/a", Version: 2, Client: "demo-client", SealedDigest: testDigest2}},
		{Type: TypeHandover, Time: testTime, Handover: &HandoverEntry{ManifestHash: testDigest, FromEvidenceDigest: testDigest2, Platform: "tdx", Measurement: strings.Repeat("bb", 48), EvidenceDigest: testDigest, KeyDigest: testDigest2}},
		{Type: TypeRecoveryShares, Time: testTime, RecoveryShares: &RecoverySharesEntry{ManifestHash: testDigest, Threshold: 2, Shares: []SealedShare{
			{Holder: "alice", Fingerprint: testDigest, Sealed: []byte{1, 2, 3}, Commitment: testDigest2},
			{Holder: "bob", Fingerprint: testDigest2, Sealed: []byte{4, 5, 6}, Commitment: testDigest},
		}}},
		{Type: TypeRecovery, Time: testTime, Recovery: &RecoveryEntry{SharesIndex: 9, Holders: []string{"alice", "bob"}, ManifestHash: testDigest, Platform: "snp", Simulated: true, Measurement: strings.Repeat("cc", 48), EvidenceDigest: testDigest2}},
	}
}

// TestManifestSigners: only version 1 may name no signers (the operator's
// decision), and then in one encoding.
func TestManifestSigners(t *testing.T) {
	unsigned := testEntries()[1]
	b, err := EncodeEntry(unsigned)
	if err != nil || !bytes.Contains(b, []byte(`"signers":[]`)) {
		t.Fatalf("EncodeEntry(unsigned version 1) = %s, %v; want signers []", b, err)
	}
	if e, err := DecodeEntry(b); err != nil || len(e.Manifest.Signers) != 0 {
		t.Fatalf("DecodeEntry(%s) = %+v, %v", b, e, err)
	}
	if _, err := DecodeEntry(bytes.Replace(b, []byte(`"signers":[]`), []byte(`"signers":null`), 1)); err == nil || !strings.Contains(err.Error(), "null") {
		t.Errorf("DecodeEntry(signers null) = %v, want an error", err)
	}
	v2 := testEntries()[2]
	v2.Manifest.Signers = nil
	if b, err := EncodeEntry(v2); err == nil || !strings.Contains(err.Error(), "no signers") {
		t.Errorf("EncodeEntry(unsigned version 2) = %s, %v; want no signers", b, err)
	}
	signed, _ := EncodeEntry(testEntries()[2])
	stripped := regexp.MustCompile(`"signers":\[[^]]*\]`).ReplaceAll(signed, []byte(`"signers":[]`))
	if _, err := DecodeEntry(stripped); err == nil || !strings.Contains(err.Error(), "no signers") {
		t.Errorf("DecodeEntry(%s) = %v, want no signers", stripped, err)
	}
}

func TestEntryRoundTrip(t *testing.T) {
	for _, e := range testEntries() {
		b, err := EncodeEntry(e)
		if err != nil {
			t.Fatalf("EncodeEntry(%s): %v", e.Type, err)
		}
		d, err := DecodeEntry(b)
		if err != nil {
			t.Fatalf("DecodeEntry(%s): %v", b, err)
		}
		b2, err := EncodeEntry(d)
		if err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("re-encoding %s = %s, %v", b, b2, err)
		}
		if !d.Time.Equal(e.Time) {
			t.Errorf("time = %v, want %v", d.Time, e.Time)
		}
	}
}

func TestEncodeEntryNormalizesTime(t *testing.T) {
	e := testEntries()[4]
	e.Time = testTime.In(time.FixedZone("x", 7200))
	b, err := EncodeEntry(e)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"time":"2026-11-27T03:00:00.123456789Z"`)) {
		t.Errorf("EncodeEntry = %s, want UTC time", b)
	}
}

func TestDecodeEntryRejects(t *testing.T) {
	good, err := EncodeEntry(testEntries()[4])
	if err != nil {
		t.Fatal(err)
	}
	s := string(good)
	tests := []struct {
		name, in, want string
	}{
		{"empty", ``, "malformed"},
		{"not object", `[]`, "malformed"},
		{"unknown field", strings.Replace(s, `{"type"`, `{"x":1,"type"`, 1), "unknown field"},
		{"duplicate key", strings.Replace(s, `{"type":"key-upload"`, `{"type":"key-upload","type":"key-upload"`, 1), "duplicate key"},
		{"duplicate key folded", strings.Replace(s, `{"type":"key-upload"`, `{"type":"key-upload","TYPE":"key-upload"`, 1), "duplicate key"},
		{"nested duplicate", strings.Replace(s, `"id":"demo/a"`, `"id":"demo/a","id":"demo/b"`, 1), "duplicate key"},
		{"trailing", s + `{}`, "trailing data"},
		{"trailing space", s + " ", "canonical"},
		{"leading space", " " + s, "canonical"},
		{"wrong case key", strings.Replace(s, `"type"`, `"Type"`, 1), "canonical"},
		{"time offset", strings.Replace(s, `03:00:00.123456789Z`, `05:00:00.123456789+02:00`, 1), "not in UTC"},
		{"unknown type", strings.Replace(s, `"key-upload"`, `"key-put"`, 1), "unknown entry type"},
		{"wrong payload", strings.Replace(s, `"key_upload"`, `"key_delete"`, 1), "without key_upload"},
		{"two payloads", strings.Replace(s, `"key_upload":`, `"key_delete":{"id":"a","version":1,"client":"c"},"key_upload":`, 1), "exactly one payload"},
		{"no time", strings.Replace(s, `"time":"2026-11-27T03:00:00.123456789Z"`, `"time":"0001-01-01T00:00:00Z"`, 1), "no time"},
		{"zero version", strings.Replace(s, `"version":1`, `"version":0`, 1), "version must be"},
		{"negative version", strings.Replace(s, `"version":1`, `"version":-1`, 1), "malformed"},
		{"too big", `{"type":"` + strings.Repeat("a", MaxEntrySize) + `"}`, "more than"},
	}
	for _, tt := range tests {
		_, err := DecodeEntry([]byte(tt.in))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: DecodeEntry(%.80q) = %v, want error containing %q", tt.name, tt.in, err, tt.want)
		}
	}
}

func TestEncodeEntryRejects(t *testing.T) {
	bad := []func(e *Entry){
		func(e *Entry) { e.Release.Keys = nil },
		func(e *Entry) { e.Release.Platform = "sev" },
		func(e *Entry) { e.Release.EvidenceDigest = "sha256:AB" },
		func(e *Entry) { e.Release.ManifestHash = "sha256:" + strings.Repeat("AB", 32) },
		func(e *Entry) { e.Release.WorkerClass = "" },
		func(e *Entry) { e.Identity = &IdentityEntry{} },
		func(e *Entry) { e.Type = TypeManifest },
		func(e *Entry) { e.Time = time.Time{} },
	}
	for i, f := range bad {
		e := testEntries()[6]
		f(e)
		if b, err := EncodeEntry(e); err == nil {
			t.Errorf("case %d: EncodeEntry = %s, want error", i, b)
		}
	}
	if _, err := EncodeEntry(nil); err == nil {
		t.Error("EncodeEntry(nil) succeeded")
	}
	lifecycle := []struct {
		i int
		f func(e *Entry)
	}{
		{8, func(e *Entry) { e.Handover.FromEvidenceDigest = "" }},
		{8, func(e *Entry) { e.Handover.Platform = "sim" }},
		{8, func(e *Entry) { e.Handover.Measurement = "" }},
		{8, func(e *Entry) { e.Handover.KeyDigest = "sha256:x" }},
		{8, func(e *Entry) { e.Recovery = testEntries()[10].Recovery }},
		{9, func(e *Entry) { e.RecoveryShares.Threshold = 0 }},
		{9, func(e *Entry) { e.RecoveryShares.Threshold = 3 }},
		{9, func(e *Entry) { e.RecoveryShares.Shares[1].Holder = "alice" }},
		{9, func(e *Entry) { e.RecoveryShares.Shares[0].Sealed = nil }},
		{9, func(e *Entry) { e.RecoveryShares.Shares[0].Commitment = "" }},
		{9, func(e *Entry) { e.RecoveryShares.Shares = nil }},
		{9, func(e *Entry) { e.RecoveryShares.Shares = make([]SealedShare, MaxShares+1) }},
		{10, func(e *Entry) { e.Recovery.Holders = nil }},
		{10, func(e *Entry) { e.Recovery.Holders = []string{"a", "a"} }},
		{10, func(e *Entry) { e.Recovery.EvidenceDigest = "" }},
		{10, func(e *Entry) { e.Type = TypeHandover }},
	}
	for j, c := range lifecycle {
		e := testEntries()[c.i]
		c.f(e)
		if b, err := EncodeEntry(e); err == nil {
			t.Errorf("lifecycle case %d: EncodeEntry = %s, want error", j, b)
		}
	}
	upload := testEntries()[7]
	upload.KeyUpload.SealedDigest = "sha256:AB"
	if b, err := EncodeEntry(upload); err == nil {
		t.Errorf("EncodeEntry(malformed sealed_digest) = %s, want error", b)
	}
	del := testEntries()[5]
	del.KeyDelete.SealedDigest = testDigest
	if b, err := EncodeEntry(del); err == nil || !strings.Contains(err.Error(), "no sealed_digest") {
		t.Errorf("EncodeEntry(deletion with sealed_digest) = %s, %v; want error", b, err)
	}
	big := testEntries()[0]
	big.Manifest.Body = make([]byte, 50000)
	if _, err := EncodeEntry(big); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("EncodeEntry(huge) = %v, want size error", err)
	}
}

var update = flag.Bool("update", false, "rewrite testdata files from the test vectors")

// TestEntryTestdata checks the committed sample entries: each decodes and
// re-encodes to the same bytes.
func TestEntryTestdata(t *testing.T) {
	if *update {
		for _, e := range testEntries() {
			b, err := EncodeEntry(e)
			if err != nil {
				t.Fatal(err)
			}
			name := filepath.Join("testdata", "entry-"+e.Type+".json")
			if e.KeyUpload != nil && e.KeyUpload.SealedDigest != "" {
				name = filepath.Join("testdata", "entry-key-upload-sealed.json")
			}
			if e.Manifest != nil {
				name = filepath.Join("testdata", fmt.Sprintf("entry-manifest-v%d.json", e.Manifest.Version))
				if len(e.Manifest.Signers) == 0 {
					name = filepath.Join("testdata", "entry-manifest-v1-unsigned.json")
				}
			}
			if err := os.WriteFile(name, append(b, '\n'), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	files, _ := filepath.Glob("testdata/entry-*.json")
	if len(files) == 0 {
		t.Fatal("no testdata/entry-*.json")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.TrimSuffix(b, []byte("\n"))
		e, err := DecodeEntry(b)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if b2, _ := EncodeEntry(e); !bytes.Equal(b, b2) {
			t.Errorf("%s: re-encoded differently", f)
		}
	}
}

func FuzzDecodeEntry(f *testing.F) {
	for _, e := range testEntries() {
		b, _ := EncodeEntry(e)
		f.Add(b)
	}
	files, _ := filepath.Glob("testdata/entry-*.json")
	for _, fn := range files {
		b, _ := os.ReadFile(fn)
		f.Add(bytes.TrimSuffix(b, []byte("\n")))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeEntry(b)
		if err != nil {
			return
		}
		// Accepted entries are canonical: re-encoding gives the same bytes.
		b2, err := EncodeEntry(e)
		if err != nil {
			t.Fatalf("EncodeEntry of decoded entry: %v", err)
		}
		if !bytes.Equal(b, b2) {
			t.Fatalf("round trip changed bytes:\n%s\n%s", b, b2)
		}
	})
}

// TestLargestManifestFits documents the room for manifest bodies: a 46 KiB
// manifest with 32 signers (the most manifest.Verify accepts) fits in one entry (base64 grows it by 4/3), a
// 48 KiB one does not.
func TestLargestManifestFits(t *testing.T) {
	signers := make([]string, 32)
	for i := range signers {
		signers[i] = testDigest
	}
	e := &Entry{Type: TypeManifest, Time: testTime, Manifest: &ManifestEntry{Version: 2, Hash: testDigest, Previous: testDigest2, Body: make([]byte, 46<<10), Signers: signers}}
	if _, err := EncodeEntry(e); err != nil {
		t.Errorf("46 KiB manifest: %v", err)
	}
	e.Manifest.Body = make([]byte, 48<<10)
	if _, err := EncodeEntry(e); err == nil {
		t.Errorf("48 KiB manifest fits, MaxEntrySize changed?")
	}
}

// TestLargestSharesFit: a recovery-shares entry for the most holders a
// manifest names, each with a post-quantum (MLKEM768-X25519) key, fits in
// one entry: a sealed 33-byte share is its 1120-byte encapsulated key and
// 49 bytes of ciphertext.
func TestLargestSharesFit(t *testing.T) {
	e := &Entry{Type: TypeRecoveryShares, Time: testTime, RecoveryShares: &RecoverySharesEntry{ManifestHash: testDigest, Threshold: MaxShares}}
	for i := range MaxShares {
		e.RecoveryShares.Shares = append(e.RecoveryShares.Shares, SealedShare{
			Holder: fmt.Sprintf("holder-%02d-%s", i, strings.Repeat("x", 50)), Fingerprint: testDigest,
			Sealed: make([]byte, 1120+33+16), Commitment: testDigest2,
		})
	}
	b, err := EncodeEntry(e)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("largest recovery-shares entry: %d bytes of %d", len(b), MaxEntrySize)
}
