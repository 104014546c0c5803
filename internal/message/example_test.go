package message_test

import (
	"fmt"
	"strings"
	"time"

	"github.com/mailroot/mailroot/internal/message"
)

// A pickup file in the IIS format: the envelope lines are removed, and
// Mailroot's Received:, Date: and Message-ID: headers are added.
func ExampleParse() {
	file := "x-sender: reports@example.com\n" +
		"x-receiver: ops@example.net\n" +
		"From: Nightly job <reports@example.com>\n" +
		"To: ops@example.net\n" +
		"Subject: backup done\n" +
		"\n" +
		"All good.\n"
	p, err := message.Parse([]byte(file), message.Options{
		DefaultDomain: "example.com",
		Hostname:      "mx.example.com",
		QueueID:       "EXAMPLEQUEUEID",
		Now:           time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("from:", p.From)
	fmt.Println("to:", p.Rcpts)
	// The message has CRLF line ends; shown here with LF.
	fmt.Print(strings.ReplaceAll(string(p.Message), "\r\n", "\n"))
	// Output:
	// from: reports@example.com
	// to: [ops@example.net]
	// Received: from pickup by mx.example.com (Mailroot)
	// 	with local-file id EXAMPLEQUEUEID;
	// 	Tue, 04 Mar 2025 05:06:07 +0000
	// From: Nightly job <reports@example.com>
	// To: ops@example.net
	// Subject: backup done
	// Date: Tue, 04 Mar 2025 05:06:07 +0000
	// Message-ID: <EXAMPLEQUEUEID@mx.example.com>
	//
	// All good.
}
