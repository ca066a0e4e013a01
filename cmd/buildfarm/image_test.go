package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/buildfarm/buildfarm/internal/testenv"
)

func runImage(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	err = run(context.Background(), append([]string{"image"}, args...), strings.NewReader(""), &out, &errb)
	return out.String(), errb.String(), err
}

// TestImageBuildInspect builds a busybox machine through the command line
// (a static busybox stands in for the worker, and the kernel is given with
// --kernel and --modules) and inspects its initrd.
func TestImageBuildInspect(t *testing.T) {
	k := testenv.NeedKernel(t)
	testenv.NeedProgram(t, "mkfs.ext4")
	bb := testenv.NeedProgram(t, "busybox")
	dir := t.TempDir()
	extra := filepath.Join(dir, "extra.txt")
	if err := os.WriteFile(extra, []byte("extra\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "m")
	stdout, stderr, err := runImage(t, "build", "--preset", "busybox", "--out", out, "--name", "small",
		"--worker", bb, "--disk-size", "16M", "--kernel", k.Image, "--modules", k.Modules, "--add", extra+":/opt/extra.txt", "--remove", "bin/vi")
	if err != nil {
		t.Fatalf("image build: %v\nstderr:\n%s", err, stderr)
	}
	if !strings.HasPrefix(stdout, out+": machine small (kernel "+k.Version) || !strings.Contains(stdout, "disk 16.0 MiB") {
		t.Errorf("image build printed %q", stdout)
	}
	if strings.Contains(stderr, "\r") {
		t.Errorf("progress lines on a stderr that is not a terminal: %q", stderr)
	}
	for _, f := range []string{"kernel", "initrd", "cmdline", "disk.img", "manifest"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
	if fi, err := os.Stat(filepath.Join(out, "disk.img")); err == nil && fi.Size() != 16<<20 {
		t.Errorf("disk.img is %d bytes, want 16 MiB", fi.Size())
	}
	manifest, _ := os.ReadFile(filepath.Join(out, "manifest"))
	if !strings.HasPrefix(string(manifest), ": 1\nid: ") || !strings.Contains(string(manifest), "\nname: small\n") {
		t.Errorf("manifest:\n%s", manifest)
	}

	stdout, stderr, err = runImage(t, "inspect", out)
	if err != nil {
		t.Fatalf("image inspect: %v\n%s", err, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) < 4 || !strings.Contains(lines[0], "SIZE") || !strings.HasSuffix(lines[1], "bin/busybox") ||
		!strings.HasSuffix(lines[2], "usr/bin/buildfarm-worker") || !strings.Contains(lines[len(lines)-1], "100.0%  total: ") {
		t.Errorf("image inspect printed:\n%s", stdout)
	}
	if !strings.Contains(stdout, "  opt/extra.txt\n") || strings.Contains(stdout, "  bin/vi\n") {
		t.Errorf("image inspect: want opt/extra.txt (--add) and no bin/vi (--remove):\n%s", stdout)
	}
	stdout, _, err = runImage(t, "inspect", "--top", "2", filepath.Join(out, "initrd"))
	if err != nil || strings.Count(stdout, "\n") != 5 || !strings.Contains(stdout, " more)") {
		t.Errorf("image inspect --top 2 = %v:\n%s", err, stdout)
	}
}

func TestImageErrors(t *testing.T) {
	dir := t.TempDir()
	notCpio := filepath.Join(dir, "x")
	os.WriteFile(notCpio, []byte("hello, world\n"), 0o644)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"bad add", []string{"build", "--out", dir + "/m", "--add", "nocolon"}, `--add "nocolon": want SRC:DST`},
		{"bad size", []string{"build", "--out", dir + "/m", "--disk-size", "lots"}, `--disk-size: "lots"`},
		{"no out", []string{"build"}, `"out" not set`},
		{"unknown preset", []string{"build", "--out", dir + "/m", "--preset", "gentoo"}, `unknown preset "gentoo"`},
		{"inspect garbage", []string{"inspect", notCpio}, "not a cpio newc archive"},
		{"inspect missing", []string{"inspect", dir + "/nope"}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, err := runImage(t, tc.args...)
			if err == nil || exitCode(err) != 1 || !strings.Contains(stderr, tc.want) {
				t.Errorf("image %q = %v, stderr %q; want exit 1 saying %q", tc.args, err, stderr, tc.want)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"512M", 512 << 20}, {"4G", 4 << 30}, {"4GiB", 4 << 30}, {"100", 100}, {"64k", 64 << 10},
		{"", 0}, {"M", 0}, {"-1G", 0}, {"1.5G", 0}, {"12X", 0},
	} {
		got, err := parseSize(tc.in)
		if got != tc.want || (err == nil) != (tc.want != 0) {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

// openPTY returns the two ends of a new pseudo-terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// TestImageBuildProgress: on a terminal, image build shows status lines,
// each rewriting the last, and clears the line when done.
func TestImageBuildProgress(t *testing.T) {
	testenv.NeedKernel(t)
	testenv.NeedProgram(t, "mkfs.ext4")
	bb := testenv.NeedProgram(t, "busybox")
	master, slave := openPTY(t)
	if !isTerminal(slave) {
		t.Fatal("isTerminal(a pty) = false")
	}
	r, w, _ := os.Pipe()
	defer r.Close()
	defer w.Close()
	if isTerminal(w) {
		t.Fatal("isTerminal(a pipe) = true")
	}
	shown := make(chan string)
	go func() {
		b, _ := io.ReadAll(master) // ends with EIO once the slave is closed
		shown <- string(b)
	}()
	var out bytes.Buffer
	err := run(context.Background(), []string{"image", "build", "--out", filepath.Join(t.TempDir(), "m"), "--worker", bb, "--disk-size", "8M"},
		strings.NewReader(""), &out, slave)
	slave.Close()
	got := <-shown
	if err != nil {
		t.Fatalf("image build: %v\nterminal: %q", err, got)
	}
	for _, want := range []string{"\r\x1b[Kwriting the initramfs", "\r\x1b[Khashing the machine files"} {
		if !strings.Contains(got, want) {
			t.Errorf("terminal shows %q, want it to contain %q", got, want)
		}
	}
	if !strings.HasSuffix(got, "\r\x1b[K") {
		t.Errorf("terminal shows %q, want the status line cleared at the end", got)
	}
}
