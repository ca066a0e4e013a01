package main

import (
	"fmt"
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
		`^tftp +ok +UDP 127\.0\.0\.1:23401 bound in a VM's network namespace`,
		`^kernel +ok +` + regexp.QuoteMeta(k.Version),
		`^arch +ok +x86_64 guests run under (tcg|kvm) `,
		`^arch +warn +aarch64 guests cannot run: .*no guest kernel in ` + regexp.QuoteMeta(filepath.Join(c, "kernel-arm64")),
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

// TestDoctorTFTPBusy takes a port on the host. The agent with --no-netns
// would serve there, so doctor --no-netns fails, naming it; by default each
// VM has a network namespace of its own, where the port is free whatever
// holds it on the host, so doctor binds it there and says so.
func TestDoctorTFTPBusy(t *testing.T) {
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	taken := c.LocalAddr().(*net.UDPAddr).Port
	addr := fmt.Sprintf("127.0.0.1:%d", taken)
	t.Run("no-netns", func(t *testing.T) {
		for _, tc := range []tftpCheck{
			{port: taken - 1, instance: 1, instances: 1, noNetNS: true},
			{port: taken - 1001, instance: 1, instances: 2, noNetNS: true}, // the second VM's port
		} {
			r := checkTFTP(t.Context(), tc)
			if r.status != checkFail || !strings.Contains(r.text, addr) {
				t.Errorf("checkTFTP(%+v) with %s taken = %+v, want FAIL naming %s", tc, addr, r, addr)
			}
		}
		// A free port passes, with a warning about isolation.
		free := tftpCheck{port: taken - 1, instance: 2, instances: 1, noNetNS: true}
		if r := checkTFTP(t.Context(), free); r.status != checkWarn {
			t.Errorf("checkTFTP(%+v) with %s taken = %+v, want warn", free, addr, r)
		}
	})
	t.Run("netns", func(t *testing.T) {
		testenv.NeedVM(t)
		testenv.NeedRoot(t)
		tc := tftpCheck{port: taken - 1, instance: 1, instances: 1}
		r := checkTFTP(t.Context(), tc)
		if r.status != checkOK || !strings.Contains(r.text, addr+" is taken on the host does not matter") {
			t.Errorf("checkTFTP(%+v) with %s taken on the host = %+v, want ok, bound in a namespace of its own", tc, addr, r)
		}
	})
}
