package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/cache"
	"github.com/buildfarm/buildfarm/internal/initramfs"
	"github.com/buildfarm/buildfarm/internal/proc"
)

// HostOSPreset is the preset of the bootable host OS image: not a guest
// machine but what a build host boots (see BuildHostOS).
const HostOSPreset = "hostos"

// The files of the host OS image, after Build OS's.
const (
	HostOSKernel  = "buildos-image"
	HostOSInitrd  = "buildos-initrd"
	HostOSBuildID = "buildos-buildid"
)

//go:embed hostos-init.sh
var hostOSInit []byte

// HostOSModules are the modules the host OS loads (those the kernel has),
// in order: virtio and common NICs and disk controllers, filesystems,
// bridges, tun, veth (br1's check) and loop, and netfilter for br1's NAT (iptables-nft's
// tables, its MASQUERADE through nft_compat, and the legacy tables).
var HostOSModules = []string{
	"virtio_pci", "virtio_blk", "virtio_net", "virtio_scsi", "virtio_console",
	"e1000", "e1000e", "igb", "ixgbe", "r8169", "ahci", "nvme", "sd_mod",
	"ext4", "btrfs", "xfs", "bridge", "tun", "veth", "loop", "button", "evdev",
	"nf_tables", "nft_chain_nat", "nft_compat", "nft_masq", "xt_MASQUERADE", "iptable_nat",
}

// hostOSPrograms are the programs copied into the initrd with their
// shared libraries (those the host has; qemu-system-x86_64 and buildfarm
// must be there).
var hostOSPrograms = []string{
	"qemu-system-x86_64", "qemu-img", "ip", "btrfs", "mkfs.btrfs", "dropbear", "iptables",
}

// hostOSData are the directories of firmware and ROMs QEMU needs (x86's
// only are taken from /usr/share/qemu), and iptables' extensions (its
// MASQUERADE target for br1's NAT is one).
var hostOSData = []string{"/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu", "/usr/lib/x86_64-linux-gnu/xtables"}

var notX86Data = regexp.MustCompile(`^(openbios|slof|skiboot|s390|hppa|opensbi|palcode|QEMU,|npcm|u-boot|vof|petalogix|canyonlands|bamboo|keymaps|trace-events|edk2-(aarch64|arm|riscv|loongarch))`)

// HostOSOptions configure BuildHostOS.
type HostOSOptions struct {
	Out     string // the output directory
	Program string // the buildfarm binary to put in (default: this one)
	Kernel  string // a bzImage and its modules (default: the cache's guest kernel)
	Modules string
}

