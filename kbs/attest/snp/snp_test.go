package snp

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"github.com/google/uuid"
	"github.com/kbs-dev/kbs/kbs/attest"
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
	if _, err := amdVerifier(t, milanNow, dir).Verify(ctx, bare, milanReportData); !errors.Is(err, ErrNoCertificate) {
		t.Fatalf("Verify(bare report, empty cache) = %v, want ErrNoCertificate", err)
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
		{"expired", amdVerifier(t, time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), ""), ev, ErrCertificateExpired},
		{"not yet valid", amdVerifier(t, time.Date(2022, 1, 1, 0, 0, 0, 0, time.UTC), ""), ev, ErrCertificateExpired},
		{"flipped signature", amdVerifier(t, milanNow, ""), attest.Evidence{Platform: attest.SNP, Data: flipped}, ErrSignature},
		{"sim roots only", simVerifier(t, testSim(t)), ev, ErrChain},
		{"truncated", amdVerifier(t, milanNow, ""), attest.Evidence{Platform: attest.SNP, Data: ev.Data[:100]}, ErrMalformed},
		{"wrong platform", amdVerifier(t, milanNow, ""), attest.Evidence{Platform: attest.TDX, Data: ev.Data}, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.v.Verify(ctx, tt.ev, milanReportData)
			checkOnly(t, err, tt.want)
		})
	}
}

