package initramfs

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
)

// The file type bits of a newc header's mode field (see inode(7)).
const (
	modeTypeMask = 0o170000
	modeSocket   = 0o140000
	modeSymlink  = 0o120000
	modeRegular  = 0o100000
	modeBlock    = 0o060000
	modeDir      = 0o040000
	modeChar     = 0o020000
	modeFIFO     = 0o010000
)

const (
	newcMagic   = "070701"
	headerSize  = 110
	trailerName = "TRAILER!!!"
)

// Entry is one member of an archive.
type Entry struct {
	// Path is relative to the archive's root, without a leading slash:
	// "bin/busybox", "dev/console".
	Path string
	// Mode holds the permission bits and the type, as in fs.FileMode:
	// 0 type bits for a regular file, fs.ModeDir, fs.ModeSymlink,
	// fs.ModeDevice|fs.ModeCharDevice or fs.ModeDevice.
	Mode fs.FileMode
	// Data is the content of a regular file held in memory.
	Data []byte
	// Source, when set, is the host file a regular file's content is read
	// from when the archive is written.
	Source string
	// Target is where a symbolic link points.
	Target string
	// Major and Minor are a device node's numbers.
	Major, Minor uint32
}

// Archive is an initramfs being assembled. The zero value is empty and ready
// to use. Adding a path that exists replaces it.
type Archive struct {
	entries map[string]*Entry
}

// clean turns p into the archive's form of a path ("a/b", no leading slash),
// or returns an error for the root itself and for paths that climb out.
func clean(p string) (string, error) {
	c := path.Clean("/" + p)
	if c == "/" {
		return "", fmt.Errorf("path %q: names the root", p)
	}
	if strings.Contains(p, "\x00") {
		return "", fmt.Errorf("path %q: contains NUL", p)
	}
	return c[1:], nil
}

func (a *Archive) put(e *Entry) error {
	p, err := clean(e.Path)
	if err != nil {
		return err
	}
	e.Path = p
	if a.entries == nil {
		a.entries = make(map[string]*Entry)
	}
	a.entries[p] = e
	return nil
}

