package admin

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/queue"
	"github.com/mailroot/mailroot/internal/testutil"
)

// queueConsole is a console whose queue page lists the MAIL stream of its
// server (queue.List, as `mailroot all` wires it) and whose queue actions
// are internal/queue's (hold, release, delete), logged in as root.
func queueConsole(t *testing.T) (*Server, string, *http.Client, jetstream.JetStream) {
	t.Helper()
	srv, hs := startConsole(t, "")
	js := srv.opt.JS
	if err := bus.EnsureStream(testutil.Context(t), js, bus.Layout{Replicas: 1, BodyTTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	srv.opt.Queue = func(ctx context.Context) ([]QueueItem, error) {
		list, err := queue.List(ctx, js)
		out := make([]QueueItem, 0, len(list))
		for _, e := range list {
			out = append(out, QueueItemOf(e))
		}
		return out, err
	}
	srv.opt.Act = func(ctx context.Context, action, id, who string) (string, error) {
		a := &queue.Admin{JS: js, Room: &bus.Room{JS: js}, Who: who, Wait: 5 * time.Second}
		res, err := a.Do(ctx, action, queue.Selection{IDs: []string{id}}, "")
		if err != nil {
			return "", err
		}
		if len(res) == 0 || res[0].Err != nil {
			t.Fatalf("%s %s: %+v", action, id, res)
		}
		return res[0].Done, nil
	}
	c := newClient(t)
	if code, _ := logIn(t, c, hs.URL, "root", "rootpw"); code != http.StatusSeeOther {
		t.Fatalf("login: %d", code)
	}
	return srv, hs.URL, c, js
}

// storePart stores a message part on subj as the pipeline does: the
// envelope in the headers, the message inline or (obj) in mail-bodies.
func storePart(t *testing.T, js jetstream.JetStream, subj string, env *envelope.Envelope, msg string, obj bool, opts ...jetstream.PublishOpt) {
	t.Helper()
	ctx := testutil.Context(t)
	env.BodySize, env.Body = int64(len(msg)), envelope.BodyInline
	data := []byte(msg)
	if obj {
		b, err := bus.OpenBodies(ctx, js)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Put(ctx, env.QueueID, strings.NewReader(msg)); err != nil {
			t.Fatal(err)
		}
		env.Body, data = envelope.BodyObject, nil
	}
	h, err := env.Header()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: subj, Header: h, Data: data}, opts...); err != nil {
		t.Fatal(err)
	}
}

// threeMessages queues a deferred message from alice to b@remote.test, a
// held one from bob to c@held.test (body in mail-bodies) and one on
// mail.in from the null sender to d@remote.test and e@Other.test.
func threeMessages(t *testing.T, js jetstream.JetStream) (deferred, held, in string) {
	deferred, held, in = envelope.NewQueueID(), envelope.NewQueueID(), envelope.NewQueueID()
	arrived := time.Now().Add(-10 * time.Minute).UTC().Truncate(time.Second)
	storePart(t, js, bus.Defer(bus.Token("remote.test"), deferred), &envelope.Envelope{QueueID: deferred, From: "Alice@local.test",
		Rcpts: []envelope.Rcpt{{Addr: "b@remote.test"}}, Domain: "remote.test", ReceivedAt: arrived, Attempt: 1,
		LastError: "451 4.7.1 try later (mx.remote.test)", Site: "submission", ClientIP: "192.0.2.7", Helo: "client.example", Source: "smtp"},
		"Subject: <script>alert(1)</script>\r\nFrom: Alice <Alice@local.test>\r\n\r\nSECRET-BODY-TEXT\r\n", false,
		jetstream.WithScheduleAt(time.Now().Add(time.Hour)), jetstream.WithScheduleTarget(bus.Out(bus.Token("remote.test"))))
	storePart(t, js, bus.Hold(bus.Token("held.test")), &envelope.Envelope{QueueID: held, From: "bob@local.test",
		Rcpts: []envelope.Rcpt{{Addr: "c@held.test"}}, Domain: "held.test", ReceivedAt: arrived},
		"Subject: big one\r\nX-Big: yes\r\n\r\n"+strings.Repeat("BIG-BODY ", 1000), true)
	storePart(t, js, bus.SubjIn, &envelope.Envelope{QueueID: in, Rcpts: []envelope.Rcpt{{Addr: "d@remote.test"}, {Addr: "e@Other.test"}}, ReceivedAt: arrived},
		"Subject: report\r\n\r\nx\r\n", false)
	return deferred, held, in
}

// rows are the queue ids of the rows of a queue page.
func rows(body string) []string {
	var ids []string
	for _, part := range strings.Split(body, `<tr id="msg-`)[1:] {
		ids = append(ids, part[:strings.IndexByte(part, '"')])
	}
	return ids
}

