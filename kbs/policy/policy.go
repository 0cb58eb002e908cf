// Package policy has the vendor libraries confirm the manifest's decisions.
//
// Evidence passes two layers after verification. The manifest decides and
// explains: manifest.Match compares the verified claims with every
// reference value and names each field that differs. Then the vendor
// library confirms: go-sev-guest's or go-tdx-guest's validation of the same
// claims, with options built from the alternative the manifest matched.
// Confirm accepts only when both agree; a disagreement is ErrDisagreement,
// which callers treat as a rejection and an internal inconsistency to
// investigate. The hard rules (debug never allowed, REPORT_DATA bound to
// the caller's challenge) are the verifiers' (kbs/attest/snp, tdx), before
// either layer runs.
//
// # Where each field becomes an option
//
// SNPOptions (snp.go) and TDXOptions (tdx.go) are the one place per
// platform where a manifest field becomes a library option: a new reference
// value is added to the manifest package and to one of those two
// functions. Every option is set: the libraries do not check a field whose
// option is nil or zero, so a nil there is a manifest "any" or a report
// field that holds no reference value, and each says which.
//
// The libraries compare with one value where the manifest holds an allow
// list (measurements, host data, ids, VMPL, XFAM, TD attributes, MRSEAM):
// the option takes the listed value equal to the claims' value, or the
// first listed value when none is (so that the library check fails). The
// library thus confirms that the claims carry a value the manifest lists;
// it is a second opinion on the comparison, not on the list.
//
// What the libraries refuse whatever the values say — the CXL guest-policy
// bit, a host with SEV-TIO or SMT the guest policy does not permit, TCB
// order, the architecturally fixed bits of XFAM and TD_ATTRIBUTES — the
// manifest's comparison explains too (manifest.Match), so that its report
// never shows a match the library then refuses. go-sev-guest v0.15.0 reads
// every TCB_VERSION in the Milan/Genoa layout and compares all eight bytes:
// the minimum is mapped through the raw TCB_VERSION in the product's own
// layout (attest.SNPTCB.Encode), so that for Turin too it compares the bytes
// that hold each level (FMC included). Where a manifest field has no
// library option (SNP product; TDX MRSIGNERSEAM, TD report 1.5 fields, TCB
// status) the manifest alone decides, and the builders say so.
//
// # Adding a reference value
//
// A new field the manifest may pin (an SNP ID key digest, a TDX
// MRSIGNERSEAM, ...) is added in two places: the manifest package (the
// SNPValues or TDXValues field, its decoding in schema.go, its check in
// Match, its line in Diff, PinSNP or PinTDX) and the option here (SNPOptions
// or TDXOptions). The claims already carry every report field
// (attest.SNPClaims, attest.TDXClaims); the field-mutation tests of this
// package (TestSNPFieldRejections, TestTDXSimFields, TestTDXRealQuoteFields)
// then get one row.
//
// It trusts the claims it is given to come from a Verifier (signatures and
// REPORT_DATA checked there) and the manifest to be the verified, active
// one.
//
// # Witnesses
//
// Witnesses (witnesses.go) turns the manifest's witness policy into the
// tlog.Quorum that the broker submits its checkpoints to and that clients,
// workers and auditors require on the checkpoints they rely on: one
// conversion for every party.
package policy

import (
	"errors"
	"fmt"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/snp"
	"github.com/kbs-dev/kbs/kbs/attest/tdx"
	"github.com/kbs-dev/kbs/manifest"
)

// ErrDisagreement is returned by Confirm when the manifest matched the
// claims but the vendor library's validation rejects every matching
// alternative.
var ErrDisagreement = errors.New("policy: the vendor library's validation rejects claims the manifest accepts")

// Validate checks claims against one set of reference values with the
// vendor library's validation: snp.Validate with SNPOptions, or
// tdx.Validate with TDXOptions. Exactly one of sv and tv is used, matching
// c.Platform.
func Validate(c *attest.Claims, sv *manifest.SNPValues, tv *manifest.TDXValues) error {
	switch {
	case c == nil:
		return errors.New("policy: no claims")
	case c.Platform == attest.SNP && sv != nil:
		opts, err := SNPOptions(*sv, c)
		if err != nil {
			return err
		}
		return snp.Validate(c, opts)
	case c.Platform == attest.TDX && tv != nil:
		opts, err := TDXOptions(*tv, c)
		if err != nil {
			return err
		}
		return tdx.Validate(c, opts)
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

// pick returns the listed value equal to got, else the first one; an empty
// list is an error (it would leave the option unchecked).
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

func same[T comparable](a, b T) bool { return a == b }

// options collects the errors of one options builder, field by field.
type options struct{ errs []error }

func (o *options) fail(field string, err error) {
	o.errs = append(o.errs, fmt.Errorf("%s: %w", field, err))
}

// bytes returns the option of a hex allow list: nil for "any", else the
// listed value that equals got (see pick).
func (o *options) bytes(field string, l manifest.HexList, got []byte) []byte {
	if l.Any {
		return nil
	}
	v, err := pick(l.Values, got, func(a, b []byte) bool { return string(a) == string(b) })
	if err != nil {
		o.fail(field, err)
		return nil
	}
	if len(v) == 0 {
		// The libraries skip an empty option: never let one through.
		o.fail(field, errors.New("empty value"))
		return nil
	}
	return v
}

func (o *options) err(platform string) error {
	if len(o.errs) == 0 {
		return nil
	}
	return fmt.Errorf("policy: %s reference values: %w", platform, errors.Join(o.errs...))
}
