package envelope

import "testing"

// The ids are stored in queues and deduplicated by JetStream: a change
// would publish twice what a crash repeats across an upgrade.
func TestIDsDoNotChange(t *testing.T) {
	const q, tok = "01JQ", "example_test"
	for _, c := range [][2]string{
		{RouteID(q, tok), "01JQ.example_test"},
		{RouteDSNID(q), "01JQ.route.dsn"},
		{PickupID(q), "pickup.01JQ"},
		{RetryID(q, tok, 3), "01JQ.example_test.a3"},
		{HoldID(q, tok, 2), "01JQ.example_test.h2"},
		{BadID(q, tok, 4, 0), "01JQ.example_test.bad4"},
		{BadID(q, tok, 4, 2), "01JQ.example_test.bad4-2"},
		{FailureDSNID(q, tok, 1), "01JQ.example_test.dsn1"},
		{SuccessDSNID(q, tok, 1), "01JQ.example_test.ok1"},
		{DelayDSNID(q, tok), "01JQ.example_test.delay"},
		{HoldBadID(q, tok), "01JQ.example_test.holdbad"},
		{HoldDSNID(q, tok), "01JQ.example_test.holddsn"},
		{ATRNID(q, tok, 17), "01JQ.example_test.atrn17"},
		{ATRNBadID(q, tok, 17), "01JQ.example_test.atrnbad17"},
		{ATRNDSNID(q, tok, 17), "01JQ.example_test.atrndsn17"},
		{ReleaseID(q, tok, 9), "01JQ.example_test.rel9"},
		{ETRNID(q, tok, 9), "01JQ.example_test.etrn9"},
		{FlushID(q, tok, 9), "01JQ.example_test.flush9"},
		{BadmailDSNID(q, 12), "01JQ.bad12.dsn"},
		{PoisonID(12, q), "bad.12.01JQ"},
	} {
		if got, want := c[0], c[1]; got != want {
			t.Errorf("id %q, want %q", got, want)
		}
	}
}
