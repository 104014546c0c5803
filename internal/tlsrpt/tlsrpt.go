// Package tlsrpt is SMTP TLS Reporting (RFC 8460) for outbound mail:
// delivery records the TLS outcome of every session to a remote domain's
// MX hosts (Record: one small JSON message on the TLSRPT stream, subject
// tlsrpt.<day>.<domain token>, so that the counts of every delivery
// process add up), and the Reporter, once a day, aggregates the day
// before per domain into the RFC's JSON report and mails it, gzipped
// (application/tlsrpt+gzip), to the `rua=mailto:` addresses of the
// domain's `_smtp._tls.<domain>` TXT record, through mail.in like any
// other mail. The report's Nats-Msg-Id and a marker in the mta-tlsrpt
// bucket make it one report however many processes run the Reporter.
package tlsrpt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
)

// Stream holds the recorded session outcomes, kept long enough for the
// day after to be reported.
const Stream = "TLSRPT"

// SubjPrefix starts every subject of Stream: tlsrpt.<yyyymmdd>.<token>.
const SubjPrefix = "tlsrpt."

// Bucket marks the reports sent, key <yyyymmdd>.<token>.
const Bucket = "mta-tlsrpt"

// Policy types (RFC 8460 §4.4).
const (
	PolicySTS  = "sts"
	PolicyTLSA = "tlsa"
	PolicyNone = "no-policy-found"
)

// Result types of failures (RFC 8460 §4.3).
const (
	ResultSTARTTLSNotSupported = "starttls-not-supported"
	ResultCertHostMismatch     = "certificate-host-mismatch"
	ResultCertExpired          = "certificate-expired"
	ResultCertNotTrusted       = "certificate-not-trusted"
	ResultValidationFailure    = "validation-failure"
	ResultSTSPolicyFetch       = "sts-policy-fetch-error"
	ResultSTSPolicyInvalid     = "sts-policy-invalid"
	ResultSTSWebPKIInvalid     = "sts-webpki-invalid"
	ResultTLSAInvalid          = "tlsa-invalid"
	ResultDNSSECInvalid        = "dnssec-invalid"
	ResultDANERequired         = "dane-required"
)

// Result is one counted outcome: a session (or a policy fetch) for a
// domain under a policy, successful or failed.
type Result struct {
	// Domain is the policy domain (A-label).
	Domain string `json:"domain"`
	// PolicyType is PolicySTS, PolicyTLSA or PolicyNone; PolicyString
	// the policy's lines and MXHost its mx patterns (sts).
	PolicyType   string   `json:"policy_type"`
	PolicyString []string `json:"policy_string,omitempty"`
	MXHost       []string `json:"mx_host,omitempty"`
	// Success is true for a session that met the policy; otherwise
	// ResultType says what failed.
	Success    bool   `json:"success,omitempty"`
	ResultType string `json:"result_type,omitempty"`
	// ReceivingMX and ReceivingIP name the host; Reason says why in words
	// (failure-reason-code).
	ReceivingMX string `json:"receiving_mx,omitempty"`
	ReceivingIP string `json:"receiving_ip,omitempty"`
	Reason      string `json:"reason,omitempty"`
	// Count is how many sessions had this outcome (a Counter's batch);
	// 0 counts as 1.
	Count int64 `json:"count,omitempty"`
}

// n is how many sessions r counts.
func (r Result) n() int64 { return max(r.Count, 1) }

// ClassifyVerify maps the reason a certificate did not verify (Go's
// x509 error text, as smtpclient.Client.VerifyError gives it) to a
// result type.
func ClassifyVerify(why string) string {
	switch {
	case strings.Contains(why, "certificate is valid for"), strings.Contains(why, "not valid for any names"):
		return ResultCertHostMismatch
	case strings.Contains(why, "expired"), strings.Contains(why, "not yet valid"):
		return ResultCertExpired
	case strings.Contains(why, "unknown authority"), strings.Contains(why, "self-signed"), strings.Contains(why, "self signed"):
		return ResultCertNotTrusted
	}
	return ResultValidationFailure
}

// Day is the UTC day of t, "20261201".
func Day(t time.Time) string { return t.UTC().Format("20060102") }

