// Package guesttest makes small real guests for tests of the VM layer: an
// initramfs with static busybox, the kernel modules asked for (and those
// they depend on, in load order, from the cached kernel's modules.dep),
// and an init script whose prelude mounts /proc, /sys and /dev, loads the
// modules and makes the ACPI power button power the guest off (busybox
// acpid), so that QMP system_powerdown works. It writes the archive with
// package initramfs and skips or fails the test like package testenv when
// a tool or the kernel is missing.
//
// External tools: busybox (static, /bin/busybox).
package guesttest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/buildfarm/buildfarm/internal/cache"
	"github.com/buildfarm/buildfarm/internal/initramfs"
	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// Modules a guest needs for its power button and for virtio networking.
var (
	PowerButton = []string{"button", "evdev"}
	Network     = []string{"virtio_pci", "virtio_net"}
)

// Prelude starts every init script of Initramfs. It leaves $PATH set and
// acpid running. (Write links busybox's applets and writes acpid's power
// button action into the image, which saves time at boot under TCG.)
const Prelude = Mounts + PowerButtonScript

// Mounts is Prelude without acpid: it mounts /dev, /proc and /sys, puts
// stdio on the console and loads the modules.
const Mounts = `#!/bin/busybox sh
export PATH=/bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
exec </dev/console >/dev/console 2>&1
for m in $(cat /etc/modules); do insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
`

// PowerButtonScript starts busybox acpid, once the button and evdev
// modules are loaded, and returns when it listens: a power-down sent
// earlier would be lost. acpid's action for the power button is the
// executable /etc/acpi/PWRF/00000080 (Write makes one: poweroff -f).
const PowerButtonScript = `# acpid opens the event devices once: wait for devtmpfs to make them.
n=0
while [ "$(ls /sys/class/input | grep -c event)" != "$(ls /dev/input 2>/dev/null | grep -c event)" ] && [ $n -lt 200 ]; do
	usleep 10000; n=$((n + 1))
done
acpid -d -c /etc/acpi </dev/null >/dev/console 2>&1 &  # -d: in the foreground, logging to the console
# and wait until it listens.
n=0
while [ "$(ls -l /proc/$!/fd 2>/dev/null | grep -c /dev/input/)" != "$(ls /dev/input | grep -c event)" ] && [ $n -lt 200 ]; do
	usleep 10000; n=$((n + 1))
done
`

// StartedLine is what a guest prints, like buildfarm-worker, as its first
// sign of life.
const StartedLine = "buildfarm-worker test: started"

// Append is the kernel command line for the guests made here.
// no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer
// check may fail and panic the guest.
const Append = "console=ttyS0 quiet panic=-1 no_timer_check"

// Initramfs writes an initramfs whose /init is Prelude followed by body,
// with the modules (and what they depend on) in it, and returns its path.
func Initramfs(t testing.TB, k cache.Kernel, body string, modules ...string) string {
	t.Helper()
	testenv.NeedProgram(t, "busybox")
	out := filepath.Join(t.TempDir(), "initrd")
	if err := Write(t.Context(), out, k, Prelude+body, modules...); err != nil {
		t.Fatal(err)
	}
	return out
}

// Write writes to out an initramfs whose /init is the script init, with
// static busybox and its applets linked in /bin, the modules named (and
// what they depend on) listed in load order in /etc/modules, and
// /etc/acpi/PWRF/00000080, acpid's action for the power button: poweroff -f.
func Write(ctx context.Context, out string, k cache.Kernel, init string, modules ...string) error {
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return err
	}
	var a initramfs.Archive
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range []string{"bin", "dev", "proc", "sys", "etc", "tmp", "lib/modules"} {
		check(a.AddDir(d, 0o755))
	}
	check(a.AddCharDevice("dev/console", 0o600, 5, 1))
	check(a.AddFileFrom("bin/busybox", 0o755, busybox))
	applets, err := proc.Output(ctx, busybox, "--list")
	if err != nil {
		return err
	}
	for _, name := range strings.Fields(string(applets)) {
		if name != "busybox" {
			check(a.AddSymlink("bin/"+name, "busybox"))
		}
	}
	order, err := LoadOrder(k.Modules, modules...)
	if err != nil {
		return err
	}
	var names []string
	for _, rel := range order {
		name := strings.TrimSuffix(filepath.Base(rel), ".ko")
		names = append(names, name)
		check(a.AddFileFrom("lib/modules/"+name+".ko", 0o644, filepath.Join(k.Modules, rel)))
	}
	check(a.AddFile("etc/acpi/PWRF/00000080", 0o755, []byte("#!/bin/sh\npoweroff -f\n")))
	check(a.AddFile("etc/modules", 0o644, []byte(strings.Join(names, "\n")+"\n")))
	check(a.AddFile("init", 0o755, []byte(init)))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("initramfs %s: %w", out, err)
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	_, err = a.WriteTo(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("initramfs %s: %w", out, err)
	}
	return nil
}

// MachineDir makes a machine directory (kernel, initrd, cmdline, manifest)
// like the image builder's, whose guest prints StartedLine on the console
// and then waits to be powered off.
func MachineDir(t testing.TB, k cache.Kernel) string {
	t.Helper()
	initrd := Initramfs(t, k, "echo '"+StartedLine+"'\nexec sleep 3600\n", PowerButton...)
	dir := t.TempDir()
	for _, err := range []error{
		copyFile(k.Image, filepath.Join(dir, "kernel"), 0o644),
		copyFile(initrd, filepath.Join(dir, "initrd"), 0o644),
		os.WriteFile(filepath.Join(dir, "cmdline"), []byte(Append+"\n"), 0o644),
		os.WriteFile(filepath.Join(dir, "manifest"), []byte(": 1\nid: test\nname: test\nsummary: a busybox test guest\ntype: kvm\n"), 0o644),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// LoadOrder returns the module files (relative to dir, lib/modules/VERSION)
// to load for the modules named, dependencies first, each once.
func LoadOrder(dir string, modules ...string) ([]string, error) {
	idx, err := initramfs.LoadModules(dir)
	if err != nil {
		return nil, err
	}
	mods, err := idx.Closure(modules...)
	if err != nil {
		return nil, err
	}
	order := make([]string, 0, len(mods))
	for _, m := range mods {
		order = append(order, m.Path)
	}
	return order, nil
}

func copyFile(src, dst string, perm os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, perm)
}
