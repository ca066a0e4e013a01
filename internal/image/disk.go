package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/cache"
	"github.com/buildfarm/buildfarm/internal/proc"
	bfworker "github.com/buildfarm/buildfarm/internal/worker"
)

// The Debian the debian preset installs.
const (
	debianSuite   = "bookworm"
	debianVariant = "minbase"
	debianInclude = "build-essential"
	debianMirror  = "http://deb.debian.org/debian"
)

// mkfs makes file an ext4 file system of size bytes (sparse), holding the
// tree src when src is not empty, without mounting anything. The UUID, hash
// seed and times are fixed, so an empty disk is the same bytes every time.
func mkfs(ctx context.Context, file string, size int64, label, src string) error {
	f, err := os.Create(file)
	if err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("disk %s: %w", file, err)
	}
	h := sha256.Sum256([]byte("buildfarm disk " + label))
	uuid := fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
	if len(label) > 16 {
		label = label[:16]
	}
	args := []string{"-q", "-F", "-t", "ext4", "-L", label, "-U", uuid,
		"-E", "hash_seed=" + uuid + ",root_owner=0:0", "-m", "0"}
	if src != "" {
		args = append(args, "-d", src)
	}
	cmd := proc.Command(ctx, "mkfs.ext4", append(args, file)...)
	cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME=1")
	if err := proc.Wait(cmd); err != nil {
		return fmt.Errorf("disk %s: %w", file, err)
	}
	return nil
}

