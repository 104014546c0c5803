package dane_test

import (
	"fmt"

	"github.com/mailroot/mailroot/internal/dane"
)

// A TLSA record's fields become a Record, or the reason it is unusable
// for SMTP.
func ExampleNewRecord() {
	r, err := dane.NewRecord(dane.DANEEE, dane.SelectorSPKI, dane.MatchSHA256,
		"8cb0fc6c527506a053f4f14c8464bebbd6dede2738d11468dd953d7d6a3021f1")
	fmt.Println(r, err)
	_, err = dane.NewRecord(dane.PKIXEE, dane.SelectorSPKI, dane.MatchSHA256,
		"8cb0fc6c527506a053f4f14c8464bebbd6dede2738d11468dd953d7d6a3021f1")
	fmt.Println(err)
	fmt.Println(dane.Name("MX.Example.com", 25))
	// Output:
	// 3 1 1 8cb0fc6c527506a053f4f14c8464bebbd6dede2738d11468dd953d7d6a3021f1 <nil>
	// usage 1 (PKIX) is not used for SMTP (RFC 7672 §3.1.3)
	// _25._tcp.mx.example.com.
}