func TestQueueFilters(t *testing.T) {
	_, base, c, js := queueConsole(t)
	deferred, held, in := threeMessages(t, js)
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"", []string{deferred, held, in}},
		{"?state=held", []string{held}},
		{"?state=deferred", []string{deferred}},
		{"?domain=REMOTE.test", []string{deferred, in}},
		{"?domain=other.test", []string{in}},
		{"?q=ALICE", []string{deferred}},
		{"?q=%40held.test", []string{held}},
		{"?state=active&domain=remote.test", []string{in}},
		{"?state=deferred&domain=held.test", nil},
	} {
		code, body, _ := get(t, c, base, "/queue"+tc.query)
		if code != 200 {
			t.Fatalf("%s: %d", tc.query, code)
		}
		got := rows(body)
		if strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("/queue%s: rows %v, want %v", tc.query, got, tc.want)
		}
		for _, id := range got {
			if !strings.Contains(body, `<a href="/queue/`+id+`">`) {
				t.Errorf("/queue%s: row %s does not link to its page", tc.query, id)
			}
		}
		if tc.query != "" && len(tc.want) > 0 && !strings.Contains(body, "of 3 queued messages") {
			t.Errorf("/queue%s does not say how many of the queue it shows", tc.query)
		}
		if tc.want == nil && !strings.Contains(body, "No queued message matches this filter") {
			t.Errorf("/queue%s: no message saying nothing matches", tc.query)
		}
	}
	// The form shows the filter it applied.
	_, body, _ := get(t, c, base, "/queue?state=held&domain=held.test&q=bob")
	for _, w := range []string{`<option value="held" selected>`, `id="f-domain" value="held.test"`, `id="f-q" value="bob"`, `id="f-clear"`} {
		if !strings.Contains(body, w) {
			t.Errorf("the filtered page lacks %s", w)
		}
	}
	// Bad input is refused, naming what is wrong.
	for q, want := range map[string]string{"?state=frozen": `state &#34;frozen&#34; is not one of active, deferred, held, bad`,
		"?domain=a..b": `domain &#34;a..b&#34; is not a domain`} {
		code, body, _ := get(t, c, base, "/queue"+q)
		if code != http.StatusBadRequest || !strings.Contains(body, want) || len(rows(body)) != 0 {
			t.Errorf("/queue%s: %d, rows %v, want 400 saying %s", q, code, rows(body), want)
		}
	}
}

func TestMessagePage(t *testing.T) {
	_, base, c, js := queueConsole(t)
	deferred, held, _ := threeMessages(t, js)
	ctx := testutil.Context(t)
	// Its history: received, a delivery to a recipient no longer queued,
	// a deferral; and another message's event, which is not its.
	for _, e := range []bus.Event{
		{Type: bus.EventReceived, QueueID: deferred, Sender: "Alice@local.test", Site: "submission", ClientIP: "192.0.2.7", RcptCount: 2},
		{Type: bus.EventDelivered, QueueID: deferred, Domain: "other.test", Rcpt: "x@other.test", MX: "mx.other.test", Reply: "250 ok"},
		{Type: bus.EventDeferred, QueueID: deferred, Domain: "remote.test", Rcpts: []string{"b@remote.test"}, Attempt: 1, Reply: "451 4.7.1 try later"},
		{Type: bus.EventReceived, QueueID: held, Sender: "bob@local.test"},
	} {
		if err := bus.EmitSync(ctx, js, e); err != nil {
			t.Fatal(err)
		}
	}
	code, body, _ := get(t, c, base, "/queue/"+deferred)
	if code != 200 {
		t.Fatalf("message page: %d\n%s", code, body)
	}
	for _, w := range []string{deferred, "Alice@local.test", "submission", "192.0.2.7", "HELO client.example", "451 4.7.1 try later (mx.remote.test)",
		"deferred <small>(mail.defer.remote_test." + deferred + ")</small>",
		// headers, escaped
		"Subject: &lt;script&gt;alert(1)&lt;/script&gt;", "From: Alice &lt;Alice@local.test&gt;",
		// recipients: the queued one with its part's state, the delivered one from its event
		"<td>b@remote.test</td><td class=\"state\">queued: deferred</td>", "<td>x@other.test</td><td class=\"state\">delivered</td><td>to mx.other.test 250 ok</td>",
		// history
		`<td class="type">received</td>`, `<td class="type">delivered</td>`, `<td class="type">deferred</td>`, "reply=&#34;451 4.7.1 try later&#34;",
		// the actions, coming back here
		`name="from" value="message"`, `value="hold">Hold</button>`} {
		if !strings.Contains(body, w) {
			t.Errorf("message page lacks %q", w)
		}
	}
	if strings.Contains(body, "SECRET-BODY-TEXT") || strings.Contains(body, "<script>") {
		t.Error("the message page shows the body, or the headers unescaped")
	}
	if strings.Count(body, `<td class="type">`) != 3 {
		t.Errorf("history: %d events, want its 3", strings.Count(body, `<td class="type">`))
	}
	next := time.Now().Add(time.Hour).UTC()
	if !strings.Contains(body, next.Format("2006-01-02 15:")) && !strings.Contains(body, next.Add(time.Minute).Format("2006-01-02 15:")) {
		t.Error("no next attempt an hour from now")
	}
	// The held message's headers come from mail-bodies; its body stays there.
	_, body, _ = get(t, c, base, "/queue/"+held)
	if !strings.Contains(body, "Subject: big one\nX-Big: yes\n</pre>") || strings.Contains(body, "BIG-BODY") || !strings.Contains(body, "on release") {
		t.Errorf("held message page:\n%s", body)
	}
	// A message no longer queued: its page tells what its events do.
	gone := envelope.NewQueueID()
	for _, e := range []bus.Event{
		{Type: bus.EventReceived, QueueID: gone, Sender: "carol@local.test", RcptCount: 1},
		{Type: bus.EventDelivered, QueueID: gone, Domain: "remote.test", Rcpt: "z@remote.test", MX: "mx.remote.test", Reply: "250 2.0.0 queued"},
	} {
		if err := bus.EmitSync(ctx, js, e); err != nil {
			t.Fatal(err)
		}
	}
	code, body, _ = get(t, c, base, "/queue/"+gone)
	if code != 200 || !strings.Contains(body, `id="gone"`) || !strings.Contains(body, "<td>z@remote.test</td><td class=\"state\">delivered</td><td>to mx.remote.test 250 2.0.0 queued</td>") ||
		strings.Count(body, `<td class="type">`) != 2 || strings.Contains(body, `value="hold">Hold</button>`) {
		t.Errorf("page of a delivered message: %d\n%s", code, body)
	}
	// Unknown ids: 404, saying so.
	for _, id := range []string{envelope.NewQueueID(), "not-a-queue-id", "..%2F..%2Fetc"} {
		code, body, _ := get(t, c, base, "/queue/"+id)
		if code != http.StatusNotFound || !strings.Contains(body, "No such message") {
			t.Errorf("/queue/%s: %d, want 404 saying no such message", id, code)
		}
	}
}

