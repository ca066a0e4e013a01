// Package testenv tells tests what this machine offers and skips, with the
// reason, those that cannot run here. Costly tests are marked, not hidden:
// VM tests (real QEMU, btrfs on loop devices, network namespaces) run only
// when BUILDFARM_VM_TESTS=1, which scripts/test and CI always set.
//
// Environment:
//
//	BUILDFARM_VM_TESTS  1 to run the VM and root-only tests
//	BUILDFARM_CACHE     the cache directory (see package cache), where
//	                    scripts/deps puts the guest kernel
package testenv

import (
	"os"
	"os/exec"
	"testing"

	"github.com/buildfarm/buildfarm/internal/cache"
)

// VMTests reports whether costly VM tests were asked for.
func VMTests() bool { return os.Getenv("BUILDFARM_VM_TESTS") == "1" }

// NeedVM skips t unless VM tests were asked for.
func NeedVM(t testing.TB) {
	t.Helper()
	if !VMTests() {
		t.Skip("VM test: set BUILDFARM_VM_TESTS=1 (scripts/test does) to run it")
	}
}

// NeedRoot skips t unless running as root (loop devices, mounts, namespaces).
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loop devices, mounts and network namespaces")
	}
}

// NeedProgram returns the path of an external program, and skips t when it
// is missing: when VM tests were asked for, a missing program is a failure,
// since scripts/deps installs them all.
func NeedProgram(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if VMTests() {
			t.Fatalf("%s not found (scripts/deps installs it): %v", name, err)
		}
		t.Skipf("%s not found; run scripts/deps", name)
	}
	return p
}

// NeedKernel returns the cached guest kernel, or fails (VM tests) or skips.
func NeedKernel(t testing.TB) cache.Kernel {
	t.Helper()
	k, err := cache.GuestKernel()
	if err != nil {
		if VMTests() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return k
}