var allErrors = []error{
	ErrMalformed, ErrNoCertificate, ErrCertificateExpired, ErrSignature, ErrChain, ErrRevoked,
	ErrCertMismatch, ErrTCBInconsistent, ErrDebug, ErrReportData,
	ErrPolicyInvalid, ErrClaims, ErrMeasurement, ErrHostData, ErrFamilyID, ErrImageID,
	ErrGuestPolicy, ErrVMPL, ErrTCBBelowMinimum, ErrGuestSVN, ErrProduct, ErrChipID, ErrLibraryCheck,
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

func u32(v uint32) *uint32 { return &v }

// simPolicy accepts the default simulated evidence and pins every field.
func simPolicy(t testing.TB, dir string) Policy {
	t.Helper()
	iss, err := NewSimIssuer(dir, SimOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tcb := SimTCB()
	return Policy{
		Measurement: make([]byte, 48),
		HostData:    make([]byte, 32),
		FamilyID:    make([]byte, 16),
		ImageID:     make([]byte, 16),
		AllowSMT:    true,
		VMPL:        u32(0),
		MinTCB:      &tcb,
		MinGuestSVN: u32(0),
		Products:    []string{"Milan"},
		ChipIDs:     [][]byte{iss.hwid},
	}
}

// TestNegativeMatrix mutates one thing per row and expects one precise
// error.
func TestNegativeMatrix(t *testing.T) {
	ctx := context.Background()
	dir := testSim(t)
	v := simVerifier(t, dir)
	rd := [64]byte{0xaa, 0xbb}
	base := simPolicy(t, dir)

	rogueDir := t.TempDir()
	if err := GenerateSim(rogueDir); err != nil {
		t.Fatal(err)
	}
	far, err := NewVerifier(Options{Roots: v.rootList(), Now: func() time.Time { return simNow(t, dir).AddDate(30, 0, 0) }})
	if err != nil {
		t.Fatal(err)
	}

	type row struct {
		name     string
		opts     SimOptions
		issuerOf string // "" = the test sim, "rogue" = another sim
		mutate   func(*spb.Report)
		tamper   func([]byte)
		verifier *Verifier
		rd       *[64]byte
		policy   func(*Policy)
		want     error
	}
	other48 := make([]byte, 48)
	other48[0] = 1
	rows := []row{
		{name: "ok"},
		{name: "debug bit", opts: SimOptions{GuestPolicy: DefaultSimGuestPolicy | 1<<19}, want: ErrDebug},
		{name: "VMPL", opts: SimOptions{VMPL: 1}, want: ErrVMPL},
		{name: "measurement", policy: func(p *Policy) { p.Measurement = other48 }, want: ErrMeasurement},
		{name: "host data", opts: SimOptions{HostData: append([]byte{1}, make([]byte, 31)...)}, want: ErrHostData},
		{name: "family id", opts: SimOptions{FamilyID: append([]byte{1}, make([]byte, 15)...)}, want: ErrFamilyID},
		{name: "image id", opts: SimOptions{ImageID: append([]byte{1}, make([]byte, 15)...)}, want: ErrImageID},
		{name: "TCB below minimum", policy: func(p *Policy) { m := *p.MinTCB; m.SNP++; p.MinTCB = &m }, want: ErrTCBBelowMinimum},
		{name: "guest SVN", policy: func(p *Policy) { p.MinGuestSVN = u32(2) }, opts: SimOptions{GuestSVN: 1}, want: ErrGuestSVN},
		{name: "SMT not allowed", policy: func(p *Policy) { p.AllowSMT = false }, want: ErrGuestPolicy},
		{name: "migration agent", opts: SimOptions{GuestPolicy: DefaultSimGuestPolicy | 1<<18}, want: ErrGuestPolicy},
		{name: "product", policy: func(p *Policy) { p.Products = []string{"Genoa"} }, want: ErrProduct},
		{name: "chip id", policy: func(p *Policy) { p.ChipIDs = [][]byte{make([]byte, 64)} }, want: ErrChipID},
		{name: "REPORT_DATA", rd: &[64]byte{0xaa}, want: ErrReportData},
		{name: "flipped signature byte", tamper: func(b []byte) { b[0x2A0] ^= 0x80 }, want: ErrSignature},
		{name: "tampered measurement", tamper: func(b []byte) { b[0x90] ^= 1 }, want: ErrSignature},
		{name: "rogue root", issuerOf: "rogue", want: ErrChain},
		{name: "expired certificate", verifier: far, want: ErrCertificateExpired},
		{name: "reported TCB not the VCEK's", mutate: func(r *spb.Report) { r.ReportedTcb--; r.CommittedTcb--; r.CurrentTcb-- }, want: ErrCertMismatch},
		{name: "chip id not the VCEK's", mutate: func(r *spb.Report) { r.ChipId[0] ^= 1 }, want: ErrCertMismatch},
		{name: "committed above current", mutate: func(r *spb.Report) { r.CurrentTcb-- }, want: ErrTCBInconsistent},
		{name: "incomplete policy", policy: func(p *Policy) { p.VMPL = nil }, want: ErrPolicyInvalid},
		{name: "zero policy", policy: func(p *Policy) { *p = Policy{} }, want: ErrPolicyInvalid},
	}
	for _, tt := range rows {
		t.Run(tt.name, func(t *testing.T) {
			d := dir
			if tt.issuerOf == "rogue" {
				d = rogueDir
			}
			iss, err := NewSimIssuer(d, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			iss.mutate = tt.mutate
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
				p := base
				p.ChipIDs = [][]byte{iss.hwid}
				if tt.policy != nil {
					tt.policy(&p)
				}
				err = Validate(c, p)
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
	ev := issue(t, dir, SimOptions{}, rd)
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
	if _, err := v.Verify(ctx, ev, rd); !errors.Is(err, ErrCertificateExpired) {
		t.Errorf("Verify after expiry with warm cache = %v, want ErrCertificateExpired", err)
	}
	// And a bad signature under a cached key is still caught.
	now = simNow(t, dir)
	bad := attest.Evidence{Platform: attest.SNP, Data: append([]byte(nil), ev.Data...)}
	bad.Data[0x2A0] ^= 0x80
	if _, err := v.Verify(ctx, bad, rd); !errors.Is(err, ErrSignature) {
		t.Errorf("Verify(flipped signature) with warm cache = %v, want ErrSignature", err)
	}
}

func TestPolicyCheck(t *testing.T) {
	dir := testSim(t)
	good := simPolicy(t, dir)
	if err := good.Check(); err != nil {
		t.Fatalf("Check(good) = %v", err)
	}
	any := Policy{AnyMeasurement: true, AnyHostData: true, AnyFamilyID: true, AnyImageID: true,
		AnyVMPL: true, MinTCB: &TCB{}, MinGuestSVN: u32(0), AnyProduct: true, AnyChipID: true}
	if err := any.Check(); err != nil {
		t.Errorf("Check(all Any) = %v", err)
	}
	bad := []func(*Policy){
		func(p *Policy) { p.Measurement = nil },
		func(p *Policy) { p.AnyMeasurement = true },
		func(p *Policy) { p.Measurement = make([]byte, 32) },
		func(p *Policy) { p.HostData = nil },
		func(p *Policy) { p.FamilyID = nil },
		func(p *Policy) { p.ImageID = nil },
		func(p *Policy) { p.VMPL = u32(4) },
		func(p *Policy) { p.AnyVMPL = true },
		func(p *Policy) { p.MinTCB = nil },
		func(p *Policy) { p.MinTCB = &TCB{SNP: 200} },
		func(p *Policy) { p.MinGuestSVN = nil },
		func(p *Policy) { p.Products = nil },
		func(p *Policy) { p.ChipIDs = nil },
		func(p *Policy) { p.ChipIDs = [][]byte{{1}} },
	}
	for i, mutate := range bad {
		p := good
		mutate(&p)
		if err := p.Check(); !errors.Is(err, ErrPolicyInvalid) {
			t.Errorf("Check(bad policy %d) = %v, want ErrPolicyInvalid", i, err)
		}
	}
	if err := Validate(&attest.Claims{Platform: attest.SNP}, good); !errors.Is(err, ErrClaims) {
		t.Errorf("Validate(empty claims) = %v, want ErrClaims", err)
	}
}

// TestLibraryOptionsWired checks that the go-sev-guest options built from a
// policy reject, on their own, what the policy forbids: the second line of
// defence is really armed.
func TestLibraryOptionsWired(t *testing.T) {
	ctx := context.Background()
	dir := testSim(t)
	rd := [64]byte{3}
	c, err := simVerifier(t, dir).Verify(ctx, issue(t, dir, SimOptions{VMPL: 2, GuestSVN: 1}, rd), rd)
	if err != nil {
		t.Fatal(err)
	}
	r, err := abi.ReportToProto(c.SNP.Report)
	if err != nil {
		t.Fatal(err)
	}
	att := &spb.Attestation{Report: r, CertificateChain: &spb.CertificateChain{VcekCert: c.SNP.EndorsementKey}}
	base := simPolicy(t, dir)
	base.VMPL = u32(2)
	base.ChipIDs = [][]byte{c.SNP.ChipID}
	if err := validate.SnpAttestation(att, libraryOptions(r, base)); err != nil {
		t.Fatalf("library rejects matching policy: %v", err)
	}
	other := make([]byte, 48)
	other[5] = 1
	for name, mutate := range map[string]func(*Policy){
		"measurement": func(p *Policy) { p.Measurement = other },
		"host data":   func(p *Policy) { p.HostData = other[:32] },
		"family id":   func(p *Policy) { p.FamilyID = other[:16] },
		"image id":    func(p *Policy) { p.ImageID = other[:16] },
		"vmpl":        func(p *Policy) { p.VMPL = u32(0) },
		"smt":         func(p *Policy) { p.AllowSMT = false },
		"tcb":         func(p *Policy) { m := *p.MinTCB; m.Microcode++; p.MinTCB = &m },
		"guest svn":   func(p *Policy) { p.MinGuestSVN = u32(2) },
	} {
		p := base
		mutate(&p)
		if err := validate.SnpAttestation(att, libraryOptions(r, p)); err == nil {
			t.Errorf("library accepts a report that violates %s", name)
		}
	}
}
