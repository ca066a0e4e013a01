package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runManifest runs `buildfarm ARGS` with stdin and returns its output and
// exit code.
func runManifest(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, strings.NewReader(stdin), &out, &errOut)
	return out.String(), errOut.String(), exitCode(err)
}

func TestManifestDecode(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "task.manifest")
	if err := os.WriteFile(file, []byte(": 1\nname: hello\n:\nname: bye\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.manifest")
	if err := os.WriteFile(bad, []byte(": 1\nname: hello\nbroken line\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		stdin      string
		wantOut    string
		wantErr    string
		wantCode   int
		errContent bool // wantErr is a part of stderr rather than all of it
	}{
		{name: "stdin", args: []string{"manifest", "decode"}, stdin: ": 1\na: x\n",
			wantOut: `[[["","1"],["a","x"]]]` + "\n"},
		{name: "dash", args: []string{"manifest", "decode", "-"}, stdin: ": 1\na: x\nb:\\\n two\nlines \n\\\n",
			wantOut: `[[["","1"],["a","x"],["b"," two\nlines "]]]` + "\n"},
		{name: "file", args: []string{"manifest", "decode", file},
			wantOut: `[[["","1"],["name","hello"]],[["","1"],["name","bye"]]]` + "\n"},
		{name: "empty stream", args: []string{"manifest", "decode"}, stdin: "# nothing\n",
			wantOut: "[]\n"},
		{name: "no HTML escaping", args: []string{"manifest", "decode"}, stdin: ": 1\nurl: http://x/?a=1&b=<2>\n",
			wantOut: `[[["","1"],["url","http://x/?a=1&b=<2>"]]]` + "\n"},
		{name: "error on stdin", args: []string{"manifest", "decode"}, stdin: ": 1\na: x\nb c: y\n",
			wantErr: "<stdin>:3:3: error: ':' expected after name\n", wantCode: 1},
		{name: "error in file", args: []string{"manifest", "decode", bad},
			wantErr: bad + ":3:8: error: ':' expected after name\n", wantCode: 1},
		{name: "bad UTF-8", args: []string{"manifest", "decode"}, stdin: ": 1\na: \xff\n",
			wantErr: "<stdin>:2:4: error: invalid manifest: invalid UTF-8 sequence first byte (0xFF)\n", wantCode: 1},
		{name: "missing file", args: []string{"manifest", "decode", filepath.Join(dir, "missing")},
			wantErr: "no such file or directory", wantCode: 1, errContent: true},
		{name: "two files", args: []string{"manifest", "decode", file, file},
			wantErr: "accepts at most 1 arg", wantCode: 1, errContent: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runManifest(t, tt.stdin, tt.args...)
			if out != tt.wantOut || code != tt.wantCode {
				t.Errorf("buildfarm %q = %q, exit %d, want %q, exit %d (stderr %q)", tt.args, out, code, tt.wantOut, tt.wantCode, errOut)
			}
			if tt.errContent && !strings.Contains(errOut, tt.wantErr) || !tt.errContent && errOut != tt.wantErr {
				t.Errorf("buildfarm %q stderr = %q, want %q", tt.args, errOut, tt.wantErr)
			}
		})
	}
}

func TestManifestEncode(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "in.json")
	if err := os.WriteFile(file, []byte(`[[["","1"],["a","x"]],[["","1"],["b","y"]]]`), 0o644); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("word ", 20)
	tests := []struct {
		name     string
		args     []string
		stdin    string
		wantOut  string
		wantErr  string // a part of stderr
		wantCode int
	}{
		{name: "stdin", args: []string{"manifest", "encode"}, stdin: `[[["","1"],["a","x"]]]`,
			wantOut: ": 1\na: x\n"},
		{name: "file", args: []string{"manifest", "encode", file},
			wantOut: ": 1\na: x\n:\nb: y\n"},
		{name: "multi-line and folded", args: []string{"manifest", "encode", "-"},
			stdin:   `[[["","1"],["s"," two\nlines"],["l","` + strings.TrimSpace(long) + `"]]]`,
			wantOut: ": 1\ns:\\\n two\nlines\n\\\nl: " + strings.TrimSpace(strings.Repeat("word ", 15)) + "\\\n " + strings.TrimSpace(strings.Repeat("word ", 5)) + "\n"},
		{name: "empty list", args: []string{"manifest", "encode"}, stdin: "[]\n", wantOut: ""},
		{name: "bad JSON", args: []string{"manifest", "encode"}, stdin: `[[["","1"]`,
			wantErr: "buildfarm: <stdin>: JSON: want a list of manifests", wantCode: 1},
		{name: "not a list of pairs", args: []string{"manifest", "encode"}, stdin: `[["","1"]]`,
			wantErr: "buildfarm: <stdin>: JSON: want a list of manifests", wantCode: 1},
		{name: "null", args: []string{"manifest", "encode"}, stdin: `null`,
			wantErr: "buildfarm: <stdin>: JSON: want a list of manifests, got null", wantCode: 1},
		{name: "trailing data", args: []string{"manifest", "encode"}, stdin: `[] []`,
			wantErr: "buildfarm: <stdin>: JSON: unexpected data after the list of manifests", wantCode: 1},
		{name: "pair of three", args: []string{"manifest", "encode"}, stdin: `[[["","1"],["a","b","c"]]]`,
			wantErr: "buildfarm: <stdin>: JSON: manifest 1, pair 2: want [name, value], two strings", wantCode: 1},
		{name: "null value", args: []string{"manifest", "encode"}, stdin: `[[["","1"],["a",null]]]`,
			wantErr: "buildfarm: <stdin>: JSON: manifest 1, pair 2: want [name, value], two strings", wantCode: 1},
		{name: "number value", args: []string{"manifest", "encode"}, stdin: `[[["","1"],["a",1]]]`,
			wantErr: "buildfarm: <stdin>: JSON: want a list of manifests", wantCode: 1},
		{name: "invalid UTF-8", args: []string{"manifest", "encode"}, stdin: "[[[\"\",\"1\"],[\"a\",\"\xff\"]]]",
			wantErr: "buildfarm: <stdin>: JSON: not valid UTF-8", wantCode: 1},
		{name: "no version", args: []string{"manifest", "encode", "-"}, stdin: `[[["a","x"]]]`,
			wantErr: `buildfarm: <stdin>: manifest 1, pair 1 ("a": "x"): format version pair with value 1 expected`, wantCode: 1},
		{name: "bad name", args: []string{"manifest", "encode"}, stdin: `[[["","1"],["a:b","x"]]]`,
			wantErr: `buildfarm: <stdin>: manifest 1, pair 2 ("a:b"): invalid name: name contains ':'`, wantCode: 1},
		{name: "missing file", args: []string{"manifest", "encode", file + ".missing"},
			wantErr: "no such file or directory", wantCode: 1},
		{name: "bad value", args: []string{"manifest", "encode"}, stdin: `[[["","1"],["a","x\u0000"]]]`,
			wantErr: `buildfarm: <stdin>: manifest 1, pair 2 ("a"): invalid value: invalid Unicode codepoint (control) at byte 1`, wantCode: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runManifest(t, tt.stdin, tt.args...)
			if out != tt.wantOut || code != tt.wantCode {
				t.Errorf("buildfarm %q = %q, exit %d, want %q, exit %d (stderr %q)", tt.args, out, code, tt.wantOut, tt.wantCode, errOut)
			}
			if tt.wantErr == "" && errOut != "" || !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("buildfarm %q stderr = %q, want %q", tt.args, errOut, tt.wantErr)
			}
		})
	}
}

