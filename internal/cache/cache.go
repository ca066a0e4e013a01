// Package cache locates buildfarm's cache directory, where downloads and
// derived artifacts that are costly to make are kept between runs: the guest
// kernel that scripts/deps unpacks from Debian's linux-image package, the
// debootstrap rootfs, the accelerator probe's verdict.
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

// GuestKernel returns the cached guest kernel, or an error wrapping
// ErrNoKernel that names the directory looked in.
func GuestKernel() (Kernel, error) {
	dir := filepath.Join(Dir(), "kernel")
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