// debianDisk makes the debian preset's disk: the cached debootstrap rootfs
// with the worker (and root's authorized key) added.
func debianDisk(ctx context.Context, disk string, size int64, name string, opts Options, worker string, st status, log *slog.Logger) error {
	if os.Geteuid() != 0 {
		return errors.New("the debian preset needs root: debootstrap, and unpacking the rootfs with its owners")
	}
	tarball, err := debootstrapTarball(ctx, opts.Mirror, opts.Arch, st, log)
	if err != nil {
		return err
	}
	rootfs := filepath.Join(filepath.Dir(disk), "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	defer os.RemoveAll(rootfs)
	st.say("unpacking the Debian rootfs")
	if err := proc.Run(ctx, nil, "tar", "-C", rootfs, "--numeric-owner", "-xpf", tarball); err != nil {
		return fmt.Errorf("unpack %s: %w", tarball, err)
	}
	dst := filepath.Join(rootfs, filepath.FromSlash(DiskWorkerPath))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := copyFile(dst, worker, 0o755); err != nil {
		return err
	}
	for _, d := range []string{"build", "root/.ssh"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o700); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(rootfs, "build"), 0o755); err != nil {
		return err
	}
	if opts.SSHKey != "" {
		if err := copyFile(filepath.Join(rootfs, "root/.ssh/authorized_keys"), opts.SSHKey, 0o600); err != nil {
			return fmt.Errorf("--ssh-key: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(rootfs, "etc/hostname"), []byte(name+"\n"), 0o644); err != nil {
		return err
	}
	for _, f := range []struct{ name, line string }{{"etc/passwd", stepUserPasswd}, {"etc/group", stepUserGroup}} {
		if err := appendLine(filepath.Join(rootfs, f.name), f.line); err != nil {
			return fmt.Errorf("the steps' user: %w", err)
		}
	}
	st.say("making the %d MiB ext4 root disk", size>>20)
	return mkfs(ctx, disk, size, name, rootfs)
}

// debootstrapTarball returns the cached tarball of a debootstrap'd Debian
// with build-essential for a's guests, making it first when missing (about
// a minute and 600 MB for the host's architecture). Concurrent builds may
// both make it; the last rename wins and both tarballs are whole.
//
// For another architecture than the host's, debootstrap's second stage
// runs the guest's programs (dpkg, maintainer scripts) through
// qemu-user-static's binfmt handler: measured here for arm64, 240 s
// against 39 s for amd64 (bench/README.md "aarch64 guests").
func debootstrapTarball(ctx context.Context, mirror string, a arch.Arch, st status, log *slog.Logger) (string, error) {
	if mirror == "" {
		mirror = debianMirror
	}
	dir := filepath.Join(cache.Dir(), "rootfs")
	name := fmt.Sprintf("%s-%s-%s", debianSuite, debianVariant, debianInclude)
	if a != arch.X8664 && a != "" {
		name += "-" + a.Debian()
	}
	tarball := filepath.Join(dir, name+".tar")
	if _, err := os.Stat(tarball); err == nil {
		log.Debug("debootstrap cached", "tarball", tarball)
		return tarball, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("cache: %w", err)
	}
	// One debootstrap at a time: a second builder (another test package, a
	// second agent) waits for the first and then uses its tarball.
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("cache: %w", err)
	}
	defer lock.Close()
	if err := flock(ctx, lock); err != nil {
		return "", fmt.Errorf("cache lock %s: %w", lock.Name(), err)
	}
	if _, err := os.Stat(tarball); err == nil {
		return tarball, nil
	}
	tmp, err := os.MkdirTemp(dir, "debootstrap.tmp-")
	if err != nil {
		return "", fmt.Errorf("cache: %w", err)
	}
	defer func() {
		// Never remove files through a mount left behind.
		if unmountUnder(tmp) == nil {
			os.RemoveAll(tmp)
		}
	}()
	root := filepath.Join(tmp, "root")
	args := []string{"--variant=" + debianVariant, "--include=" + debianInclude}
	if a != "" && a != arch.Host() {
		if err := checkBinfmt(a); err != nil {
			return "", err
		}
		args = append(args, "--arch="+a.Debian())
	}
	log.Info("debootstrap: installing Debian into the cache, once (a minute; four for another architecture)",
		"suite", debianSuite, "arch", a.Debian(), "include", debianInclude, "mirror", mirror, "tarball", tarball)
	start := time.Now()
	cmd := proc.Command(ctx, "debootstrap", append(args, debianSuite, root, mirror)...)
	// debootstrap says what it does in "I: ..." lines; show the latest.
	cmd.Stdout = &lineWriter{fn: func(line string) {
		if msg, ok := strings.CutPrefix(line, "I: "); ok {
			st.say("debootstrap %s (%ds): %s", debianSuite, int(time.Since(start).Seconds()), msg)
		}
	}}
	err = proc.Wait(cmd)
	// debootstrap mounts /proc and /sys in the target while it installs;
	// killed or failed, it may leave them there.
	if uerr := unmountUnder(root); uerr != nil && err == nil {
		err = uerr
	}
	if err != nil {
		return "", fmt.Errorf("debootstrap %s into %s: %w", debianSuite, root, err)
	}
	// Downloaded packages are of no use in the guest.
	debs, _ := filepath.Glob(filepath.Join(root, "var/cache/apt/archives/*.deb"))
	for _, d := range debs {
		os.Remove(d)
	}
	st.say("packing the rootfs into the cache")
	part := filepath.Join(tmp, "rootfs.tar")
	if err := proc.Run(ctx, nil, "tar", "-C", root, "--numeric-owner", "--sort=name", "-cf", part, "."); err != nil {
		return "", fmt.Errorf("pack debootstrap rootfs: %w", err)
	}
	if err := os.Rename(part, tarball); err != nil {
		return "", fmt.Errorf("cache: %w", err)
	}
	log.Info("debootstrap done", "took", time.Since(start).Round(time.Second), "tarball", tarball)
	return tarball, nil
}

// checkBinfmt makes sure this host runs a's programs through qemu-user's
// binfmt handler, which debootstrap's second stage needs.
func checkBinfmt(a arch.Arch) error {
	file := "/proc/sys/fs/binfmt_misc/qemu-" + string(a)
	b, err := os.ReadFile(file)
	if err == nil && strings.HasPrefix(string(b), "enabled") {
		return nil
	}
	why := "not registered"
	if err == nil {
		why = "disabled"
	}
	return fmt.Errorf("debootstrap for %s runs %s programs, but %s is %s: install qemu-user-static and binfmt-support, mount binfmt_misc on /proc/sys/fs/binfmt_misc and run update-binfmts --enable qemu-%s (scripts/deps does)", a.Debian(), a, file, why, a)
}

// lineWriter calls fn with each complete line written to it.
type lineWriter struct {
	fn  func(string)
	buf []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.fn(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
}

// unmountUnder detaches every mount at or below dir, deepest first.
func unmountUnder(dir string) error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("list mounts: %w", err)
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		// Field 5 is the mount point, with spaces and the like octal-escaped.
		p := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(f[4])
		if p == dir || strings.HasPrefix(p, dir+"/") {
			points = append(points, p)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	var errs []error
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// flock takes an exclusive lock on f, waiting for it until ctx ends. The
// lock goes with f's close.
func flock(ctx context.Context, f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// The steps' user (internal/worker's StepUser), with the build directory
// as its home, in /etc/passwd and /etc/group.
var (
	stepUserPasswd = fmt.Sprintf("%s:x:%d:%d:buildfarm steps:/build:/bin/sh\n", bfworker.StepUser, bfworker.StepUID, bfworker.StepGID)
	stepUserGroup  = fmt.Sprintf("%s:x:%d:\n", bfworker.StepUser, bfworker.StepGID)
)

// appendLine appends line to the file name, unless a line there already
// names its user or group.
func appendLine(name, line string) error {
	b, err := os.ReadFile(name)
	if err != nil {
		return err
	}
	user, _, _ := strings.Cut(line, ":")
	for l := range strings.Lines(string(b)) {
		if strings.HasPrefix(l, user+":") {
			return nil
		}
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	return os.WriteFile(name, append(b, line...), 0o644)
}
