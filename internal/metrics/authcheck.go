package metrics

import "github.com/prometheus/client_golang/prometheus"

// AuthChecks are the checks counted in mailroot_ingress_auth_results_total
// (the check label), AuthResults the results (the result label): every
// series exists from start.
var (
	AuthChecks  = []string{"spf", "dkim", "dmarc"}
	AuthResults = []string{"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"}
)

type authKey struct{ check, result string }

// authCounters resolves the site's verdict counters once.
func (m *Metrics) authCounters(site string) map[authKey]prometheus.Counter {
	out := make(map[authKey]prometheus.Counter, len(AuthChecks)*len(AuthResults))
	for _, c := range AuthChecks {
		for _, r := range AuthResults {
			out[authKey{c, r}] = m.ingressAuth.WithLabelValues(site, c, r)
		}
	}
	return out
}

// AuthResult counts one verdict of an inbound check (SPF of MAIL FROM,
// each DKIM signature, DMARC); a result outside AuthResults counts as
// permerror, so the label stays bounded.
func (s *Site) AuthResult(check, result string) {
	c, ok := s.auth[authKey{check, result}]
	if !ok {
		c, ok = s.auth[authKey{check, "permerror"}]
	}
	if ok {
		c.Inc()
	}
}
