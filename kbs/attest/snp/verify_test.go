package snp

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"github.com/google/uuid"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/sim"
)

// The real Milan report from go-sev-guest's verify/testdata (taken from a
// VM launched with a debug-enabled guest policy 0xb0000) and its VCEK. The
// VCEK truly expires (valid 2022-09-24 to 2029-09-24), so every test of it
// verifies at milanNow, inside that window, never at the wall clock.
var (
	milanNow        = time.Date(2023, time.June, 1, 0, 0, 0, 0, time.UTC)
	milanReportData = [64]byte{1, 2, 3, 4, 5}
)

func milanEvidence(t testing.TB, withTable bool) attest.Evidence {
	t.Helper()
	report, err := os.ReadFile("../../../testdata/snp/milan-report.bin")
	if err != nil {
		t.Fatal(err)
	}
	if !withTable {
		return attest.Evidence{Platform: attest.SNP, Data: report}
	}
	vcek, err := os.ReadFile("../../../testdata/snp/milan-vcek.der")
	if err != nil {
		t.Fatal(err)
	}
	table := &abi.CertTable{Entries: []abi.CertTableEntry{{GUID: uuid.MustParse(abi.VcekGUID), RawCert: vcek}}}
	return attest.Evidence{Platform: attest.SNP, Data: append(report, table.Marshal()...)}
}

func amdVerifier(t testing.TB, now time.Time, cacheDir string) *Verifier {
	t.Helper()
	v, err := NewVerifier(Options{Now: func() time.Time { return now }, CacheDir: cacheDir})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestRealMilanOffline verifies real hardware evidence offline against the
// embedded AMD roots. The sample comes from a debug guest, so the full
// Verify ends in ErrDebug, after the signature and chain checks passed.
func TestRealMilanOffline(t *testing.T) {
	ctx := context.Background()
	v := amdVerifier(t, milanNow, "")
	ev := milanEvidence(t, true)
	parsed, err := ParseEvidence(ev.Data)
	if err != nil {
		t.Fatal(err)
	}
	entry, err := v.authenticate(ctx, parsed)
	if err != nil {
		t.Fatalf("authenticate(real Milan report) = %v", err)
	}
	if entry.productLine != "Milan" || entry.root.ProductCerts.Ark.Subject.CommonName != "ARK-Milan" {
		t.Errorf("chained to %q / %q, want Milan / ARK-Milan", entry.productLine, entry.root.ProductCerts.Ark.Subject.CommonName)
	}
	if err := checkAgainstCert(parsed.Proto, entry); err != nil {
		t.Errorf("checkAgainstCert = %v", err)
	}
	if _, err := v.Verify(ctx, ev, milanReportData); !errors.Is(err, ErrDebug) {
		t.Errorf("Verify(real debug report) = %v, want ErrDebug", err)
	}
	c := claimsOf(ev, parsed, entry)
	if c.Simulated {
		t.Errorf("claims of AMD-rooted evidence say Simulated")
	}
	if c.SNP.Product != "Milan" || c.SNP.Policy != 0xb0000 || c.SNP.SignerKey != "vcek" || c.ReportData != milanReportData {
		t.Errorf("claims = %+v", c.SNP)
	}
}

func TestRealMilanCache(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	bare := milanEvidence(t, false)
	if _, err := amdVerifier(t, milanNow, dir).Verify(ctx, bare, milanReportData); !errors.Is(err, errNoCertificate) {
		t.Fatalf("Verify(bare report, empty cache) = %v, want errNoCertificate", err)
	}
	// A verification with the certificate table fills the cache ...
	if _, err := amdVerifier(t, milanNow, dir).Verify(ctx, milanEvidence(t, true), milanReportData); !errors.Is(err, ErrDebug) {
		t.Fatalf("Verify(report+table) = %v, want ErrDebug", err)
	}
	// ... so that a fresh verifier verifies the bare report offline.
	if _, err := amdVerifier(t, milanNow, dir).Verify(ctx, bare, milanReportData); !errors.Is(err, ErrDebug) {
		t.Errorf("Verify(bare report, warm cache) = %v, want ErrDebug (signature and chain passed)", err)
	}
}

func TestRealMilanRejections(t *testing.T) {
	ctx := context.Background()
	ev := milanEvidence(t, true)
	flipped := append([]byte(nil), ev.Data...)
	flipped[0x2A0+3] ^= 1 // a byte of the signature's R
	tests := []struct {
		name string
		v    *Verifier
		ev   attest.Evidence
		want error
	}{
		{"expired", amdVerifier(t, time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), ""), ev, errCertificateExpired},
		{"not yet valid", amdVerifier(t, time.Date(2022, 1, 1, 0, 0, 0, 0, time.UTC), ""), ev, errCertificateExpired},
		{"flipped signature", amdVerifier(t, milanNow, ""), attest.Evidence{Platform: attest.SNP, Data: flipped}, errSignature},
		{"sim roots only", simVerifier(t, testSim(t)), ev, errChain},
		{"truncated", amdVerifier(t, milanNow, ""), attest.Evidence{Platform: attest.SNP, Data: ev.Data[:100]}, errMalformed},
		{"wrong platform", amdVerifier(t, milanNow, ""), attest.Evidence{Platform: attest.TDX, Data: ev.Data}, errMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.v.Verify(ctx, tt.ev, milanReportData)
			checkOnly(t, err, tt.want)
		})
	}
}

