package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/buildfarm/buildfarm/internal/cache"
	"github.com/buildfarm/buildfarm/internal/proc"
)

// KernelPackage is the Debian package whose kernel guests boot: the cloud
// flavour boots in about 2 s under TCG, the generic one in 5 (DESIGN.md).
const KernelPackage = "linux-image-cloud-amd64"

// kernelFor returns the kernel the options name: the given bzImage and
// modules directory, or the cached guest kernel, fetched when missing.
func kernelFor(ctx context.Context, opts Options, st status, log *slog.Logger) (cache.Kernel, error) {
	if opts.Kernel != "" || opts.Modules != "" {
		if opts.Kernel == "" || opts.Modules == "" {
			return cache.Kernel{}, errors.New("--kernel and --modules go together: the bzImage and its lib/modules/VERSION directory")
		}
		for _, p := range []string{opts.Kernel, opts.Modules} {
			if _, err := os.Stat(p); err != nil {
				return cache.Kernel{}, fmt.Errorf("kernel: %w", err)
			}
		}
		return cache.Kernel{Image: opts.Kernel, Modules: filepath.Clean(opts.Modules), Version: filepath.Base(filepath.Clean(opts.Modules))}, nil
	}
	k, err := cache.GuestKernel()
	if errors.Is(err, cache.ErrNoKernel) {
		log.Info("no guest kernel in the cache; fetching it", "package", KernelPackage, "cache", cache.Dir())
		return FetchKernel(ctx, st.w)
	}
	return k, err
}

// FetchKernel puts Debian's cloud kernel into the cache the way scripts/deps
// does: apt-get download of the package linux-image-cloud-amd64 depends on,
// dpkg -x, and depmod for the modules.dep Debian does not ship. The new
// kernel directory replaces the old one by rename. progress, when not nil,
// gets status lines for a terminal.
func FetchKernel(ctx context.Context, progress io.Writer) (cache.Kernel, error) {
	st := status{w: progress}
	out, err := proc.Output(ctx, "apt-cache", "depends", KernelPackage)
	if err != nil {
		return cache.Kernel{}, fmt.Errorf("resolve %s: %w", KernelPackage, err)
	}
	var pkg string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") && len(f[1]) > 12 && f[1][12] >= '0' && f[1][12] <= '9' {
			pkg = f[1]
			break
		}
	}
	if pkg == "" {
		return cache.Kernel{}, fmt.Errorf("resolve %s: no linux-image-VERSION dependency in apt-cache's answer", KernelPackage)
	}
	dir := filepath.Join(cache.Dir(), "kernel")
	if err := os.MkdirAll(cache.Dir(), 0o755); err != nil {
		return cache.Kernel{}, fmt.Errorf("cache: %w", err)
	}
	tmp, err := os.MkdirTemp(cache.Dir(), "kernel.tmp-")
	if err != nil {
		return cache.Kernel{}, fmt.Errorf("cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil { // apt-get download runs as _apt
		return cache.Kernel{}, err
	}
	st.say("downloading %s", pkg)
	dl := proc.Command(ctx, "apt-get", "download", "-q", pkg)
	dl.Dir = tmp
	if err := proc.Wait(dl); err != nil {
		return cache.Kernel{}, fmt.Errorf("download %s: %w", pkg, err)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return cache.Kernel{}, fmt.Errorf("download %s: %d .deb files in %s", pkg, len(debs), tmp)
	}
	st.say("unpacking %s", filepath.Base(debs[0]))
	root := filepath.Join(tmp, "root")
	if err := proc.Run(ctx, nil, "dpkg", "-x", debs[0], root); err != nil {
		return cache.Kernel{}, fmt.Errorf("unpack %s: %w", pkg, err)
	}
	vers, err := os.ReadDir(filepath.Join(root, "lib", "modules"))
	if err != nil || len(vers) != 1 {
		return cache.Kernel{}, fmt.Errorf("unpack %s: want one lib/modules/VERSION: %v", pkg, err)
	}
	ver := vers[0].Name()
	kdir := filepath.Join(tmp, "kernel")
	if err := os.MkdirAll(filepath.Join(kdir, "lib", "modules"), 0o755); err != nil {
		return cache.Kernel{}, err
	}
	steps := []struct{ from, to string }{
		{filepath.Join(root, "boot", "vmlinuz-"+ver), filepath.Join(kdir, "vmlinuz")},
		{filepath.Join(root, "boot", "config-"+ver), filepath.Join(kdir, "config")},
		{filepath.Join(root, "lib", "modules", ver), filepath.Join(kdir, "lib", "modules", ver)},
	}
	for _, s := range steps {
		if err := os.Rename(s.from, s.to); err != nil {
			return cache.Kernel{}, fmt.Errorf("unpack %s: %w", pkg, err)
		}
	}
	if err := os.Symlink(filepath.Join("lib", "modules", ver), filepath.Join(kdir, "modules")); err != nil {
		return cache.Kernel{}, err
	}
	st.say("depmod %s", ver)
	if err := proc.Run(ctx, nil, "depmod", "-b", kdir, ver); err != nil {
		return cache.Kernel{}, fmt.Errorf("depmod %s: %w", ver, err)
	}
	for name, v := range map[string]string{"version": ver, "package": pkg} {
		if err := os.WriteFile(filepath.Join(kdir, name), []byte(v+"\n"), 0o644); err != nil {
			return cache.Kernel{}, err
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return cache.Kernel{}, fmt.Errorf("replace %s: %w", dir, err)
	}
	if err := os.Rename(kdir, dir); err != nil {
		return cache.Kernel{}, fmt.Errorf("replace %s: %w", dir, err)
	}
	return cache.GuestKernel()
}
