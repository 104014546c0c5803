package w3c

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Record is one entry line read back: its time and every field by name,
// unescaped ("" for None).
type Record struct {
	Time   time.Time
	Fields map[string]string
}

// Int is the field name as a number; -1 for None or not a number.
func (r Record) Int(name string) int64 {
	n, err := strconv.ParseInt(r.Fields[name], 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// numeric are the fields that are a number or None.
var numeric = map[string]bool{"s-port": true, "sc-bytes": true, "cs-bytes": true, "time-taken": true, "sc-win32-status": true}

// Parse reads a log strictly, as a tool reading IIS's logs would need it:
// the file starts with directives; #Version is 1.0 and #Fields comes
// before any entry; #Date is a date; every entry has every declared field,
// none empty, each a valid escape; date and time parse; sc-status is
// three digits; numeric fields are numbers. Lines end in CRLF. A directive
// block may come again (a reopened file), with the same #Fields or others.
func Parse(r io.Reader) ([]Record, error) {
	raw, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(string(raw), "\n")
	if last := lines[len(lines)-1]; last != "" {
		return nil, fmt.Errorf("line %d: no line end at the end of the file", len(lines))
	}
	lines = lines[:len(lines)-1]
	var fields []string
	var out []Record
	version := false
	for i, text := range lines {
		n := i + 1
		line, ok := strings.CutSuffix(text, "\r")
		if !ok {
			return out, fmt.Errorf("line %d: does not end in CRLF", n)
		}
		if n == 1 && !strings.HasPrefix(line, "#") {
			return out, fmt.Errorf("line 1: not a directive: %q", line)
		}
		if d, ok := strings.CutPrefix(line, "#"); ok {
			name, val, ok := strings.Cut(d, ": ")
			if !ok {
				return out, fmt.Errorf("line %d: malformed directive %q", n, line)
			}
			switch name {
			case "Version":
				if val != "1.0" {
					return out, fmt.Errorf("line %d: version %q, want 1.0", n, val)
				}
				version = true
			case "Fields":
				fields = strings.Split(val, " ")
				seen := map[string]bool{}
				for _, f := range fields {
					if f == "" || seen[f] {
						return out, fmt.Errorf("line %d: empty or repeated field in %q", n, val)
					}
					seen[f] = true
				}
			case "Date":
				if _, err := time.Parse("2006-01-02 15:04:05", val); err != nil {
					return out, fmt.Errorf("line %d: #Date: %v", n, err)
				}
			case "Software", "Remark", "Start-Date", "End-Date":
			default:
				return out, fmt.Errorf("line %d: unknown directive %q", n, name)
			}
			continue
		}
		if !version || fields == nil {
			return out, fmt.Errorf("line %d: entry before #Version and #Fields", n)
		}
		vals := strings.Split(line, " ")
		if len(vals) != len(fields) {
			return out, fmt.Errorf("line %d: %d fields, #Fields declares %d: %q", n, len(vals), len(fields), line)
		}
		rec := Record{Fields: make(map[string]string, len(fields))}
		var date, clock string
		for i, f := range fields {
			v := vals[i]
			u, err := Unescape(v)
			if err != nil {
				return out, fmt.Errorf("line %d: field %s: %q: %v", n, f, v, err)
			}
			switch {
			case f == "date":
				date = v
			case f == "time":
				clock = v
			case f == "sc-status":
				if len(v) != 3 || v[0] < '1' || v[0] > '5' || !digits(v) {
					return out, fmt.Errorf("line %d: sc-status %q is not a 3-digit reply code", n, v)
				}
			case numeric[f]:
				if v != None && !digits(v) {
					return out, fmt.Errorf("line %d: %s %q is not a number", n, f, v)
				}
			}
			rec.Fields[f] = u
		}
		if date == "" || clock == "" {
			return out, fmt.Errorf("line %d: no date or time field", n)
		}
		t, err := time.Parse("2006-01-02 15:04:05", date+" "+clock)
		if err != nil {
			return out, fmt.Errorf("line %d: %v", n, err)
		}
		rec.Time = t
		out = append(out, rec)
	}
	return out, nil
}

func digits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
