package config

import (
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"30d":     30 * 24 * time.Hour,
		"1d12h":   36 * time.Hour,
		"0d":      0,
		"-2d":     -48 * time.Hour,
		"-1d1h":   -25 * time.Hour,
		"15m":     15 * time.Minute,
		"1h30m":   90 * time.Minute,
		"2d500ms": 48*time.Hour + 500*time.Millisecond,
	} {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "d", "30", "d1h", "1.5d", "1d-1h", "1d+1h", "1h1d", "x1d", "999999d", "99999d9999999h", "--1d"} {
		if got, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) = %v, want an error", in, got)
		}
	}
}

func TestEventsMaxAge(t *testing.T) {
	if got := Default().Events.MaxAge.D(); got != 30*24*time.Hour {
		t.Fatalf("default events.max_age = %v, want 30d", got)
	}
	c := Default()
	if err := c.Events.MaxAge.UnmarshalText([]byte("7d")); err != nil || c.Events.MaxAge.D() != 7*24*time.Hour {
		t.Fatalf("7d = %v, %v", c.Events.MaxAge.D(), err)
	}
	c.Events.MaxAge = Duration(time.Second)
	err := c.Validate()
	if ke, ok := err.(*KeyError); !ok || ke.Key != "events.max_age" {
		t.Fatalf("max_age 1s: %v, want a KeyError naming events.max_age", err)
	}
}

// FuzzParseDuration: never a panic, and what parses without days is what
// time.ParseDuration says; with days, the sign and the day part agree.
func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"30d", "1d12h", "-2d", "15m", "", "d", "99999d", "1d-1h", "1h1d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			return
		}
		if want, werr := time.ParseDuration(s); werr == nil && want != d {
			t.Fatalf("ParseDuration(%q) = %v, time.ParseDuration says %v", s, d, want)
		}
		if again, err := ParseDuration(time.Duration(d).String()); err != nil || again != d {
			t.Fatalf("round trip of %q (%v): %v, %v", s, d, again, err)
		}
	})
}
