package main

// `mailroot dkim keygen|list` manages the DKIM signing keys under
// <data_dir>/dkim (internal/dkim): a key made here signs the mail of its
// domain as soon as its TXT record is published, with nothing to
// configure; running delivery processes pick it up within 30 s.

import (
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/mailroot/mailroot/internal/dkim"
)

const dkimUsage = `usage:
  mailroot dkim keygen -domain DOMAIN [-selector S] [-algorithm rsa|ed25519]
  mailroot dkim list
common flags: -config FILE, -data DIR (keys are <data_dir>/dkim/<domain>/<selector>.key)
keygen writes a new key (mode 0600) and prints the DNS TXT record to publish; an existing
key is never overwritten. rsa (2048 bits) is verified by every receiver; ed25519 (RFC 8463)
by fewer: make one of each, under two selectors, to sign with both.
`

func dkimCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(stderr, dkimUsage)
		return 2
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("mailroot dkim "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addCommonFlags(fs)
	domain := fs.String("domain", "", "the signing domain: mail whose From: is at this domain is signed")
	selector := fs.String("selector", dkim.DefaultSelector, "the selector: the key is published at <selector>._domainkey.<domain>")
	algorithm := fs.String("algorithm", dkim.RSA, "rsa or ed25519")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mailroot dkim %s: unexpected argument %q\n", sub, fs.Arg(0))
		return 2
	}
	cfg, err := cf.load()
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 2
	}
	dir := dkim.Dir(cfg.DataDir)
	switch sub {
	case "keygen":
		if *domain == "" {
			fmt.Fprintln(stderr, "mailroot dkim keygen: -domain is required")
			return 2
		}
		k, err := dkim.Generate(dir, *domain, *selector, *algorithm)
		if err != nil {
			fmt.Fprintf(stderr, "mailroot: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "wrote %s (%s)\npublish this TXT record, then mail from @%s is signed:\n%s\n", k.Path, k.Algorithm, k.Domain, k.Zone())
		return 0
	case "list":
		keys, err := dkim.Load(dir)
		if err != nil {
			fmt.Fprintf(stderr, "mailroot: %v\n", err)
			return 1
		}
		if len(keys) == 0 {
			fmt.Fprintf(stdout, "no DKIM keys under %s (mailroot dkim keygen -domain D makes one)\n", dir)
			return 0
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DOMAIN\tSELECTOR\tALGORITHM\tFILE")
		for _, k := range keys {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.Domain, k.Selector, k.Algorithm, k.Path)
		}
		_ = tw.Flush()
		fmt.Fprintln(stdout, "\nTXT records:")
		for _, k := range keys {
			fmt.Fprintln(stdout, k.Zone())
		}
		return 0
	default:
		fmt.Fprintf(stderr, "mailroot dkim: unknown subcommand %q\n%s", sub, dkimUsage)
		return 2
	}
}
