package ingress

import "strings"

// go-smtp answers with texts of its own when a Session method returns nil
// and for the errors it finds itself. ownReply replaces each of those texts
// (go-smtp v0.25.1, conn.go) with a plain one of ours, so that no library
// default reaches a client; codes and enhanced codes are kept. Texts that
// ingress sets itself (SMTPError from session.go) are not in the table.
var ownReplies = map[string]string{
	"Cannot VRFY user, but will accept message": "Cannot verify the address; send mail and it will be tried",
	"I have successfully done nothing":          "OK",
	"Session reset":                             "Reset OK",
	"Bye":                                       "Closing connection",
	"Go ahead. End your data with <CR><LF>.<CR><LF>": "Start mail input; end with <CRLF>.<CRLF>",
	"OK: queued":                                      "Message accepted",
	"Continue":                                        "Chunk accepted",
	"Authentication succeeded":                        "Authentication successful",
	"Internal server error":                           "Internal error, closing connection",
	"Error: bad syntax":                               "Syntax error",
	"Too many errors. Quiting now":                    "Too many errors, closing connection",
	"Domain/address argument required for HELO":       "Syntax: HELO <hostname>",
	"Please introduce yourself first.":                "Send EHLO first",
	"MAIL not allowed during message transfer":        "Sender already given",
	"Was expecting MAIL arg syntax of FROM:<address>": "Syntax: MAIL FROM:<address>",
	"Unable to parse MAIL ESMTP parameters":           "Syntax error in MAIL parameters",
	"Unable to parse SIZE as an integer":              "Syntax error in SIZE",
	"Max message size exceeded":                       "Message too big",
	"Maximum message size exceeded":                   "Message too big",
	"SMTPUTF8 is not implemented":                     "SMTPUTF8 not supported",
	"REQUIRETLS is not implemented":                   "REQUIRETLS not supported",
	"BINARYMIME is not implemented":                   "BINARYMIME not supported",
	"Unknown BODY value":                              "Syntax error in BODY",
	"RET is not implemented":                          "RET not supported",
	"Unknown RET value":                               "Syntax error in RET",
	"ENVID is not implemented":                        "ENVID not supported",
	"Malformed ENVID parameter value":                 "Syntax error in ENVID",
	"Malformed AUTH parameter value":                  "Syntax error in AUTH",
	"Malformed AUTH parameter mailbox":                "Syntax error in AUTH",
	"Unknown MAIL FROM argument":                      "Unknown MAIL parameter",
	"Missing MAIL FROM command.":                      "Send MAIL first",
	"RCPT not allowed during message transfer":        "Recipient not allowed now",
	"Was expecting RCPT arg syntax of TO:<address>":   "Syntax: RCPT TO:<address>",
	"Unable to parse RCPT ESMTP parameters":           "Syntax error in RCPT parameters",
	"NOTIFY is not implemented":                       "NOTIFY not supported",
	"Malformed NOTIFY parameter value":                "Syntax error in NOTIFY",
	"ORCPT is not implemented":                        "ORCPT not supported",
	"Malformed ORCPT parameter value":                 "Syntax error in ORCPT",
	"RRVS is not implemented":                         "RRVS not supported",
	"Malformed RRVS parameter value":                  "Syntax error in RRVS",
	"DELIVERBY is not implemented":                    "DELIVERBY not supported",
	"Malformed BY parameter value":                    "Syntax error in BY",
	"BY parameter is below server minimum":            "BY below the minimum",
	"MT-PRIORITY is not implemented":                  "MT-PRIORITY not supported",
	"Malformed MT-PRIORITY parameter value":           "Syntax error in MT-PRIORITY",
	"MT-PRIORITY is outside valid range":              "MT-PRIORITY out of range",
	"Unknown RCPT TO argument":                        "Unknown RCPT parameter",
	"Already authenticated":                           "Already authenticated",
	"Missing parameter":                               "Syntax: AUTH <mechanism>",
	"TLS is required":                                 "TLS required",
	"Invalid base64 data":                             "Invalid base64",
	"Negotiation cancelled":                           "Authentication cancelled",
	"Authentication failed":                           "Authentication failed",
	"Please authenticate first":                       "Authentication required",
	"Authentication not supported":                    "Authentication not available",
	"Unsupported authentication mechanism":            "Unknown authentication mechanism",
	"DATA command should not have any arguments":      "Syntax: DATA",
	"DATA not allowed during message transfer":        "DATA not allowed now",
	"DATA not allowed for BINARYMIME messages":        "Use BDAT for BINARYMIME",
	"Missing RCPT TO command.":                        "Send RCPT first",
	"Missing chunk size argument":                     "Syntax: BDAT <size> [LAST]",
	"Too many arguments":                              "Syntax: BDAT <size> [LAST]",
	"Unknown BDAT argument":                           "Syntax: BDAT <size> [LAST]",
	"Malformed size argument":                         "Syntax: BDAT <size> [LAST]",
	"Too busy. Try again later.":                      "Too busy, try again later",
	"This is a LMTP server, use LHLO":                 "Syntax error, command unrecognized",
	"HELP command not implemented":                    "No help available",
	"EXPN command not implemented":                    "EXPN not available",
	"This is not a LMTP server":                       "Syntax error, command unrecognized",
}

// ownReplyPrefixes are the go-smtp texts that carry an argument.
// enhanced, when set, replaces go-smtp's 2.0.0 with the RFC 3463 code.
var ownReplyPrefixes = []struct{ prefix, enhanced, ours string }{
	{"Roger, accepting mail from ", "2.1.0", "Sender OK"},
	{"I'll make sure ", "2.1.5", "Recipient OK"},
	{"Maximum limit of ", "", "Too many recipients"},
	{"Hello ", "", ""}, // the hostname, set by plainReply
}

// plainReply rewrites one reply line of go-smtp ("250 2.0.0 text\r\n",
// "250-text\r\n") if its text is a go-smtp default.
func plainReply(line []byte, hostname string) []byte {
	s := strings.TrimRight(string(line), "\r\n")
	if len(s) < 4 {
		return line
	}
	head, enhanced, text := s[:4], "", s[4:]
	if code, rest, ok := strings.Cut(text, " "); ok && isEnhancedCode(code) {
		enhanced, text = code, rest
	}
	ours, ok := ownReplies[text]
	if !ok {
		for _, p := range ownReplyPrefixes {
			if strings.HasPrefix(text, p.prefix) {
				ours, ok = p.ours, true
				if ours == "" {
					ours = hostname
				}
				if p.enhanced != "" && enhanced != "" {
					enhanced = p.enhanced
				}
				break
			}
		}
	}
	if !ok {
		return line
	}
	if enhanced != "" {
		head += enhanced + " "
	}
	return []byte(head + ours + "\r\n")
}

func isEnhancedCode(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return false
	}
	for _, p := range parts {
		if p == "" || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}
