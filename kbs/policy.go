package kbs

import (
	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/manifest"
)

// confirmFunc is the second decision on claims the manifest matched:
// policy.Confirm, the vendor libraries' validation of the matched
// alternatives of class in report r of m.
type confirmFunc func(m *manifest.Manifest, r *manifest.Report, class string, c *attest.Claims) error

// authorize decides a release in two independent steps: the manifest's
// comparison picks the worker class (manifest.AuthorizeRelease), then the
// vendor library's validation of that class's matching alternatives must
// agree (policy.Confirm). Either refusal is a policy_denied error; a
// disagreement is also logged as an internal inconsistency, since it means
// the manifest's comparison and the library's validation differ.
func (b *Broker) authorize(m *manifest.Manifest, c *attest.Claims, keyIDs []string) (string, error) {
	class, r, err := m.AuthorizeRelease(c, keyIDs)
	if err != nil {
		return "", api.Errorf(api.CodePolicyDenied, "%v", err)
	}
	if err := b.confirm(m, r, class, c); err != nil {
		b.log.Error("INTERNAL INCONSISTENCY: the manifest matches this evidence but the vendor library's validation rejects it; release refused",
			"class", class, "manifest", m.Hash(), "platform", c.Platform, "error", err)
		return "", api.Errorf(api.CodePolicyDenied, "evidence matches worker class %q but fails the vendor library's validation of its reference values", class)
	}
	return class, nil
}
