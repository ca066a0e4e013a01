package initramfs

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// sample is an archive with one member of each kind the guest images use.
func sample(t *testing.T) *Archive {
	t.Helper()
	src := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho from a host file\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var a Archive
	for _, err := range []error{
		a.AddFile("/init", 0o755, []byte("#!/bin/sh\nexec /bin/sh\n")),
		a.AddFileFrom("bin/busybox", 0, src),
		a.AddSymlink("bin/sh", "busybox"),
		a.AddCharDevice("dev/console", 0o600, 5, 1),
		a.AddBlockDevice("dev/vda", 0o660, 254, 0),
		a.AddDir("root", 0o700),
		a.AddFile("etc/empty", 0o644, nil),
		a.AddFile("etc/odd", 0o640, []byte("12345")),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return &a
}

func bytesOf(t *testing.T, a *Archive) []byte {
	t.Helper()
	var b bytes.Buffer
	n, err := a.WriteTo(&b)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(b.Len()) {
		t.Fatalf("WriteTo = %d, wrote %d bytes", n, b.Len())
	}
	if b.Len()%4 != 0 {
		t.Errorf("archive of %d bytes, not a multiple of 4", b.Len())
	}
	return b.Bytes()
}

// TestSystemCpioLists proves the format with cpio(1): it lists every member
// with its type, mode, owner and device numbers.
func TestSystemCpioLists(t *testing.T) {
	cpio := testenv.NeedProgram(t, "cpio")
	data := bytesOf(t, sample(t))
	cmd := proc.Command(context.Background(), cpio, "-t", "-v", "--quiet")
	cmd.Stdin = bytes.NewReader(data)
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := proc.Wait(cmd); err != nil {
		t.Fatal(err)
	}
	// cpio -tv prints ls -l style lines; keep mode, owner, size or device,
	// and the name.
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		f := strings.Fields(line)
		switch {
		case f[0][0] == 'c' || f[0][0] == 'b': // mode n user group major, minor date... name
			got = append(got, strings.Join([]string{f[0], f[2], f[3], f[4] + f[5], f[len(f)-1]}, " "))
		case f[0][0] == 'l': // ... name -> target
			got = append(got, strings.Join([]string{f[0], f[2], f[3], strings.Join(f[len(f)-3:], " ")}, " "))
		default:
			got = append(got, strings.Join([]string{f[0], f[2], f[3], f[4], f[len(f)-1]}, " "))
		}
	}
	want := []string{
		"drwxr-xr-x root root 0 bin",
		"-rwxr-xr-x root root 32 bin/busybox",
		"lrwxrwxrwx root root bin/sh -> busybox",
		"drwxr-xr-x root root 0 dev",
		"crw------- root root 5,1 dev/console",
		"brw-rw---- root root 254,0 dev/vda",
		"drwxr-xr-x root root 0 etc",
		"-rw-r--r-- root root 0 etc/empty",
		"-rw-r----- root root 5 etc/odd",
		"-rwxr-xr-x root root 23 init",
		"drwx------ root root 0 root",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("cpio -tv (-want +got):\n%s\nfull output:\n%s", diff, out.String())
	}
}