// Subject is where the results for domain on day go.
func Subject(day, domain string) string { return SubjPrefix + day + "." + bus.Token(domain) }

// EnsureStream creates or updates the TLSRPT stream and the mta-tlsrpt
// bucket.
func EnsureStream(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        Stream,
		Description: "Mailroot TLS-RPT (RFC 8460) session outcomes, per day and domain",
		Subjects:    []string{SubjPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
		MaxAge:      4 * 24 * time.Hour,
		Discard:     jetstream.DiscardOld,
		Duplicates:  10 * time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("tlsrpt: create stream %s: %w", Stream, err)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "TLS-RPT reports sent, one key per day and domain",
		History:     1,
		TTL:         8 * 24 * time.Hour,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("tlsrpt: create kv %s: %w", Bucket, err)
	}
	return kv, nil
}

// Record publishes r for day without waiting (an async publish, as
// events are: counting must neither hold up nor fail mail). id, when
// set, deduplicates a repeated attempt.
func Record(js jetstream.JetStream, day string, r Result, id string) {
	b, err := json.Marshal(r)
	if err != nil {
		return
	}
	m := &nats.Msg{Subject: Subject(day, r.Domain), Data: b}
	if id != "" {
		m.Header = nats.Header{jetstream.MsgIDHeader: []string{id}}
	}
	_, _ = js.PublishMsgAsync(m, jetstream.WithStallWait(time.Millisecond))
}

// ErrNoRUA means a domain publishes no usable TLSRPTv1 record.
var ErrNoRUA = errors.New("tlsrpt: no TLSRPTv1 record with a mailto: or https: rua")

// RUA is where a domain wants its reports (RFC 8460 §3).
type RUA struct {
	// Mailto has the addresses of the mailto: URIs.
	Mailto []string
	// HTTPS has the https: URIs, to POST the gzipped report to.
	HTTPS []string
}

// ParseRUA returns the mailto: addresses of the TLSRPTv1 record among
// txts; see ParseRecord.
func ParseRUA(txts []string) ([]string, error) {
	r, err := ParseRecord(txts)
	if err == nil && len(r.Mailto) == 0 {
		err = ErrNoRUA
	}
	return r.Mailto, err
}

// ParseRecord reads the TLSRPTv1 record among txts (RFC 8460 §3:
// "v=TLSRPTv1; rua=mailto:a@example.com,https://…"): exactly one record
// must start with v=TLSRPTv1, and it must have at least one usable
// mailto: or https: URI. Other schemes, bad addresses and URLs with a
// user, no host or a fragment are skipped.
func ParseRecord(txts []string) (RUA, error) {
	var rec string
	n := 0
	for _, t := range txts {
		if f, _, _ := strings.Cut(t, ";"); strings.TrimSpace(f) == "v=TLSRPTv1" {
			rec, n = t, n+1
		}
	}
	if n != 1 {
		return RUA{}, ErrNoRUA
	}
	var out RUA
	for _, f := range strings.Split(rec, ";")[1:] {
		k, v, _ := strings.Cut(strings.TrimSpace(f), "=")
		if strings.TrimSpace(k) != "rua" {
			continue
		}
		for _, u := range strings.Split(v, ",") {
			u = strings.TrimSpace(u)
			if len(u) >= 7 && strings.EqualFold(u[:7], "mailto:") {
				// Not ToLower(u): it may change the length of invalid UTF-8.
				addr, err := url.PathUnescape(u[7:])
				if err != nil {
					continue
				}
				if a, err := mail.ParseAddress(addr); err == nil && a.Name == "" && !strings.ContainsAny(a.Address, "\r\n<>") {
					out.Mailto = append(out.Mailto, a.Address)
				}
				continue
			}
			if pu, err := url.Parse(u); err == nil && strings.EqualFold(pu.Scheme, "https") && pu.Host != "" && pu.Hostname() != "" &&
				pu.User == nil && pu.Fragment == "" && !strings.ContainsAny(u, " \t\r\n") {
				out.HTTPS = append(out.HTTPS, pu.String())
			}
		}
	}
	if len(out.Mailto) == 0 && len(out.HTTPS) == 0 {
		return RUA{}, ErrNoRUA
	}
	return out, nil
}
