package config

import (
	"fmt"
	"strconv"
	"strings"
)

// Reserve is nats.reserve: room kept free for mail already accepted,
// either a percentage of a capacity or a number of bytes.
type Reserve struct {
	// Percent of the capacity it is applied to (0 when Bytes is used).
	Percent float64
	// Bytes, when Percent is 0.
	Bytes int64
}

// MinReserve is the smallest reserve a percentage yields (when the
// capacity is large enough for it): room for a few dozen queued messages
// to take their next step at once, whatever the percentage of a small store.
const MinReserve = 1 << 20

// MaxReserve is the largest reserve a percentage yields: more than the
// pipeline needs in flight, and a few percent of a large, nearly full disk
// should not stop a server that has gigabytes left.
const MaxReserve = 1 << 30

// Of returns the reserve in bytes for a capacity of total bytes. A
// percentage yields between MinReserve and MaxReserve, and never more than
// half of total.
func (r Reserve) Of(total int64) int64 {
	if r.Percent == 0 {
		return r.Bytes
	}
	v := int64(float64(total) * r.Percent / 100)
	return min(max(v, MinReserve), MaxReserve, total/2)
}

// String renders the reserve as it is written in the configuration.
func (r Reserve) String() string {
	if r.Percent != 0 || r.Bytes == 0 {
		return strconv.FormatFloat(r.Percent, 'f', -1, 64) + "%"
	}
	return FormatSize(r.Bytes)
}

// MarshalText renders the reserve.
func (r Reserve) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText parses "5%", "0.5%", "64MiB", "512KiB", "1GiB" or a plain
// number of bytes.
func (r *Reserve) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || v < 0 || v > 50 {
			return fmt.Errorf("not a percentage from 0%% to 50%%: %q", s)
		}
		*r = Reserve{Percent: v}
		return nil
	}
	n, err := ParseSize(s)
	if err != nil {
		return err
	}
	*r = Reserve{Bytes: n}
	return nil
}

var sizeUnits = []struct {
	suffix string
	mult   int64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1}}

// ParseSize parses a byte count with an optional unit: "64MiB", "10MB",
// "4096".
func ParseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("not a size like \"64MiB\": %q", s)
	}
	return n * mult, nil
}

// FormatSize renders n bytes with the largest binary unit that divides it.
func FormatSize(n int64) string {
	for _, u := range sizeUnits[:3] {
		if n >= u.mult && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}
