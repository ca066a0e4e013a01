// Package cache locates buildfarm's cache directory, where downloads and
// derived artifacts that are costly to make are kept between runs: the guest
// kernel that scripts/deps unpacks from Debian's linux-image package (in
// kernel/ for x86_64 guests, kernel-arm64/ for aarch64 ones), the static
// busybox of aarch64 guests (busybox-arm64/), the debootstrap rootfs, the
// accelerator probe's verdict.
//
// Environment:
//
//	BUILDFARM_CACHE  the cache directory (default $XDG_CACHE_HOME/buildfarm,
//	                 that is ~/.cache/buildfarm)
package cache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/buildfarm/buildfarm/internal/arch"
)

// Dir returns the cache directory (it may not exist yet).
func Dir() string {
	if d := os.Getenv("BUILDFARM_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "buildfarm")
	}
	return filepath.Join(os.TempDir(), "buildfarm-cache")
}

// ErrNoKernel means the cache holds no guest kernel; scripts/deps fetches it.
var ErrNoKernel = errors.New("no guest kernel in the cache (scripts/deps fetches it)")

// Kernel is a guest kernel unpacked from a Debian linux-image package.
type Kernel struct {
	Dir     string // the kernel directory of the cache
	Image   string // the bzImage, vmlinuz
	Config  string // the kernel's .config
	Modules string // lib/modules/VERSION, with modules.dep
	Version string // for example 6.1.0-56-cloud-amd64
}

// GuestKernel returns the cached guest kernel of x86_64 guests, or an error
// wrapping ErrNoKernel that names the directory looked in.
func GuestKernel() (Kernel, error) { return GuestKernelFor(arch.X8664) }

// KernelDir is the cache's directory of the guest kernel for a: kernel for
// x86_64, kernel-arm64 for aarch64 (by Debian's name).
func KernelDir(a arch.Arch) string {
	if a == arch.X8664 || a == "" {
		return filepath.Join(Dir(), "kernel")
	}
	return filepath.Join(Dir(), "kernel-"+a.Debian())
}

// GuestKernelFor returns the cached guest kernel of a's guests, or an error
// wrapping ErrNoKernel that names the directory looked in.
func GuestKernelFor(a arch.Arch) (Kernel, error) {
	dir := KernelDir(a)
	v, err := os.ReadFile(filepath.Join(dir, "version"))
	if err != nil {
		return Kernel{}, fmt.Errorf("%s: %w", dir, ErrNoKernel)
	}
	ver := strings.TrimSpace(string(v))
	k := Kernel{
		Dir:     dir,
		Image:   filepath.Join(dir, "vmlinuz"),
		Config:  filepath.Join(dir, "config"),
		Modules: filepath.Join(dir, "lib", "modules", ver),
		Version: ver,
	}
	for _, p := range []string{k.Image, filepath.Join(k.Modules, "modules.dep")} {
		if _, err := os.Stat(p); err != nil {
			return Kernel{}, fmt.Errorf("%s: %w", p, ErrNoKernel)
		}
	}
	return k, nil
}

// ErrNoBusybox means the cache holds no static busybox for a guest
// architecture; scripts/deps fetches it.
var ErrNoBusybox = errors.New("no static busybox for this architecture in the cache (scripts/deps fetches it)")

// BusyboxDir is the cache's directory of the static busybox of a's guests
// (busybox-arm64 for aarch64), which holds the binary as busybox. Guests
// of the host's architecture use the host's /bin/busybox instead.
func BusyboxDir(a arch.Arch) string { return filepath.Join(Dir(), "busybox-"+a.Debian()) }

// Busybox returns the static busybox for a's guests: /bin/busybox for the
// host's architecture, the cached one otherwise, or an error wrapping
// ErrNoBusybox.
func Busybox(a arch.Arch) (string, error) {
	if a == arch.Host() || a == "" {
		return "/bin/busybox", nil
	}
	p := filepath.Join(BusyboxDir(a), "busybox")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s: %w", p, ErrNoBusybox)
	}
	return p, nil
}
