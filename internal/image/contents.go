package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	_ "embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/cache"
	"github.com/buildfarm/buildfarm/internal/initramfs"
	"github.com/buildfarm/buildfarm/internal/proc"
)

//go:embed init.sh
var initScript []byte

//go:embed udhcpc.script
var udhcpcScript []byte

// Where the worker lives: in the initramfs, or in the root on the disk for
// presets that have one (the debian preset's initramfs holds no worker).
const (
	WorkerPath     = "usr/bin/buildfarm-worker"
	DiskWorkerPath = "usr/local/bin/buildfarm-worker"
)

// contents is what goes into a machine's initramfs.
type contents struct {
	name         string
	preset       Preset
	arch         arch.Arch
	kernel       cache.Kernel
	worker       string
	busybox      string
	add          []Add
	remove       []string
	sshKey       string
	initOverride string
	// stripSignatures leaves the modules' signatures out (see
	// Options.KeepModuleSignatures).
	stripSignatures bool
}

// archive assembles the initramfs and returns it with the modules its init
// loads, in order.
func (c contents) archive(ctx context.Context) (*initramfs.Archive, []initramfs.Module, error) {
	var a initramfs.Archive
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range []string{"proc", "sys", "dev", "build", "etc", "mnt", "run", "var", "usr/sbin", "sbin"} {
		check(a.AddDir(d, 0o755))
	}
	check(a.AddDir("tmp", 0o777|os.ModeSticky))
	check(a.AddDir("root", 0o700))
	// The kernel opens /dev/console for init before anything is mounted.
	check(a.AddCharDevice("dev/console", 0o600, 5, 1))

	// busybox and its applets.
	check(a.AddFileFrom("bin/busybox", 0o755, c.busybox))
	applets, err := listApplets(ctx, c.busybox, c.arch)
	if err != nil {
		return nil, nil, err
	}
	for _, p := range strings.Fields(string(applets)) {
		if p != "bin/busybox" {
			check(a.AddSymlink(p, "/bin/busybox"))
		}
	}

	// init and its configuration.
	if c.initOverride != "" {
		check(a.AddFileFrom("init", 0o755, c.initOverride))
	} else {
		check(a.AddFile("init", 0o755, initScript))
	}
	root := "initramfs"
	if c.preset.RootOnDisk {
		root = "disk"
	}
	check(a.AddFile("etc/buildfarm/config", 0o644, fmt.Appendf(nil, "ROOT=%s\nNAME=%s\n", root, shellQuote(c.name))))
	check(a.AddFile("etc/buildfarm/udhcpc.script", 0o755, udhcpcScript))
	check(a.AddDir("etc/buildfarm/rc.d", 0o755))
	// root runs the worker; the steps run as the build user (see
	// internal/worker's StepUser).
	check(a.AddFile("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n"+stepUserPasswd)))
	check(a.AddFile("etc/group", 0o644, []byte("root:x:0:\n"+stepUserGroup)))
	check(a.AddFile("etc/hostname", 0o644, []byte(c.name+"\n")))
	// What the init mounts first, with one mount -a.
	check(a.AddFile("etc/fstab", 0o644, []byte("proc /proc proc defaults 0 0\nsysfs /sys sysfs defaults 0 0\ndevtmpfs /dev devtmpfs defaults 0 0\n")))
	// busybox acpid's action for the ACPI power button.
	check(a.AddFile("etc/acpi/PWRF/00000080", 0o755, []byte("#!/bin/sh\npoweroff -f\n")))

	// The worker, unless it runs from the root on the disk.
	if !c.preset.RootOnDisk {
		check(a.AddFileFrom(WorkerPath, 0o755, c.worker))
	}

	// The modules, the list init loads them from (modules, all in
	// dependency order; modules.early, the names of those it loads before
	// the worker starts), and the modules.dep its modprobe reads.
	idx, err := initramfs.LoadModules(c.kernel.Modules)
	if err != nil {
		return nil, nil, fmt.Errorf("kernel modules: %w", err)
	}
	mods, err := idx.Closure(modules(c.arch)...)
	if err != nil {
		return nil, nil, fmt.Errorf("kernel modules: %w", err)
	}
	var list bytes.Buffer
	base := path.Join("lib/modules", filepath.Base(c.kernel.Modules))
	for _, m := range mods {
		if !strings.HasSuffix(m.Path, ".ko") {
			return nil, nil, fmt.Errorf("kernel module %s: %s is compressed; busybox modprobe needs plain .ko files", m.Name, m.Path)
		}
		check(c.addModule(&a, path.Join(base, m.Path), filepath.Join(c.kernel.Modules, filepath.FromSlash(m.Path))))
		fmt.Fprintf(&list, "/%s/%s\n", base, m.Path)
	}
	check(a.AddFile("etc/buildfarm/modules", 0o644, list.Bytes()))
	// The names of those the init loads before the worker starts.
	early, err := idx.Closure(EarlyModules...)
	if err != nil {
		return nil, nil, fmt.Errorf("kernel modules: %w", err)
	}
	var names bytes.Buffer
	for _, m := range early {
		fmt.Fprintf(&names, "%s\n", strings.TrimSuffix(path.Base(m.Path), ".ko"))
	}
	check(a.AddFile("etc/buildfarm/modules.early", 0o644, names.Bytes()))
	dep, err := modulesDep(idx, mods)
	if err != nil {
		return nil, nil, err
	}
	check(a.AddFile(path.Join(base, "modules.dep"), 0o644, dep))

	// The caller's changes.
	if c.sshKey != "" {
		key, err := os.ReadFile(c.sshKey)
		if err != nil {
			return nil, nil, fmt.Errorf("--ssh-key: %w", err)
		}
		check(a.AddDir("root/.ssh", 0o700))
		check(a.AddFile("root/.ssh/authorized_keys", 0o600, key))
	}
	for _, ad := range c.add {
		check(a.AddFileFrom(ad.Dst, 0, ad.Src))
	}
	for _, p := range c.remove {
		if !a.Remove(p) {
			return nil, nil, fmt.Errorf("--remove %s: no such path in the initramfs", p)
		}
	}
	if len(errs) > 0 {
		return nil, nil, fmt.Errorf("initramfs: %w", errs[0])
	}
	return &a, mods, nil
}

