package manifest

import (
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/google/go-cmp/cmp"
)

// nv is a name-value pair without positions, for comparisons.
type nv = [2]string

// pairsOf returns the names and values of ms.
func pairsOf(ms []Manifest) [][]nv {
	r := [][]nv{}
	for _, m := range ms {
		ps := []nv{}
		for _, p := range m {
			ps = append(ps, nv{p.Name, p.Value})
		}
		r = append(r, ps)
	}
	return r
}

// manifests builds manifests from names and values.
func manifests(pss ...[]nv) []Manifest {
	ms := []Manifest{}
	for _, ps := range pss {
		m := Manifest{}
		for _, p := range ps {
			m = append(m, Pair{Name: p[0], Value: p[1]})
		}
		ms = append(ms, m)
	}
	return ms
}

func TestParse(t *testing.T) {
	v1 := nv{"", "1"}
	tests := []struct {
		name string
		in   string
		want [][]nv
	}{
		// Empty streams, blanks and comments.
		{"empty", "", [][]nv{}},
		{"blanks", " \t", [][]nv{}},
		{"blank lines", " \t\n \n\n", [][]nv{}},
		{"comments only", "# one\n  #two", [][]nv{}},

		// Version pair.
		{"version only", ":1", [][]nv{{v1}}},
		{"version indented", " \t :1", [][]nv{{v1}}},
		{"version spaced", " \t : 1 ", [][]nv{{v1}}},
		{"version newline", ":1 \n", [][]nv{{v1}}},
		{"comment before version", "# c\n: 1\na: x\n", [][]nv{{v1, {"a", "x"}}}},

		// Pairs.
		{"one pair", ":1\na:x", [][]nv{{v1, {"a", "x"}}}},
		{"one pair newline", ":1\na:x\n", [][]nv{{v1, {"a", "x"}}}},
		{"two pairs", ":1\na:x\nb:y", [][]nv{{v1, {"a", "x"}, {"b", "y"}}}},
		{"indented name and comment", ":1\na:x\n\tb : y\n  #comment", [][]nv{{v1, {"a", "x"}, {"b", "y"}}}},
		{"empty value", ":1\na:", [][]nv{{v1, {"a", ""}}}},
		{"blank before colon", ":1\nabc :", [][]nv{{v1, {"abc", ""}}}},
		{"tab before colon", ":1\nabc\t:", [][]nv{{v1, {"abc", ""}}}},
		{"comment between pairs", ": 1\na: x\n# b: y\nc: z\n", [][]nv{{v1, {"a", "x"}, {"c", "z"}}}},
		{"hash inside value", ": 1\na: x # y\n", [][]nv{{v1, {"a", "x # y"}}}},
		{"hash inside name", ": 1\na#b: x\n", [][]nv{{v1, {"a#b", "x"}}}},
		{"colon inside value", ": 1\nurl: http://x:80/y\n", [][]nv{{v1, {"url", "http://x:80/y"}}}},
		{"repeated name kept", ": 1\na: x\na: y\n", [][]nv{{v1, {"a", "x"}, {"a", "y"}}}},

		// Several manifests.
		{"second version omitted", ":1\na:x\n:\nb:y", [][]nv{{v1, {"a", "x"}}, {v1, {"b", "y"}}}},
		{"second version repeated", ":1\na:x\n:1\nb:y", [][]nv{{v1, {"a", "x"}}, {v1, {"b", "y"}}}},
		{"three manifests", ":1\na:x\n:\nb:y\n:\nc:z\n", [][]nv{{v1, {"a", "x"}}, {v1, {"b", "y"}}, {v1, {"c", "z"}}}},
		{"trailing separator is an empty manifest", ": 1\na: x\n:\n", [][]nv{{v1, {"a", "x"}}, {v1}}},
		{"empty manifests", ": 1\n:\n", [][]nv{{v1}, {v1}}},

		// Simple values.
		{"blanks stripped", ":1\na: \t xyz \t ", [][]nv{{v1, {"a", "xyz"}}}},
		{"inner blanks kept", ":1\na: x  \t y\n", [][]nv{{v1, {"a", "x  \t y"}}}},
		{"continuation at eos", ":1\na:x\\", [][]nv{{v1, {"a", "x"}}}},
		{"continuation", ":1\na:x\\\ny", [][]nv{{v1, {"a", "xy"}}}},
		{"continuation keeps blanks", ":1\na: x\\\n  y\n", [][]nv{{v1, {"a", "x  y"}}}},
		{"escaped backslash", ":1\na:x\\\\\nb:", [][]nv{{v1, {"a", "x\\"}, {"b", ""}}}},
		{"escaped backslash after backslash", ":1\na:x\\\\\\\nb:", [][]nv{{v1, {"a", "x\\\\"}, {"b", ""}}}},
		{"inner backslashes literal", ": 1\na: c:\\\\x\\y\n", [][]nv{{v1, {"a", "c:\\\\x\\y"}}}},
		{"leading backslash", ":1\na:\\x", [][]nv{{v1, {"a", "\\x"}}}},
		{"literal newline at eos", ":1\na:x\\\n\\", [][]nv{{v1, {"a", "x\n"}}}},
		{"literal newline", ":1\na:x\\\n\\\ny", [][]nv{{v1, {"a", "x\ny"}}}},
		{"literal newlines", ":1\na:x\\\n\\\ny\\\n\\\nz", [][]nv{{v1, {"a", "x\ny\nz"}}}},

		// Multi-line values.
		{"ml empty at eos", ":1\na:\\", [][]nv{{v1, {"a", ""}}}},
		{"ml empty newline eos", ":1\na:\\\n", [][]nv{{v1, {"a", ""}}}},
		{"ml empty terminated", ":1\na:\\\n\\", [][]nv{{v1, {"a", ""}}}},
		{"ml empty terminated newline", ":1\na:\\\n\\\n", [][]nv{{v1, {"a", ""}}}},
		{"ml leading backslash", ":1\na:\\\n\\x\n\\", [][]nv{{v1, {"a", "\\x"}}}},
		{"ml unterminated", ":1\na:\\\nx\ny", [][]nv{{v1, {"a", "x\ny"}}}},
		{"ml blanks and hash kept", ":1\na:\\\n \n#\t\n\\", [][]nv{{v1, {"a", " \n#\t"}}}},
		{"ml one newline", ":1\na:\\\n\n\n\\", [][]nv{{v1, {"a", "\n"}}}},
		{"ml continuation at eos", ":1\na:\\\nx\\", [][]nv{{v1, {"a", "x"}}}},
		{"ml continuation", ":1\na:\\\nx\\\ny\n\\", [][]nv{{v1, {"a", "xy"}}}},
		{"ml escaped backslash", ":1\na:\\\nx\\\\\n\\\nb:", [][]nv{{v1, {"a", "x\\"}, {"b", ""}}}},
		{"ml escaped backslash after backslash", ":1\na:\\\nx\\\\\\\n\\\nb:", [][]nv{{v1, {"a", "x\\\\"}, {"b", ""}}}},
		{"ml after blank", ": 1\na: \\\nx\n\\\n", [][]nv{{v1, {"a", "x"}}}},
		{"ml introducer on next line", ": 1\na:\n\\\nx\ny\n\\\nb: z\n", [][]nv{{v1, {"a", "x\ny"}, {"b", "z"}}}},
		{"ml introducer on next line at eos", ": 1\na:\n\\", [][]nv{{v1, {"a", ""}}}},
		{"empty value then backslash name", ": 1\na:\n\\b: x\n", [][]nv{{v1, {"a", ""}, {"\\b", "x"}}}},
		{"ml then pair", ": 1\na:\\\nx\n\\\nb: y\n", [][]nv{{v1, {"a", "x"}, {"b", "y"}}}},

		// Newlines as Windows and old Macs write them.
		{"crlf", ": 1\r\na: x\r\nb:\\\r\ny\r\nz\r\n\\\r\n", [][]nv{{v1, {"a", "x"}, {"b", "y\nz"}}}},
		{"lone cr", ": 1\ra: x\rb: y", [][]nv{{v1, {"a", "x"}, {"b", "y"}}}},
		{"cr run", ": 1\r\r\r\na: x", [][]nv{{v1, {"a", "x"}}}},

		// UTF-8.
		{"utf8", ":1\n#\xD0\xB0\n\xD0\xB0y\xD0\xB0:\xD0\xB0z\xD0\xB0", [][]nv{{v1, {"\xD0\xB0y\xD0\xB0", "\xD0\xB0z\xD0\xB0"}}}},
		{"utf8 four bytes", ": 1\na: \U0001F600\n", [][]nv{{v1, {"a", "\U0001F600"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ms, err := parseAll(strings.NewReader(tt.in), "m")
			if err != nil {
				t.Fatalf("Parse(%q) error: %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, pairsOf(ms)); diff != "" {
				t.Errorf("Parse(%q) pairs (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // the whole error message
	}{
		{"name without colon at eos", "a", "m:1:2: error: ':' expected after name"},
		{"name then blank", "a b", "m:1:3: error: ':' expected after name"},
		{"name then tab", "a\tb", "m:1:3: error: ':' expected after name"},
		{"name then newline", "a\nb", "m:1:2: error: ':' expected after name"},
		{"name then hash", ": 1\nab #: x", "m:2:4: error: ':' expected after name"},
		{"no version pair", "a:", "m:1:1: error: format version pair expected"},
		{"no version pair after comment", "# c\n  a: b\n", "m:2:3: error: format version pair expected"},
		{"no version value", ":", "m:1:2: error: format version value expected"},
		{"no version value blank", ": \n", "m:1:3: error: format version value expected"},
		{"unsupported version", ":9", "m:1:2: error: unsupported format version 9"},
		{"unsupported version spaced", ": 2 \n", "m:1:3: error: unsupported format version 2"},
		{"unsupported later version", ":1\na:b\n:9", "m:3:2: error: unsupported format version 9"},
		{"bad name in second manifest", ": 1\na: b\n:\nc d: e\n", "m:4:3: error: ':' expected after name"},

		// Strict UTF-8, located to the codepoint.
		{"bad byte in name", ":1\na\xD0\xB0\xD0\xB0\xFE", "m:2:4: error: invalid manifest name: invalid UTF-8 sequence first byte (0xFE)"},
		{"truncated in comment", ":1\n#\xD0\n\xD0\xB0y:z", "m:2:2: error: invalid manifest: invalid UTF-8 sequence second byte (0x0A)"},
		{"stray continuation byte", ":1\n#\xD0\xB0\n\xB0y:z", "m:3:1: error: invalid manifest: invalid UTF-8 sequence first byte (0xB0)"},
		{"bad second byte in name", ":1\n\xD0y:z", "m:2:1: error: invalid manifest: invalid UTF-8 sequence second byte (0x79 'y')"},
		{"bad byte in value", ":1\na: x\xD0z", "m:2:5: error: invalid manifest value: invalid UTF-8 sequence second byte (0x7A 'z')"},
		{"truncated at eos", ":1\na: x\xD0", "m:2:5: error: invalid manifest value: unexpected end of stream"},
		{"overlong", ": 1\na: x\xC0\x80\n", "m:2:5: error: invalid manifest value: invalid UTF-8 sequence first byte (0xC0)"},
		{"surrogate", ": 1\na: x\xED\xA0\x80\n", "m:2:5: error: invalid manifest value: invalid UTF-8 sequence second byte (0xA0)"},
		{"above U+10FFFF", ": 1\na: x\xF4\x90\x80\x80\n", "m:2:5: error: invalid manifest value: invalid UTF-8 sequence second byte (0x90)"},
		{"five bytes", ": 1\na: x\xF8\x88\x80\x80\x80\n", "m:2:5: error: invalid manifest value: 5-byte length UTF-8 sequence"},
		{"cr then bad byte", ":1\r\r\xB0#\n", "m:2:1: error: invalid manifest: invalid UTF-8 sequence first byte (0xB0)"},
		{"bad byte after cr", ": 1\na: x\r\xD0", "m:3:1: error: invalid manifest: unexpected end of stream"},
		{"column counts codepoints", ": 1\nа: ббб\x01\n", "m:2:7: error: invalid manifest value: invalid Unicode codepoint (control)"},
		{"nul", ": 1\na: x\x00y\n", "m:2:5: error: invalid manifest value: invalid Unicode codepoint (control)"},
		{"delete", ": 1\na: x\x7F\n", "m:2:5: error: invalid manifest value: invalid Unicode codepoint (control)"},
		{"c1 control", ": 1\na: x\u0085\n", "m:2:5: error: invalid manifest value: invalid Unicode codepoint (control)"},
		{"byte order mark", "\uFEFF: 1\n", "m:1:1: error: invalid manifest: invalid Unicode codepoint (format)"},
		{"private use", ": 1\na: \uE000\n", "m:2:4: error: invalid manifest: invalid Unicode codepoint (private-use)"},
		{"non-character", ": 1\na: x\uFFFF\n", "m:2:5: error: invalid manifest value: invalid Unicode codepoint (non-character)"},
		{"reserved", ": 1\na: x\U00030000\n", "m:2:5: error: invalid manifest value: invalid Unicode codepoint (reserved)"},
		{"control in ml value", ": 1\na:\\\nx\n\x1b\n\\\n", "m:4:1: error: invalid manifest value: invalid Unicode codepoint (control)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ms, err := parseAll(strings.NewReader(tt.in), "m")
			if err == nil {
				t.Fatalf("Parse(%q) = %v, want error %q", tt.in, pairsOf(ms), tt.want)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("Parse(%q) error = %q, want %q", tt.in, got, tt.want)
			}
			var me *Error
			if !errors.As(err, &me) || me.File != "m" || me.Line < 1 || me.Column < 1 {
				t.Errorf("Parse(%q) error = %#v, want *Error with file m and a position", tt.in, err)
			}
		})
	}
}

func TestParsePositions(t *testing.T) {
	in := "# c\n: 1\nname: value\n  b :  x\nml:\\\nline\n\\\nnext:\n\\\ny\n\\\n:\nc: z\n"
	ms, err := parseAll(strings.NewReader(in), "m")
	if err != nil {
		t.Fatalf("Parse(%q) error: %v", in, err)
	}
	// name, value, line, column, value line, value column
	want := [][]Pair{
		{
			{Name: "", Value: "1", Line: 2, Column: 1, ValueLine: 2, ValueColumn: 3},
			{Name: "name", Value: "value", Line: 3, Column: 1, ValueLine: 3, ValueColumn: 7},
			{Name: "b", Value: "x", Line: 4, Column: 3, ValueLine: 4, ValueColumn: 8},
			{Name: "ml", Value: "line", Line: 5, Column: 1, ValueLine: 6, ValueColumn: 1},
			{Name: "next", Value: "y", Line: 8, Column: 1, ValueLine: 10, ValueColumn: 1},
		},
		{
			{Name: "", Value: "1", Line: 12, Column: 1, ValueLine: 12, ValueColumn: 2},
			{Name: "c", Value: "z", Line: 13, Column: 1, ValueLine: 13, ValueColumn: 4},
		},
	}
	got := [][]Pair{}
	for _, m := range ms {
		got = append(got, []Pair(m))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Parse(%q) (-want +got):\n%s", in, diff)
	}
}

func TestParseReadError(t *testing.T) {
	errRead := errors.New("disk on fire")
	_, err := parseAll(iotest.ErrReader(errRead), "f")
	if !errors.Is(err, errRead) || !strings.Contains(err.Error(), "f") {
		t.Errorf("Parse(failing reader) error = %v, want it to wrap %v and name f", err, errRead)
	}
}

func TestGet(t *testing.T) {
	m := Manifest{{Name: "", Value: "1"}, {Name: "a", Value: "x"}, {Name: "a", Value: "y"}, {Name: "e", Value: ""}}
	tests := []struct {
		name  string
		value string
		ok    bool
	}{
		{"a", "x", true},
		{"e", "", true},
		{"b", "", false},
		{"", "1", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			value, ok := m.Get(tt.name)
			if value != tt.value || ok != tt.ok {
				t.Errorf("Get(%q) = %q, %v, want %q, %v", tt.name, value, ok, tt.value, tt.ok)
			}
		})
	}
}

func TestSplitComment(t *testing.T) {
	tests := []struct {
		in, value, comment string
	}{
		// Single-line.
		{"\\value\\\\\\; text ; comment text", "\\value\\; text", "comment text"},
		{"value\\", "value\\", ""},
		{"; comment", "", "comment"},
		{"value", "value", ""},
		{"value ;", "value", ""},
		{"a\\;b;c;d", "a;b", "c;d"},
		{"x \t;\t y ", "x", "y "},
		// Multi-line.
		{"value\n;", "value", ""},
		{"value\ntext\n", "value\ntext\n", ""},
		{"value\ntext\n;", "value\ntext", ""},
		{"value\ntext\n;\n", "value\ntext", ""},
		{"\n\\\nvalue\ntext\n;\n\n\n comment\ntext", "\n\\\nvalue\ntext", "\n\n comment\ntext"},
		{"\n;\ncomment", "", "comment"},
		{";\ncomment", "", "comment"},
		{";\n", "", ""},
		{"\\;\n\\\\;\n\\\\\\;\n\\\\\\\\;\n\\\\\\\\\\;", ";\n\\;\n\\;\n\\\\;\n\\\\;", ""},
		{"a;b\nc ; d", "a;b\nc ; d", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			value, comment := SplitComment(tt.in)
			if value != tt.value || comment != tt.comment {
				t.Errorf("SplitComment(%q) = %q, %q, want %q, %q", tt.in, value, comment, tt.value, tt.comment)
			}
		})
	}
}

// parseAll parses r and builds its manifests.
func parseAll(r io.Reader, file string) ([]Manifest, error) {
	st, err := Parse(r, file)
	return st.Manifests(), err
}

// readAll reads the file at path and builds its manifests.
func readAll(path string) ([]Manifest, error) {
	st, err := ReadFile(path)
	return st.Manifests(), err
}
