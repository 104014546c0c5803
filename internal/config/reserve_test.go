package config

import (
	"errors"
	"testing"
)

func TestReserve(t *testing.T) {
	tests := []struct {
		in    string
		want  Reserve
		total int64
		bytes int64
	}{
		{"5%", Reserve{Percent: 5}, 1 << 30, (1 << 30) / 20},
		{"5%", Reserve{Percent: 5}, 8 << 20, 1 << 20},          // the floor
		{"5%", Reserve{Percent: 5}, 1 << 20, 1 << 19},          // never more than half
		{"5%", Reserve{Percent: 5}, 100 << 30, MaxReserve},     // the ceiling
		{"0.5%", Reserve{Percent: 0.5}, 1 << 40, MaxReserve},   // fractions
		{"64MiB", Reserve{Bytes: 64 << 20}, 1 << 30, 64 << 20}, // a size is a size
		{"10 MB", Reserve{Bytes: 10e6}, 1 << 30, 10e6},
		{"4096", Reserve{Bytes: 4096}, 1 << 30, 4096},
		{"0", Reserve{}, 1 << 30, 0},
	}
	for _, tt := range tests {
		var r Reserve
		if err := r.UnmarshalText([]byte(tt.in)); err != nil {
			t.Fatalf("%q: %v", tt.in, err)
		}
		if r != tt.want {
			t.Errorf("%q parsed as %+v, want %+v", tt.in, r, tt.want)
		}
		if got := r.Of(tt.total); got != tt.bytes {
			t.Errorf("%q of %d = %d, want %d", tt.in, tt.total, got, tt.bytes)
		}
		var back Reserve
		if err := back.UnmarshalText([]byte(r.String())); err != nil || back != r {
			t.Errorf("%q renders as %q, which parses as %+v (%v)", tt.in, r.String(), back, err)
		}
	}
}

func TestReserveErrorsNameTheKey(t *testing.T) {
	for _, v := range []string{`"51%"`, `"-1%"`, `"lots"`, `"12XB"`, `"-5"`} {
		_, err := Load(write(t, "[nats]\nreserve = "+v+"\n"))
		var ke *KeyError
		if !errors.As(err, &ke) || ke.Key != "nats.reserve" {
			t.Errorf("reserve = %s: %v, want a KeyError for nats.reserve", v, err)
		}
	}
}
