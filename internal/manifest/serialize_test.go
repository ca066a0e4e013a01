package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Long values from libbutl's serializer tests and how build2 folds them
// after "a: ".
var (
	// "Solid" text: hard breaks.
	long1 = strings.Repeat("x", 74) + "Y" + strings.Repeat("y", 76) + "Z" + strings.Repeat("z", 77)
	fold1 = strings.Repeat("x", 74) + "\\\n" + "Y" + strings.Repeat("y", 76) + "\\\n" + "Z" + strings.Repeat("z", 77)

	// A blank too early: hard breaks.
	long2 = "x " + strings.Repeat("x", 72) + "Y" + strings.Repeat("y", 16) + " " + strings.Repeat("y", 59) +
		"Z" + strings.Repeat("z", 34) + " z" + strings.Repeat("z", 40)
	fold2 = "x " + strings.Repeat("x", 72) + "\\\n" + "Y" + strings.Repeat("y", 16) + " " + strings.Repeat("y", 59) + "\\\n" +
		"Z" + strings.Repeat("z", 34) + " z" + strings.Repeat("z", 40)

	// Soft breaks at blanks.
	long3 = strings.Repeat("x", 57) + " Y" + strings.Repeat("y", 65) + " Z" + strings.Repeat("z", 75)
	fold3 = strings.Repeat("x", 57) + "\\\n" + " Y" + strings.Repeat("y", 65) + "\\\n" + " Z" + strings.Repeat("z", 75)

	// Soft breaks at the better of two blanks.
	long4 = strings.Repeat("x", 47) + " " + strings.Repeat("x", 9) + " Y" + strings.Repeat("y", 54) + " " +
		strings.Repeat("y", 10) + " Z" + strings.Repeat("z", 75)
	fold4 = strings.Repeat("x", 47) + " " + strings.Repeat("x", 9) + "\\\n" + " Y" + strings.Repeat("y", 54) + " " +
		strings.Repeat("y", 10) + "\\\n" + " Z" + strings.Repeat("z", 75)

	// No break right after a backslash: the break is delayed.
	long5 = strings.Repeat("x", 73) + "\\" + "Y" + strings.Repeat("y", 36)
	fold5 = strings.Repeat("x", 73) + "\\Y\\\n" + strings.Repeat("y", 36)

	// No break inside a UTF-8 sequence.
	long6 = strings.Repeat("x", 73) + "\U00010302\U00010302" + strings.Repeat("y", 36)
	fold6 = strings.Repeat("x", 73) + "\U00010302\\\n\U00010302" + strings.Repeat("y", 36)
)

