package client

import (
	"context"
	"net/http"

	"github.com/kbs-dev/kbs/kbs/api"
)

// Witnesses fetches GET /v1/witnesses: the broker's own, unsigned account
// of its witnesses (which cosigned what, which failed and why). Clients
// check cosignatures on the checkpoints themselves (VerifyBroker,
// SyncLog, VerifyReceipt); this is for operators.
func (c *Client) Witnesses(ctx context.Context) (*api.WitnessesStatus, error) {
	var st api.WitnessesStatus
	_, err := c.do(ctx, c.pinned, http.MethodGet, api.PathWitnesses, nil, &st)
	return &st, err
}
