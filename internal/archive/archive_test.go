package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"testing"
	"time"
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

	var one, two bytes.Buffer
	if err := Pack(&one, src, skip); err != nil {
		t.Fatal(err)
	}
	// The same tree with other times gives the same bytes.
	old := time.Unix(1e9, 0)
	os.Chtimes(filepath.Join(src, "run.sh"), old, old)
	if err := Pack(&two, src, skip); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(one.Bytes(), two.Bytes()) {
		t.Errorf("Pack of the same tree gave different bytes")
	}
	dst := t.TempDir()
	if err := Unpack(&one, dst); err != nil {
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
	f.Fuzz(func(t *testing.T, data []byte) {
		parent := t.TempDir()
		Unpack(bytes.NewReader(data), filepath.Join(parent, "dest"))
		des, err := os.ReadDir(parent)
		if err != nil || len(des) > 1 {
			t.Fatalf("Unpack wrote beside its directory: %v %v", des, err)
		}
	})
}
