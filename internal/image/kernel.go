package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/cache"
	"github.com/buildfarm/buildfarm/internal/proc"
)

// KernelPackage is the Debian package whose kernel x86_64 guests boot: the
// cloud flavour boots in about 2 s under TCG, the generic one in 5
// (DESIGN.md).
const KernelPackage = "linux-image-cloud-amd64"

// KernelPackageFor is the Debian package of a's guest kernel:
// linux-image-cloud-amd64, or linux-image-cloud-arm64:arm64 (on a host of
// another architecture, after dpkg --add-architecture arm64 and apt-get
// update, which scripts/deps does).
func KernelPackageFor(a arch.Arch) string {
	pkg := "linux-image-cloud-" + a.Debian()
	if a != arch.Host() {
		pkg += ":" + a.Debian()
	}
	return pkg
}

// kernelFor returns the kernel the options name: the given bzImage and
// modules directory, or the cached guest kernel, fetched when missing.
func kernelFor(ctx context.Context, opts Options, st status, log *slog.Logger) (cache.Kernel, error) {
	guest := opts.Arch
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
	k, err := cache.GuestKernelFor(guest)
	if errors.Is(err, cache.ErrNoKernel) {
		log.Info("no guest kernel in the cache; fetching it", "package", KernelPackageFor(guest), "cache", cache.Dir())
		return FetchKernelFor(ctx, guest, st.w)
	}
	return k, err
}

// FetchKernel puts Debian's cloud kernel for x86_64 guests into the cache
// the way scripts/deps does (see FetchKernelFor).
func FetchKernel(ctx context.Context, progress io.Writer) (cache.Kernel, error) {
	return FetchKernelFor(ctx, arch.X8664, progress)
}

// FetchKernelFor puts Debian's cloud kernel for a's guests into the cache
// (cache.KernelDir) the way scripts/deps does: apt-get download of the
// package KernelPackageFor(a) depends on, dpkg -x (never installed on the
// host), and depmod for the modules.dep Debian does not ship. A gzip'd
// arm64 Image is unpacked, for QEMU's -kernel on virt. The new kernel
// directory replaces the old one by rename. progress, when not nil, gets
// status lines for a terminal.
func FetchKernelFor(ctx context.Context, a arch.Arch, progress io.Writer) (cache.Kernel, error) {
	st := status{w: progress}
	meta := KernelPackageFor(a)
	if a != arch.Host() {
		if err := checkForeignArch(ctx, a); err != nil {
			return cache.Kernel{}, err
		}
	}
	out, err := proc.Output(ctx, "apt-cache", "depends", meta)
	if err != nil {
		return cache.Kernel{}, fmt.Errorf("resolve %s: %w", meta, err)
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
		return cache.Kernel{}, fmt.Errorf("resolve %s: no linux-image-VERSION dependency in apt-cache's answer", meta)
	}
	dir := cache.KernelDir(a)
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
	if err := gunzipInPlace(filepath.Join(kdir, "vmlinuz")); err != nil {
		return cache.Kernel{}, fmt.Errorf("unpack %s: %w", pkg, err)
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
	return cache.GuestKernelFor(a)
}

// checkForeignArch makes sure dpkg knows a as a foreign architecture, so
// that apt can download its packages.
func checkForeignArch(ctx context.Context, a arch.Arch) error {
	out, err := proc.Output(ctx, "dpkg", "--print-foreign-architectures")
	if err != nil {
		return fmt.Errorf("dpkg architectures: %w", err)
	}
	for _, f := range strings.Fields(string(out)) {
		if f == a.Debian() {
			return nil
		}
	}
	return fmt.Errorf("dpkg does not know architecture %s, so apt cannot download %s's kernel: run scripts/deps (dpkg --add-architecture %s && apt-get update)", a.Debian(), a, a.Debian())
}

// gunzipInPlace replaces a gzip'd file by its contents; other files are
// left alone. (Debian's arm64 vmlinuz has been an Image compressed so or
// not, by release; QEMU's -kernel on virt wants the Image.)
func gunzipInPlace(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	magic := make([]byte, 2)
	if _, err := io.ReadFull(f, magic); err != nil || !bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		return nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	zr, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	tmp := file + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, zr)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, file)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("gunzip %s: %w", file, err)
	}
	return nil
}