// BuildHostOS writes the host OS image into opts.Out: buildos-image (the
// kernel), buildos-initrd (a gzipped initramfs holding busybox, buildfarm,
// QEMU with its libraries and firmware, the modules, and an init that runs
// "buildfarm hostos monitor --host-os") and buildos-buildid (a hash of
// both, which a host polls through buildos.buildid_url). It returns the
// build id.
func BuildHostOS(ctx context.Context, opts HostOSOptions, log *slog.Logger) (string, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var k cache.Kernel
	var err error
	if opts.Kernel != "" {
		k = cache.Kernel{Image: opts.Kernel, Modules: filepath.Clean(opts.Modules), Version: filepath.Base(filepath.Clean(opts.Modules))}
	} else if k, err = cache.GuestKernel(); err != nil {
		return "", fmt.Errorf("hostos image: kernel: %w", err)
	}
	bb, err := cache.Busybox(arch.X8664)
	if err != nil {
		return "", fmt.Errorf("hostos image: %w", err)
	}
	prog := opts.Program
	if prog == "" {
		if prog, err = os.Executable(); err != nil {
			return "", err
		}
	}
	var a initramfs.Archive
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "tmp", "root", "home", "state", "build/machines", "build/tftp", "var/log", "lib/modules"} {
		a.AddDir(d, 0o755)
	}
	a.AddCharDevice("dev/console", 0o600, 5, 1)
	a.AddFileFrom("bin/busybox", 0o755, bb)
	a.AddFile("init", 0o755, hostOSInit)
	if !bytes.Contains(hostOSDHCPScript, []byte("kernel/hostname")) {
		return "", fmt.Errorf("hostos image: udhcpc.script has no \"\\t;;\\nesac\" to put the hostname before")
	}
	a.AddFile("etc/udhcpc.script", 0o755, hostOSDHCPScript)
	a.AddFile("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n"))
	a.AddFile("etc/group", 0o644, []byte("root:x:0:\n"))
	a.AddFile("etc/shadow", 0o600, []byte("root:*:1:0:99999:7:::\n"))
	a.AddFile("etc/nsswitch.conf", 0o644, []byte("hosts: files dns\n"))
	if _, err := os.Stat("/etc/ssl/certs/ca-certificates.crt"); err == nil {
		a.AddFileFrom("etc/ssl/certs/ca-certificates.crt", 0o644, "/etc/ssl/certs/ca-certificates.crt")
	}
	// buildfarm, and the programs with their libraries.
	libs := map[string]bool{}
	if err := addProgram(ctx, &a, prog, "bin/buildfarm", libs); err != nil {
		return "", err
	}
	for _, name := range hostOSPrograms {
		p, err := exec.LookPath(name)
		if err != nil {
			for _, d := range []string{"/usr/sbin", "/sbin"} {
				if _, serr := os.Stat(filepath.Join(d, name)); serr == nil {
					p, err = filepath.Join(d, name), nil
				}
			}
		}
		if err != nil {
			if name == "qemu-system-x86_64" {
				return "", fmt.Errorf("hostos image: %s: %w (install qemu-system-x86)", name, err)
			}
			log.Warn("hostos image: program not found, left out", "program", name)
			continue
		}
		if err := addProgram(ctx, &a, p, "usr/sbin/"+name, libs); err != nil {
			return "", err
		}
	}
	for _, d := range hostOSData {
		if err := addTree(&a, d, func(rel string) bool { return d != "/usr/share/qemu" || !notX86Data.MatchString(rel) }); err != nil {
			return "", err
		}
	}
	// The modules, and their load order for the init.
	mods, err := initramfs.LoadModules(k.Modules)
	if err != nil {
		return "", fmt.Errorf("hostos image: %w", err)
	}
	var order []string
	loaded := map[string]bool{}
	for _, name := range HostOSModules {
		cl, err := mods.Closure(name)
		if err != nil {
			log.Debug("hostos image: module left out", "module", name, "err", err)
			continue
		}
		for _, m := range cl {
			if loaded[m.Name] {
				continue
			}
			loaded[m.Name] = true
			dst := "lib/modules/" + filepath.Base(m.Path)
			if err := a.AddFileFrom(dst, 0o644, filepath.Join(k.Modules, m.Path)); err != nil {
				return "", err
			}
			order = append(order, "/"+dst)
		}
	}
	a.AddFile("etc/modules", 0o644, []byte(strings.Join(order, "\n")+"\n"))
	// Write the three files.
	if err := os.MkdirAll(opts.Out, 0o755); err != nil {
		return "", err
	}
	var cpio bytes.Buffer
	if _, err := a.WriteTo(&cpio); err != nil {
		return "", fmt.Errorf("hostos image: initrd: %w", err)
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	zw.Write(cpio.Bytes())
	if err := zw.Close(); err != nil {
		return "", err
	}
	kernel, err := os.ReadFile(k.Image)
	if err != nil {
		return "", fmt.Errorf("hostos image: kernel: %w", err)
	}
	h := sha256.New()
	h.Write(kernel)
	h.Write(cpio.Bytes())
	id := hex.EncodeToString(h.Sum(nil))[:16]
	for name, b := range map[string][]byte{HostOSKernel: kernel, HostOSInitrd: gz.Bytes(), HostOSBuildID: []byte(id + "\n")} {
		if err := os.WriteFile(filepath.Join(opts.Out, name), b, 0o644); err != nil {
			return "", fmt.Errorf("hostos image: %w", err)
		}
	}
	log.Info("hostos image built", "dir", opts.Out, "kernel", k.Version, "initrd", gz.Len(), "buildid", id, "modules", len(order))
	return id, nil
}

// addProgram copies program p to dst in a, with the shared libraries ldd
// lists (each once, at its path on the host).
func addProgram(ctx context.Context, a *initramfs.Archive, p, dst string, libs map[string]bool) error {
	if err := a.AddFileFrom(dst, 0o755, p); err != nil {
		return err
	}
	out, err := proc.Output(ctx, "ldd", p)
	if err != nil {
		if strings.Contains(err.Error(), "not a dynamic executable") {
			return nil
		}
		return fmt.Errorf("hostos image: ldd %s: %w", p, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		var lib string
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			lib = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			lib = f[0]
		default:
			continue
		}
		if libs[lib] {
			continue
		}
		libs[lib] = true
		real, err := filepath.EvalSymlinks(lib)
		if err != nil {
			return fmt.Errorf("hostos image: %s: %w", lib, err)
		}
		if err := a.AddFileFrom(strings.TrimPrefix(lib, "/"), 0o755, real); err != nil {
			return err
		}
	}
	// /lib64 is where x86_64 programs look for their loader.
	if _, ok := a.Lookup("lib64"); !ok {
		a.AddDir("lib64", 0o755)
	}
	return nil
}

// addTree copies the files beneath dir (following symlinks) into a at the
// same paths, those whose path relative to dir keep accepts.
func addTree(a *initramfs.Archive, dir string, keep func(rel string) bool) error {
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == dir {
				return nil // not installed: nothing to copy
			}
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if p != dir && !keep(rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.IsDir() {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("hostos image: %s: %w", dir, err)
	}
	sort.Strings(paths)
	for _, p := range paths {
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			continue // a dangling link
		}
		if st, err := os.Stat(real); err != nil || st.IsDir() {
			continue
		}
		if err := a.AddFileFrom(strings.TrimPrefix(p, "/"), 0o644, real); err != nil {
			return err
		}
	}
	return nil
}

// hostOSDHCPScript is udhcpc's event script on the host OS: the guests'
// (the lease's address, route and DNS), which also takes the lease's
// hostname when it names one.
var hostOSDHCPScript = bytes.Replace(udhcpcScript, []byte("\t;;\nesac"),
	[]byte("\t[ -z \"$hostname\" ] || echo \"$hostname\" >/proc/sys/kernel/hostname\n\t;;\nesac"), 1)
