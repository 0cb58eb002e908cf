package snp

import (
	"context"

	"github.com/google/go-sev-guest/verify/trust"

	"github.com/kbs-dev/kbs/kbs/attest/fetch"
)

// gatedGetter fetches from AMD's KDS through a fetch.Gate: bounded in
// number and time, failures remembered briefly, the caller's release slot
// given back meanwhile (kbs/attest/fetch).
type gatedGetter struct {
	gate *fetch.Gate
	next trust.HTTPSGetter
}

func (g *gatedGetter) Get(url string) ([]byte, error) {
	return g.GetContext(context.Background(), url)
}

func (g *gatedGetter) GetContext(ctx context.Context, url string) (body []byte, err error) {
	err = g.gate.Do(ctx, url, func(ctx context.Context) error {
		var err error
		body, err = trust.GetWith(ctx, g.next, url)
		return err
	})
	return body, err
}
