package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/qemu/guesttest"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

func TestWorkerStarted(t *testing.T) {
	tests := []struct {
		line string
		want bool
	}{
		{"buildfarm-worker 0.1.0-dev: started", true},
		{"[    2.1] buildfarm-worker v1.2.3: started  ", true},
		{"init: starting buildfarm-worker (up 1.2s)", false},
		{"buildfarm-worker 0.1: starting", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := workerStarted(tt.line); got != tt.want {
			t.Errorf("workerStarted(%q) = %v, want %v", tt.line, got, tt.want)
		}
	}
}

func TestVMBootTest(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedProgram(t, "qemu-system-x86_64")
	k := testenv.NeedKernel(t)
	dir := guesttest.MachineDir(t, k)
	stdout, stderr, code := runManifest(t, "", "vm", "boot-test", dir, "--accel", "tcg", "--timeout", "60")
	if code != 0 {
		t.Fatalf("vm boot-test %s: exit %d\nstdout:\n%s\nstderr:\n%s", dir, code, stdout, stderr)
	}
	t.Logf("vm boot-test:\n%s", stdout)
	for _, re := range []string{
		`(?m)^start: +\d+\.\d\ds  qemu pid \d+`,
		`(?m)^first sign of life: +\d+\.\d\ds  ` + regexp.QuoteMeta(guesttest.StartedLine) + `$`,
		`(?m)^power-off: +\d+\.\d\ds  clean`,
		`(?m)^total: +\d+\.\d\ds$`,
	} {
		if !regexp.MustCompile(re).MatchString(stdout) {
			t.Errorf("vm boot-test output does not match %s:\n%s", re, stdout)
		}
	}
}

func TestVMBootTestNotAMachine(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(dir+"/manifest", []byte(": 1\n"), 0o644)
	_, stderr, code := runManifest(t, "", "vm", "boot-test", dir, "--accel", "tcg")
	if code != 1 || !strings.Contains(stderr, "not a machine directory") {
		t.Errorf("vm boot-test on a directory without kernel or disk: exit %d, stderr %q, want 1 and an error saying so", code, stderr)
	}
}

func TestMachineConfig(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string]string{
		"kernel":   "k",
		"initrd":   "i",
		"cmdline":  "console=ttyS0 quiet\n",
		"disk.img": "",
		"manifest": ": 1\nid: m-1.0\nname: m\nsummary: a machine\ntype: kvm\nmac: 00:01:02:03:04:0b\noptions: -device virtio-rng-pci\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := machineConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := qemu.Config{
		Name:   filepath.Base(dir),
		Kernel: filepath.Join(dir, "kernel"), Initrd: filepath.Join(dir, "initrd"), Append: "console=ttyS0 quiet",
		Drives: []qemu.Drive{{Path: filepath.Join(dir, "disk.img")}},
		Net:    qemu.Net{MAC: "00:01:02:03:04:0b"},
		Extra:  []string{"-device", "virtio-rng-pci"},
	}
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Errorf("machineConfig(%s) differs (-want +got):\n%s", dir, diff)
	}
}

// TestVMBootTestImage boots what the image builder makes, with the real
// buildfarm-worker; its init acts on the ACPI power button by itself.
func TestVMBootTestImage(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedProgram(t, "qemu-system-x86_64")
	testenv.NeedProgram(t, "mkfs.ext4")
	testenv.NeedKernel(t)
	tmp := t.TempDir()

	worker := testenv.Worker(t, arch.X8664)
	args := []string{"image", "build", "--preset", "busybox", "--out", filepath.Join(tmp, "m"), "--worker", worker, "--disk-size", "16M"}
	if stdout, stderr, code := runManifest(t, "", args...); code != 0 {
		t.Fatalf("image build: exit %d\n%s%s", code, stdout, stderr)
	}

	stdout, stderr, code := runManifest(t, "", "vm", "boot-test", filepath.Join(tmp, "m"), "--accel", "tcg", "--timeout", "90")
	if code != 0 {
		t.Fatalf("vm boot-test of the image: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	t.Logf("vm boot-test:\n%s", stdout)
	if !regexp.MustCompile(`(?m)^first sign of life: +\d+\.\d\ds  buildfarm-worker \S+: started$`).MatchString(stdout) ||
		!regexp.MustCompile(`(?m)^power-off: +\d+\.\d\ds  clean`).MatchString(stdout) {
		t.Errorf("vm boot-test of the image printed:\n%s\nwant the worker's first sign of life and a clean power-off", stdout)
	}
}
