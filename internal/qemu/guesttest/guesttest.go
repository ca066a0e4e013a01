// Package guesttest makes small real guests for tests of the VM layer: an
// initramfs with static busybox, the kernel modules asked for (and those
// they depend on, in load order, from the cached kernel's modules.dep),
// and an init script whose prelude mounts /proc, /sys and /dev, loads the
// modules and makes the ACPI power button power the guest off (busybox
// acpid), so that QMP system_powerdown works. It packs the tree with the
// cpio command and skips or fails the test like package testenv when a
// tool or the kernel is missing.
//
// External tools: busybox (static, /bin/busybox), cpio.
package guesttest

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/buildfarm/buildfarm/internal/cache"
	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// Modules a guest needs for its power button and for virtio networking.
var (
	PowerButton = []string{"button", "evdev"}
	Network     = []string{"virtio_pci", "virtio_net"}
)

// Prelude starts every init script. It leaves $PATH set and acpid
// running. (Write links busybox's applets and writes acpid's power button
// action into the image, which saves time at boot under TCG.)
const Prelude = `#!/bin/busybox sh
export PATH=/bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
exec </dev/console >/dev/console 2>&1
for m in $(cat /etc/modules); do insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
` + PowerButtonScript

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
	testenv.NeedProgram(t, "cpio")
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
	root, err := os.MkdirTemp("", "guesttest-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	for _, d := range []string{"bin", "dev", "proc", "sys", "etc", "tmp", "lib/modules"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := copyFile(busybox, filepath.Join(root, "bin/busybox"), 0o755); err != nil {
		return err
	}
	order, err := LoadOrder(k.Modules, modules...)
	if err != nil {
		return err
	}
	var names []string
	for _, rel := range order {
		name := strings.TrimSuffix(filepath.Base(rel), ".ko")
		names = append(names, name)
		if err := copyFile(filepath.Join(k.Modules, rel), filepath.Join(root, "lib/modules", name+".ko"), 0o644); err != nil {
			return err
		}
	}
	applets, err := proc.Output(ctx, busybox, "--list")
	if err != nil {
		return err
	}
	for _, a := range strings.Fields(string(applets)) {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil && !os.IsExist(err) {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "etc/acpi/PWRF"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "etc/acpi/PWRF/00000080"), []byte("#!/bin/sh\npoweroff -f\n"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "etc/modules"), []byte(strings.Join(names, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(init), 0o755); err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	cmd := proc.Command(ctx, "sh", "-c", "find . | cpio -o -H newc --quiet")
	cmd.Dir = root
	cmd.Stdout = f
	err = proc.Wait(cmd)
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
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	deps := map[string][]string{} // module name -> its file, then its dependencies' files
	s := bufio.NewScanner(f)
	for s.Scan() {
		file, rest, ok := strings.Cut(s.Text(), ":")
		if !ok {
			continue
		}
		name := strings.TrimSuffix(filepath.Base(file), ".ko")
		deps[name] = append([]string{file}, strings.Fields(rest)...)
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	var order []string
	for _, m := range modules {
		d, ok := deps[m]
		if !ok {
			return nil, fmt.Errorf("%s: no module %s in modules.dep", dir, m)
		}
		// modules.dep lists the dependencies so that the last loads first.
		for i := len(d) - 1; i >= 1; i-- {
			if !slices.Contains(order, d[i]) {
				order = append(order, d[i])
			}
		}
		if !slices.Contains(order, d[0]) {
			order = append(order, d[0])
		}
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
