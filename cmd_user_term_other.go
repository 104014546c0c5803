//go:build !linux

package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// isTerminal is only known on Linux; elsewhere the password is read as a
// line (use -password-stdin in scripts).
func isTerminal(*os.File) bool { return false }

func readNoEcho(f *os.File) (string, error) {
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read password: %w", err)
	}
	return strings.TrimRight(line, "\r\n"), nil
}