var allErrors = []error{
	errMalformed, errNoCertificate, errCertificateExpired, errSignature, errChain, errRevoked,
	errCertMismatch, errTCBInconsistent, ErrDebug, ErrReportData, errClaims,
}

// checkOnly fails unless err wraps want and no other sentinel.
func checkOnly(t *testing.T, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
	for _, other := range allErrors {
		if other != want && errors.Is(err, other) {
			t.Errorf("err = %v also matches %v", err, other)
		}
	}
}

// simOptions are go-sev-guest validation options that the default simulated
// evidence of the chip chipID satisfies, every field pinned (what
// kbs/policy builds from a manifest pinned to that evidence).
func simOptions(chipID []byte, rd [64]byte) *validate.Options {
	vmpl := 0
	return &validate.Options{
		Measurement:               make([]byte, 48),
		HostData:                  make([]byte, 32),
		FamilyID:                  make([]byte, 16),
		ImageID:                   make([]byte, 16),
		ChipID:                    chipID,
		GuestPolicy:               abi.SnpPolicy{SMT: true},
		VMPL:                      &vmpl,
		MinimumTCB:                kds.DecomposeTCBVersion(kds.TCBVersion(simTCBVersion())),
		PlatformInfo:              &abi.SnpPlatformInfo{SMTEnabled: true, TSMEEnabled: true},
		ReportData:                rd[:],
		PermitProvisionalFirmware: true,
	}
}

// simTCBVersion is the TCB_VERSION of the simulated chip.
func simTCBVersion() uint64 {
	v, err := sim.SNPTCB().Encode(sim.SNPProductLine)
	if err != nil {
		panic(err)
	}
	return v
}

