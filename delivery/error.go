package delivery

import "github.com/mailroot/mailroot/internal/smtpclient"

// Error is the outcome of a failed delivery for one recipient; delivery
// decides between retry and bounce by it alone (see smtpclient.Error).
type Error = smtpclient.Error

var (
	tempErr    = smtpclient.TempErr
	permErr    = smtpclient.PermErr
	replyErr   = smtpclient.ReplyErr
	parseReply = smtpclient.ParseReply
	oneLine    = smtpclient.OneLine
)
