package main

import (
	"github.com/kbs-dev/kbs/kbs"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/manifest"
)

func toManifestClaims(c *attest.Claims) *manifest.Claims { return kbs.ManifestClaims(c) }
