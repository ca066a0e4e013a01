package manifest

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Text turns arbitrary program output (a build log, a serial console) into
// a value that Serialize accepts and that reads back the same: CR LF and
// lone CRs become newlines, and what a manifest cannot carry — invalid
// UTF-8, control characters other than tab and newline, and the other
// codepoints build2 refuses — is written as a visible escape (\xHH for a
// byte, \u{HHHH} for a codepoint), so a log loses nothing a reader needs.
func Text(s string) string {
	if checkText(s) == "" && !strings.Contains(s, "\r") {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\r':
			b.WriteByte('\n')
			i++
			if i < len(s) && s[i] == '\n' {
				i++
			}
			continue
		case c == '\n' || c == '\t':
			b.WriteByte(c)
			i++
			continue
		}
		_, size, msg := decodeChar(s[i:min(len(s), i+utf8.UTFMax)])
		if msg == "" {
			b.WriteString(s[i : i+size])
			i += size
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r < utf8.RuneSelf || r == utf8.RuneError && size <= 1 {
			fmt.Fprintf(&b, `\x%02X`, c)
		} else {
			fmt.Fprintf(&b, `\u{%X}`, r)
		}
		i += size
	}
	return b.String()
}
