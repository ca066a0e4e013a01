package tftp

import (
	"fmt"
	"regexp"
	"strings"
)

// Rule maps request names, like a line of tftpd-hpa's remap file as bbot's
// agent writes it: "Gr ^/?(.+)$ /build/default/get/\1". Its flags are G
// (applies to reads), P (to writes; with neither, to both) and r (the
// pattern is a regular expression whose match is replaced, with \0 to \9
// standing for the match and its groups; without r, the pattern must equal
// the whole name, which the replacement replaces).
type Rule struct {
	Read, Write bool // which requests it applies to
	Regexp      bool
	Pattern     string
	Replacement string

	re *regexp.Regexp
}

// ParseRule parses "FLAGS PATTERN REPLACEMENT", separated by blanks.
func ParseRule(s string) (Rule, error) {
	f := strings.Fields(s)
	if len(f) != 3 {
		return Rule{}, fmt.Errorf("rule %q: want FLAGS PATTERN REPLACEMENT, for example 'Gr ^/?(.+)$ get/\\1'", s)
	}
	var r Rule
	for _, c := range f[0] {
		switch c {
		case 'G':
			r.Read = true
		case 'P':
			r.Write = true
		case 'r':
			r.Regexp = true
		default:
			return Rule{}, fmt.Errorf("rule %q: unknown flag %q (want G, P and r)", s, c)
		}
	}
	if !r.Read && !r.Write {
		r.Read, r.Write = true, true
	}
	r.Pattern, r.Replacement = f[1], f[2]
	if r.Regexp {
		re, err := regexp.Compile(r.Pattern)
		if err != nil {
			return Rule{}, fmt.Errorf("rule %q: %w", s, err)
		}
		r.re = re
	}
	for i := 0; i < len(r.Replacement); i++ {
		if r.Replacement[i] != '\\' {
			continue
		}
		i++
		if i == len(r.Replacement) {
			return Rule{}, fmt.Errorf("rule %q: replacement ends with a lone backslash", s)
		}
		if c := r.Replacement[i]; c >= '0' && c <= '9' {
			if !r.Regexp {
				return Rule{}, fmt.Errorf("rule %q: \\%c needs the r flag", s, c)
			}
			if int(c-'0') > r.re.NumSubexp() {
				return Rule{}, fmt.Errorf("rule %q: \\%c but the pattern has %d groups", s, c, r.re.NumSubexp())
			}
		}
	}
	return r, nil
}

// String returns the rule as ParseRule reads it.
func (r Rule) String() string {
	var flags string
	if r.Read && !r.Write {
		flags = "G"
	}
	if r.Write && !r.Read {
		flags = "P"
	}
	if r.Regexp {
		flags += "r"
	}
	if flags == "" {
		flags = "GP"
	}
	return flags + " " + r.Pattern + " " + r.Replacement
}

// Apply maps name for op; ok is false when the rule does not apply.
func (r Rule) Apply(op Op, name string) (mapped string, ok bool) {
	if op == OpRead && !r.Read || op == OpWrite && !r.Write {
		return "", false
	}
	if !r.Regexp {
		if name != r.Pattern {
			return "", false
		}
		return expand(r.Replacement, nil, ""), true
	}
	re := r.re
	if re == nil { // a Rule built without ParseRule
		var err error
		if re, err = regexp.Compile(r.Pattern); err != nil {
			return "", false
		}
	}
	m := re.FindStringSubmatchIndex(name)
	if m == nil {
		return "", false
	}
	return name[:m[0]] + expand(r.Replacement, m, name) + name[m[1]:], true
}

func expand(repl string, m []int, name string) string {
	var b strings.Builder
	for i := 0; i < len(repl); i++ {
		c := repl[i]
		if c != '\\' || i+1 == len(repl) {
			b.WriteByte(c)
			continue
		}
		i++
		c = repl[i]
		if c >= '0' && c <= '9' {
			if g := int(c - '0'); 2*g+1 < len(m) && m[2*g] >= 0 {
				b.WriteString(name[m[2*g]:m[2*g+1]])
			}
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
