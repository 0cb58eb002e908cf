package policy

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/validate"

	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/manifest"
)

// tdDebug is TD_ATTRIBUTES bit 0, DEBUG.
const tdDebug = 1

// TDXOptions returns go-tdx-guest's validation options for one alternative
// of TDX reference values, v, and the verified claims c (which choose among
// listed values; see the package documentation). It is the one place where
// a manifest's TDX field becomes a library option, and it sets every
// option: a nil one is "any" in v, or a quote field that no manifest names
// (said below). It fails, naming the fields, when v is incomplete: a field
// neither "any" nor listing a value.
func TDXOptions(v manifest.TDXValues, c *attest.Claims) (*validate.Options, error) {
	if c == nil || c.TDX == nil {
		return nil, errors.New("policy: claims hold no TDX fields")
	}
	t := c.TDX
	var o options

	bits := func(field string, l manifest.BitsList, got uint64) []byte {
		if l.Any {
			return nil
		}
		x, err := pick(l.Values, got, same)
		if err != nil {
			o.fail(field, err)
			return nil
		}
		return binary.LittleEndian.AppendUint64(nil, x)
	}
	for i, x := range v.TDAttributes.Values {
		if x&tdDebug != 0 {
			o.fail(fmt.Sprintf("td_attributes[%d]", i), errors.New("allows DEBUG"))
		}
	}

	var rtmrs [][]byte // nil entries are not checked by the library
	for i, l := range []manifest.HexList{v.RTMR0, v.RTMR1, v.RTMR2, v.RTMR3} {
		if r := o.bytes(fmt.Sprintf("rtmr%d", i), l, t.RTMR[i]); r != nil {
			if rtmrs == nil {
				rtmrs = make([][]byte, 4)
			}
			rtmrs[i] = r
		}
	}

	var minSVN []byte
	switch {
	case v.MinTEETCBSVN.Any:
	case len(v.MinTEETCBSVN.Value) != abi.TeeTcbSvnSize:
		o.fail("min_tee_tcb_svn", fmt.Errorf("%d bytes, want %d", len(v.MinTEETCBSVN.Value), abi.TeeTcbSvnSize))
	default:
		minSVN = v.MinTEETCBSVN.Value
	}

	opts := &validate.Options{
		TdQuoteBodyOptions: validate.TdQuoteBodyOptions{
			MrTd:             o.bytes("mrtd", v.MRTD, t.MRTD),
			Rtmrs:            rtmrs,
			MrConfigID:       o.bytes("mrconfigid", v.MRConfigID, t.MRConfigID),
			MrOwner:          o.bytes("mrowner", v.MROwner, t.MROwner),
			MrOwnerConfig:    o.bytes("mrownerconfig", v.MROwnerConfig, t.MROwnerConfig),
			Xfam:             bits("xfam", v.XFAM, t.XFAM),
			TdAttributes:     bits("td_attributes", v.TDAttributes, t.TDAttributes),
			MinimumTeeTcbSvn: minSVN,
			MrSeam:           o.bytes("mrseam", v.MRSeam, t.MRSeam),
			ReportData:       c.ReportData[:], // Verify bound it to the caller's challenge
		},
		// MRSIGNERSEAM, TEE_TCB_SVN2, MRSERVICETD and the TCB status
		// (tcb_exceptions) have no option here: the manifest decides them,
		// and Verify matched MRSIGNERSEAM against Intel's collateral.
		// The quote header is not part of the claims: Verify fixes Intel's
		// QE vendor ID, the collateral judges the QE and PCE SVNs.
		HeaderOptions: validate.HeaderOptions{
			MinimumQeSvn:  0,
			MinimumPceSvn: 0,
			QeVendorID:    nil,
		},
	}
	if err := o.err("TDX"); err != nil {
		return nil, err
	}
	return opts, nil
}
