package config

import (
	"path/filepath"
	"strings"
)

// Actions of the inbound authentication checks (spf_fail, dmarc_reject,
// dmarc_quarantine).
const (
	// ActionTag accepts the mail with its Authentication-Results only.
	ActionTag = "tag"
	// ActionQuarantine accepts the mail into <data_dir>/Quarantine/
	// instead of delivering it.
	ActionQuarantine = "quarantine"
	// ActionReject refuses the mail at the end of DATA (550).
	ActionReject = "reject"
)

// QuarantineDir is where quarantined mail is written: <data_dir>/Quarantine.
func (c Config) QuarantineDir() string { return filepath.Join(c.DataDir, "Quarantine") }

// SiteAuthServID is the authserv-id of site s: authserv_id, else its host
// name.
func SiteAuthServID(s Site) string {
	if s.AuthServID != "" {
		return s.AuthServID
	}
	return s.Hostname
}

// validateAuthChecks checks a site's inbound check settings.
func validateAuthChecks(key string, s Site) error {
	if strings.ContainsAny(s.AuthServID, " \t\r\n;()\"") {
		return &KeyError{key + ".authserv_id", "must be one word without ; ( ) or quotes"}
	}
	switch s.SPFFail {
	case ActionTag, ActionReject:
	default:
		return &KeyError{key + ".spf_fail", "must be tag or reject"}
	}
	for k, v := range map[string]string{"dmarc_reject": s.DMARCReject, "dmarc_quarantine": s.DMARCQuarantine} {
		switch v {
		case ActionTag, ActionQuarantine, ActionReject:
		default:
			return &KeyError{key + "." + k, "must be tag, quarantine or reject"}
		}
	}
	return nil
}
