package kbs

import (
	"net/http"
	"strconv"

	"github.com/kbs-dev/kbs/kbs/api"
)

// serveKeyList serves GET /v1/keys: a page of key metadata
// (Broker.ListKeys) chosen by the query parameters api.KeyListPrefix,
// api.KeyListAfter and api.KeyListLimit.
func (b *Broker) serveKeyList(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	for name, vs := range q {
		if name != api.KeyListPrefix && name != api.KeyListAfter && name != api.KeyListLimit {
			return api.Errorf(api.CodeBadRequest, "unknown query parameter %q", name)
		}
		if len(vs) > 1 {
			return api.Errorf(api.CodeBadRequest, "query parameter %q given %d times", name, len(vs))
		}
	}
	limit := 0
	if s := q.Get(api.KeyListLimit); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return api.Errorf(api.CodeBadRequest, "%s must be 1 to %d, not %q", api.KeyListLimit, api.MaxKeyListLimit, s)
		}
		limit = n
	}
	ans, err := b.ListKeys(r.Context(), q.Get(api.KeyListPrefix), q.Get(api.KeyListAfter), limit)
	return reply(w, ans, err)
}

// serveKeyInfo serves GET /v1/keys/{id}: one key's metadata
// (Broker.KeyInfo).
func (b *Broker) serveKeyInfo(w http.ResponseWriter, r *http.Request) error {
	ans, err := b.KeyInfo(r.Context(), r.PathValue("id"))
	return reply(w, ans, err)
}
