package admin

import "strings"

// DiffLine is one line of a line diff: Op is "same", "del" (only in the
// value before), "add" (only in the value after) or "file" (a note that
// the side is the file's value or the default).
type DiffLine struct {
	Op, Text string
}

// Mark is the line's sign in the diff: " ", "-" or "+".
func (d DiffLine) Mark() string {
	switch d.Op {
	case "del":
		return "-"
	case "add":
		return "+"
	}
	return " "
}

// maxDiffLines bounds the lines LineDiff compares (its table is their
// product); longer values are shown as all removed, then all added.
const maxDiffLines = 2000

// LineDiff is the line diff of a to b: a longest common subsequence of
// their lines kept, the rest marked removed or added, removals first.
func LineDiff(a, b string) []DiffLine {
	x, y := splitLines(a), splitLines(b)
	var out []DiffLine
	if len(x) > maxDiffLines || len(y) > maxDiffLines {
		for _, l := range x {
			out = append(out, DiffLine{"del", l})
		}
		for _, l := range y {
			out = append(out, DiffLine{"add", l})
		}
		return out
	}
	// lcs[i][j] is the length of a longest common subsequence of x[i:]
	// and y[j:].
	lcs := make([][]int, len(x)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	i, j := 0, 0
	for i < len(x) || j < len(y) {
		switch {
		case i < len(x) && j < len(y) && x[i] == y[j]:
			out = append(out, DiffLine{"same", x[i]})
			i, j = i+1, j+1
		case j == len(y) || i < len(x) && lcs[i+1][j] >= lcs[i][j+1]:
			out = append(out, DiffLine{"del", x[i]})
			i++
		default:
			out = append(out, DiffLine{"add", y[j]})
			j++
		}
	}
	return out
}

// splitLines are the lines of s ("" has none; a final newline ends the
// last line rather than starting another).
func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

// Diff is the revision's change as a line diff: from the value before
// (or the file's) to the value it set (or the file's, when it unset the
// key).
func (r Revision) Diff() []DiffLine {
	before, after := r.Before, r.Value
	var head, tail []DiffLine
	if r.BeforeFile {
		head, before = []DiffLine{{"file", "(before: the file's value or the default)"}}, ""
	}
	if r.Unset {
		tail, after = []DiffLine{{"file", "(after: the file's value or the default)"}}, ""
	}
	return append(append(head, LineDiff(before, after)...), tail...)
}
