package manifest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"iter"
	"strings"
	"unicode/utf8"
)

// Stream is a parsed stream of manifests held flat: its text, once, and
// where each manifest starts, as the distance from the previous one's start
// in a varint (1 byte for a manifest shorter than 128 bytes, at most half
// its bytes), with the offset of every 64th manifest and a table of line
// numbers (4 bytes for every 256 bytes of text) to tell the position of
// any. Pairs cost nothing until they are asked for: each access reads the
// manifest's pairs again from the text, names and most values as
// substrings of it, and values that escapes, line continuations or "\r\n"
// made differ from the text as fresh copies. The shortest manifest takes 2
// bytes of text (":\n"), so a Stream takes at most about 1.6 times its
// text, the text included.
//
// Manifest and Manifests build the []Pair form (48 bytes a pair, 24 a
// manifest, values shared with the text) for the typed parsers; Pairs and
// Get read a manifest without building it.
type Stream struct {
	text   string
	file   string
	n      int      // manifests
	deltas []byte   // uvarints: each manifest's start minus the previous one's
	index  []uint32 // per indexEvery manifests: the first one's start, and where the next delta is
	lines  []uint32 // lines[j] is the line of byte j*lineBlock
	npairs int      // pairs in the stream, version pairs included
}

const (
	lineBlock  = 256
	indexEvery = 64
)

// add returns the function that notes the start of the stream's next
// manifest, at off; prev is the previous one's.
func (s *Stream) add(prev *int) func(off int) {
	return func(off int) {
		s.deltas = binary.AppendUvarint(s.deltas, uint64(off-*prev))
		*prev = off
		if s.n%indexEvery == 0 {
			s.index = append(s.index, uint32(off), uint32(len(s.deltas)))
		}
		s.n++
	}
}

// start returns the offset of manifest i's version pair.
func (s *Stream) start(i int) int {
	k := i / indexEvery
	off, pos := int(s.index[2*k]), int(s.index[2*k+1])
	for range i - k*indexEvery {
		d, n := binary.Uvarint(s.deltas[pos:])
		off += int(d)
		pos += n
	}
	return off
}

// uvarintLen returns the length of v as a uvarint.
func uvarintLen(v int) int {
	n := 1
	for ; v >= 0x80; v >>= 7 {
		n++
	}
	return n
}

// Len returns the number of manifests in the stream (0 for a nil Stream).
func (s *Stream) Len() int {
	if s == nil {
		return 0
	}
	return s.n
}

// PairCount returns the number of pairs in the stream, version pairs
// included.
func (s *Stream) PairCount() int {
	if s == nil {
		return 0
	}
	return s.npairs
}

// Pairs returns the pairs of manifest i (0 ≤ i < Len()), its version pair
// first, with their positions, read from the text as they are iterated.
func (s *Stream) Pairs(i int) iter.Seq[Pair] {
	return func(yield func(Pair) bool) {
		if i < 0 || i >= s.n {
			panic(fmt.Sprintf("manifest: manifest %d of a stream of %d", i, s.n))
		}
		off := s.start(i)
		line, col := s.position(off)
		p := parser{s: scanner{data: s.text, file: s.file, off: off, line: line, col: col}, version: "1"}
		for {
			nv, end, err := p.next()
			if err != nil {
				// The text was checked whole when the Stream was made.
				panic(fmt.Sprintf("manifest: reading manifest %d of %s again: %v", i, s.file, err))
			}
			if end || !yield(nv) {
				return
			}
		}
	}
}

// Get returns the value of the first pair of manifest i named name, and
// whether there is one.
func (s *Stream) Get(i int, name string) (string, bool) {
	for p := range s.Pairs(i) {
		if p.Name == name {
			return p.Value, true
		}
	}
	return "", false
}

// Manifest returns manifest i (0 ≤ i < Len()) as a Manifest.
func (s *Stream) Manifest(i int) Manifest {
	var m Manifest
	for p := range s.Pairs(i) {
		m = append(m, p)
	}
	return m
}

// Manifests returns every manifest of the stream as a Manifest (nil for an
// empty or nil Stream), the pairs of all in one array: 48 bytes a pair and
// 24 a manifest beside the text. It reads the whole text again, a third
// pass after Parse's two.
func (s *Stream) Manifests() []Manifest {
	if s.Len() == 0 {
		return nil
	}
	ms := make([]Manifest, 0, s.n)
	pairs := make([]Pair, 0, s.npairs)
	d := NewDecoder(s.text, s.file)
	start := 0
	for {
		nv, first, err := d.Next()
		if err != nil { // io.EOF: the text was checked.
			break
		}
		if first && len(pairs) > 0 {
			ms = append(ms, pairs[start:len(pairs):len(pairs)])
			start = len(pairs)
		}
		pairs = append(pairs, nv)
	}
	if len(pairs) > 0 {
		ms = append(ms, pairs[start:len(pairs):len(pairs)])
	}
	return ms
}

// position returns the line and column of byte off of the text, the start
// of a pair's name: its line from the table and the newlines after the
// table's entry, its column from the codepoints since the line's start.
func (s *Stream) position(off int) (line, col int) {
	j := off / lineBlock
	line = int(s.lines[j]) + newlines(s.text, j*lineBlock, off)
	start := strings.LastIndexAny(s.text[:off], "\r\n") + 1
	return line, 1 + utf8.RuneCountInString(s.text[start:off])
}

// newlines counts the newlines that start in text[from:to]: "\n", "\r\n"
// and a run of '\r' optionally followed by '\n' are one each, as the
// scanner reads them.
func newlines(text string, from, to int) int {
	b := text[from:to]
	if strings.IndexByte(b, '\r') < 0 && (from == 0 || text[from-1] != '\r') {
		return strings.Count(b, "\n")
	}
	n := 0
	for i := from; i < to; i++ {
		if (text[i] == '\n' || text[i] == '\r') && (i == 0 || text[i-1] != '\r') {
			n++
		}
	}
	return n
}

// lineTable returns the line of every lineBlock-th byte of text.
func lineTable(text string) []uint32 {
	t := make([]uint32, len(text)/lineBlock+1)
	line := 1
	for j := range t {
		t[j] = uint32(line)
		from := j * lineBlock
		line += newlines(text, from, min(from+lineBlock, len(text)))
	}
	return t
}

// sizedReader is a reader that knows how much it holds and writes it in
// one piece: *bytes.Reader, *strings.Reader, *bytes.Buffer.
type sizedReader interface {
	Len() int
	io.WriterTo
}

// readText reads r whole into a string of its size: at once from a reader
// that knows its length, otherwise through a buffer of 32 KiB into pieces
// of the size read, copied once at the end, so that the text costs its
// size and, while it is read, once more.
func readText(r io.Reader, file string) (string, error) {
	tooLong := &Error{File: file, Msg: fmt.Sprintf("stream longer than %d bytes", maxStream)}
	var b strings.Builder
	if sr, ok := r.(sizedReader); ok {
		if sr.Len() > maxStream {
			return "", tooLong
		}
		b.Grow(sr.Len())
		if _, err := sr.WriteTo(&b); err != nil {
			return "", fmt.Errorf("read manifest %s: %w", file, err)
		}
		return b.String(), nil
	}
	var chunks [][]byte
	total, buf := 0, make([]byte, 32<<10)
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			chunks = append(chunks, bytes.Clone(buf[:n]))
		}
		if total += n; total > maxStream {
			return "", tooLong
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return "", fmt.Errorf("read manifest %s: %w", file, err)
		}
	}
	b.Grow(total)
	for _, c := range chunks {
		b.Write(c)
	}
	return b.String(), nil
}
