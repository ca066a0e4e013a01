package main

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/buildfarm/buildfarm/internal/testenv"
)

func TestDoctor(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedRoot(t)
	testenv.NeedProgram(t, "qemu-system-x86_64")
	k := testenv.NeedKernel(t)
	// A cache of its own, with the real guest kernel in it.
	c := t.TempDir()
	if err := os.Symlink(k.Dir, filepath.Join(c, "kernel")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("BUILDFARM_CACHE", c)

	stdout, stderr, code := runManifest(t, "", "doctor")
	t.Logf("doctor:\n%s", stdout)
	if code != 0 {
		t.Fatalf("doctor: exit %d, want 0\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	want := []string{
		`^qemu +ok +QEMU emulator version \d+\.\d+`,
		`^accel +ok +(tcg|kvm): .*probed in`,
		`^btrfs +(ok|warn) `,
		`^tftp +ok +UDP 127\.0\.0\.1:23401 is free in a VM's own network namespace`,
		`^kernel +ok +` + regexp.QuoteMeta(k.Version),
	}
	if len(lines) != len(want) {
		t.Fatalf("doctor printed %d lines, want %d:\n%s", len(lines), len(want), stdout)
	}
	for i, re := range want {
		if !regexp.MustCompile(re).MatchString(lines[i]) {
			t.Errorf("doctor line %d = %q, want to match %s", i+1, lines[i], re)
		}
	}
	// The second time, the verdict comes from the cache.
	stdout, _, code = runManifest(t, "", "doctor")
	if code != 0 || !regexp.MustCompile(`(?m)^accel +ok +.*cached`).MatchString(stdout) {
		t.Errorf("second doctor: exit %d, output:\n%s\nwant exit 0 and a cached accelerator verdict", code, stdout)
	}
}

func TestDoctorNoKernel(t *testing.T) {
	testenv.NeedVM(t)
	t.Setenv("BUILDFARM_CACHE", t.TempDir())
	stdout, _, code := runManifest(t, "", "doctor")
	if code != 1 {
		t.Errorf("doctor without a guest kernel: exit %d, want 1", code)
	}
	if !regexp.MustCompile(`(?m)^kernel +FAIL .*scripts/deps`).MatchString(stdout) {
		t.Errorf("doctor without a guest kernel printed:\n%s\nwant a FAIL kernel line saying to run scripts/deps", stdout)
	}
}

func TestDoctorTFTPBusy(t *testing.T) {
	// Taken on the host, a port is still free in a VM's namespace; without
	// namespaces (not root) the host's port is what counts.
	testenv.NeedVM(t)
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	port := c.LocalAddr().(*net.UDPAddr).Port
	r := checkTFTP(t.Context(), port)
	if os.Geteuid() == 0 {
		if r.status != checkOK {
			t.Errorf("checkTFTP(%d) as root = %+v, want ok (in a namespace of its own)", port, r)
		}
	} else if r.status != checkFail {
		t.Errorf("checkTFTP(%d) with the port taken = %+v, want FAIL", port, r)
	}
}
