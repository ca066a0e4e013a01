package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/cache"
)

// Preset is a kind of guest machine.
type Preset struct {
	Name    string
	Summary string
	// RootOnDisk: disk.img holds a root file system that the init chroots
	// into to run the worker; otherwise the worker runs in the initramfs
	// and disk.img is an empty build disk mounted on /build.
	RootOnDisk bool
	DiskSize   int64 // default size of disk.img, bytes
}

// Presets are the machines Build knows how to make.
var Presets = map[string]Preset{
	"busybox": {
		Name:     "busybox",
		Summary:  "busybox initramfs and an empty ext4 build disk",
		DiskSize: 256 << 20,
	},
	"debian": {
		Name:       "debian",
		Summary:    "Debian " + debianSuite + " with build-essential on an ext4 root disk",
		RootOnDisk: true,
		DiskSize:   2 << 30,
	},
}

// GuestModules are the kernel modules every x86_64 guest loads (with what
// they depend on): the virtio PCI transport, then the block, network and
// console devices, ext4 for the disk (built into Debian's cloud kernel),
// and the ACPI power button with evdev, so that the guest powers off when
// QEMU presses the button (QMP system_powerdown).
var GuestModules = []string{"virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "ext4", "button", "evdev"}

// AArch64Modules are those of aarch64 guests: the same virtio PCI devices
// (package qemu gives virt the PCI ones) and ext4. virt without firmware
// has no ACPI; its power button is a GPIO line, which the init watches
// (the PL061 driver is built into the kernel).
var AArch64Modules = []string{"virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "ext4"}

// EarlyModules are the guest modules the init loads (with what they
// depend on) before the worker starts, on both architectures: the
// network's. It loads the others (the disk's, the console's, the power
// button's on x86_64) while the worker makes its first requests
// (init.sh), and the worker waits for them before it touches its work
// directory.
var EarlyModules = []string{"virtio_pci", "virtio_net"}

// Cmdline is the kernel command line of the x86_64 machines Build makes.
// panic=-1 turns a guest panic into a reboot, which QEMU's -no-reboot makes
// an exit; no_timer_check skips the IO-APIC timer check, which can fail
// (and panic the guest) under TCG on a loaded host.
const Cmdline = "console=ttyS0 quiet panic=-1 no_timer_check"

// AArch64Cmdline is that of aarch64 machines: virt's PL011 serial port is
// ttyAMA0, and it has no IO-APIC.
const AArch64Cmdline = "console=ttyAMA0 quiet panic=-1"

// modules and cmdline return the guest modules and kernel command line
// for a.
func modules(a arch.Arch) []string {
	if a == arch.AArch64 {
		return AArch64Modules
	}
	return GuestModules
}

func cmdline(a arch.Arch) string {
	if a == arch.AArch64 {
		return AArch64Cmdline
	}
	return Cmdline
}

var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// Add is an extra file for the image: the host file Src at Dst in the guest.
type Add struct{ Src, Dst string }

// ParseAdd parses the SRC:DST form of --add.
func ParseAdd(s string) (Add, error) {
	src, dst, ok := strings.Cut(s, ":")
	if !ok || src == "" || dst == "" {
		return Add{}, fmt.Errorf("--add %q: want SRC:DST", s)
	}
	return Add{Src: src, Dst: dst}, nil
}

// Options say what Build makes.
type Options struct {
	Preset string // a key of Presets
	Out    string // the machine directory to make; must not exist or be empty
	Name   string // the machine's name; default the preset's
	// Arch is the guest's architecture; default x86_64.
	Arch arch.Arch

	// Kernel is a bzImage (an arm64 Image for aarch64) to boot and Modules
	// its lib/modules/VERSION directory; both empty means the cached guest
	// kernel of Arch, fetched into the cache when missing.
	Kernel, Modules string

	// Worker is buildfarm-worker built for Arch; default next to this
	// executable, then in PATH: buildfarm-worker for the host's
	// architecture, buildfarm-worker-arm64 (GOARCH=arm64) for aarch64 on
	// another host.
	Worker string
	// Busybox is a static busybox for Arch; default /bin/busybox for the
	// host's architecture, the cache's (scripts/deps fetches it) for another.
	Busybox string

	Add          []Add    // extra files for the initramfs
	Remove       []string // paths to leave out of the initramfs
	SSHKey       string   // a public key file for root's authorized_keys
	InitOverride string   // a file to use as /init instead of ours
	// KeepModuleSignatures keeps the modules' appended signatures. By
	// default Build strips them when the kernel's configuration says it
	// loads unsigned modules (no CONFIG_MODULE_SIG_FORCE): checking them
	// took the guest about 0.07 s of its boot under TCG, and buys nothing
	// here, since the kernel trusts the unsigned initramfs that holds them
	// (and its init) anyway. An unsigned module taints the kernel with E.
	KeepModuleSignatures bool
	DiskSize             int64 // bytes; 0 means the preset's default

	Mirror string // Debian mirror for the debian preset; default deb.debian.org

	// Progress receives status lines for a terminal (each rewriting the
	// last); nil keeps long steps quiet.
	Progress io.Writer
	Log      *slog.Logger
}

// Machine describes a machine directory Build made.
type Machine struct {
	Dir           string
	Name          string
	Arch          arch.Arch
	ID            string // sha256 of the machine files, as in the manifest
	MAC           string
	KernelVersion string
	Modules       []string // loaded by init, in order
	// UnsignedModules says the modules' signatures were stripped (see
	// Options.KeepModuleSignatures).
	UnsignedModules bool
	InitrdSize      int64
	DiskSize        int64
}

// The files of a machine directory.
const (
	KernelFile   = "kernel"
	InitrdFile   = "initrd"
	CmdlineFile  = "cmdline"
	DiskFile     = "disk.img"
	ManifestFile = "manifest"
)

// Build makes the machine directory opts.Out. It works in a temporary
// sibling directory and renames it into place at the end, so that nobody
// sees a half-made machine.
//
//  1. Resolve the inputs: preset, kernel and modules, worker, busybox.
//  2. Write the initramfs (initrd), the kernel and the command line.
//  3. Make disk.img with mkfs.ext4 -d: empty, or the Debian rootfs from the
//     cached debootstrap tarball (made first when missing) plus the worker.
//  4. Write the manifest, whose id hashes the files above.
//  5. Rename the directory into place.
func Build(ctx context.Context, opts Options) (*Machine, error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	preset, ok := Presets[opts.Preset]
	if !ok {
		return nil, fmt.Errorf("unknown preset %q (have busybox, debian)", opts.Preset)
	}
	guest := opts.Arch
	if guest == "" {
		guest = arch.X8664
	}
	if _, err := arch.Parse(string(guest)); err != nil {
		return nil, err
	}
	opts.Arch = guest
	name := opts.Name
	if name == "" {
		name = preset.Name
	}
	if !validName.MatchString(name) {
		return nil, fmt.Errorf("machine name %q: want letters, digits, '.', '_' and '-'", name)
	}
	diskSize := opts.DiskSize
	if diskSize == 0 {
		diskSize = preset.DiskSize
	}
	if opts.Out == "" {
		return nil, errors.New("no output directory")
	}
	if err := checkEmpty(opts.Out); err != nil {
		return nil, err
	}
	st := status{w: opts.Progress}
	defer st.done()

	// 1. Inputs.
	k, err := kernelFor(ctx, opts, st, log)
	if err != nil {
		return nil, err
	}
	worker, err := findWorker(opts.Worker, guest)
	if err != nil {
		return nil, err
	}
	bb := opts.Busybox
	if bb == "" {
		if bb, err = cache.Busybox(guest); err != nil {
			return nil, fmt.Errorf("busybox for %s guests: %w", guest, err)
		}
	}
	for _, p := range []string{worker, bb} {
		if err := checkStatic(p, guest); err != nil {
			return nil, err
		}
	}

	tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(opts.Out)), "."+filepath.Base(opts.Out)+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("machine directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}

	// 2. initrd, kernel, cmdline.
	st.say("writing the initramfs")
	spec := contents{
		name: name, preset: preset, arch: guest, kernel: k, worker: worker, busybox: bb,
		add: opts.Add, remove: opts.Remove, sshKey: opts.SSHKey, initOverride: opts.InitOverride,
	}
	if !opts.KeepModuleSignatures {
		if spec.stripSignatures, err = loadsUnsigned(k); err != nil {
			return nil, err
		}
	}
	a, mods, err := spec.archive(ctx)
	if err != nil {
		return nil, err
	}
	initrdSize, err := writeInitrd(filepath.Join(tmp, InitrdFile), a)
	if err != nil {
		return nil, err
	}
	if err := copyFile(filepath.Join(tmp, KernelFile), k.Image, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tmp, CmdlineFile), []byte(cmdline(guest)+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("write cmdline: %w", err)
	}

	// 3. disk.img.
	disk := filepath.Join(tmp, DiskFile)
	if preset.RootOnDisk {
		err = debianDisk(ctx, disk, diskSize, name, opts, worker, st, log)
	} else {
		err = mkfs(ctx, disk, diskSize, name, "")
	}
	if err != nil {
		return nil, err
	}

	// 4. manifest.
	st.say("hashing the machine files")
	m := &Machine{
		Name: name, Arch: guest, MAC: MAC(name), KernelVersion: k.Version,
		InitrdSize: initrdSize, DiskSize: diskSize, UnsignedModules: spec.stripSignatures,
	}
	for _, mod := range mods {
		m.Modules = append(m.Modules, mod.Name)
	}
	if m.ID, err = machineID(ctx, tmp); err != nil {
		return nil, err
	}
	summary := fmt.Sprintf("buildfarm %s guest (%s): Debian kernel %s, %s", preset.Name, guest, k.Version, preset.Summary)
	if err := writeManifest(filepath.Join(tmp, ManifestFile), m, summary); err != nil {
		return nil, err
	}

	// 5. Into place.
	if err := os.Remove(opts.Out); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("replace %s: %w", opts.Out, err)
	}
	if err := os.Rename(tmp, opts.Out); err != nil {
		return nil, fmt.Errorf("machine directory: %w", err)
	}
	m.Dir = opts.Out
	log.Debug("machine built", "dir", m.Dir, "name", name, "arch", guest, "kernel", k.Version, "initrd", initrdSize, "disk", diskSize)
	return m, nil
}

// checkEmpty accepts a directory that does not exist or is empty.
func checkEmpty(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("output directory %s is not empty", dir)
	}
	return nil
}

