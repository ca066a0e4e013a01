package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/testenv"
)

type entry struct {
	name, link, body string
	typ              byte
}

func makeTar(t *testing.T, gz bool, entries ...entry) []byte {
	t.Helper()
	var b bytes.Buffer
	var tw *tar.Writer
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(&b)
		tw = tar.NewWriter(zw)
	} else {
		tw = tar.NewWriter(&b)
	}
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o755, Size: int64(len(e.body))}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	if zw != nil {
		zw.Close()
	}
	return b.Bytes()
}

func TestUnpack(t *testing.T) {
	for _, gz := range []bool{false, true} {
		dir := t.TempDir()
		data := makeTar(t, gz,
			entry{name: "./src/", typ: tar.TypeDir},
			entry{name: "src/a.txt", body: "hello", typ: tar.TypeReg},
			entry{name: "deep/er/b.txt", body: "b", typ: tar.TypeReg},
			entry{name: "src/link", link: "a.txt", typ: tar.TypeSymlink},
		)
		if err := Unpack(bytes.NewReader(data), dir); err != nil {
			t.Fatalf("Unpack(gzip=%v) = %v", gz, err)
		}
		for name, want := range map[string]string{"src/a.txt": "hello", "deep/er/b.txt": "b", "src/link": "hello"} {
			got, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil || string(got) != want {
				t.Errorf("after Unpack(gzip=%v), %s = %q, %v; want %q", gz, name, got, err, want)
			}
		}
	}
}

func TestUnpackRefusesEscapes(t *testing.T) {
	tests := []struct {
		name    string
		entries []entry
	}{
		{"dotdot", []entry{{name: "../evil", body: "x", typ: tar.TypeReg}}},
		{"nested dotdot", []entry{{name: "a/../../evil", body: "x", typ: tar.TypeReg}}},
		{"absolute", []entry{{name: "/evil", body: "x", typ: tar.TypeReg}}},
		{"absolute link", []entry{{name: "l", link: "/etc", typ: tar.TypeSymlink}}},
		{"link out", []entry{{name: "l", link: "../..", typ: tar.TypeSymlink}}},
		{"through link", []entry{
			{name: "l", link: "sub", typ: tar.TypeSymlink},
			{name: "sub/", typ: tar.TypeDir},
			{name: "x/../l/../../evil", body: "x", typ: tar.TypeReg},
		}},
		{"device", []entry{{name: "dev", typ: tar.TypeChar}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			dir := filepath.Join(parent, "dest")
			err := Unpack(bytes.NewReader(makeTar(t, false, tt.entries...)), dir)
			if err == nil {
				t.Errorf("Unpack(%s) succeeded, want an error", tt.name)
			}
			if _, err := os.Lstat(filepath.Join(parent, "evil")); err == nil {
				t.Errorf("Unpack(%s) wrote outside its directory", tt.name)
			}
		})
	}
}

