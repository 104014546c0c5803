package ingress

import (
	"crypto/tls"
	"fmt"
)

// tlsString names the protocol version and cipher for Received: and logs,
// e.g. "TLS1.3 TLS_AES_128_GCM_SHA256".
func tlsString(version, cipher uint16) string {
	v := tls.VersionName(version)
	if len(v) > 4 && v[:4] == "TLS " {
		v = "TLS" + v[4:]
	}
	return fmt.Sprintf("%s %s", v, tls.CipherSuiteName(cipher))
}
