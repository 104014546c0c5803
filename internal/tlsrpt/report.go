package tlsrpt

import (
	"slices"
	"strings"
	"time"
)

// Report is the aggregate report of RFC 8460 §4.4.
type Report struct {
	OrganizationName string       `json:"organization-name"`
	DateRange        DateRange    `json:"date-range"`
	ContactInfo      string       `json:"contact-info"`
	ReportID         string       `json:"report-id"`
	Policies         []PolicyPart `json:"policies"`
}

// DateRange is the day reported, midnight to midnight UTC.
type DateRange struct {
	Start time.Time `json:"start-datetime"`
	End   time.Time `json:"end-datetime"`
}

// PolicyPart is one policy's sessions.
type PolicyPart struct {
	Policy         PolicyDesc      `json:"policy"`
	Summary        Summary         `json:"summary"`
	FailureDetails []FailureDetail `json:"failure-details,omitempty"`
}

// PolicyDesc names the policy.
type PolicyDesc struct {
	PolicyType   string   `json:"policy-type"`
	PolicyString []string `json:"policy-string,omitempty"`
	PolicyDomain string   `json:"policy-domain"`
	MXHost       []string `json:"mx-host,omitempty"`
}

// Summary counts the sessions.
type Summary struct {
	TotalSuccessfulSessionCount int64 `json:"total-successful-session-count"`
	TotalFailureSessionCount    int64 `json:"total-failure-session-count"`
}

// FailureDetail is one kind of failure and how often.
type FailureDetail struct {
	ResultType            string `json:"result-type"`
	SendingMTAIP          string `json:"sending-mta-ip,omitempty"`
	ReceivingMXHostname   string `json:"receiving-mx-hostname,omitempty"`
	ReceivingIP           string `json:"receiving-ip,omitempty"`
	FailedSessionCount    int64  `json:"failed-session-count"`
	FailureReasonCode     string `json:"failure-reason-code,omitempty"`
	AdditionalInformation string `json:"additional-information,omitempty"`
}

// Build aggregates the results of domain on day (UTC, from Day) into one
// report: one policy part per distinct policy, failures grouped by result
// type, host and reason. reportID should be unique to the day and domain.
func Build(org, contact, reportID, domain string, day time.Time, results []Result) Report {
	start := time.Date(day.Year(), day.Month(), day.Day(), 0, 0, 0, 0, time.UTC)
	rep := Report{
		OrganizationName: org,
		DateRange:        DateRange{Start: start, End: start.Add(24 * time.Hour)},
		ContactInfo:      contact,
		ReportID:         reportID,
		Policies:         []PolicyPart{},
	}
	key := func(r Result) string {
		return r.PolicyType + "\x00" + strings.Join(r.PolicyString, "\n") + "\x00" + strings.Join(r.MXHost, ",")
	}
	parts := map[string]int{}
	for _, r := range results {
		k := key(r)
		i, ok := parts[k]
		if !ok {
			i = len(rep.Policies)
			parts[k] = i
			rep.Policies = append(rep.Policies, PolicyPart{Policy: PolicyDesc{
				PolicyType: r.PolicyType, PolicyString: r.PolicyString, PolicyDomain: domain, MXHost: r.MXHost,
			}})
		}
		p := &rep.Policies[i]
		if r.Success {
			p.Summary.TotalSuccessfulSessionCount += r.n()
			continue
		}
		p.Summary.TotalFailureSessionCount += r.n()
		j := slices.IndexFunc(p.FailureDetails, func(f FailureDetail) bool {
			return f.ResultType == r.ResultType && f.ReceivingMXHostname == r.ReceivingMX && f.ReceivingIP == r.ReceivingIP && f.FailureReasonCode == r.Reason
		})
		if j < 0 {
			p.FailureDetails = append(p.FailureDetails, FailureDetail{ResultType: r.ResultType, ReceivingMXHostname: r.ReceivingMX,
				ReceivingIP: r.ReceivingIP, FailureReasonCode: r.Reason})
			j = len(p.FailureDetails) - 1
		}
		p.FailureDetails[j].FailedSessionCount += r.n()
	}
	return rep
}
