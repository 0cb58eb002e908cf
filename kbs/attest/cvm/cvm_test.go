package cvm

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"
	"github.com/kbs-dev/kbs/kbs/attest"
)

func TestDetectOffHardware(t *testing.T) {
	_, errTSM := os.Stat(tsmReportDir)
	_, errDev := os.Stat(sevGuestDev)
	if errTSM == nil || errDev == nil {
		t.Skip("this machine has a TEE interface")
	}
	_, err := Detect()
	if !errors.Is(err, ErrNoTEE) || !strings.Contains(err.Error(), tsmReportDir) || !strings.Contains(err.Error(), sevGuestDev) {
		t.Errorf("Detect() = %v, want ErrNoTEE naming both interfaces", err)
	}
	if _, err := NewTSMIssuer(attest.TDX); !errors.Is(err, ErrNoTEE) {
		t.Errorf("NewTSMIssuer(TDX) = %v, want ErrNoTEE", err)
	}
	if _, err := NewSevGuestIssuer(); !errors.Is(err, ErrNoTEE) {
		t.Errorf("NewSevGuestIssuer() = %v, want ErrNoTEE", err)
	}
}

// providerClient is faketsm with a chosen provider name.
type providerClient struct {
	configfsi.Client
	provider string
}

func (c providerClient) ReadFile(name string) ([]byte, error) {
	if strings.HasSuffix(name, "/provider") {
		return []byte(c.provider + "\n"), nil
	}
	return c.Client.ReadFile(name)
}

func fakeTSM(provider string) configfsi.Client {
	return providerClient{
		Client:   &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": faketsm.ReportV7(0)}},
		provider: provider,
	}
}

func TestTSMIssuer(t *testing.T) {
	if _, err := newTSMIssuer(fakeTSM("fake"), attest.SNP); !errors.Is(err, ErrNoTEE) {
		t.Errorf("unknown provider: err = %v, want ErrNoTEE", err)
	}
	if _, err := newTSMIssuer(fakeTSM("sev_guest"), attest.TDX); !errors.Is(err, ErrNoTEE) {
		t.Errorf("SNP provider for a TDX issuer: err = %v, want ErrNoTEE", err)
	}
	iss, err := newTSMIssuer(fakeTSM("tdx_guest"), attest.TDX)
	if err != nil {
		t.Fatal(err)
	}
	rd := [64]byte{0xde, 0xad}
	ev, err := iss.Issue(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	// faketsm's outblob echoes the inblob in hex.
	if ev.Platform != attest.TDX || !strings.Contains(string(ev.Data), "inblob: dead0000") {
		t.Errorf("Issue() = %q, %q", ev.Platform, ev.Data)
	}
}
