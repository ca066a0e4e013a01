package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/image"
)

func init() {
	register(func(e *env) *cobra.Command {
		cmd := &cobra.Command{
			Use:   "image",
			Short: "Build and inspect guest machine images",
		}
		cmd.AddCommand(imageBuildCmd(e), imageInspectCmd(e))
		return cmd
	})
}

func imageBuildCmd(e *env) *cobra.Command {
	var (
		opts     image.Options
		adds     []string
		diskSize string
		archName string
	)
	cmd := &cobra.Command{
		Use:   "build --preset NAME --out DIR",
		Short: "Make a machine directory: kernel, initrd, cmdline, disk.img, manifest",
		Long: `Make a machine directory that QEMU boots directly:

  kernel    Debian's cloud kernel (from the cache, fetched when missing)
  initrd    an initramfs: static busybox, buildfarm-worker, the virtio modules
            and an init that mounts the disk, sets up the network and runs
            the worker, then powers the guest off
  cmdline   the kernel command line
  disk.img  raw ext4: an empty build disk (busybox), or a Debian rootfs with
            build-essential that the init chroots into (debian)
  manifest  the build2 machine manifest

Presets: busybox, debian, and hostos (not a machine: the bootable host
OS, see "buildfarm image build --preset hostos --help" below and
"buildfarm hostos"). The debian preset runs debootstrap once and keeps
the result in the cache directory.

--arch aarch64 makes the same machine for aarch64 guests (QEMU's virt
machine; under TCG on an x86_64 host): Debian's cloud-arm64 kernel, the
arm64 busybox-static (both fetched into the cache by scripts/deps), and
buildfarm-worker-arm64 (CGO_ENABLED=0 GOARCH=arm64 go build -o
buildfarm-worker-arm64 ./cmd/buildfarm-worker) found next to this program
or in PATH. The debian preset's debootstrap then runs arm64 programs
through qemu-user-static's binfmt handler (about four minutes, once).

--add, --remove and --init-override act on the initramfs. Before it starts
the worker, the init runs the executables in /etc/buildfarm/rc.d (add them
with --add), in name order, in /build, with BUILDFARM_ROOT set to the
worker's root (/, or /mnt/root for the debian preset, where a hook may
chroot). The console shows the init's progress as "init: ..." lines.

The modules go into the initramfs without Debian's signatures when the
kernel's configuration lets it load unsigned modules (no
CONFIG_MODULE_SIG_FORCE): checking them took the guest about 0.07 s of
its boot under TCG and buys nothing, since the kernel trusts the unsigned
initramfs they come in. The kernel then says it is tainted (E).
--keep-module-signatures keeps them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.Preset == image.HostOSPreset { // hostos_image.go
				return imageBuildHostOS(cmd.Context(), e, opts)
			}
			for _, s := range adds {
				a, err := image.ParseAdd(s)
				if err != nil {
					return err
				}
				opts.Add = append(opts.Add, a)
			}
			if diskSize != "" {
				n, err := parseSize(diskSize)
				if err != nil {
					return fmt.Errorf("--disk-size: %w", err)
				}
				opts.DiskSize = n
			}
			a, err := arch.Parse(archName)
			if err != nil {
				return fmt.Errorf("--arch: %w", err)
			}
			opts.Arch = a
			if isTerminal(e.stderr) {
				opts.Progress = e.stderr
			}
			opts.Log = e.log
			m, err := image.Build(cmd.Context(), opts)
			if err != nil {
				return err
			}
			unsigned := ""
			if m.UnsignedModules {
				unsigned = ", signatures stripped"
			}
			_, err = fmt.Fprintf(e.stdout, "%s: machine %s (kernel %s, initrd %s, disk %s, %d modules%s: %s)\nid: %s\nmac: %s\narch: %s\n",
				m.Dir, m.Name, m.KernelVersion, image.HumanSize(m.InitrdSize), image.HumanSize(m.DiskSize),
				len(m.Modules), unsigned, strings.Join(m.Modules, " "), m.ID, m.MAC, m.Arch)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Preset, "preset", "busybox", "what to build: busybox or debian")
	f.StringVar(&opts.Out, "out", "", "the machine `DIR` to make (must not exist, or be empty)")
	f.StringVar(&opts.Name, "name", "", "the machine's name (default: the preset's)")
	f.StringVar(&archName, "arch", "x86_64", "the guest's architecture: x86_64 or aarch64")
	f.StringVar(&opts.Kernel, "kernel", "", "a kernel `FILE` (bzImage, arm64 Image) to boot instead of the cached guest kernel (with --modules)")
	f.StringVar(&opts.Modules, "modules", "", "the kernel's lib/modules/VERSION `DIR` (with --kernel)")
	f.StringVar(&opts.Worker, "worker", "", "the static buildfarm-worker `FILE` for the guest's architecture (default: buildfarm-worker, or buildfarm-worker-arm64 for aarch64 on x86_64, next to this program, then in PATH)")
	f.StringVar(&opts.Busybox, "busybox", "", "a static busybox `FILE` for the guest's architecture (default /bin/busybox, or the cache's for another architecture)")
	f.StringArrayVar(&adds, "add", nil, "add the host file SRC to the initramfs as DST (`SRC:DST`, repeatable)")
	f.StringArrayVar(&opts.Remove, "remove", nil, "leave `PATH` out of the initramfs (repeatable)")
	f.StringVar(&opts.SSHKey, "ssh-key", "", "a public key `FILE` for root's authorized_keys")
	f.StringVar(&opts.InitOverride, "init-override", "", "a `FILE` to use as /init instead of buildfarm's")
	f.BoolVar(&opts.KeepModuleSignatures, "keep-module-signatures", false, "keep the kernel modules' signatures (see above)")
	f.StringVar(&diskSize, "disk-size", "", "size of disk.img, such as 512M or 4G (default 256M for busybox, 2G for debian)")
	f.StringVar(&opts.Mirror, "mirror", "", "Debian mirror `URL` for the debian preset (default http://deb.debian.org/debian)")
	cmd.MarkFlagRequired("out")
	return cmd
}

func imageInspectCmd(e *env) *cobra.Command {
	var top int
	cmd := &cobra.Command{
		Use:   "inspect FILE",
		Short: "Show what takes the space in an initramfs, biggest first",
		Long: `Show what takes the space in an initramfs (cpio newc, uncompressed or
gzip'd, possibly several concatenated): each member's size and share of the
total, biggest first, then the total. A machine directory's initrd, or the
directory itself, may be given.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := args[0]
			if fi, err := os.Stat(file); err == nil && fi.IsDir() {
				file = filepath.Join(file, image.InitrdFile)
			}
			r, err := image.Inspect(file)
			if err != nil {
				return err
			}
			return r.Print(e.stdout, top)
		},
	}
	cmd.Flags().IntVar(&top, "top", 0, "show only the `N` biggest members (0: all)")
	return cmd
}

// parseSize parses a byte count with an optional binary suffix: 512M, 4G.
func parseSize(s string) (int64, error) {
	units := map[byte]int64{'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}
	mult := int64(1)
	t := strings.TrimSuffix(strings.ToUpper(s), "IB")
	t = strings.TrimSuffix(t, "B")
	if t != "" {
		if u, ok := units[t[len(t)-1]]; ok {
			mult, t = u, t[:len(t)-1]
		}
	}
	var n int64
	if _, err := fmt.Sscanf(t, "%d", &n); err != nil || n <= 0 || fmt.Sprint(n) != t {
		return 0, fmt.Errorf("%q: want a size such as 512M or 4G", s)
	}
	return n * mult, nil
}

// isTerminal reports whether w is a terminal, where progress lines belong.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