func TestMessagePageActions(t *testing.T) {
	_, base, c, js := queueConsole(t)
	deferred, _, _ := threeMessages(t, js)
	_, _, tok := get(t, c, base, "/queue/"+deferred)
	// Hold from the message page comes back to it, the message held, the
	// action in its history under the admin's name.
	resp, err := c.PostForm(base+"/queue/act", url.Values{"csrf": {tok}, "id": {deferred}, "action": {"hold"}, "from": {"message"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(loc, "/queue/"+deferred+"?msg=") {
		t.Fatalf("hold: %d to %q", resp.StatusCode, loc)
	}
	code, body, _ := get(t, c, base, loc)
	if code != 200 || !strings.Contains(body, `<dd class="state">held`) || !strings.Contains(body, `<td class="type">adminheld</td>`) ||
		!strings.Contains(body, "admin=&#34;root (admin console)&#34;") || !strings.Contains(body, `id="msg">hold `+deferred+": ") {
		t.Errorf("after hold:\n%s", body)
	}
	// Without the CSRF token: refused, nothing done.
	if code, _ := post(t, c, base, "/queue/act", url.Values{"id": {deferred}, "action": {"delete"}, "from": {"message"}}); code != http.StatusForbidden {
		t.Errorf("delete without the token: %d", code)
	}
	// Delete goes back to the queue page: the message has no page now.
	resp, err = c.PostForm(base+"/queue/act", url.Values{"csrf": {tok}, "id": {deferred}, "action": {"delete"}, "from": {"message"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if loc := resp.Header.Get("Location"); !strings.HasPrefix(loc, "/queue?msg=") {
		t.Errorf("delete went to %q", loc)
	}
	// Its page now tells what its events do: deleted, by whom.
	code, body, _ = get(t, c, base, "/queue/"+deferred)
	if code != 200 || !strings.Contains(body, `id="gone"`) || !strings.Contains(body, `<td class="type">deleted</td>`) ||
		strings.Contains(body, `value="hold">Hold</button>`) || strings.Contains(body, `id="headers"`) {
		t.Errorf("deleted message page: %d\n%s", code, body)
	}
}

// A message's history is read only up to MessageEventLimit events, and
// the page says so.
func TestMessagePageEventCap(t *testing.T) {
	_, base, c, js := queueConsole(t)
	deferred, _, _ := threeMessages(t, js)
	old := MessageEventLimit
	MessageEventLimit = 3
	t.Cleanup(func() { MessageEventLimit = old })
	for i := range 5 {
		if err := bus.EmitSync(testutil.Context(t), js, bus.Event{Type: bus.EventDeferred, QueueID: deferred, Domain: "remote.test", Attempt: i + 1}); err != nil {
			t.Fatal(err)
		}
	}
	_, body, _ := get(t, c, base, "/queue/"+deferred)
	if n := strings.Count(body, `<td class="type">`); n != 3 || !strings.Contains(body, "More than 3 events") {
		t.Errorf("%d events shown; capped note: %v", n, strings.Contains(body, "More than 3 events"))
	}
}