// TestSystemCpioExtracts unpacks the archive with cpio(1) and checks what it
// made on disk, device node included (so it needs root).
func TestSystemCpioExtracts(t *testing.T) {
	cpio := testenv.NeedProgram(t, "cpio")
	testenv.NeedRoot(t)
	dir := t.TempDir()
	cmd := proc.Command(context.Background(), cpio, "-i", "-d", "--quiet", "--no-absolute-filenames")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(bytesOf(t, sample(t)))
	if err := proc.Wait(cmd); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "bin/busybox")); err != nil || string(b) != "#!/bin/sh\necho from a host file\n" {
		t.Errorf("bin/busybox = %q, %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "etc/odd")); err != nil || string(b) != "12345" {
		t.Errorf("etc/odd = %q, %v", b, err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || target != "busybox" {
		t.Errorf("bin/sh -> %q, %v; want busybox", target, err)
	}
	fi, err := os.Lstat(filepath.Join(dir, "dev/console"))
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&fs.ModeCharDevice == 0 || st.Rdev != 5<<8|1 {
		t.Errorf("dev/console: mode %v rdev %#x, want a char device 5:1", fi.Mode(), st.Rdev)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("dev/console: perm %v, want 0600", fi.Mode().Perm())
	}
}

// TestReproducible: the same contents give the same bytes whatever the
// order they were added in and the times of the source files.
func TestReproducible(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{"a": "alpha", "b/c": "gamma", "b/d/e": "epsilon"}
	build := func(order []string, mtime time.Time) []byte {
		var a Archive
		for _, name := range order {
			src := filepath.Join(dir, strings.ReplaceAll(name, "/", "_"))
			if err := os.WriteFile(src, []byte(files[name]), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(src, mtime, mtime); err != nil {
				t.Fatal(err)
			}
			if err := a.AddFileFrom(name, 0o644, src); err != nil {
				t.Fatal(err)
			}
			if err := a.AddSymlink("link-"+strings.ReplaceAll(name, "/", "-"), name); err != nil {
				t.Fatal(err)
			}
		}
		return bytesOf(t, &a)
	}
	first := build([]string{"a", "b/c", "b/d/e"}, time.Unix(1000, 0))
	for _, tc := range []struct {
		name  string
		order []string
		mtime time.Time
	}{
		{"same inputs", []string{"a", "b/c", "b/d/e"}, time.Unix(1000, 0)},
		{"other order", []string{"b/d/e", "a", "b/c"}, time.Unix(1000, 0)},
		{"other mtimes", []string{"b/c", "b/d/e", "a"}, time.Now()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if again := build(tc.order, tc.mtime); !bytes.Equal(first, again) {
				t.Errorf("archives differ: %d and %d bytes", len(first), len(again))
			}
		})
	}
}

type member struct {
	Path, Target string
	Mode         fs.FileMode
	Data         string
	Major, Minor uint32
}

func walkAll(t *testing.T, r io.Reader) ([]member, error) {
	t.Helper()
	var got []member
	err := Walk(r, func(h Header, content io.Reader) error {
		b, err := io.ReadAll(content)
		if err != nil {
			return err
		}
		got = append(got, member{h.Path, h.Target, h.Mode, string(b), h.Major, h.Minor})
		return nil
	})
	return got, err
}

func TestWalk(t *testing.T) {
	raw := bytesOf(t, sample(t))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	zw.Close()
	var small Archive
	small.AddFile("kernel/x86/microcode/GenuineIntel.bin", 0o644, []byte("ucode"))
	early := bytesOf(t, &small)

	want, err := walkAll(t, bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if len(want) != 11 || want[2] != (member{Path: "bin/sh", Target: "busybox", Mode: fs.ModeSymlink | 0o777, Data: ""}) {
		t.Fatalf("Walk(raw) = %+v", want)
	}
	earlyWant, _ := walkAll(t, bytes.NewReader(early))
	for _, tc := range []struct {
		name string
		in   []byte
		want []member
	}{
		{"gzip", gz.Bytes(), want},
		{"early cpio, padding, gzip", append(append(append([]byte{}, early...), make([]byte, 512)...), gz.Bytes()...), append(earlyWant, want...)},
		{"gzip twice", append(append([]byte{}, gz.Bytes()...), gz.Bytes()...), append(append([]member{}, want...), want...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := walkAll(t, bytes.NewReader(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Walk (-want +got):\n%s", diff)
			}
		})
	}
	for _, tc := range []struct {
		name, in, err string
	}{
		{"zstd", "\x28\xb5\x2f\xfd rest", "zstd"},
		{"garbage", "hello world", "not a cpio"},
		{"truncated", string(raw[:200]), "unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := walkAll(t, strings.NewReader(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrFormat) && tc.name != "truncated" {
				t.Errorf("Walk(%s) = %v, want an error saying %q", tc.name, err, tc.err)
			}
		})
	}
}

func TestRemove(t *testing.T) {
	a := sample(t)
	if !a.Remove("/bin") {
		t.Fatal("Remove(/bin) = false")
	}
	if a.Remove("bin/busybox") {
		t.Error("Remove(bin/busybox) after removing bin = true")
	}
	var paths []string
	for _, e := range a.Entries() {
		paths = append(paths, e.Path)
	}
	want := []string{"dev", "dev/console", "dev/vda", "etc", "etc/empty", "etc/odd", "init", "root"}
	if diff := cmp.Diff(want, paths); diff != "" {
		t.Errorf("Entries after Remove (-want +got):\n%s", diff)
	}
}

func TestBadPaths(t *testing.T) {
	var a Archive
	for _, p := range []string{"/", "", "..", "a/../.."} {
		if err := a.AddDir(p, 0o755); err == nil {
			t.Errorf("AddDir(%q) = nil, want an error", p)
		}
	}
	if err := a.AddFile("../../etc/x", 0o644, nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.Lookup("etc/x"); !ok {
		t.Error("AddFile(../../etc/x) did not stay inside the archive as etc/x")
	}
}

func FuzzWalk(f *testing.F) {
	var a Archive
	a.AddFile("a", 0o644, []byte("x"))
	a.AddSymlink("b", "a")
	var b bytes.Buffer
	a.WriteTo(&b)
	f.Add(b.Bytes())
	f.Add([]byte("070701"))
	f.Fuzz(func(t *testing.T, in []byte) {
		Walk(bytes.NewReader(in), func(h Header, content io.Reader) error {
			_, err := io.Copy(io.Discard, content)
			return err
		})
	})
}