func TestSerialize(t *testing.T) {
	v1 := nv{"", "1"}
	name38 := strings.Repeat("a", 38)
	tests := []struct {
		name string
		in   [][]nv
		want string
	}{
		{"empty stream", nil, ""},
		{"empty manifest", [][]nv{{v1}}, ": 1\n"},
		{"two empty manifests", [][]nv{{v1}, {v1}}, ": 1\n:\n"},
		{"one pair", [][]nv{{v1, {"a", "x"}}}, ": 1\na: x\n"},
		{"two pairs", [][]nv{{v1, {"a", "x"}, {"b", "y"}}}, ": 1\na: x\nb: y\n"},
		{"two manifests", [][]nv{{v1, {"a", "x"}}, {v1, {"b", "y"}}}, ": 1\na: x\n:\nb: y\n"},
		{"three manifests", [][]nv{{v1, {"a", "x"}}, {v1, {"b", "y"}}, {v1, {"c", "z"}}}, ": 1\na: x\n:\nb: y\n:\nc: z\n"},
		{"empty value", [][]nv{{v1, {"a", ""}}}, ": 1\na:\n"},
		{"inner blanks", [][]nv{{v1, {"a", "x y z"}}}, ": 1\na: x y z\n"},
		{"non-ASCII name and value", [][]nv{{v1, {"имя", "значение"}}}, ": 1\nимя: значение\n"},

		// Folding of long simple values.
		{"hard breaks", [][]nv{{v1, {"a", long1}}}, ": 1\na: " + fold1 + "\n"},
		{"blank too early", [][]nv{{v1, {"a", long2}}}, ": 1\na: " + fold2 + "\n"},
		{"soft breaks", [][]nv{{v1, {"a", long3}}}, ": 1\na: " + fold3 + "\n"},
		{"better blank", [][]nv{{v1, {"a", long4}}}, ": 1\na: " + fold4 + "\n"},
		{"delayed after backslash", [][]nv{{v1, {"a", long5}}}, ": 1\na: " + fold5 + "\n"},
		{"delayed in UTF-8", [][]nv{{v1, {"a", long6}}}, ": 1\na: " + fold6 + "\n"},
		{"last character stays", [][]nv{{v1, {"a", strings.Repeat("x", 75)}}}, ": 1\na: " + strings.Repeat("x", 75) + "\n"},
		{"one past the last", [][]nv{{v1, {"a", strings.Repeat("x", 76)}}}, ": 1\na: " + strings.Repeat("x", 74) + "\\\nxx\n"},

		// Multi-line values.
		{"long name", [][]nv{{v1, {name38, "x"}}}, ": 1\n" + name38 + ":\\\nx\n\\\n"},
		{"name of 37", [][]nv{{v1, {name38[1:], "x"}}}, ": 1\n" + name38[1:] + ": x\n"},
		{"newline", [][]nv{{v1, {"a", "\n"}}}, ": 1\na:\\\n\n\n\\\n"},
		{"two newlines", [][]nv{{v1, {"a", "\n\n"}}}, ": 1\na:\\\n\n\n\n\\\n"},
		{"newlines around", [][]nv{{v1, {"a", "\nx\n"}}}, ": 1\na:\\\n\nx\n\n\\\n"},
		{"lines", [][]nv{{v1, {"a", "x\ny\nz"}}}, ": 1\na:\\\nx\ny\nz\n\\\n"},
		{"leading blank", [][]nv{{v1, {"a", " x"}}}, ": 1\na:\\\n x\n\\\n"},
		{"trailing blank", [][]nv{{v1, {"a", "x "}}}, ": 1\na:\\\nx \n\\\n"},
		{"blanks around", [][]nv{{v1, {"a", " x "}}}, ": 1\na:\\\n x \n\\\n"},
		{"leading tab", [][]nv{{v1, {"a", "\tx"}}}, ": 1\na:\\\n\tx\n\\\n"},
		{"lone backslash line", [][]nv{{v1, {"a", "x\n\\\ny"}}}, ": 1\na:\\\nx\n\\\\\ny\n\\\n"},
		{"folded lines", [][]nv{{v1, {"a", "\nxxx" + long1}}}, ": 1\na:\\\n\nxxx" + fold1 + "\n\\\n"},
		{"folded lines early blank", [][]nv{{v1, {"a", "\nxxx" + long2}}}, ": 1\na:\\\n\nxxx" + fold2 + "\n\\\n"},
		{"folded lines soft", [][]nv{{v1, {"a", "\nxxx" + long3}}}, ": 1\na:\\\n\nxxx" + fold3 + "\n\\\n"},
		{"folded lines better blank", [][]nv{{v1, {"a", "\nxxx" + long4}}}, ": 1\na:\\\n\nxxx" + fold4 + "\n\\\n"},

		// Backslashes.
		{"trailing backslash", [][]nv{{v1, {"a", "c:\\"}}}, ": 1\na: c:\\\\\n"},
		{"trailing backslashes in lines", [][]nv{{v1, {"a", "c:\\\nd:\\"}}}, ": 1\na:\\\nc:\\\\\nd:\\\\\n\\\n"},
		{"lone backslash", [][]nv{{v1, {"a", "\\"}}}, ": 1\na: \\\\\n"},
		{"inner backslashes", [][]nv{{v1, {"a", "x\\\\y"}}}, ": 1\na: x\\\\y\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ms := manifests(tt.in...)
			var b bytes.Buffer
			if err := Serialize(&b, ms); err != nil {
				t.Fatalf("Serialize(%q) error: %v", tt.in, err)
			}
			if got := b.String(); got != tt.want {
				t.Errorf("Serialize(%q) =\n%s\nwant\n%s", tt.in, got, tt.want)
			}
			// And it reads back the same.
			back, err := parseAll(strings.NewReader(b.String()), "m")
			if err != nil {
				t.Fatalf("Parse(%q) error: %v", b.String(), err)
			}
			want := tt.in
			if want == nil {
				want = [][]nv{}
			}
			if diff := cmp.Diff(want, pairsOf(back)); diff != "" {
				t.Errorf("Parse(Serialize(%q)) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestSerializeErrors(t *testing.T) {
	v1 := nv{"", "1"}
	tests := []struct {
		name    string
		in      []Manifest
		wantErr error
		want    string // the whole error message
	}{
		{"no pairs", []Manifest{{}}, ErrVersion,
			"manifest 1: no pairs: format version pair with value 1 expected"},
		{"no version pair", manifests([]nv{{"a", "x"}}), ErrVersion,
			`manifest 1, pair 1 ("a": "x"): format version pair with value 1 expected`},
		{"unsupported version", manifests([]nv{{"", "2"}}), ErrVersion,
			`manifest 1, pair 1 ("": "2"): format version pair with value 1 expected`},
		{"empty version", manifests([]nv{v1}, []nv{{"", ""}}), ErrVersion,
			`manifest 2, pair 1 ("": ""): format version pair with value 1 expected`},
		{"empty name", manifests([]nv{v1, {"", "x"}}), ErrName,
			`manifest 1, pair 2 (""): invalid name: empty name`},
		{"hash name", manifests([]nv{v1, {"#a", "x"}}), ErrName,
			`manifest 1, pair 2 ("#a"): invalid name: name starts with '#'`},
		{"colon in name", manifests([]nv{v1, {"a", "x"}, {"a:b", "x"}}), ErrName,
			`manifest 1, pair 3 ("a:b"): invalid name: name contains ':'`},
		{"blank in name", manifests([]nv{v1, {"a b", "x"}}), ErrName,
			`manifest 1, pair 2 ("a b"): invalid name: name contains whitespace`},
		{"tab in name", manifests([]nv{v1, {"a\tb", "x"}}), ErrName,
			`manifest 1, pair 2 ("a\tb"): invalid name: name contains whitespace`},
		{"newline in name", manifests([]nv{v1, {"a\n", "x"}}), ErrName,
			`manifest 1, pair 2 ("a\n"): invalid name: name contains whitespace`},
		{"cr in name", manifests([]nv{v1, {"a\r", "x"}}), ErrName,
			`manifest 1, pair 2 ("a\r"): invalid name: name contains whitespace`},
		{"bad UTF-8 in name", manifests([]nv{v1, {"a\xB0", "x"}}), ErrName,
			`manifest 1, pair 2 ("a\xb0"): invalid name: invalid UTF-8 sequence first byte (0xB0) at byte 1`},
		{"control in name", manifests([]nv{v1, {"a\x00", "x"}}), ErrName,
			`manifest 1, pair 2 ("a\x00"): invalid name: invalid Unicode codepoint (control) at byte 1`},
		{"bad UTF-8 in value", manifests([]nv{v1, {"a", "\xB0"}}), ErrValue,
			`manifest 1, pair 2 ("a"): invalid value: invalid UTF-8 sequence first byte (0xB0) at byte 0`},
		{"incomplete UTF-8 in value", manifests([]nv{v1, {"a", "x\xD0"}}), ErrValue,
			`manifest 1, pair 2 ("a"): invalid value: incomplete UTF-8 sequence at byte 1`},
		{"control in value", manifests([]nv{v1, {"a", "x\x1by"}}), ErrValue,
			`manifest 1, pair 2 ("a"): invalid value: invalid Unicode codepoint (control) at byte 1`},
		{"format in value", manifests([]nv{v1, {"a", "x\u200by"}}), ErrValue,
			`manifest 1, pair 2 ("a"): invalid value: invalid Unicode codepoint (format) at byte 1`},
		{"cr in value", manifests([]nv{v1, {"a", "x\r\ny"}}), ErrValue,
			`manifest 1, pair 2 ("a"): invalid value: carriage return at byte 1 (it would read back as a newline)`},
		{"second manifest", manifests([]nv{v1, {"a", "x"}}, []nv{v1, {"b", "y"}, {"c d", "z"}}), ErrName,
			`manifest 2, pair 3 ("c d"): invalid name: name contains whitespace`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			err := Serialize(&b, tt.in)
			if err == nil {
				t.Fatalf("Serialize(%v) wrote %q, want error %q", tt.in, b.String(), tt.want)
			}
			if !errors.Is(err, tt.wantErr) || err.Error() != tt.want {
				t.Errorf("Serialize(%v) error = %q, want %q (wrapping %v)", tt.in, err, tt.want, tt.wantErr)
			}
			if b.Len() != 0 {
				t.Errorf("Serialize(%v) wrote %q on error, want nothing", tt.in, b.String())
			}
		})
	}
}

func TestMergeComment(t *testing.T) {
	tests := []struct {
		value, comment, want string
	}{
		// Single-line.
		{"value\\; text", "comment", "value\\\\\\; text; comment"},
		{"value text", "", "value text"},
		{"", "comment", "; comment"},
		// Multi-line.
		{"value\n;\ntext", "comment", "value\n\\;\ntext\n;\ncomment"},
		{"value\n\\;\ntext\n", "comment", "value\n\\\\;\ntext\n\n;\ncomment"},
		{"value\n\\\\;\ntext\n", "comment", "value\n\\\\\\\\;\ntext\n\n;\ncomment"},
		{"value\n\\\ntext", "comment", "value\n\\\ntext\n;\ncomment"},
		{"\\", "comment\n", "\\\n;\ncomment\n"},
		{"", "comment\ntext", ";\ncomment\ntext"},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			got := MergeComment(tt.value, tt.comment)
			if got != tt.want {
				t.Errorf("MergeComment(%q, %q) = %q, want %q", tt.value, tt.comment, got, tt.want)
			}
			// SplitComment undoes it (it cannot for a multi-line comment
			// after a single-line value that it reads as multi-line, so only
			// check the pairs that are all one kind).
			if strings.Contains(tt.value, "\n") || !strings.Contains(tt.comment, "\n") {
				value, comment := SplitComment(got)
				if value != tt.value || comment != tt.comment {
					t.Errorf("SplitComment(MergeComment(%q, %q)) = %q, %q", tt.value, tt.comment, value, comment)
				}
			}
		})
	}
}

func TestWriteFileReadFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "manifest")
	ms := manifests([]nv{{"", "1"}, {"name", "hello"}, {"summary", " multi\nline "}}, []nv{{"", "1"}, {"x", "y"}})
	for range 2 { // Once new, once over the old one.
		if err := WriteFile(path, ms); err != nil {
			t.Fatalf("WriteFile(%s) error: %v", path, err)
		}
	}
	got, err := readAll(path)
	if err != nil {
		t.Fatalf("ReadFile(%s) error: %v", path, err)
	}
	if diff := cmp.Diff(pairsOf(ms), pairsOf(got)); diff != "" {
		t.Errorf("ReadFile(WriteFile(%v)) (-want +got):\n%s", ms, diff)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("WriteFile(%s) mode = %v, want 0644", path, fi.Mode().Perm())
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("WriteFile(%s) left %d entries in its directory, want 1 (no temporary files)", path, len(entries))
	}

	// A manifest that cannot be written leaves the old file alone.
	bad := manifests([]nv{{"", "1"}, {"a b", "x"}})
	if err := WriteFile(path, bad); !errors.Is(err, ErrName) || !strings.Contains(err.Error(), path) {
		t.Errorf("WriteFile(%s, bad) error = %v, want ErrName naming the file", path, err)
	}
	if got, err := readAll(path); err != nil || !cmp.Equal(pairsOf(got), pairsOf(ms)) {
		t.Errorf("after a failed WriteFile, ReadFile(%s) = %v, %v, want the old content", path, pairsOf(got), err)
	}

	// Errors name the file.
	if err := os.WriteFile(path, []byte(": 1\nbad\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = readAll(path)
	want := path + ":2:4: error: ':' expected after name"
	if err == nil || err.Error() != want {
		t.Errorf("ReadFile(%s) error = %v, want %q", path, err, want)
	}
	missing := filepath.Join(dir, "missing")
	if _, err := readAll(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadFile(%s) error = %v, want os.ErrNotExist", missing, err)
	}
	if err := WriteFile(filepath.Join(missing, "m"), ms); err == nil {
		t.Errorf("WriteFile into a missing directory succeeded, want an error")
	}
}

var updateFormat = flag.Bool("update-format", false, "rewrite the golden files of testdata/format")

// TestFormatGolden parses each testdata/format/NAME.manifest, compares its
// pairs, as JSON, with NAME.json and its serialization with NAME.out, and
// checks that NAME.out parses to the same pairs. With -update-format it
// writes NAME.json and NAME.out instead.
func TestFormatGolden(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("testdata", "format", "*.manifest"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatal("no testdata/format/*.manifest files")
	}
	for _, path := range paths {
		base := strings.TrimSuffix(path, ".manifest")
		t.Run(filepath.Base(base), func(t *testing.T) {
			ms, err := readAll(path)
			if err != nil {
				t.Fatalf("ReadFile(%s) error: %v", path, err)
			}
			// As `buildfarm manifest decode` prints them.
			var jb bytes.Buffer
			enc := json.NewEncoder(&jb)
			enc.SetEscapeHTML(false)
			if err := enc.Encode(pairsOf(ms)); err != nil {
				t.Fatal(err)
			}
			js := jb.Bytes()
			var out bytes.Buffer
			if err := Serialize(&out, ms); err != nil {
				t.Fatalf("Serialize(ReadFile(%s)) error: %v", path, err)
			}
			if *updateFormat {
				if err := os.WriteFile(base+".json", js, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(base+".out", out.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			wantJSON, err := os.ReadFile(base + ".json")
			if err != nil {
				t.Fatal(err)
			}
			if string(js) != string(wantJSON) {
				t.Errorf("ReadFile(%s) pairs =\n%s\nwant (%s.json)\n%s", path, js, base, wantJSON)
			}
			wantOut, err := os.ReadFile(base + ".out")
			if err != nil {
				t.Fatal(err)
			}
			if out.String() != string(wantOut) {
				t.Errorf("Serialize(ReadFile(%s)) =\n%s\nwant (%s.out)\n%s", path, out.Bytes(), base, wantOut)
			}
			back, err := parseAll(bytes.NewReader(wantOut), base+".out")
			if err != nil {
				t.Fatalf("Parse(%s.out) error: %v", base, err)
			}
			if diff := cmp.Diff(pairsOf(ms), pairsOf(back)); diff != "" {
				t.Errorf("Parse(%s.out) (-want +got):\n%s", base, diff)
			}
		})
	}
}