// WorkerName is the name findWorker looks for: buildfarm-worker for
// guests of the host's architecture, buildfarm-worker-GOARCH for others
// (buildfarm-worker-arm64 on an x86_64 host).
func WorkerName(a arch.Arch) string {
	if a == arch.Host() {
		return "buildfarm-worker"
	}
	return "buildfarm-worker-" + a.GOARCH()
}

// findWorker returns the buildfarm-worker to put in a's image: path when
// given, else WorkerName(a) next to the running executable, else in PATH.
func findWorker(path string, a arch.Arch) (string, error) {
	if path != "" {
		return path, nil
	}
	name := WorkerName(a)
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found next to this program nor in PATH (build it with CGO_ENABLED=0 GOARCH=%s go build -o %s ./cmd/buildfarm-worker, or give --worker): %w", name, a.GOARCH(), name, err)
	}
	return p, nil
}

func copyFile(dst, src string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return nil
}

// status shows one rewritable status line on a terminal; with no writer it
// says nothing.
type status struct{ w io.Writer }

func (s status) say(format string, args ...any) {
	if s.w == nil {
		return
	}
	msg := fmt.Sprintf(format, args...)
	if len(msg) > 100 {
		msg = msg[:97] + "..."
	}
	fmt.Fprintf(s.w, "\r\033[K%s", msg)
}

func (s status) done() {
	if s.w != nil {
		fmt.Fprint(s.w, "\r\033[K")
	}
}
