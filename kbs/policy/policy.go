// Package policy has the vendor libraries confirm the manifest's decisions.
//
// The broker and its clients decide with the manifest's own comparison of
// verified claims against reference values (manifest.Match and friends,
// pure Go). This package maps the manifest alternative that matched to the
// attestation policies of kbs/attest/snp and kbs/attest/tdx, whose Validate
// runs explicit debug and VMPL checks and then go-sev-guest's or
// go-tdx-guest's own validation with every option set. Confirm accepts only
// when both agree; a disagreement is ErrDisagreement, which callers treat
// as a rejection and an internal inconsistency to investigate.
//
// # Mapping
//
// Every manifest field lands in the policy; "any" becomes the policy's
// explicit Any flag (snp.Policy.Any…, a tdx.Field in tdx.Policy.Any). The
// attest policies hold one value where the manifest holds an allow list
// (measurements, host data, ids, VMPL, XFAM, TD attributes): the mapping
// takes the listed value equal to the claims' value, or the first listed
// value when none is (so that the library check fails). The library thus
// confirms that the claims carry a value the manifest lists; it is a second
// opinion on the comparison, not on the list.
//
// Where the rules differ, the stricter side wins: the SNP library never
// admits the CXL guest-policy bit (a manifest may), and checks REPORTED,
// COMMITTED and CURRENT TCB against the minimum (the manifest checks
// REPORTED). For Turin the attest/snp package reads TCB versions in the
// Milan/Genoa layout: the minimum is mapped through the raw TCB_VERSION,
// so the library confirms the Turin bootloader and microcode levels only;
// the manifest's comparison still checks all four.
//
// It trusts the claims it is given to come from a Verifier (signatures and
// REPORT_DATA checked there) and the manifest to be the verified, active
// one.
package policy

import (
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-sev-guest/kds"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/snp"
	"github.com/kbs-dev/kbs/kbs/attest/tdx"
	"github.com/kbs-dev/kbs/manifest"
)

// ErrDisagreement is returned by Confirm when the manifest matched the
// claims but the vendor library's validation rejects every matching
// alternative.
var ErrDisagreement = errors.New("policy: the vendor library's validation rejects claims the manifest accepts")

// SNP guest policy bits (SEV-SNP ABI, Table 9) the mapping reads.
const (
	snpPolicySMT       = 1 << 16
	snpPolicyMigrateMA = 1 << 18
)

// pick returns the listed value equal to got, else the first one.
func pick[T any](list []T, got T, eq func(a, b T) bool) (T, error) {
	var zero T
	if len(list) == 0 {
		return zero, errors.New("empty allow list")
	}
	for _, v := range list {
		if eq(v, got) {
			return v, nil
		}
	}
	return list[0], nil
}

func bytesEq(a, b []byte) bool         { return string(a) == string(b) }
func sameEq[T comparable](a, b T) bool { return a == b }

func hexField(l manifest.HexList, got []byte) ([]byte, bool, error) {
	if l.Any {
		return nil, true, nil
	}
	v, err := pick(l.Values, got, bytesEq)
	if v == nil && err == nil {
		v = []byte{} // a listed empty value stays a value
	}
	return v, false, err
}

