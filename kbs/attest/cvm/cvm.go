// Package cvm obtains attestation evidence for the code running inside this
// confidential VM, in the formats kbs/attest verifies: for SEV-SNP the report
// followed by its certificate table, for TDX the raw quote.
//
// It uses the kernel's configfs-tsm interface (/sys/kernel/config/tsm/report,
// Linux 6.7+, SNP and TDX) through go-configfs-tsm, and falls back to the
// /dev/sev-guest ioctl for SNP on older kernels. It trusts the kernel to pass
// the request to the platform firmware; it verifies nothing itself (the
// evidence is for a remote verifier). Off hardware every constructor fails
// with an error wrapping ErrNoTEE.
//
// Importing this package links go-sev-guest's client, which registers the
// flags -sev_guest_device_path, -self_throttle_duration,
// -self_throttle_burst and -default_vmpl on flag.CommandLine.
package cvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	"github.com/google/go-configfs-tsm/report"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/client"
	"github.com/kbs-dev/kbs/kbs/attest"
)

// ErrNoTEE is wrapped by every error that means "this machine offers no
// attestation interface".
var ErrNoTEE = errors.New("no TEE found")

const (
	tsmReportDir = configfsi.TsmPrefix + "/report"
	sevGuestDev  = "/dev/sev-guest"
)

// providers maps configfs-tsm provider names to platforms.
var providers = map[string]attest.Platform{
	"sev_guest": attest.SNP,
	"tdx_guest": attest.TDX,
}

// Detect returns an issuer for this machine's TEE: configfs-tsm when the
// kernel offers it (SNP or TDX, as its provider says), else /dev/sev-guest.
func Detect() (attest.Issuer, error) {
	var tsmErr error
	if _, err := os.Stat(tsmReportDir); err == nil {
		c, err := linuxtsm.MakeClient()
		if err == nil {
			var p attest.Platform
			if p, err = probeProvider(c); err == nil {
				return &tsmIssuer{client: c, platform: p}, nil
			}
		}
		tsmErr = fmt.Errorf("configfs-tsm: %w", err)
	}
	if _, err := os.Stat(sevGuestDev); err == nil {
		return NewSevGuestIssuer()
	}
	if tsmErr != nil {
		return nil, fmt.Errorf("%w (and %s absent)", tsmErr, sevGuestDev)
	}
	return nil, fmt.Errorf("%w: %s missing and %s absent", ErrNoTEE, tsmReportDir, sevGuestDev)
}

// NewTSMIssuer returns an issuer using configfs-tsm that insists the
// kernel's provider is platform p.
func NewTSMIssuer(p attest.Platform) (attest.Issuer, error) {
	if _, err := os.Stat(tsmReportDir); err != nil {
		return nil, fmt.Errorf("%w: %s missing", ErrNoTEE, tsmReportDir)
	}
	c, err := linuxtsm.MakeClient()
	if err != nil {
		return nil, fmt.Errorf("configfs-tsm: %v", err)
	}
	return newTSMIssuer(c, p)
}

func newTSMIssuer(c configfsi.Client, p attest.Platform) (*tsmIssuer, error) {
	got, err := probeProvider(c)
	if err != nil {
		return nil, err
	}
	if got != p {
		return nil, fmt.Errorf("%w: configfs-tsm provides %s evidence, not %s", ErrNoTEE, got, p)
	}
	return &tsmIssuer{client: c, platform: p}, nil
}

// probeProvider creates and destroys an empty report entry to read the
// provider name.
func probeProvider(c configfsi.Client) (attest.Platform, error) {
	r, err := report.Create(c, &report.Request{})
	if err != nil {
		return "", fmt.Errorf("configfs-tsm: creating a report entry: %v", err)
	}
	name, err := r.ReadOption("provider")
	derr := r.Destroy()
	if err != nil {
		return "", fmt.Errorf("configfs-tsm: reading the provider: %v", err)
	}
	if derr != nil {
		return "", fmt.Errorf("configfs-tsm: removing the report entry: %v", derr)
	}
	p, ok := providers[strings.TrimSpace(string(name))]
	if !ok {
		return "", fmt.Errorf("%w: unknown configfs-tsm provider %q", ErrNoTEE, strings.TrimSpace(string(name)))
	}
	return p, nil
}

type tsmIssuer struct {
	client   configfsi.Client
	platform attest.Platform
}

func (t *tsmIssuer) Platform() attest.Platform { return t.platform }

// Issue asks the kernel for a report binding reportData. For SNP the
// auxblob (the certificate table) follows the report, extended with the
// platform-info entry go-sev-guest adds.
func (t *tsmIssuer) Issue(ctx context.Context, reportData [attest.ReportDataSize]byte) (attest.Evidence, error) {
	if err := ctx.Err(); err != nil {
		return attest.Evidence{}, err
	}
	resp, err := report.Get(t.client, &report.Request{InBlob: reportData[:], GetAuxBlob: t.platform == attest.SNP})
	if err != nil {
		return attest.Evidence{}, fmt.Errorf("configfs-tsm report: %v", err)
	}
	if got := providers[strings.TrimSpace(resp.Provider)]; got != t.platform {
		return attest.Evidence{}, fmt.Errorf("configfs-tsm: provider %q answered, want %s", strings.TrimSpace(resp.Provider), t.platform)
	}
	data := resp.OutBlob
	if t.platform == attest.SNP && len(resp.AuxBlob) > 0 {
		ext, err := abi.ExtendedPlatformCertTable(resp.AuxBlob)
		if err != nil {
			return attest.Evidence{}, fmt.Errorf("configfs-tsm: certificate table: %v", err)
		}
		data = append(data, ext...)
	}
	return attest.Evidence{Platform: t.platform, Data: data}, nil
}

// NewSevGuestIssuer returns an SNP issuer using the /dev/sev-guest ioctl
// (extended report at VMPL 0).
func NewSevGuestIssuer() (attest.Issuer, error) {
	if _, err := os.Stat(sevGuestDev); err != nil {
		return nil, fmt.Errorf("%w: %s absent", ErrNoTEE, sevGuestDev)
	}
	return sevGuestIssuer{}, nil
}

type sevGuestIssuer struct{}

func (sevGuestIssuer) Platform() attest.Platform { return attest.SNP }

func (sevGuestIssuer) Issue(ctx context.Context, reportData [attest.ReportDataSize]byte) (attest.Evidence, error) {
	if err := ctx.Err(); err != nil {
		return attest.Evidence{}, err
	}
	data, err := (&client.LinuxIoctlQuoteProvider{}).GetRawQuoteAtLevel(reportData, 0)
	if err != nil {
		return attest.Evidence{}, fmt.Errorf("%s: %v", sevGuestDev, err)
	}
	return attest.Evidence{Platform: attest.SNP, Data: data}, nil
}
