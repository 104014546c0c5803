package queue

import (
	"testing"
	"time"
)

func TestScheduleTime(t *testing.T) {
	for v, want := range map[string]string{
		"@at 2026-12-02T04:00:00Z":      "2026-12-02T04:00:00Z",
		"@at 2026-12-02T05:00:00+01:00": "2026-12-02T04:00:00Z",
		"@every 1m":                     "",
		"":                              "",
		"@at yesterday":                 "",
	} {
		got := ""
		if tm := ScheduleTime(v); tm != nil {
			got = tm.UTC().Format(time.RFC3339)
		}
		if got != want {
			t.Errorf("ScheduleTime(%q) = %q, want %q", v, got, want)
		}
	}
}

func FuzzScheduleTime(f *testing.F) {
	f.Add("@at 2026-12-02T04:00:00Z")
	f.Add("@every 5m")
	f.Add("@at 2026-12-02T04:00:00.5-07:00")
	f.Fuzz(func(t *testing.T, v string) {
		tm := ScheduleTime(v)
		if tm == nil {
			return
		}
		// What it reads is what delivery would have written for that time.
		again := ScheduleTime("@at " + tm.UTC().Format(time.RFC3339Nano))
		if again == nil || !again.Equal(*tm) {
			t.Fatalf("ScheduleTime(%q) = %v, but its own rendering reads %v", v, tm, again)
		}
	})
}
