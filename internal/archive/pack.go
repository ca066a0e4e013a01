package archive

import (
	"archive/tar"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// Pack writes the tree under dir as a gzip-compressed tar to w: regular
// files, directories and symbolic links, sorted by name, each with its
// modification time (to the nanosecond, so that make and autotools see the
// tree as it is in place), no owners, and permissions reduced to 0755/0644,
// so that the same tree, times included, gives the same bytes. skip, if not nil, leaves out the entries (relative,
// slash-separated names) for which it returns true, and their contents.
func Pack(w io.Writer, dir string, skip func(name string) bool) error {
	zw := gzip.NewWriter(w)
	tw := tar.NewWriter(zw)
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		if skip != nil && skip(rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		names = append(names, rel)
		return nil
	})
	if err != nil {
		return fmt.Errorf("pack %s: %w", dir, err)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := addEntry(tw, dir, name); err != nil {
			return fmt.Errorf("pack %s: %s: %w", dir, name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

func addEntry(tw *tar.Writer, dir, name string) error {
	p := filepath.Join(dir, filepath.FromSlash(name))
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	h := &tar.Header{Name: name, ModTime: fi.ModTime(), Format: tar.FormatPAX}
	switch {
	case fi.Mode().IsRegular():
		h.Typeflag, h.Size, h.Mode = tar.TypeReg, fi.Size(), 0o644
		if fi.Mode()&0o111 != 0 {
			h.Mode = 0o755
		}
	case fi.IsDir():
		h.Typeflag, h.Name, h.Mode = tar.TypeDir, name+"/", 0o755
	case fi.Mode()&fs.ModeSymlink != 0:
		if h.Linkname, err = os.Readlink(p); err != nil {
			return err
		}
		h.Typeflag, h.Mode = tar.TypeSymlink, 0o777
	default:
		return fmt.Errorf("unsupported file type %v", fi.Mode().Type())
	}
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	if h.Typeflag != tar.TypeReg {
		return nil
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(tw, f)
	return err
}
