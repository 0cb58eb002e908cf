package policy

import (
	"errors"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	"github.com/google/go-sev-guest/validate"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/manifest"
)

// SNPOptions returns go-sev-guest's validation options for one alternative
// of SEV-SNP reference values, v, and the verified claims c (which choose
// among listed values; see the package documentation). It is the one place
// where a manifest's SNP field becomes a library option, and it sets every
// option: a nil or zero one is "any" in v, or a report field that no
// manifest names (said below). It fails, naming the fields, when v is
// incomplete: a field neither "any" nor listing a value.
func SNPOptions(v manifest.SNPValues, c *attest.Claims) (*validate.Options, error) {
	if c == nil || c.SNP == nil {
		return nil, errors.New("policy: claims hold no SNP fields")
	}
	s := c.SNP
	var o options

	// The guest policy: the manifest's most permissive one. Debug is never
	// allowed; CXL is never admitted by the library (see the package
	// documentation).
	policy := abi.SnpPolicy{SMT: true, MigrateMA: true} // "any" (debug aside)
	if !v.MaxPolicy.Any {
		p, err := abi.ParseSnpPolicy(v.MaxPolicy.Value)
		switch {
		case err != nil:
			o.fail("max_policy", err)
		case p.Debug:
			o.fail("max_policy", errors.New("allows DEBUG"))
		}
		policy = p
		policy.Debug, policy.CXLAllowed = false, false
	}

	var vmpl *int
	if !v.VMPL.Any {
		if x, err := pick(v.VMPL.Values, s.VMPL, same); err != nil {
			o.fail("vmpl", err)
		} else {
			n := int(x)
			vmpl = &n
		}
	}

	// The library reads TCB_VERSION in the Milan/Genoa layout: the minimum
	// goes through the raw value in the product's own layout.
	var minTCB kds.TCBParts
	if !v.MinTCB.Any {
		raw, err := attest.SNPTCB{Bootloader: v.MinTCB.Bootloader, TEE: v.MinTCB.TEE, SNP: v.MinTCB.SNP, Microcode: v.MinTCB.Microcode}.Encode(s.Product)
		if err != nil {
			o.fail("min_tcb", err)
		}
		minTCB = kds.DecomposeTCBVersion(kds.TCBVersion(raw))
	}

	var minSVN uint32
	if !v.MinGuestSVN.Any {
		minSVN = v.MinGuestSVN.Value
	}

	// "product" has no library option: the manifest's comparison alone
	// decides it. An empty list is still an error, never a skip.
	if !v.Product.Any && len(v.Product.Values) == 0 {
		o.fail("product", errors.New("empty allow list"))
	}

	opts := &validate.Options{
		Measurement:     o.bytes("measurement", v.Measurement, c.Measurement),
		HostData:        o.bytes("host_data", v.HostData, s.HostData),
		FamilyID:        o.bytes("family_id", v.FamilyID, s.FamilyID),
		ImageID:         o.bytes("image_id", v.ImageID, s.ImageID),
		ChipID:          o.bytes("chip_ids", v.ChipIDs, s.ChipID),
		GuestPolicy:     policy,
		VMPL:            vmpl,
		MinimumTCB:      minTCB,
		MinimumGuestSvn: minSVN,
		PlatformInfo:    &abi.SnpPlatformInfo{SMTEnabled: policy.SMT, TSMEEnabled: true},
		ReportData:      c.ReportData[:], // Verify bound it to the caller's challenge

		// No manifest field names these (yet).
		ReportID:   nil, // names one VM instance
		ReportIDMA: nil, // likewise, for the migration agent
		// Firmware build/API versions are covered by the TCB minimum.
		MinimumBuild:   0,
		MinimumVersion: 0,
		// LAUNCH_TCB may legitimately be below the minimum after a live
		// firmware update; the running TCB is what MinTCB bounds.
		MinimumLaunchTCB: kds.TCBParts{},
		// Committed may trail current (reported ≤ committed ≤ current).
		PermitProvisionalFirmware:      true,
		RequireAuthorKey:               false, // ID blocks are not part of manifests
		RequireIDBlock:                 false,
		TrustedAuthorKeys:              nil,
		TrustedAuthorKeyHashes:         nil,
		TrustedIDKeys:                  nil,
		TrustedIDKeyHashes:             nil,
		CertTableOptions:               nil,
		MinimumLaunchMitigationVector:  0,
		MinimumCurrentMitigationVector: 0,
	}
	if err := o.err("SNP"); err != nil {
		return nil, err
	}
	return opts, nil
}
