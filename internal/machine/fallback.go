package machine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/buildfarm/buildfarm/internal/proc"
)

// fallback keeps machine directories as plain directories. A snapshot
// reflinks every file where the file system can (FICLONE); where it cannot,
// the disk becomes a qcow2 overlay (disk.qcow2) over a hard link of the
// source's disk (base-N.img or base-N.qcow2, with the layers below it), and
// the small files are copied. Layers below the top are never written, so a
// hard link keeps them alive after their directory is deleted.
type fallback struct{}

func (fallback) Name() string { return BackendFallback }

func (fallback) Create(ctx context.Context, dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	return nil
}

func (fallback) Snapshot(ctx context.Context, src, dst string) (string, error) {
	if err := os.Mkdir(dst, 0o755); err != nil {
		return "", fmt.Errorf("snapshot %s: %w", src, err)
	}
	method, err := copyTree(ctx, src, dst, true)
	if err != nil {
		removeAll(dst)
	}
	return method, err
}

func (fallback) SetReadOnly(ctx context.Context, dir string) error {
	// Files first, then directories bottom-up, so the walk can go on.
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
			return nil
		}
		return os.Chmod(p, fi.Mode().Perm()&^0o222)
	})
	for i := len(dirs) - 1; err == nil && i >= 0; i-- {
		var fi fs.FileInfo
		if fi, err = os.Stat(dirs[i]); err == nil {
			err = os.Chmod(dirs[i], fi.Mode().Perm()&^0o222)
		}
	}
	if err != nil {
		return fmt.Errorf("make %s read-only: %w", dir, err)
	}
	return nil
}

func (fallback) Delete(ctx context.Context, dir string) error { return removeAll(dir) }

// removeAll deletes dir after making its directories writable again.
func removeAll(dir string) error {
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.Chmod(p, 0o755)
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", dir, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("delete %s: %w", dir, err)
	}
	return nil
}

var baseLayerRE = regexp.MustCompile(`^base-([0-9]+)\.(img|qcow2)$`)

// copyTree fills the empty directory dst with a writable copy of src, with
// reflinks where the file system supports them. With overlay, a disk that
// cannot be reflinked becomes a qcow2 overlay over a hard link of it; else
// it is copied. It returns how the disk (or, without one, the files) were
// copied: "reflink", "qcow2 overlay" or "copy".
func copyTree(ctx context.Context, src, dst string, overlay bool) (string, error) {
	var diskTop string // the disk of src to put an overlay on, if any
	var layers int     // base layers in src
	method, diskMethod := "", ""
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if rel == "." {
			return nil
		}
		target := filepath.Join(dst, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.Mkdir(target, fi.Mode().Perm()|0o700)
		case d.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		case !d.Type().IsRegular():
			return fmt.Errorf("%s: not a regular file, directory or symbolic link", p)
		}
		isDisk := rel == RawDisk || rel == OverlayDisk
		isLayer := baseLayerRE.MatchString(rel)
		if isLayer {
			layers++
		}
		err = reflink(p, target, fi.Mode().Perm()|0o200)
		switch {
		case err == nil:
			if isDisk {
				diskMethod = "reflink"
			} else if method == "" {
				method = "reflink"
			}
			return nil
		case !errors.Is(err, errNoReflink):
			return err
		case isLayer && overlay:
			return os.Link(p, target)
		case isDisk && overlay:
			diskTop = rel
			return nil
		}
		if isDisk {
			diskMethod = "copy"
		}
		method = "copy"
		return copyFile(p, target, fi.Mode().Perm()|0o200)
	})
	if err == nil && diskTop != "" {
		diskMethod = "qcow2 overlay"
		err = addOverlay(ctx, src, dst, diskTop, layers)
	}
	if err != nil {
		return "", fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if diskMethod != "" {
		return diskMethod, nil
	}
	if method == "" {
		method = "copy"
	}
	return method, nil
}

// addOverlay hard-links the disk top of src into dst as the next base
// layer, frozen, and creates dst/disk.qcow2 over it. The layers below were
// linked by the walk; backing file names are relative, so they resolve
// within each directory.
func addOverlay(ctx context.Context, src, dst, top string, layers int) error {
	format, ext := "raw", ".img"
	if top == OverlayDisk {
		format, ext = "qcow2", ".qcow2"
	}
	base := fmt.Sprintf("base-%d%s", layers, ext)
	if err := os.Link(filepath.Join(src, top), filepath.Join(dst, base)); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(dst, base), 0o444); err != nil {
		return err
	}
	return proc.Run(ctx, nil, "qemu-img", "create", "-q", "-f", "qcow2",
		"-b", base, "-F", format, filepath.Join(dst, OverlayDisk))
}

var errNoReflink = errors.New("reflinks not supported")

// reflink makes dst (new) share src's extents with FICLONE; errNoReflink
// says the file systems cannot.
func reflink(src, dst string, perm fs.FileMode) error {
	err := withFiles(src, dst, perm, func(out, in *os.File) error {
		return unix.IoctlFileClone(int(out.Fd()), int(in.Fd()))
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EXDEV),
		errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOTTY):
		return errNoReflink
	}
	return fmt.Errorf("reflink %s to %s: %w", src, dst, err)
}

// copyFile copies src to the new file dst (copy_file_range where the
// kernel offers it).
func copyFile(src, dst string, perm fs.FileMode) error {
	err := withFiles(src, dst, perm, func(out, in *os.File) error {
		_, err := io.Copy(out, in)
		return err
	})
	if err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return nil
}

// withFiles opens src and creates dst (which must not exist) with perm,
// and runs fill on them; dst is removed when it fails.
func withFiles(src, dst string, perm fs.FileMode, fill func(out, in *os.File) error) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	err = fill(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
	}
	return err
}

// Disk returns the disk image of the machine directory dir and its QEMU
// format ("raw" or "qcow2"); ErrNotFound when it has none (a machine that
// boots from kernel and initrd alone).
func Disk(dir string) (path, format string, err error) {
	for _, d := range []struct{ name, format string }{{OverlayDisk, "qcow2"}, {RawDisk, "raw"}} {
		p := filepath.Join(dir, d.name)
		if _, err := os.Stat(p); err == nil {
			return p, d.format, nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", "", err
		}
	}
	return "", "", fmt.Errorf("%s: no %s or %s: %w", dir, RawDisk, OverlayDisk, ErrNotFound)
}

// isHidden reports whether a directory entry is our bookkeeping.
func isHidden(name string) bool { return strings.HasPrefix(name, ".") }
