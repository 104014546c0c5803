package envelope

import (
	"bytes"
	"strings"
)

// CountReceived counts Received: header fields in the header section of msg
// (as far as msg goes).
func CountReceived(msg []byte) int {
	n := 0
	for len(msg) > 0 {
		line := msg
		if i := bytes.IndexByte(msg, '\n'); i >= 0 {
			line, msg = msg[:i+1], msg[i+1:]
		} else {
			msg = nil
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			break // end of header section
		}
		if len(line) >= 9 && strings.EqualFold(string(line[:9]), "received:") {
			n++
		}
	}
	return n
}