// SNP maps one manifest alternative to an snp.Policy for claims c (which
// choose among listed values, see the package comment). The result always
// passes snp.Policy.Check, or SNP returns an error.
func SNP(v manifest.SNPValues, c *attest.Claims) (snp.Policy, error) {
	if c == nil || c.SNP == nil {
		return snp.Policy{}, errors.New("policy: claims hold no SNP fields")
	}
	s := c.SNP
	var p snp.Policy
	var errs []error
	set := func(name string, dst *[]byte, anyv *bool, l manifest.HexList, got []byte) {
		var err error
		if *dst, *anyv, err = hexField(l, got); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	set("measurement", &p.Measurement, &p.AnyMeasurement, v.Measurement, c.Measurement)
	set("host_data", &p.HostData, &p.AnyHostData, v.HostData, s.HostData)
	set("family_id", &p.FamilyID, &p.AnyFamilyID, v.FamilyID, s.FamilyID)
	set("image_id", &p.ImageID, &p.AnyImageID, v.ImageID, s.ImageID)

	if v.MaxPolicy.Any {
		// "any" (debug aside): every capability the library can admit.
		p.AllowSMT, p.AllowMigrationAgent = true, true
	} else {
		max := v.MaxPolicy.Value
		p.AllowSMT = max&snpPolicySMT != 0
		p.AllowMigrationAgent = max&snpPolicyMigrateMA != 0
		p.MinABIMinor, p.MinABIMajor = uint8(max), uint8(max>>8)
	}

	if v.VMPL.Any {
		p.AnyVMPL = true
	} else if vmpl, err := pick(v.VMPL.Values, s.VMPL, sameEq); err != nil {
		errs = append(errs, fmt.Errorf("vmpl: %w", err))
	} else {
		p.VMPL = &vmpl
	}

	if v.MinTCB.Any {
		p.MinTCB = &snp.TCB{}
	} else if t, err := snpTCB(v.MinTCB, s.Product); err != nil {
		errs = append(errs, fmt.Errorf("min_tcb: %w", err))
	} else {
		p.MinTCB = t
	}

	minSVN := v.MinGuestSVN.Value
	if v.MinGuestSVN.Any {
		minSVN = 0
	}
	p.MinGuestSVN = &minSVN

	if v.Product.Any {
		p.AnyProduct = true
	} else {
		p.Products = slices.Clone(v.Product.Values)
	}
	if v.ChipIDs.Any {
		p.AnyChipID = true
	} else {
		p.ChipIDs = slices.Clone(v.ChipIDs.Values)
	}
	if len(errs) > 0 {
		return snp.Policy{}, fmt.Errorf("policy: SNP reference values: %w", errors.Join(errs...))
	}
	if err := p.Check(); err != nil {
		return snp.Policy{}, fmt.Errorf("policy: SNP reference values: %w", err)
	}
	return p, nil
}

// snpTCB maps a manifest TCB minimum, written in the product's layout, to
// the components attest/snp compares (the Milan/Genoa layout).
func snpTCB(t manifest.TCB, product string) (*snp.TCB, error) {
	var raw uint64
	switch product {
	case "Milan", "Genoa":
		return &snp.TCB{Bootloader: t.Bootloader, TEE: t.TEE, SNP: t.SNP, Microcode: t.Microcode}, nil
	case "Turin":
		// FMC, BOOT_LOADER, TEE, SNP in bytes 0-3, MICROCODE in byte 7.
		raw = uint64(t.Bootloader)<<8 | uint64(t.TEE)<<16 | uint64(t.SNP)<<24 | uint64(t.Microcode)<<56
	default:
		return nil, fmt.Errorf("unknown SNP product %q: TCB layout unknown", product)
	}
	parts := kds.DecomposeTCBVersion(kds.TCBVersion(raw))
	return &snp.TCB{Bootloader: parts.BlSpl, TEE: parts.TeeSpl, SNP: parts.SnpSpl, Microcode: parts.UcodeSpl}, nil
}

// TDX maps one manifest alternative to a tdx.Policy for claims c (which
// choose among listed values, see the package comment). Every field is
// either set or named in Any.
func TDX(v manifest.TDXValues, c *attest.Claims) (tdx.Policy, error) {
	if c == nil || c.TDX == nil {
		return tdx.Policy{}, errors.New("policy: claims hold no TDX fields")
	}
	t := c.TDX
	var p tdx.Policy
	var errs []error
	set := func(f tdx.Field, dst *[]byte, l manifest.HexList, got []byte) {
		v, anyv, err := hexField(l, got)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", f, err))
		case anyv:
			p.Any = append(p.Any, f)
		default:
			*dst = v
		}
	}
	set(tdx.FieldMRTD, &p.MRTD, v.MRTD, t.MRTD)
	set(tdx.FieldRTMR0, &p.RTMR[0], v.RTMR0, t.RTMR[0])
	set(tdx.FieldRTMR1, &p.RTMR[1], v.RTMR1, t.RTMR[1])
	set(tdx.FieldRTMR2, &p.RTMR[2], v.RTMR2, t.RTMR[2])
	set(tdx.FieldRTMR3, &p.RTMR[3], v.RTMR3, t.RTMR[3])
	set(tdx.FieldMRConfigID, &p.MRConfigID, v.MRConfigID, t.MRConfigID)
	set(tdx.FieldMROwner, &p.MROwner, v.MROwner, t.MROwner)
	set(tdx.FieldMROwnerConfig, &p.MROwnerConfig, v.MROwnerConfig, t.MROwnerConfig)
	bits := func(f tdx.Field, dst **uint64, l manifest.BitsList, got uint64) {
		if l.Any {
			p.Any = append(p.Any, f)
			return
		}
		x, err := pick(l.Values, got, sameEq)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f, err))
			return
		}
		*dst = &x
	}
	bits(tdx.FieldXFAM, &p.XFAM, v.XFAM, t.XFAM)
	bits(tdx.FieldTDAttributes, &p.TDAttributes, v.TDAttributes, t.TDAttributes)
	if v.MinTEETCBSVN.Any {
		p.Any = append(p.Any, tdx.FieldMinTEETCBSVN)
	} else {
		p.MinTEETCBSVN = slices.Clone(v.MinTEETCBSVN.Value)
		if p.MinTEETCBSVN == nil {
			p.MinTEETCBSVN = []byte{}
		}
	}
	if v.MRSeam.Any {
		p.Any = append(p.Any, tdx.FieldMRSeam)
	} else {
		p.MRSeam = slices.Clone(v.MRSeam.Values)
		if p.MRSeam == nil {
			p.MRSeam = [][]byte{}
		}
	}
	if len(errs) > 0 {
		return tdx.Policy{}, fmt.Errorf("policy: TDX reference values: %w", errors.Join(errs...))
	}
	return p, nil
}

