package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"os"
	"os/user"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/message"
	"github.com/mailroot/mailroot/submit"
)

// Exit codes of sendmail, from sysexits.h.
const (
	exUsage       = 64 // bad command line
	exDataErr     = 65 // the message cannot be sent as it is
	exNoUser      = 67 // a recipient address was refused
	exUnavailable = 69 // the mail system refused the message
	exSoftware    = 70 // internal error
	exIOErr       = 74 // reading the message failed
	exTempFail    = 75 // try again later: nothing was queued
	exConfig      = 78 // bad configuration
)

// sendmailOpts are the parsed command-line options.
type sendmailOpts struct {
	headerRcpts bool     // -t
	sender      string   // -f
	fullName    string   // -F
	dotEnds     bool     // a line "." ends the message (no -i / -oi)
	notify      []string // -N
	ret         string   // -R
	envID       string   // -V
	rcpts       []string
	config      string
	data        string
	nats        string
	smtpAddr    string // -smtp host:port: submit over SMTP
}

// parseSendmailArgs reads sendmail's traditional options: flags may carry
// their value joined (-fuser) or separate (-f user); unknown -o options and
// delivery-mode flags that make no sense here are accepted and ignored, as
// Postfix does.
func parseSendmailArgs(args []string) (*sendmailOpts, error) {
	o := &sendmailOpts{dotEnds: true, config: os.Getenv("MAILROOT_CONFIG"), smtpAddr: os.Getenv("MAILROOT_SMTP")}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			o.rcpts = append(o.rcpts, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			o.rcpts = append(o.rcpts, a)
			continue
		}
		// value returns the option's argument: joined or the next word.
		value := func(flag string) (string, error) {
			if v := strings.TrimPrefix(a, flag); v != "" {
				return v, nil
			}
			if i+1 >= len(args) {
				return "", fmt.Errorf("option %s needs a value", flag)
			}
			i++
			return args[i], nil
		}
		var err error
		switch {
		case a == "-t":
			o.headerRcpts = true
		case a == "-i" || a == "-oi":
			o.dotEnds = false
		case a == "-config" || a == "--config":
			o.config, err = value(a)
		case a == "-data" || a == "--data":
			o.data, err = value(a)
		case a == "-nats" || a == "--nats":
			o.nats, err = value(a)
		case a == "-smtp" || a == "--smtp":
			o.smtpAddr, err = value(a)
		case strings.HasPrefix(a, "-f") || strings.HasPrefix(a, "-r"):
			o.sender, err = value(a[:2])
		case strings.HasPrefix(a, "-F"):
			o.fullName, err = value("-F")
		case strings.HasPrefix(a, "-N"):
			var v string
			v, err = value("-N")
			for _, n := range strings.Split(v, ",") {
				o.notify = append(o.notify, strings.ToUpper(strings.TrimSpace(n)))
			}
		case strings.HasPrefix(a, "-R"):
			o.ret, err = value("-R")
			o.ret = strings.ToUpper(o.ret)
		case strings.HasPrefix(a, "-V"):
			o.envID, err = value("-V")
		case strings.HasPrefix(a, "-B"), strings.HasPrefix(a, "-C"), strings.HasPrefix(a, "-L"):
			_, err = value(a[:2]) // body type, config file, log tag: ignored
		case a == "-bm", a == "-v", a == "-U", a == "-G", strings.HasPrefix(a, "-o"), strings.HasPrefix(a, "-d"):
			// Delivery modes, error modes and -o options: accepted, ignored.
		default:
			return nil, fmt.Errorf("unsupported option %s", a)
		}
		if err != nil {
			return nil, err
		}
	}
	if !o.headerRcpts && len(o.rcpts) == 0 {
		return nil, errors.New("no recipients given (name them, or use -t to read To:, Cc: and Bcc:)")
	}
	return o, nil
}

// sendmail reads one message and submits it. Diagnostics are one line on
// stderr; the exit status follows sysexits.h.
func sendmail(args []string, stdin io.Reader, stderr io.Writer) int {
	fail := func(code int, format string, a ...any) int {
		fmt.Fprintf(stderr, "sendmail: "+format+"\n", a...)
		return code
	}
	if i := slices.Index(args, "-bp"); i >= 0 {
		// -bp is mailq (Postfix, Sendmail): the other options are its.
		return mailqCommand(slices.Delete(slices.Clone(args), i, i+1), os.Stdout, stderr)
	}
	o, err := parseSendmailArgs(args)
	if err != nil {
		return fail(exUsage, "%v", err)
	}
	cfg, err := config.Load(o.config)
	if err == nil {
		applyEnv(&cfg)
		if o.data != "" {
			cfg.DataDir = o.data
		}
		if o.nats != "" {
			cfg.NATS.URL = o.nats
		}
		err = cfg.Validate()
	}
	if err != nil {
		return fail(exConfig, "%v", err)
	}
	raw, err := readMessage(stdin, o.dotEnds, cfg.Ingress.MaxMessageSize)
	if err != nil {
		return fail(exIOErr, "reading the message: %v", err)
	}
	login := loginName()
	domain := cfg.DefaultDomainName()
	sender := o.sender
	if sender == "" {
		sender = login + "@" + domain
	}
	addFrom := "<" + login + "@" + domain + ">"
	if o.fullName != "" {
		addFrom = mimeQuote(o.fullName) + " " + addFrom
	}
	id := envelope.NewQueueID()
	p, err := message.Parse(raw, message.Options{
		DefaultDomain: domain, Hostname: cfg.Hostname, QueueID: submit.QueueID(id),
		MaxSize: cfg.Ingress.MaxMessageSize, Via: "sendmail (" + login + ")", Protocol: "local",
		Sender: sender, Rcpts: o.rcpts, HeaderRcpts: o.headerRcpts, AddFrom: addFrom,
	})
	if err != nil {
		return fail(exDataErr, "%v", err)
	}
	msg := &submit.Message{ID: id, From: p.From, To: p.Rcpts, Data: p.Message, Notify: o.notify, Ret: o.ret, EnvID: o.envID}
	if o.smtpAddr == "" && cfg.NATS.URL != "" {
		return submitNATS(cfg, msg, fail)
	}
	addr := o.smtpAddr
	if addr == "" && len(cfg.Ingress.Listen) > 0 {
		addr = cfg.Ingress.Listen[0]
	}
	return submitSMTP(addr, cfg.Hostname, msg, p, fail)
}

