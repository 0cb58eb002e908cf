package policy

import (
	"bytes"
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
	minTCB := func(field string, t *manifest.TCB) kds.TCBParts {
		if t == nil || t.Any {
			return kds.TCBParts{}
		}
		raw, err := t.SNPTCB().Encode(s.Product)
		if err != nil {
			o.fail(field, err)
		}
		return kds.DecomposeTCBVersion(kds.TCBVersion(raw))
	}

	// The library compares CHIP_ID with one 64-byte value: an 8-byte
	// hardware id (Turin) is the CHIP_ID it stands for, zero-padded.
	var chipID []byte
	if !v.ChipIDs.Any {
		ids := make([][]byte, len(v.ChipIDs.Values))
		for i, id := range v.ChipIDs.Values {
			ids[i] = id
			if len(id) == 8 {
				ids[i] = append(bytes.Clone(id), make([]byte, 56)...)
			}
		}
		chipID = o.bytes("chip_ids", manifest.HexList{Values: ids}, s.ChipID)
	}

	// ID block keys: the library checks the ID key unless the author key
	// is trusted, and the author key when one is required; the manifest
	// checks each listed digest on its own (stricter).
	var idKeys, authorKeys [][]byte
	if !v.IDKeyDigest.Absent() && !v.IDKeyDigest.Any {
		idKeys = [][]byte{o.bytes("id_key_digest", v.IDKeyDigest, s.IDKeyDigest)}
	}
	if !v.AuthorKeyDigest.Absent() && !v.AuthorKeyDigest.Any {
		authorKeys = [][]byte{o.bytes("author_key_digest", v.AuthorKeyDigest, s.AuthorKeyDigest)}
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
		ChipID:          chipID,
		GuestPolicy:     policy,
		VMPL:            vmpl,
		MinimumTCB:      minTCB("min_tcb", &v.MinTCB),
		MinimumGuestSvn: minSVN,
		PlatformInfo:    platformInfo(policy.SMT, s.PlatformInfo),
		ReportData:      c.ReportData[:], // Verify bound it to the caller's challenge

		// No manifest field names these (yet).
		ReportID:   nil, // names one VM instance
		ReportIDMA: nil, // likewise, for the migration agent
		// Firmware build/API versions are covered by the TCB minimum.
		MinimumBuild:   0,
		MinimumVersion: 0,
		// LAUNCH_TCB: min_launch_tcb when the manifest gives one (it may
		// legitimately be below min_tcb after a live firmware update).
		MinimumLaunchTCB: minTCB("min_launch_tcb", v.MinLaunchTCB),
		// Committed may trail current (reported ≤ committed ≤ current).
		PermitProvisionalFirmware:      true,
		RequireAuthorKey:               authorKeys != nil,
		RequireIDBlock:                 idKeys != nil,
		TrustedAuthorKeys:              nil, // digests only: the manifest pins digests
		TrustedAuthorKeyHashes:         authorKeys,
		TrustedIDKeys:                  nil,
		TrustedIDKeyHashes:             idKeys,
		CertTableOptions:               nil,
		MinimumLaunchMitigationVector:  0,
		MinimumCurrentMitigationVector: 0,
	}
	if err := o.err("SNP"); err != nil {
		return nil, err
	}
	return opts, nil
}

// platformIOMMUWriteSafe is PLATFORM_INFO bit 6, which Turin sets and
// go-sev-guest v0.15.0 calls reserved.
const platformIOMMUWriteSafe = 1 << 6

// platformInfo is the PLATFORM_INFO option: SMT on the host only when the
// guest policy permits SMT, SEV-TIO never. go-sev-guest v0.15.0 refuses
// every report with bit 6 set, which real Turin platforms set (IOMMU write
// safe): for those the option is nil and the manifest's comparison alone
// judges PLATFORM_INFO (platform_info.smt, platform_info).
func platformInfo(smt bool, got uint64) *abi.SnpPlatformInfo {
	if got&platformIOMMUWriteSafe != 0 {
		return nil
	}
	return &abi.SnpPlatformInfo{SMTEnabled: smt, TSMEEnabled: true}
}