// TestManifestRoundTrip checks that encode's output decodes to its input.
func TestManifestRoundTrip(t *testing.T) {
	in := `[[["","1"],["name","x\\y\\"],["text","\n a\tb \n"],["long","` + strings.Repeat("é", 100) + `"]],[["","1"]]]` + "\n"
	text, errOut, code := runManifest(t, in, "manifest", "encode")
	if code != 0 {
		t.Fatalf("buildfarm manifest encode %q: exit %d, stderr %q", in, code, errOut)
	}
	out, errOut, code := runManifest(t, text, "manifest", "decode")
	if code != 0 || out != in {
		t.Errorf("buildfarm manifest decode %q = %q, exit %d (stderr %q), want %q", text, out, code, errOut, in)
	}
}

func TestManifestHelp(t *testing.T) {
	for _, sub := range []string{"decode", "encode"} {
		t.Run(sub, func(t *testing.T) {
			out, _, code := runManifest(t, "", "manifest", sub, "--help")
			if code != 0 || !strings.Contains(out, "buildfarm manifest "+sub) || !strings.Contains(out, "Examples:") {
				t.Errorf("buildfarm manifest %s --help = %q, exit %d, want usage with an example", sub, out, code)
			}
		})
	}
	for _, args := range [][]string{{"manifest", "--help"}, {"manifest"}} {
		out, _, code := runManifest(t, "", args...)
		if code != 0 || !strings.Contains(out, "decode") || !strings.Contains(out, "encode") {
			t.Errorf("buildfarm %q = %q, exit %d, want it to list decode and encode", args, out, code)
		}
	}
	if _, errOut, code := runManifest(t, "", "manifest", "frobnicate"); code != 1 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("buildfarm manifest frobnicate: exit %d, stderr %q, want exit 1 and an unknown command error", code, errOut)
	}
}

// TestManifestGolden checks decode against the golden files of the manifest
// package: testdata/format/NAME.manifest decodes to NAME.json, and NAME.json
// encodes to NAME.out.
func TestManifestGolden(t *testing.T) {
	dir := filepath.Join("..", "..", "internal", "manifest", "testdata", "format")
	paths, err := filepath.Glob(filepath.Join(dir, "*.manifest"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no golden manifests in %s (%v)", dir, err)
	}
	for _, path := range paths {
		base := strings.TrimSuffix(path, ".manifest")
		t.Run(filepath.Base(base), func(t *testing.T) {
			wantJSON, err := os.ReadFile(base + ".json")
			if err != nil {
				t.Fatal(err)
			}
			out, errOut, code := runManifest(t, "", "manifest", "decode", path)
			if code != 0 || out != string(wantJSON) {
				t.Errorf("buildfarm manifest decode %s = %q, exit %d (stderr %q), want %q", path, out, code, errOut, wantJSON)
			}
			wantOut, err := os.ReadFile(base + ".out")
			if err != nil {
				t.Fatal(err)
			}
			out, errOut, code = runManifest(t, string(wantJSON), "manifest", "encode")
			if code != 0 || out != string(wantOut) {
				t.Errorf("buildfarm manifest encode <%s.json = %q, exit %d (stderr %q), want %q", base, out, code, errOut, wantOut)
			}
		})
	}
}

// FuzzWriteJSONString checks that decode writes strings as encoding/json
// does (without HTML escaping), which it did before it wrote them itself.
func FuzzWriteJSONString(f *testing.F) {
	for _, s := range []string{"", "a", "\"\\/", "\n\r\t\b\f\x00\x1f\x7f", "<&>", "\u2028\u2029", "\xff\xfe", "é€😀", "a\xc3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(s); err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		w := bufio.NewWriter(&got)
		writeJSONString(w, s)
		w.Flush()
		if got.String() != strings.TrimSuffix(want.String(), "\n") {
			t.Errorf("writeJSONString(%q) = %s, want %s", s, got.String(), want.String())
		}
	})
}
