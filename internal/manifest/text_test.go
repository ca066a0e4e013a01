package manifest

import (
	"bytes"
	"strings"
	"testing"
)

func TestText(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain log\n", "plain log\n"},
		{"a\r\nb\rc\n", "a\nb\nc\n"},
		{"esc \x1b[1mbold\x1b[0m", `esc \x1B[1mbold\x1B[0m`},
		{"bad \xff byte", `bad \xFF byte`},
		{"tab\tok", "tab\tok"},
		{"bom \ufeff", `bom \u{FEFF}`},
		{"ünïcödé ✓", "ünïcödé ✓"},
	}
	for _, tt := range tests {
		got := Text(tt.in)
		if got != tt.want {
			t.Errorf("Text(%q) = %q, want %q", tt.in, got, tt.want)
		}
		var b bytes.Buffer
		m := Manifest{{Value: "1"}, {Name: "log", Value: got}}
		if err := Serialize(&b, []Manifest{m}); err != nil {
			t.Errorf("Serialize(Text(%q)) = %v", tt.in, err)
			continue
		}
		ms, err := parseAll(&b, "text")
		if err != nil || len(ms) != 1 || ms[0][1].Value != strings.TrimSpace(got) && ms[0][1].Value != got {
			t.Errorf("Parse(Serialize(Text(%q))) = %v, %v", tt.in, ms, err)
		}
	}
}

func FuzzText(f *testing.F) {
	for _, s := range []string{"a\r\nb", "\x00\x1b\xff", "\ufeff\u200b", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v := Text(s)
		if msg := checkText(v); msg != "" || strings.Contains(v, "\r") {
			t.Fatalf("Text(%q) = %q, which a manifest cannot carry: %s", s, v, msg)
		}
		if Text(v) != v && checkText(s) == "" && !strings.Contains(s, "\r") {
			t.Fatalf("Text is not the identity on clean text %q", s)
		}
	})
}
