package manifest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Errors that Serialize wraps, with the manifest and pair they concern.
var (
	// ErrVersion: a manifest does not start with the version pair of a
	// supported format version (an empty name and value "1").
	ErrVersion = errors.New("format version pair with value 1 expected")
	// ErrName: a name that cannot be written (empty, starting with '#',
	// containing ':' or whitespace, or not valid graphic UTF-8).
	ErrName = errors.New("invalid name")
	// ErrValue: a value that cannot be written so that it reads back the
	// same (not valid graphic UTF-8, or containing a carriage return).
	ErrValue = errors.New("invalid value")
)

// Serialize writes ms as a manifest stream, as libbutl's
// manifest_serializer does: the first manifest starts with ": 1", the next
// ones with ":" (the version being the same); values with newlines or
// leading or trailing blanks, and those after a long name, are written in
// the multi-line form; lines are folded with a trailing '\' before the 77th
// codepoint, preferably at a blank. What Serialize writes parses back to the
// same names and values.
//
// Serialize refuses, naming the manifest and pair, a manifest whose first
// pair is not the version pair (ErrVersion), a later pair with an empty
// name or a name it cannot write (ErrName), and a value it cannot write
// (ErrValue): invalid UTF-8 and codepoints that are not graphic (controls
// other than tab and newline, format, private-use, non-characters, reserved
// ones), and carriage returns, which the parser would read as newlines. On
// error nothing is written to w.
func Serialize(w io.Writer, ms []Manifest) error {
	var b bytes.Buffer
	version := ""
	for i, m := range ms {
		if len(m) == 0 {
			return fmt.Errorf("manifest %d: no pairs: %w", i+1, ErrVersion)
		}
		if v := m[0]; v.Name != "" || v.Value != "1" {
			return fmt.Errorf("manifest %d, pair 1 (%q: %q): %w", i+1, v.Name, v.Value, ErrVersion)
		}
		b.WriteByte(':')
		if version != "1" {
			b.WriteString(" 1")
			version = "1"
		}
		b.WriteByte('\n')
		for j, p := range m[1:] {
			if err := writePair(&b, p.Name, p.Value); err != nil {
				return fmt.Errorf("manifest %d, pair %d (%q): %w", i+1, j+2, p.Name, err)
			}
		}
	}
	if _, err := w.Write(b.Bytes()); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	return nil
}

func writePair(b *bytes.Buffer, name, value string) error {
	n, err := checkName(name)
	if err != nil {
		return err
	}
	if err := checkValue(value); err != nil {
		return err
	}
	b.WriteString(name)
	b.WriteByte(':')
	if value != "" {
		writeValue(b, value, n+1)
	}
	b.WriteByte('\n')
	return nil
}

// checkName returns the length of name in codepoints, or why it cannot be
// written.
func checkName(name string) (int, error) {
	switch {
	case name == "":
		return 0, fmt.Errorf("%w: empty name", ErrName)
	case name[0] == '#':
		return 0, fmt.Errorf("%w: name starts with '#'", ErrName)
	}
	if msg := checkText(name); msg != "" {
		return 0, fmt.Errorf("%w: %s", ErrName, msg)
	}
	if i := strings.IndexAny(name, " \t\r\n"); i >= 0 {
		return 0, fmt.Errorf("%w: name contains whitespace", ErrName)
	}
	if strings.Contains(name, ":") {
		return 0, fmt.Errorf("%w: name contains ':'", ErrName)
	}
	return utf8.RuneCountInString(name), nil
}

func checkValue(value string) error {
	if msg := checkText(value); msg != "" {
		return fmt.Errorf("%w: %s", ErrValue, msg)
	}
	if i := strings.IndexByte(value, '\r'); i >= 0 {
		return fmt.Errorf("%w: carriage return at byte %d (it would read back as a newline)", ErrValue, i)
	}
	return nil
}

// checkText says why s is not valid UTF-8 of graphic codepoints, tabs and
// newlines, or returns "".
func checkText(s string) string {
	for i := 0; i < len(s); {
		if s[i] == '\r' || s[i] == '\n' || s[i] == '\t' {
			i++
			continue
		}
		_, size, msg := decodeChar(s[i:])
		if msg != "" {
			if msg == "unexpected end of stream" {
				msg = "incomplete UTF-8 sequence"
			}
			return fmt.Sprintf("%s at byte %d", msg, i)
		}
		i += size
	}
	return ""
}

// writeValue writes a non-empty value after "NAME:", cl being the column
// of the colon (0-based columns count codepoints).
func writeValue(b *bytes.Buffer, v string, cl int) {
	if cl+1 > 39 || strings.Contains(v, "\n") ||
		v[0] == ' ' || v[0] == '\t' || v[len(v)-1] == ' ' || v[len(v)-1] == '\t' {
		b.WriteString("\\\n") // The multi-line introducer.
		for i, line := range strings.Split(v, "\n") {
			if i > 0 {
				b.WriteByte('\n')
			}
			writeLine(b, line, 0)
		}
		b.WriteString("\n\\") // The multi-line terminator.
		return
	}
	b.WriteByte(' ')
	writeLine(b, v, cl+1)
}

// writeLine writes one line of a value (no newlines), starting at column
// cl, folding it as libbutl does: the 77th codepoint of a line goes to the
// next one after a '\' (so that a line has at most 78 characters), unless it
// is the last one; a blank is a better place to break if the next blank (or
// the end) is past that point and the line is already longer than 57. A
// line is never broken right after a '\', which would escape the
// continuation. A line that ends with '\' gets it doubled, so it is not read
// as a continuation.
//
// Like libbutl, the look-ahead for the next blank measures bytes while the
// column counts codepoints.
func writeLine(b *bytes.Buffer, s string, cl int) {
	var pc rune
	for i, c := range s {
		if pc != '\\' {
			br := false
			if c == ' ' || c == '\t' {
				w := i + 1
				for w < len(s) && s[w] != ' ' && s[w] != '\t' {
					w++
				}
				limit := 77
				if w == len(s) {
					limit = 78
				}
				if cl+(w-i) > limit {
					br = cl > 57
				}
			}
			limit := 77
			if i+1 == len(s) {
				limit = 78
			}
			if cl >= limit {
				br = true
			}
			if br {
				b.WriteString("\\\n")
				cl = 0
			}
		}
		b.WriteRune(c)
		cl++
		pc = c
	}
	if pc == '\\' {
		b.WriteByte('\\')
	}
}

// MergeComment joins a value and a comment into one value that
// SplitComment splits back, as libbutl's merge_comment does: single-line
// ones as "VALUE; COMMENT" with ';' and '\' in the value escaped, multi-line
// ones with a line holding only ';' between them.
func MergeComment(value, comment string) string {
	var b strings.Builder
	if !strings.Contains(value, "\n") && !strings.Contains(comment, "\n") {
		for i := 0; i < len(value); i++ {
			if value[i] == ';' || value[i] == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(value[i])
		}
		if comment != "" {
			b.WriteString("; ")
			b.WriteString(comment)
		}
		return b.String()
	}

	rest := value
	for rest != "" {
		line, after, more := strings.Cut(rest, "\n")
		if t := strings.TrimLeft(line, "\\"); t == ";" {
			// Double the backslashes, or escape a lone ';'.
			k := len(line) - 1
			if k == 0 {
				k = 1
			}
			b.WriteString(strings.Repeat("\\", k))
		}
		b.WriteString(line)
		if more {
			b.WriteByte('\n')
		}
		rest = after
	}
	if comment != "" {
		if b.Len() > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(";\n")
		b.WriteString(comment)
	}
	return b.String()
}