// TestNegativeMatrix mutates one thing per row and expects one precise
// error.
func TestNegativeMatrix(t *testing.T) {
	ctx := context.Background()
	dir := testSim(t)
	v := simVerifier(t, dir)
	rd := [64]byte{0xaa, 0xbb}

	rogueDir := t.TempDir()
	if err := sim.GenerateSNP(rogueDir); err != nil {
		t.Fatal(err)
	}
	far, err := NewVerifier(Options{Roots: v.rootList(), Now: func() time.Time { return simNow(t, dir).AddDate(30, 0, 0) }})
	if err != nil {
		t.Fatal(err)
	}

	type row struct {
		name     string
		opts     sim.SNPOptions
		issuerOf string // "" = the test sim, "rogue" = another sim
		mutate   func(*spb.Report)
		tamper   func([]byte)
		verifier *Verifier
		rd       *[64]byte
		want     error
	}
	// The rows that change reference values or policy fields of the
	// report moved with the policy checks to kbs/policy (TestSNPFieldRejections).
	rows := []row{
		{name: "ok"},
		{name: "debug bit", opts: sim.SNPOptions{GuestPolicy: sim.DefaultSNPGuestPolicy | 1<<19}, want: ErrDebug},
		{name: "REPORT_DATA", rd: &[64]byte{0xaa}, want: ErrReportData},
		{name: "flipped signature byte", tamper: func(b []byte) { b[0x2A0] ^= 0x80 }, want: errSignature},
		{name: "tampered measurement", tamper: func(b []byte) { b[0x90] ^= 1 }, want: errSignature},
		{name: "rogue root", issuerOf: "rogue", want: errChain},
		{name: "expired certificate", verifier: far, want: errCertificateExpired},
		{name: "reported TCB not the VCEK's", mutate: func(r *spb.Report) { r.ReportedTcb--; r.CommittedTcb--; r.CurrentTcb-- }, want: errCertMismatch},
		{name: "chip id not the VCEK's", mutate: func(r *spb.Report) { r.ChipId[0] ^= 1 }, want: errCertMismatch},
		{name: "committed above current", mutate: func(r *spb.Report) { r.CurrentTcb-- }, want: errTCBInconsistent},
	}
	for _, tt := range rows {
		t.Run(tt.name, func(t *testing.T) {
			d := dir
			if tt.issuerOf == "rogue" {
				d = rogueDir
			}
			opts := tt.opts
			opts.Edit = tt.mutate
			iss, err := sim.NewSNPIssuer(d, opts)
			if err != nil {
				t.Fatal(err)
			}
			ev, err := iss.Issue(ctx, rd)
			if err != nil {
				t.Fatal(err)
			}
			if tt.tamper != nil {
				tt.tamper(ev.Data)
			}
			ver := v
			if tt.verifier != nil {
				ver = tt.verifier
			}
			want := rd
			if tt.rd != nil {
				want = *tt.rd
			}
			c, err := ver.Verify(ctx, ev, want)
			if err == nil {
				err = Validate(c, simOptions(iss.ChipID(), want))
			}
			if tt.want == nil {
				if err != nil {
					t.Fatalf("valid evidence rejected: %v", err)
				}
				return
			}
			checkOnly(t, err, tt.want)
		})
	}
}

// rootList returns v's roots as Options.Roots.
func (v *Verifier) rootList() []Root {
	var out []Root
	for line, rs := range v.roots {
		for _, r := range rs {
			out = append(out, Root{ProductLine: line, ARK: r.ProductCerts.Ark, ASK: r.ProductCerts.Ask, ASVK: r.ProductCerts.Asvk})
		}
	}
	return out
}

func TestWarmChainCache(t *testing.T) {
	ctx := context.Background()
	dir := testSim(t)
	now := simNow(t, dir)
	v, err := NewVerifier(Options{Roots: simVerifier(t, dir).rootList(), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	rd := [64]byte{7}
	ev := issue(t, dir, sim.SNPOptions{}, rd)
	for i := 0; i < 2; i++ {
		if _, err := v.Verify(ctx, ev, rd); err != nil {
			t.Fatalf("Verify #%d = %v", i, err)
		}
	}
	if len(v.chains) != 1 {
		t.Errorf("chain cache holds %d entries, want 1", len(v.chains))
	}
	// A cached chain still honours the validity window.
	now = now.AddDate(30, 0, 0)
	if _, err := v.Verify(ctx, ev, rd); !errors.Is(err, errCertificateExpired) {
		t.Errorf("Verify after expiry with warm cache = %v, want errCertificateExpired", err)
	}
	// And a bad signature under a cached key is still caught.
	now = simNow(t, dir)
	bad := attest.Evidence{Platform: attest.SNP, Data: append([]byte(nil), ev.Data...)}
	bad.Data[0x2A0] ^= 0x80
	if _, err := v.Verify(ctx, bad, rd); !errors.Is(err, errSignature) {
		t.Errorf("Verify(flipped signature) with warm cache = %v, want errSignature", err)
	}
}
