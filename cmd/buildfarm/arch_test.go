package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/machine/machinetest"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// machine list says each machine's architecture, x86_64 for a manifest
// that does not say.
func TestMachineListArch(t *testing.T) {
	src := t.TempDir()
	machines := filepath.Join(t.TempDir(), "machines")
	machinetest.MakeMachine(t, filepath.Join(src, "a"), "a", "ida", 'a')
	machinetest.MakeMachine(t, filepath.Join(src, "x"), "x", "idx", 'x')
	mf := filepath.Join(src, "a", "manifest")
	b, err := os.ReadFile(mf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(mf, append(b, "buildfarm-arch: aarch64\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "x"} {
		if out, errOut, code := runManifest(t, "", "machine", "add", "--machines", machines, "--backend", "fallback", "--name", n, filepath.Join(src, n)); code != 0 {
			t.Fatalf("machine add %s: exit %d: %s%s", n, code, out, errOut)
		}
	}
	out, errOut, code := runManifest(t, "", "machine", "list", "--machines", machines)
	if code != 0 {
		t.Fatalf("machine list: exit %d: %s", code, errOut)
	}
	ms, err := manifest.Parse(strings.NewReader(out), "list")
	if err != nil {
		t.Fatalf("machine list printed %q: %v", out, err)
	}
	got := map[string]string{}
	for _, m := range ms {
		h, err := manifest.ParseMachineHeader(m, "list", manifest.Strict)
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h.Arch
	}
	if got["a"] != "aarch64" || got["x"] != "x86_64" || len(got) != 2 {
		t.Errorf("machine list gave architectures %v, want a: aarch64, x: x86_64\n%s", got, out)
	}
}

// doctor says that aarch64 guests run here under TCG once their QEMU,
// kernel and busybox are in place, and what is missing otherwise.
func TestDoctorArch(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedRoot(t)
	testenv.NeedProgram(t, "qemu-system-aarch64")
	k := testenv.NeedKernel(t)
	k64 := testenv.NeedKernelFor(t, arch.AArch64)
	bb := testenv.NeedBusybox(t, arch.AArch64)
	c := t.TempDir()
	for link, target := range map[string]string{"kernel": k.Dir, "kernel-arm64": k64.Dir} {
		if err := os.Symlink(target, filepath.Join(c, link)); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("BUILDFARM_CACHE", c)
	line := func() string {
		t.Helper()
		stdout, stderr, _ := runManifest(t, "", "doctor")
		for _, l := range strings.Split(stdout, "\n") {
			if strings.Contains(l, "aarch64 guests") {
				return l
			}
		}
		t.Fatalf("doctor printed no aarch64 line:\n%s%s", stdout, stderr)
		return ""
	}
	if l := line(); !regexp.MustCompile(`^arch +warn +aarch64 guests cannot run: no busybox in .*busybox-arm64; scripts/deps`).MatchString(l) {
		t.Errorf("doctor without the arm64 busybox: %q, want a warning naming it", l)
	}
	if err := os.Symlink(filepath.Dir(bb), filepath.Join(c, "busybox-arm64")); err != nil {
		t.Fatal(err)
	}
	if l := line(); !regexp.MustCompile(`^arch +ok +aarch64 guests run under tcg .*qemu-system-aarch64, kernel ` + regexp.QuoteMeta(k64.Version)).MatchString(l) {
		t.Errorf("doctor with everything for aarch64: %q, want ok, under tcg", l)
	}
}