// addModule adds the module file src to a as dst, without its signature
// when c says so.
func (c contents) addModule(a *initramfs.Archive, dst, src string) error {
	if !c.stripSignatures {
		return a.AddFileFrom(dst, 0o644, src)
	}
	ko, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("kernel module: %w", err)
	}
	if ko, _, err = initramfs.StripSignature(ko); err != nil {
		return fmt.Errorf("kernel module %s: %w", src, err)
	}
	return a.AddFile(dst, 0o644, ko)
}

// loadsUnsigned reports whether k's configuration is known and lets the
// kernel load unsigned modules: no CONFIG_MODULE_SIG_FORCE. (Our kernel
// command lines never set module.sig_enforce.) A kernel without its
// configuration (--kernel and --modules) keeps its modules' signatures.
func loadsUnsigned(k cache.Kernel) (bool, error) {
	if k.Config == "" {
		return false, nil
	}
	b, err := os.ReadFile(k.Config)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("kernel configuration: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if strings.TrimSpace(line) == "CONFIG_MODULE_SIG_FORCE=y" {
			return false, nil
		}
	}
	return true, nil
}

// modulesDep is depmod's modules.dep for mods: a line a module, its path
// and then every module it needs, directly or not, the one to load first
// last (busybox modprobe loads them from the end, and reads no further).
func modulesDep(idx *initramfs.Modules, mods []initramfs.Module) ([]byte, error) {
	var b bytes.Buffer
	for _, m := range mods {
		cl, err := idx.Closure(m.Name)
		if err != nil {
			return nil, fmt.Errorf("kernel modules: %w", err)
		}
		b.WriteString(m.Path + ":")
		for i := len(cl) - 2; i >= 0; i-- { // cl ends with m itself
			b.WriteString(" " + cl[i].Path)
		}
		b.WriteString("\n")
	}
	return b.Bytes(), nil
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// compressInitrd says whether the initrd is gzip-compressed. It is not:
// an earlier measurement under TCG had the uncompressed initrd boot with
// 0.13-0.18 s less QEMU CPU than gzip -9; the later runs of bench/image
// (bench/README.md "Guest images", bench/image/results.json) put the two
// within their noise (0.97-1.03 round by round). Uncompressed costs only
// disk space, a few MiB per machine.
const compressInitrd = false

// writeInitrd writes the archive to file and returns its size.
func writeInitrd(file string, a *initramfs.Archive) (int64, error) {
	f, err := os.Create(file)
	if err != nil {
		return 0, fmt.Errorf("initrd: %w", err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	if compressInitrd {
		zw, _ := gzip.NewWriterLevel(bw, gzip.BestCompression)
		_, err = a.WriteTo(zw)
		if err == nil {
			err = zw.Close()
		}
	} else {
		_, err = a.WriteTo(bw)
	}
	if err == nil {
		err = bw.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("initrd %s: %w", file, err)
	}
	fi, err := os.Stat(file)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// elfMachine is the ELF machine of each architecture's programs.
var elfMachine = map[arch.Arch]elf.Machine{arch.X8664: elf.EM_X86_64, arch.AArch64: elf.EM_AARCH64}

// checkStatic makes sure file is a statically linked ELF executable for a:
// the initramfs has no dynamic loader or libc, and a guest runs only its
// own architecture's programs.
func checkStatic(file string, a arch.Arch) error {
	f, err := elf.Open(file)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	defer f.Close()
	if want, ok := elfMachine[a]; ok && f.Machine != want {
		return fmt.Errorf("%s is a program for %v, not for %s guests", file, f.Machine, a)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; the guest needs a static binary (CGO_ENABLED=0 for Go)", file)
		}
	}
	return nil
}

// listApplets returns busybox's applets as --list-full gives them. A
// busybox of another architecture than the host's runs through
// qemu-user's binfmt handler when there is one; without, the host's
// /bin/busybox answers: Debian builds busybox-static with one
// configuration for every architecture.
func listApplets(ctx context.Context, busybox string, a arch.Arch) ([]byte, error) {
	out, err := proc.Output(ctx, busybox, "--list-full")
	if err != nil && a != arch.Host() {
		var herr error
		if out, herr = proc.Output(ctx, "/bin/busybox", "--list-full"); herr == nil {
			return out, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list busybox applets: %w", err)
	}
	return out, nil
}