// readMessage reads stdin up to EOF, or up to a line holding a single "."
// unless -i was given, refusing more than max bytes (plus room for the
// headers Mailroot adds).
func readMessage(r io.Reader, dotEnds bool, max int64) ([]byte, error) {
	limit := max + 64<<10
	br := bufio.NewReader(io.LimitReader(r, limit+1))
	var b bytes.Buffer
	for {
		line, err := br.ReadBytes('\n')
		if dotEnds && (string(line) == ".\n" || string(line) == ".\r\n" || (err == io.EOF && string(line) == ".")) {
			break
		}
		b.Write(line)
		if int64(b.Len()) > limit {
			return nil, fmt.Errorf("message larger than the limit of %d bytes", max)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return b.Bytes(), nil
}

// natsConnectTimeout bounds reaching NATS; past it sendmail exits 75 and
// the caller (cron, a script) can try again later.
var natsConnectTimeout = 10 * time.Second

func submitNATS(cfg config.Config, msg *submit.Message, fail func(int, string, ...any) int) int {
	cctx, ccancel := context.WithTimeout(context.Background(), natsConnectTimeout)
	defer ccancel()
	nc, err := bus.Connect(cctx, bus.ConnectOptions{
		URL: cfg.NATS.URL, Name: "mailroot-sendmail",
		User: cfg.NATS.User, Password: cfg.NATS.Password, Token: cfg.NATS.Token, CredsFile: cfg.NATS.CredsFile,
		CAFile: cfg.NATS.CAFile, CertFile: cfg.NATS.CertFile, KeyFile: cfg.NATS.KeyFile,
	}, newLogger(config.Config{LogLevel: "error", LogFormat: "text"}))
	if err != nil {
		return fail(exTempFail, "cannot reach NATS at %s: %v", redact(cfg.NATS.URL), err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fail(exSoftware, "%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := submit.Submit(ctx, js, msg); err != nil {
		if errors.Is(err, submit.ErrInvalid) {
			return fail(exDataErr, "%v", err)
		}
		return fail(exTempFail, "message not queued: %v", err)
	}
	return 0
}

func submitSMTP(addr, helo string, msg *submit.Message, p *message.Parsed, fail func(int, string, ...any) int) int {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return fail(exTempFail, "cannot reach the SMTP server at %s: %v", addr, err)
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	c.CommandTimeout = time.Minute
	smtpFail := func(stage string, err error) int {
		var se *smtp.SMTPError
		switch {
		case errors.As(err, &se) && se.Temporary():
			return fail(exTempFail, "%s: %v", stage, err)
		case errors.As(err, &se) && stage == "recipient":
			return fail(exNoUser, "%s: %v", stage, err)
		case errors.As(err, &se):
			return fail(exUnavailable, "%s: %v", stage, err)
		}
		return fail(exTempFail, "%s: %v", stage, err)
	}
	if err := c.Hello(helo); err != nil {
		return smtpFail("greeting", err)
	}
	mo := &smtp.MailOptions{UTF8: p.SMTPUTF8, Return: smtp.DSNReturn(msg.Ret), EnvelopeID: msg.EnvID}
	if p.EightBit {
		mo.Body = smtp.Body8BitMIME
	}
	if err := c.Mail(msg.From, mo); err != nil {
		return smtpFail("sender", err)
	}
	for _, r := range msg.To {
		var ro *smtp.RcptOptions
		if len(msg.Notify) > 0 {
			ro = &smtp.RcptOptions{}
			for _, n := range msg.Notify {
				ro.Notify = append(ro.Notify, smtp.DSNNotify(n))
			}
		}
		if err := c.Rcpt(r, ro); err != nil {
			return smtpFail("recipient", err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return smtpFail("data", err)
	}
	if _, err := w.Write(msg.Data); err != nil {
		return smtpFail("data", err)
	}
	if err := w.Close(); err != nil {
		return smtpFail("data", err)
	}
	_ = c.Quit()
	return 0
}

// loginName is the invoking user's name, for the default sender.
func loginName() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	if n := os.Getenv("USER"); n != "" {
		return n
	}
	return "nobody"
}

// mimeQuote makes a display name safe for a From: header: a quoted
// string, or an RFC 2047 encoded word when it is not ASCII.
func mimeQuote(name string) string {
	name = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, name)
	for _, r := range name {
		if r > 0x7e {
			return mime.QEncoding.Encode("utf-8", name)
		}
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(name) + `"`
}
