// Package preview shows what a sync would change without changing anything (--dry-run): a
// unified diff per file, or only sizes for values that may be secret.
package preview

import (
	"fmt"
	"strings"
)

// maxLines bounds the line diff, which is quadratic; bigger files are shown by size.
const maxLines = 4000

// Diff returns a unified diff from old to new of the file name, one hunk with the whole file,
// or "" when they are equal. A nil old means the file is new, a nil new that it goes away.
// Without showValues only the sizes are printed, never the content.
func Diff(name string, old, new []byte, showValues bool) string {
	if old != nil && new != nil && string(old) == string(new) {
		return ""
	}
	var what string
	switch {
	case old == nil:
		what = fmt.Sprintf("new, %d bytes", len(new))
	case new == nil:
		what = fmt.Sprintf("removed, was %d bytes", len(old))
	default:
		what = fmt.Sprintf("changed, %d -> %d bytes", len(old), len(new))
	}
	a, b := lines(old), lines(new)
	if !showValues || len(a) > maxLines || len(b) > maxLines {
		return fmt.Sprintf("%s: %s\n", name, what)
	}
	var sb strings.Builder
	rel := strings.TrimLeft(name, "/") // a/etc/x, not a//etc/x
	fmt.Fprintf(&sb, "--- a/%s\n+++ b/%s\n@@ -%s +%s @@\n", rel, rel, span(len(a)), span(len(b)))
	for _, l := range diffLines(a, b) {
		sb.WriteString(l)
		if !strings.HasSuffix(l, "\n") {
			sb.WriteString("\n\\ No newline at end of file\n")
		}
	}
	return sb.String()
}

func span(n int) string {
	if n == 0 {
		return "0,0"
	}
	return fmt.Sprintf("1,%d", n)
}

// lines splits keeping each line's newline.
func lines(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	parts := strings.SplitAfter(string(b), "\n")
	if parts[len(parts)-1] == "" {
		parts = parts[:len(parts)-1]
	}
	return parts
}

// diffLines is the classic longest-common-subsequence diff: " " kept, "-" removed, "+" added.
func diffLines(a, b []string) []string {
	// lcs[i][j] is the length of the LCS of a[i:] and b[j:].
	lcs := make([][]int, len(a)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(b)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []string
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case i < len(a) && j < len(b) && a[i] == b[j]:
			out = append(out, " "+a[i])
			i, j = i+1, j+1
		case i < len(a) && (j == len(b) || lcs[i+1][j] >= lcs[i][j+1]):
			out = append(out, "-"+a[i])
			i++
		default:
			out = append(out, "+"+b[j])
			j++
		}
	}
	return out
}
