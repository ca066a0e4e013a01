package manifest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// addFormatSeeds adds the manifests of testdata/format to f's corpus.
func addFormatSeeds(f *testing.F) {
	paths, err := filepath.Glob(filepath.Join("testdata", "format", "*.manifest"))
	if err != nil {
		f.Fatal(err)
	}
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
}

func pairCount(ms []Manifest) int {
	n := 0
	for _, m := range ms {
		n += len(m)
	}
	return n
}

// FuzzParse checks that Parse never panics, that its errors carry a
// position, and that what it reads serializes and parses back to the same
// pairs, and serializes the second time to the same text.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", ": 1\n", ": 1\na: x\n:\nb: y\n", ":1\na:x\\\n\\\ny", ":1\na:\\\n \n#\t\n\\",
		": 1\na:\n\\\nx\n\\\n", ": 1\r\na: x\r\n", ":1\na\xD0\xB0\xD0\xB0\xFE", ": 1\na: x\\\\\\\n",
		": 1\nb: " + long5 + "\n", ": 1\nc:\\\n" + long2 + "\n\\\n",
	} {
		f.Add([]byte(s))
	}
	addFormatSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := Parse(bytes.NewReader(data), "f")
		ms := st.Manifests()
		// Each manifest read on its own, from where the Stream says it
		// starts, is the one read in sequence, positions included.
		for i := range st.Len() {
			if got := st.Manifest(i); !slices.Equal(got, ms[i]) {
				t.Fatalf("Parse(%q).Manifest(%d) = %+v, in sequence %+v", data, i, got, ms[i])
			}
		}
		// Count, the first pass, reads the stream as Parse does.
		nm, np, cerr := (Limits{}).Count(string(data), "f")
		if fmt.Sprint(cerr) != fmt.Sprint(err) {
			t.Fatalf("Count(%q) error = %v, Parse error = %v", data, cerr, err)
		}
		if n := pairCount(ms); err == nil && (nm != len(ms) || np != n) {
			t.Fatalf("Count(%q) = %d manifests, %d pairs; Parse read %d, %d", data, nm, np, len(ms), n)
		}
		if err != nil {
			var me *Error
			if !errors.As(err, &me) || me.File != "f" || me.Line < 1 || me.Column < 1 || me.Msg == "" {
				t.Fatalf("Parse(%q) error = %#v, want *Error with a position", data, err)
			}
			return
		}
		var b bytes.Buffer
		if err := Serialize(&b, ms); err != nil {
			t.Fatalf("Serialize(Parse(%q)) error: %v", data, err)
		}
		back, err := parseAll(bytes.NewReader(b.Bytes()), "f")
		if err != nil {
			t.Fatalf("Parse(%q) (serialized from %q) error: %v", b.Bytes(), data, err)
		}
		if diff := cmp.Diff(pairsOf(ms), pairsOf(back)); diff != "" {
			t.Fatalf("Parse(Serialize(Parse(%q))) differs (-first +second):\n%s\nserialized:\n%s", data, diff, b.Bytes())
		}
		var b2 bytes.Buffer
		if err := Serialize(&b2, back); err != nil || b2.String() != b.String() {
			t.Fatalf("Serialize is not stable for %q: %q then %q (%v)", data, b.String(), b2.String(), err)
		}
	})
}

// FuzzSerialize checks that Serialize either refuses a pair or writes text
// that parses back to the same pairs, and that it accepts every pair of a
// plain name and a value of printable ASCII, tabs and newlines.
func FuzzSerialize(f *testing.F) {
	for _, s := range [][4]string{
		{"a", "x", "b", "y"},
		{"name", " lead", "n", "trail\t"},
		{"a", "x\ny", "b", "\n"},
		{"a", "c:\\", "b", "\\"},
		{"a", long1, strings.Repeat("n", 40), long4},
		{"a", long5, "b", "\nxxx" + long3},
		{"a", long6, "b", "x\n\\\ny"},
		{"a:b", "x", "b", "y"},
		{"#a", "x", "a b", "y"},
		{"a", "x\ry", "b", "\xff"},
		{"имя", "значение", "b", "\u200b"},
	} {
		f.Add(s[0], s[1], s[2], s[3], false)
		f.Add(s[0], s[1], s[2], s[3], true)
	}
	f.Fuzz(func(t *testing.T, n1, v1, n2, v2 string, split bool) {
		var ms []Manifest
		if split { // Two manifests, the second one with two pairs.
			ms = manifests([]nv{{"", "1"}, {n1, v1}}, []nv{{"", "1"}, {n2, v2}, {n1, v2 + v1}})
		} else {
			ms = manifests([]nv{{"", "1"}, {n1, v1}, {n2, v2}})
		}
		var b bytes.Buffer
		err := Serialize(&b, ms)
		if err != nil {
			if !errors.Is(err, ErrName) && !errors.Is(err, ErrValue) {
				t.Fatalf("Serialize(%q) error = %v, want ErrName or ErrValue", pairsOf(ms), err)
			}
			if plain(n1, v1) && plain(n2, v2) {
				t.Fatalf("Serialize(%q) error = %v, want success for plain names and values", pairsOf(ms), err)
			}
			return
		}
		back, err := parseAll(bytes.NewReader(b.Bytes()), "f")
		if err != nil {
			t.Fatalf("Parse(Serialize(%q)) = Parse(%q) error: %v", pairsOf(ms), b.Bytes(), err)
		}
		if diff := cmp.Diff(pairsOf(ms), pairsOf(back)); diff != "" {
			t.Fatalf("Parse(Serialize(%q)) differs (-want +got):\n%s\nserialized:\n%s", pairsOf(ms), diff, b.Bytes())
		}
	})
}

// plain reports whether a name and value are ones Serialize must accept: a
// name of letters, digits, '-' and '_', a value of printable ASCII, tabs
// and newlines.
func plain(name, value string) bool {
	if name == "" {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	for _, c := range value {
		if !(c >= 0x20 && c <= 0x7E || c == '\t' || c == '\n') {
			return false
		}
	}
	return true
}