// Validate checks claims against one set of reference values with the
// vendor library's validation: snp.Validate or tdx.Validate of the mapped
// policy. Exactly one of sv and tv is used, matching c.Platform.
func Validate(c *attest.Claims, sv *manifest.SNPValues, tv *manifest.TDXValues) error {
	switch {
	case c == nil:
		return errors.New("policy: no claims")
	case c.Platform == attest.SNP && sv != nil:
		p, err := SNP(*sv, c)
		if err != nil {
			return err
		}
		return snp.Validate(c, p)
	case c.Platform == attest.TDX && tv != nil:
		p, err := TDX(*tv, c)
		if err != nil {
			return err
		}
		return tdx.Validate(c, p)
	}
	return fmt.Errorf("policy: no %s reference values to validate against", c.Platform)
}

// Confirm runs the vendor library's validation of c against class's
// alternatives that matched in r, a report of m (AuthorizeRelease,
// MatchClass or MatchService). It returns nil when at least one of them
// passes, else an error wrapping ErrDisagreement with each alternative's
// library error.
func Confirm(m *manifest.Manifest, r *manifest.Report, class string, c *attest.Claims) error {
	sv, tv := m.MatchedValues(r, class)
	var errs []error
	for i := range sv {
		if err := Validate(c, &sv[i], nil); err == nil {
			return nil
		} else {
			errs = append(errs, err)
		}
	}
	for i := range tv {
		if err := Validate(c, nil, &tv[i]); err == nil {
			return nil
		} else {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		return fmt.Errorf("%w: class %q has no matching alternative in the report", ErrDisagreement, class)
	}
	return fmt.Errorf("%w: class %q: %w", ErrDisagreement, class, errors.Join(errs...))
}