// permBits keeps the permission, set-id and sticky bits of m.
func permBits(m fs.FileMode) fs.FileMode {
	return m & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

// AddFile adds a regular file with content data.
func (a *Archive) AddFile(p string, perm fs.FileMode, data []byte) error {
	return a.put(&Entry{Path: p, Mode: permBits(perm), Data: data})
}

// AddFileFrom adds a regular file whose content is read from the host file
// src when the archive is written. A zero perm takes src's permissions.
func (a *Archive) AddFileFrom(p string, perm fs.FileMode, src string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("add %s: %w", p, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("add %s: %s is not a regular file", p, src)
	}
	if perm == 0 {
		perm = fi.Mode()
	}
	return a.put(&Entry{Path: p, Mode: permBits(perm), Source: src})
}

// AddDir adds a directory.
func (a *Archive) AddDir(p string, perm fs.FileMode) error {
	return a.put(&Entry{Path: p, Mode: fs.ModeDir | permBits(perm)})
}

// AddSymlink adds a symbolic link p pointing to target.
func (a *Archive) AddSymlink(p, target string) error {
	return a.put(&Entry{Path: p, Mode: fs.ModeSymlink | 0o777, Target: target})
}

// AddCharDevice adds a character device node, such as dev/console (5, 1).
func (a *Archive) AddCharDevice(p string, perm fs.FileMode, major, minor uint32) error {
	return a.put(&Entry{Path: p, Mode: fs.ModeDevice | fs.ModeCharDevice | permBits(perm), Major: major, Minor: minor})
}

// AddBlockDevice adds a block device node.
func (a *Archive) AddBlockDevice(p string, perm fs.FileMode, major, minor uint32) error {
	return a.put(&Entry{Path: p, Mode: fs.ModeDevice | permBits(perm), Major: major, Minor: minor})
}

// Remove removes p and, if it is a directory, everything under it. It
// reports whether anything was removed.
func (a *Archive) Remove(p string) bool {
	c, err := clean(p)
	if err != nil {
		return false
	}
	removed := false
	for k := range a.entries {
		if k == c || strings.HasPrefix(k, c+"/") {
			delete(a.entries, k)
			removed = true
		}
	}
	return removed
}

// Lookup returns the entry at p.
func (a *Archive) Lookup(p string) (Entry, bool) {
	c, err := clean(p)
	if err != nil {
		return Entry{}, false
	}
	e, ok := a.entries[c]
	if !ok {
		return Entry{}, false
	}
	return *e, true
}

// Entries returns the archive's members as they will be written: sorted by
// path, with the missing parent directories (mode 0755) added.
func (a *Archive) Entries() []Entry {
	all := make(map[string]Entry, len(a.entries))
	for k, e := range a.entries {
		all[k] = *e
		for d := path.Dir(k); d != "."; d = path.Dir(d) {
			if _, ok := a.entries[d]; !ok {
				all[d] = Entry{Path: d, Mode: fs.ModeDir | 0o755}
			}
		}
	}
	out := make([]Entry, 0, len(all))
	for _, e := range all {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// header is a newc header's fields, in their order on disk.
type header struct {
	ino, mode, uid, gid, nlink, mtime, size  uint32
	devMajor, devMinor, rdevMajor, rdevMinor uint32
	name                                     string
}

func pad4(n int64) int64 { return (4 - n%4) % 4 }

var zeros [4]byte

func writeHeader(w io.Writer, h header) error {
	_, err := fmt.Fprintf(w, "%s%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%s\x00",
		newcMagic, h.ino, h.mode, h.uid, h.gid, h.nlink, h.mtime, h.size,
		h.devMajor, h.devMinor, h.rdevMajor, h.rdevMinor, len(h.name)+1, 0, h.name)
	if err != nil {
		return err
	}
	_, err = w.Write(zeros[:pad4(int64(headerSize+len(h.name)+1))])
	return err
}

func cpioMode(m fs.FileMode) (uint32, error) {
	perm := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		perm |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		perm |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		perm |= 0o1000
	}
	switch {
	case m.IsRegular():
		return modeRegular | perm, nil
	case m.IsDir():
		return modeDir | perm, nil
	case m&fs.ModeSymlink != 0:
		return modeSymlink | perm, nil
	case m&fs.ModeCharDevice != 0:
		return modeChar | perm, nil
	case m&fs.ModeDevice != 0:
		return modeBlock | perm, nil
	case m&fs.ModeNamedPipe != 0:
		return modeFIFO | perm, nil
	}
	return 0, fmt.Errorf("unsupported file mode %v", m)
}

// WriteTo writes the archive in cpio newc format, ending with the trailer,
// uncompressed. It returns the number of bytes written.
func (a *Archive) WriteTo(w io.Writer) (int64, error) {
	bw := bufio.NewWriterSize(w, 1<<16)
	cw := &countWriter{w: bw}
	for i, e := range a.Entries() {
		if err := writeEntry(cw, uint32(i+1), e); err != nil {
			return cw.n, fmt.Errorf("initramfs %s: %w", e.Path, err)
		}
	}
	if err := writeHeader(cw, header{nlink: 1, name: trailerName}); err != nil {
		return cw.n, err
	}
	if err := bw.Flush(); err != nil {
		return cw.n, err
	}
	return cw.n, nil
}

func writeEntry(w io.Writer, ino uint32, e Entry) error {
	mode, err := cpioMode(e.Mode)
	if err != nil {
		return err
	}
	h := header{ino: ino, mode: mode, nlink: 1, name: e.Path}
	if e.Mode.IsDir() {
		h.nlink = 2
	}
	var body io.Reader
	var size int64
	switch mode & modeTypeMask {
	case modeRegular:
		if e.Source != "" {
			f, err := os.Open(e.Source)
			if err != nil {
				return err
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			body, size = f, fi.Size()
		} else {
			body, size = strings.NewReader(string(e.Data)), int64(len(e.Data))
		}
	case modeSymlink:
		body, size = strings.NewReader(e.Target), int64(len(e.Target))
	case modeChar, modeBlock:
		h.rdevMajor, h.rdevMinor = e.Major, e.Minor
	}
	if size > 1<<32-1 {
		return fmt.Errorf("%d bytes: too big for cpio newc", size)
	}
	h.size = uint32(size)
	if err := writeHeader(w, h); err != nil {
		return err
	}
	if body == nil {
		return nil
	}
	n, err := io.Copy(w, io.LimitReader(body, size))
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("%s changed while being read: %d bytes, want %d", e.Source, n, size)
	}
	_, err = w.Write(zeros[:pad4(size)])
	return err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
