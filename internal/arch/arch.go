// Package arch names the guest architectures buildfarm runs, x86_64 and
// aarch64, the way QEMU and GNU target triplets name them, and gives the
// names Debian and Go use for each (amd64, arm64). It says which one this
// host is, which architecture a task's target needs, and refuses a task
// whose target a machine cannot build: a task for aarch64-linux-gnu runs
// only on an aarch64 machine, and one for x86_64-linux-gnu only on an
// x86_64 machine.
package arch

import (
	"fmt"
	"runtime"
	"strings"
)

// Arch is a guest architecture, named as QEMU names it
// (qemu-system-x86_64, qemu-system-aarch64).
type Arch string

// The architectures buildfarm runs guests of.
const (
	X8664   Arch = "x86_64"
	AArch64 Arch = "aarch64"
)

// All lists them, the host's usual one first.
var All = []Arch{X8664, AArch64}

// Parse accepts QEMU's, Debian's and Go's names: x86_64, amd64, x64;
// aarch64, arm64.
func Parse(s string) (Arch, error) {
	switch s {
	case "x86_64", "amd64", "x64":
		return X8664, nil
	case "aarch64", "arm64":
		return AArch64, nil
	}
	return "", fmt.Errorf("architecture %q: want x86_64 or aarch64 (amd64 and arm64 also do)", s)
}

// Debian is the architecture's Debian name: amd64 or arm64 (dpkg
// --add-architecture, apt-get download PACKAGE:ARCH).
func (a Arch) Debian() string {
	switch a {
	case X8664:
		return "amd64"
	case AArch64:
		return "arm64"
	}
	return string(a)
}

// GOARCH is the architecture's name for Go's GOARCH.
func (a Arch) GOARCH() string { return a.Debian() }

// Host returns this host's architecture, or "" when it is none of them.
func Host() Arch {
	a, err := Parse(runtime.GOARCH)
	if err != nil {
		return ""
	}
	return a
}

// FromTarget returns the architecture a target triplet's CPU needs, for
// example aarch64 for aarch64-linux-gnu and x86_64 for x86_64-linux-gnu or
// i686-linux-gnu (an x86_64 guest runs 32-bit x86 code).
func FromTarget(target string) (Arch, error) {
	cpu, _, _ := strings.Cut(target, "-")
	switch cpu {
	case "x86_64", "amd64", "i386", "i486", "i586", "i686":
		return X8664, nil
	case "aarch64", "arm64":
		return AArch64, nil
	}
	return "", fmt.Errorf("target %q: CPU %q is none that buildfarm's machines are (x86_64, aarch64)", target, cpu)
}

// Check says why a machine of architecture machine cannot build a task for
// target, if it cannot. An empty target asks for nothing.
func Check(target string, machine Arch) error {
	if target == "" {
		return nil
	}
	want, err := FromTarget(target)
	if err != nil {
		return err
	}
	if want != machine {
		return fmt.Errorf("target %s needs an %s machine, and this machine is %s", target, want, machine)
	}
	return nil
}