func TestPackRoundTripAndReproducible(t *testing.T) {
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "a", "b"), 0o755)
	os.WriteFile(filepath.Join(src, "a", "b", "f.txt"), []byte("data"), 0o600)
	os.WriteFile(filepath.Join(src, "run.sh"), []byte("#!/bin/sh\n"), 0o700)
	os.WriteFile(filepath.Join(src, "skip.me"), []byte("no"), 0o644)
	os.Symlink("run.sh", filepath.Join(src, "link"))
	skip := func(name string) bool { return name == "skip.me" }
	times := map[string]time.Time{
		"a/b/f.txt": time.Unix(1e9, 123456789),
		"run.sh":    time.Unix(1.2e9, 5),
		"a/b":       time.Unix(1.1e9, 0),
		"a":         time.Unix(1.3e9, 999),
	}
	for name, mt := range times {
		if err := os.Chtimes(filepath.Join(src, name), mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	pack := func() []byte {
		t.Helper()
		var b bytes.Buffer
		if err := Pack(&b, src, skip); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	one, two := pack(), pack()
	if !bytes.Equal(one, two) {
		t.Errorf("Pack of the same tree gave different bytes")
	}
	// A tree whose times differ is another tree.
	later := time.Unix(1.4e9, 0)
	os.Chtimes(filepath.Join(src, "run.sh"), later, later)
	if bytes.Equal(one, pack()) {
		t.Errorf("Pack gave the same bytes after run.sh's time changed")
	}
	os.Chtimes(filepath.Join(src, "run.sh"), times["run.sh"], times["run.sh"])
	if !bytes.Equal(one, pack()) {
		t.Errorf("Pack gave other bytes after run.sh's time was restored")
	}

	dst := t.TempDir()
	if err := Unpack(bytes.NewReader(one), dst); err != nil {
		t.Fatalf("Unpack(Pack(tree)) = %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "a", "b", "f.txt")); err != nil || string(b) != "data" {
		t.Errorf("a/b/f.txt = %q, %v; want data", b, err)
	}
	if fi, err := os.Stat(filepath.Join(dst, "run.sh")); err != nil || fi.Mode().Perm()&0o100 == 0 {
		t.Errorf("run.sh lost its executable bit: %v, %v", fi.Mode(), err)
	}
	if l, err := os.Readlink(filepath.Join(dst, "link")); err != nil || l != "run.sh" {
		t.Errorf("link = %q, %v; want run.sh", l, err)
	}
	if _, err := os.Stat(filepath.Join(dst, "skip.me")); err == nil {
		t.Errorf("skip.me was packed although skipped")
	}
	for name, want := range times {
		fi, err := os.Stat(filepath.Join(dst, name))
		if err != nil || !fi.ModTime().Equal(want) {
			t.Errorf("after Unpack(Pack(tree)), %s has time %v, %v; want %v", name, fi.ModTime(), err, want)
		}
	}
}

// TestUnpackRelease unpacks the fixtures that testdata/make-hello.sh makes
// with GNU tar, gzip, bzip2, xz and zstd: an autotools-like tree whose
// generated aclocal.m4 is newer than its source configure.ac but comes first
// in the archive, with a hard link and a symbolic link. Unpacked with the
// times of extraction, configure.ac would be the newer, and make would try
// to regenerate aclocal.m4, as it did building GNU hello 2.10.
func TestUnpackRelease(t *testing.T) {
	wantTimes := map[string]time.Time{
		"hello":              time.Date(2014, 11, 16, 12, 0, 2, 0, time.UTC),
		"hello/configure.ac": time.Date(2014, 11, 16, 12, 0, 0, 250e6, time.UTC),
		"hello/aclocal.m4":   time.Date(2014, 11, 16, 12, 0, 1, 500e6, time.UTC),
		"hello/COPYING":      time.Date(2014, 11, 16, 12, 0, 0, 250e6, time.UTC),
	}
	for _, name := range []string{"hello.tar", "hello.tar.gz", "hello.tar.bz2", "hello.tar.xz", "hello.tar.zst"} {
		t.Run(name, func(t *testing.T) {
			f, err := os.Open(filepath.Join("testdata", name))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			dir := t.TempDir()
			if err := Unpack(f, dir); err != nil {
				t.Fatalf("Unpack(%s) = %v", name, err)
			}
			for p, want := range wantTimes {
				fi, err := os.Stat(filepath.Join(dir, p))
				if err != nil || !fi.ModTime().Equal(want) {
					t.Errorf("Unpack(%s): %s has time %v, %v; want %v", name, p, fi.ModTime(), err, want)
				}
			}
			a, errA := os.Stat(filepath.Join(dir, "hello/COPYING"))
			b, errB := os.Stat(filepath.Join(dir, "hello/COPYING.hardlink"))
			if errA != nil || errB != nil || !os.SameFile(a, b) {
				t.Errorf("Unpack(%s): COPYING.hardlink is not a hard link of COPYING: %v, %v", name, errA, errB)
			}
			if got, err := os.ReadFile(filepath.Join(dir, "hello/README")); err != nil || string(got) != "GPL\n" {
				t.Errorf("Unpack(%s): README (a link to COPYING) = %q, %v; want GPL", name, got, err)
			}
			// make is what cares: with the archive's times, aclocal.m4
			// is up to date, and the rule that would regenerate it fails.
			make := testenv.NeedProgram(t, "make")
			cmd := exec.Command(make, "-q", "aclocal.m4")
			cmd.Dir = filepath.Join(dir, "hello")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("Unpack(%s): make -q aclocal.m4 = %v, %s; want up to date", name, err, out)
			}
		})
	}
}

func TestUnpackHardLinks(t *testing.T) {
	dir := t.TempDir()
	data := makeTar(t, true,
		entry{name: "a", body: "first", typ: tar.TypeReg},
		entry{name: "sub/b", link: "a", typ: tar.TypeLink},
		// A later entry of the name replaces it, leaving a alone.
		entry{name: "sub/b", body: "second", typ: tar.TypeReg},
		entry{name: "c", link: "./a", typ: tar.TypeLink},
	)
	if err := Unpack(bytes.NewReader(data), dir); err != nil {
		t.Fatalf("Unpack = %v", err)
	}
	for name, want := range map[string]string{"a": "first", "sub/b": "second", "c": "first"} {
		if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", name, got, err, want)
		}
	}

	for _, target := range []string{"../secret", "/etc/passwd", "sub/../../secret", "."} {
		parent := t.TempDir()
		os.WriteFile(filepath.Join(parent, "secret"), []byte("s"), 0o600)
		dir := filepath.Join(parent, "dest")
		err := Unpack(bytes.NewReader(makeTar(t, false, entry{name: "l", link: target, typ: tar.TypeLink})), dir)
		if err == nil || !strings.Contains(err.Error(), "hard link") || !strings.Contains(err.Error(), "outside") {
			t.Errorf("Unpack(hard link to %q) = %v; want an error saying it points outside", target, err)
		}
		if _, err := os.Lstat(filepath.Join(dir, "l")); err == nil {
			t.Errorf("Unpack(hard link to %q) made the link", target)
		}
	}
}

// FuzzUnpack: any input either unpacks or fails, never panics, and never
// writes outside its directory.
func FuzzUnpack(f *testing.F) {
	var b bytes.Buffer
	src := f.TempDir()
	os.WriteFile(filepath.Join(src, "a"), []byte("x"), 0o644)
	os.Symlink("a", filepath.Join(src, "l"))
	Pack(&b, src, nil)
	f.Add(b.Bytes())
	f.Add([]byte{0x1f, 0x8b, 0, 0})
	for _, name := range []string{"hello.tar", "hello.tar.gz", "hello.tar.bz2", "hello.tar.xz", "hello.tar.zst"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		parent := t.TempDir()
		Unpack(bytes.NewReader(data), filepath.Join(parent, "dest"))
		des, err := os.ReadDir(parent)
		if err != nil || len(des) > 1 {
			t.Fatalf("Unpack wrote beside its directory: %v %v", des, err)
		}
	})
}
