package initramfs

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"
)

// ErrFormat means the input is not a cpio newc archive, or is damaged.
var ErrFormat = errors.New("not a cpio newc archive")

// Header describes one member read from an archive.
type Header struct {
	Path   string
	Mode   fs.FileMode
	Size   int64 // of a regular file's content or a symlink's target
	Target string
	Major  uint32 // a device node's numbers
	Minor  uint32
}

// Reader reads the members of one cpio newc archive, up to its trailer.
type Reader struct {
	r      *bufio.Reader
	remain int64 // of the current member's content
	pad    int64 // padding after it
	done   bool
}

// NewReader returns a reader of the archive in r.
func NewReader(r io.Reader) *Reader {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 1<<16)
	}
	return &Reader{r: br}
}

// Next advances to the next member and returns its header, or io.EOF after
// the trailer. The member's content is read with Read.
func (r *Reader) Next() (Header, error) {
	if r.done {
		return Header{}, io.EOF
	}
	if _, err := r.r.Discard(int(r.remain + r.pad)); err != nil {
		return Header{}, fmt.Errorf("%w: %v", ErrFormat, unexpected(err))
	}
	r.remain, r.pad = 0, 0
	var raw [headerSize]byte
	if _, err := io.ReadFull(r.r, raw[:]); err != nil {
		return Header{}, fmt.Errorf("%w: header: %v", ErrFormat, unexpected(err))
	}
	magic := string(raw[:6])
	if magic != newcMagic && magic != "070702" {
		return Header{}, fmt.Errorf("%w: magic %q", ErrFormat, raw[:6])
	}
	var f [13]uint32
	for i := range f {
		v, err := strconv.ParseUint(string(raw[6+8*i:14+8*i]), 16, 32)
		if err != nil {
			return Header{}, fmt.Errorf("%w: header field %d: %q", ErrFormat, i, raw[6+8*i:14+8*i])
		}
		f[i] = uint32(v)
	}
	mode, size, nameSize := f[1], int64(f[6]), int64(f[11])
	if nameSize == 0 || nameSize > 1<<16 {
		return Header{}, fmt.Errorf("%w: name size %d", ErrFormat, nameSize)
	}
	name := make([]byte, nameSize+pad4(headerSize+nameSize))
	if _, err := io.ReadFull(r.r, name); err != nil {
		return Header{}, fmt.Errorf("%w: name: %v", ErrFormat, unexpected(err))
	}
	if name[nameSize-1] != 0 {
		return Header{}, fmt.Errorf("%w: name not NUL-terminated", ErrFormat)
	}
	h := Header{Path: string(name[:nameSize-1]), Size: size, Major: f[9], Minor: f[10]}
	if h.Path == trailerName {
		r.done = true
		return Header{}, io.EOF
	}
	h.Mode = fs.FileMode(mode & 0o777)
	if mode&0o4000 != 0 {
		h.Mode |= fs.ModeSetuid
	}
	if mode&0o2000 != 0 {
		h.Mode |= fs.ModeSetgid
	}
	if mode&0o1000 != 0 {
		h.Mode |= fs.ModeSticky
	}
	switch mode & modeTypeMask {
	case modeRegular:
	case modeDir:
		h.Mode |= fs.ModeDir
	case modeSymlink:
		h.Mode |= fs.ModeSymlink
	case modeChar:
		h.Mode |= fs.ModeDevice | fs.ModeCharDevice
	case modeBlock:
		h.Mode |= fs.ModeDevice
	case modeFIFO:
		h.Mode |= fs.ModeNamedPipe
	case modeSocket:
		h.Mode |= fs.ModeSocket
	default:
		return Header{}, fmt.Errorf("%w: %s: mode %o", ErrFormat, h.Path, mode)
	}
	r.remain, r.pad = size, pad4(size)
	if h.Mode&fs.ModeSymlink != 0 {
		if size > 1<<16 {
			return Header{}, fmt.Errorf("%w: %s: symlink target of %d bytes", ErrFormat, h.Path, size)
		}
		t := make([]byte, size)
		if _, err := io.ReadFull(r, t); err != nil {
			return Header{}, fmt.Errorf("%w: %s: %v", ErrFormat, h.Path, unexpected(err))
		}
		h.Target = string(t)
	}
	return h, nil
}

// Read reads the current member's content.
func (r *Reader) Read(p []byte) (int, error) {
	if r.remain == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.remain {
		p = p[:r.remain]
	}
	n, err := r.r.Read(p)
	r.remain -= int64(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Walk calls fn for each member of an initramfs image as the kernel reads
// it: one or more cpio newc archives, each uncompressed or gzip-compressed,
// concatenated with zero padding between them. content reads the member's
// data. Other compressions are reported as errors naming them.
func Walk(r io.Reader, fn func(h Header, content io.Reader) error) error {
	br := bufio.NewReaderSize(r, 1<<16)
	for segment := 0; ; segment++ {
		// Skip the zero padding between segments.
		for {
			b, err := br.Peek(1)
			if err == io.EOF {
				if segment == 0 {
					return fmt.Errorf("%w: empty", ErrFormat)
				}
				return nil
			}
			if err != nil {
				return err
			}
			if b[0] != 0 {
				break
			}
			br.Discard(1)
		}
		magic, _ := br.Peek(6)
		var src io.Reader = br
		switch {
		case bytes.HasPrefix(magic, []byte("0707")):
		case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
			zr, err := gzip.NewReader(br)
			if err != nil {
				return fmt.Errorf("segment %d: %w", segment, err)
			}
			zr.Multistream(false)
			src = zr
		default:
			return fmt.Errorf("segment %d: %w: starts with % x (%s)", segment, ErrFormat, magic, compression(magic))
		}
		cr := NewReader(src)
		for {
			h, err := cr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("segment %d: %w", segment, err)
			}
			if err := fn(h, cr); err != nil {
				return err
			}
		}
		if src != io.Reader(br) {
			// Drain the rest of the gzip member (the padding after the
			// trailer) so that br stands at the next segment.
			if _, err := io.Copy(io.Discard, src); err != nil {
				return fmt.Errorf("segment %d: %w", segment, err)
			}
		}
	}
}

// compression names a compressed stream's format by its magic number.
func compression(magic []byte) string {
	switch {
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return "zstd, not supported"
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z'}):
		return "xz, not supported"
	case bytes.HasPrefix(magic, []byte{0x02, 0x21, 0x4c, 0x18}):
		return "lz4, not supported"
	case bytes.HasPrefix(magic, []byte("BZh")):
		return "bzip2, not supported"
	}
	return "unknown format"
}
