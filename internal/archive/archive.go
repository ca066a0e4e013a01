// Package archive packs a directory into a tar.gz and unpacks one, the way
// sources travel from the agent to the worker: packing is deterministic
// (sorted names, fixed owners, the tree's own modification times) so the
// same tree gives the same bytes, and unpacking keeps those times, reads
// gzip, bzip2, xz and zstd as well as plain tar, and never writes outside
// its directory.
package archive

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// zstdMaxWindow bounds the window a zstd archive may ask for: 128 MiB is
// what zstd --ultra -22 and --long use, the most any release tarball does.
const zstdMaxWindow = 128 << 20

// Unpack extracts a tar archive into dir. The archive may be plain or
// compressed with gzip, bzip2, xz or zstd, told apart by their magic bytes.
// No entry may reach outside dir: absolute names, "..", symbolic links that
// point out and hard links to names outside are refused (dir is opened as
// an os.Root). Regular files, directories, symbolic links and hard links are
// created; any other type is an error. Files and directories keep the
// modification time the archive gives them (symbolic links get the time of
// their creation), as build systems such as make and autotools need.
func Unpack(r io.Reader, dir string) error {
	tr, closeFn, err := newTarReader(r)
	if err != nil {
		return err
	}
	defer closeFn()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	// A directory's time is set once everything in it is made, since
	// making an entry in it changes it.
	type dirTime struct {
		name  string
		mtime time.Time
	}
	var dirs []dirTime
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		name, err := entryName(h.Name)
		if err != nil {
			return err
		}
		if name == "." {
			continue
		}
		if err := unpackEntry(root, tr, h, name); err != nil {
			return fmt.Errorf("entry %q: %w", h.Name, err)
		}
		if h.Typeflag == tar.TypeDir {
			dirs = append(dirs, dirTime{name, h.ModTime})
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := root.Chtimes(dirs[i].name, dirs[i].mtime, dirs[i].mtime); err != nil {
			return fmt.Errorf("entry %q: %w", dirs[i].name, err)
		}
	}
	return nil
}

// entryName cleans an entry's name and refuses one that leaves the
// archive's directory.
func entryName(raw string) (string, error) {
	name := path.Clean(strings.TrimPrefix(raw, "./"))
	if name != "." && !fs.ValidPath(name) {
		return "", fmt.Errorf("entry %q: name outside the archive's directory", raw)
	}
	return name, nil
}

func unpackEntry(root *os.Root, tr *tar.Reader, h *tar.Header, name string) error {
	if err := mkdirAll(root, path.Dir(name)); err != nil {
		return err
	}
	mode := fs.FileMode(h.Mode).Perm()
	if h.Typeflag != tar.TypeDir {
		// A later entry of the same name replaces the earlier one rather
		// than writing through it (into a hard link's other names).
		if err := root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	switch h.Typeflag {
	case tar.TypeDir:
		if err := root.Mkdir(name, mode|0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		return nil
	case tar.TypeReg:
		f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		return root.Chtimes(name, h.ModTime, h.ModTime)
	case tar.TypeLink:
		target, err := entryName(h.Linkname)
		if err != nil || target == "." {
			return fmt.Errorf("hard link to %q points outside the archive's directory", h.Linkname)
		}
		if err := root.Link(target, name); err != nil {
			return fmt.Errorf("hard link to %q: %w", h.Linkname, err)
		}
		return nil
	case tar.TypeSymlink:
		if path.IsAbs(h.Linkname) || !fs.ValidPath(path.Join(path.Dir(name), h.Linkname)) {
			return fmt.Errorf("link to %q points outside", h.Linkname)
		}
		return root.Symlink(h.Linkname, name)
	default:
		return fmt.Errorf("unsupported type %q", h.Typeflag)
	}
}

// newTarReader reads r's first bytes to tell which compression it has, and
// returns a tar reader over the decompressed stream and a function that
// releases the decompressor.
func newTarReader(r io.Reader) (*tar.Reader, func(), error) {
	br := bufio.NewReader(r)
	magic, _ := br.Peek(6)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("gzip: %w", err)
		}
		return tar.NewReader(zr), func() { zr.Close() }, nil
	case bytes.HasPrefix(magic, []byte("BZh")):
		return tar.NewReader(bzip2.NewReader(br)), func() {}, nil
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		xr, err := xz.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("xz: %w", err)
		}
		return tar.NewReader(xr), func() {}, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(zstdMaxWindow))
		if err != nil {
			return nil, nil, fmt.Errorf("zstd: %w", err)
		}
		return tar.NewReader(zr), zr.Close, nil
	}
	return tar.NewReader(br), func() {}, nil
}

func mkdirAll(root *os.Root, dir string) error {
	if dir == "." {
		return nil
	}
	if err := mkdirAll(root, path.Dir(dir)); err != nil {
		return err
	}
	if err := root.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return nil
}
