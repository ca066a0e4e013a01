package manifest

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files of testdata/golden")

// checkString parses text and checks it as kind.
func checkString(kind, text string, mode Mode) ([]Manifest, error) {
	ms, err := parseAll(strings.NewReader(text), "test.manifest")
	if err != nil {
		return nil, err
	}
	return Check(kind, ms, "test.manifest", mode)
}

func serialized(t *testing.T, ms []Manifest) string {
	t.Helper()
	var b bytes.Buffer
	if err := Serialize(&b, ms); err != nil {
		t.Fatalf("Serialize: %v", err)
	}
	return b.String()
}

// TestGolden checks testdata/golden: each KIND.manifest, one realistic
// manifest of each kind (some out of build2's order, with comments),
// checks as KIND and serializes to KIND.golden, which checks and
// serializes to itself. With -update it rewrites the .golden files.
func TestGolden(t *testing.T) {
	for _, kind := range Kinds {
		t.Run(kind, func(t *testing.T) {
			in := filepath.Join("testdata", "golden", kind+".manifest")
			ms, err := readAll(in)
			if err != nil {
				t.Fatal(err)
			}
			out, err := Check(kind, ms, in, Strict)
			if err != nil {
				t.Fatalf("Check(%s): %v", in, err)
			}
			got := serialized(t, out)
			golden := filepath.Join("testdata", "golden", kind+".golden")
			if *updateGolden {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("Check(%s) serialized differs from %s (-want +got):\n%s", in, golden, diff)
			}
			again, err := checkString(kind, got, Strict)
			if err != nil {
				t.Fatalf("Check(%s output): %v", kind, err)
			}
			if s := serialized(t, again); s != got {
				t.Errorf("checking the output again changed it:\n%s\nwant:\n%s", s, got)
			}
		})
	}
}

// TestBbotExamples checks the manifests of testdata/bbot (see its README):
// each KIND[.NAME].manifest checks as KIND, strictly, and serializes to
// the same pairs.
func TestBbotExamples(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("testdata", "bbot", "*.manifest"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatal("no manifests in testdata/bbot")
	}
	for _, path := range paths {
		kind, _, _ := strings.Cut(filepath.Base(path), ".")
		t.Run(filepath.Base(path), func(t *testing.T) {
			ms, err := readAll(path)
			if err != nil {
				t.Fatal(err)
			}
			out, err := Check(kind, ms, path, Strict)
			if err != nil {
				t.Fatalf("Check(%s, %s): %v", kind, path, err)
			}
			if diff := cmp.Diff(pairsOf(ms), pairsOf(out)); diff != "" {
				t.Errorf("Check(%s, %s) pairs differ (-read +checked):\n%s", kind, path, diff)
			}
			back, err := parseAll(strings.NewReader(serialized(t, out)), path)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(pairsOf(ms), pairsOf(back)); diff != "" {
				t.Errorf("%s re-serialized reads back differently (-read +back):\n%s", path, diff)
			}
		})
	}
}

func TestCheckKinds(t *testing.T) {
	_, err := Check("tsak", nil, "f", Strict)
	if !errors.Is(err, ErrKind) || !strings.Contains(err.Error(), "task, result, task-request") {
		t.Errorf("Check(tsak) error = %v, want ErrKind listing the kinds", err)
	}
	for _, kind := range Kinds {
		_, err := Check(kind, nil, "f", Strict)
		var me *Error
		if !errors.As(err, &me) || !strings.Contains(me.Msg, "empty stream") {
			t.Errorf("Check(%s, no manifests) error = %v, want an *Error about the empty stream", kind, err)
		}
	}
}

// FuzzCheck checks that Check never panics on any manifest text and kind,
// that its errors are *Error, and that when it succeeds, checking what it
// returns (serialized and parsed again) gives the same pairs.
func FuzzCheck(f *testing.F) {
	for i, kind := range Kinds {
		data, err := os.ReadFile(filepath.Join("testdata", "golden", kind+".manifest"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), data)
	}
	f.Add(uint8(0), []byte(": 1\nname: a\n"))
	f.Add(uint8(3), []byte(": 1\nsession:\n"))
	f.Fuzz(func(t *testing.T, k uint8, data []byte) {
		kind := Kinds[int(k)%len(Kinds)]
		for _, mode := range []Mode{Strict, Lenient} {
			ms, err := parseAll(bytes.NewReader(data), "f")
			if err != nil {
				return
			}
			out, err := Check(kind, ms, "f", mode)
			if err != nil {
				var me *Error
				if !errors.As(err, &me) || me.File != "f" || !strings.Contains(me.Msg, "manifest") {
					t.Fatalf("Check(%s, %q) error = %#v, want *Error naming the manifest", kind, data, err)
				}
				continue
			}
			var b bytes.Buffer
			if err := Serialize(&b, out); err != nil {
				t.Fatalf("Serialize(Check(%s, %q)): %v", kind, data, err)
			}
			ms2, err := parseAll(bytes.NewReader(b.Bytes()), "f")
			if err != nil {
				t.Fatalf("Parse(Serialize(Check(%s, %q))) = %v\nserialized:\n%s", kind, data, err, b.Bytes())
			}
			out2, err := Check(kind, ms2, "f", mode)
			if err != nil {
				t.Fatalf("Check(%s) of its own output: %v\ninput: %q\noutput:\n%s", kind, err, data, b.Bytes())
			}
			if diff := cmp.Diff(pairsOf(out), pairsOf(out2)); diff != "" {
				t.Fatalf("Check(%s) of its own output differs (-first +second):\n%s\ninput: %q", kind, diff, data)
			}
		}
	})
}
