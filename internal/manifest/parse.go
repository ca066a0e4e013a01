package manifest

import (
	"fmt"
	"io"
	"strings"
)

// The parser below follows libbutl's manifest_parser (manifest-parser.cxx)
// step by step, including its one-character look-ahead and put-back, so that
// it accepts exactly what build2 accepts and reads it to the same pairs:
//
//   - Blank lines are skipped; a line whose first non-blank character is '#'
//     is a comment.
//   - A pair is NAME, optional blanks, ':', optional blanks, VALUE. The name
//     ends at ':', blank or newline.
//   - A simple value runs to the end of the line with trailing blanks
//     stripped. A '\' at the end of a line continues the value on the next
//     line (the newline is dropped), and a continuation line that holds only
//     '\' adds a literal newline. Two backslashes at the end of a line stand
//     for one literal backslash; elsewhere backslashes are literal.
//   - A value that is a lone '\' (right after the colon, or on the line that
//     follows the name) starts a multi-line value, which keeps its blanks
//     and newlines and ends at a line holding only '\' (or at the end of the
//     stream). Line continuation and escaping work as in simple values.
//   - The first pair of a manifest has an empty name and the format version
//     (only "1"); a pair with an empty name in the body of a manifest ends it
//     and starts the next one, whose version may be omitted (it is then the
//     previous one).
//   - The stream is UTF-8; "\r\n" and lone '\r' are newlines; every
//     character must be graphic (not a control, format, private-use,
//     non-character or reserved codepoint) except tab and newline.
//
// Lines and columns are 1-based and count codepoints, as build2 does.

// eos is the character peek returns at the end of the stream.
const eos rune = -1

// xchar is one character of the stream with where it starts.
type xchar struct {
	r         rune // eos at the end of the stream
	off, size int  // byte offset and length in the stream
	line, col int
}

// scanner reads characters from a whole stream held in memory. An invalid
// character is recorded in err and read as the end of the stream from then
// on, so the parser winds down and reports err.
type scanner struct {
	data      string
	file      string
	off       int
	line, col int
	err       *Error
}

// peek returns the next character without consuming it; what names the
// part of the manifest being read, for the error about an invalid character.
func (s *scanner) peek(what string) xchar {
	c := xchar{r: eos, off: s.off, line: s.line, col: s.col}
	if s.err != nil || s.off >= len(s.data) {
		return c
	}
	r, size, msg := decodeChar(s.data[s.off:])
	if msg != "" {
		s.err = &Error{File: s.file, Line: s.line, Column: s.col, Msg: "invalid " + what + ": " + msg}
		return c
	}
	c.r, c.size = r, size
	return c
}

// get consumes c, the character just peeked.
func (s *scanner) get(c xchar) {
	if c.r == eos {
		return
	}
	s.off = c.off + c.size
	if c.r == '\n' {
		s.line++
		s.col = 1
	} else {
		s.col++
	}
}

// unget puts back c and everything read after it.
func (s *scanner) unget(c xchar) { s.off, s.line, s.col = c.off, c.line, c.col }

// text returns how c is added to a name or value.
func (s *scanner) text(c xchar) string {
	if c.r == '\n' { // Possibly "\r\n" or '\r'.
		return "\n"
	}
	return s.data[c.off : c.off+c.size]
}

// decodeChar decodes the character at the start of b (not empty): a valid
// graphic codepoint, tab, or a newline ("\n", "\r\n" or a run of '\r'
// optionally followed by '\n', as libbutl's char_scanner reads them). On
// failure it returns why, as libbutl's utf8_validator words it.
func decodeChar(b string) (r rune, size int, msg string) {
	c := b[0]
	switch {
	case c == '\n' || c == '\t':
		return rune(c), 1, ""
	case c == '\r':
		n := 1
		for n < len(b) && b[n] == '\r' {
			n++
		}
		if n < len(b) && b[n] == '\n' {
			n++
		}
		return '\n', n, ""
	case c < 0x80:
		if c < 0x20 || c == 0x7F {
			return 0, 0, "invalid Unicode codepoint (control)"
		}
		return rune(c), 1, ""
	}
	r, size, msg = decodeUTF8(b)
	if msg != "" {
		return 0, 0, msg
	}
	if t := codepointType(r); t != "graphic" {
		return 0, 0, "invalid Unicode codepoint (" + t + ")"
	}
	return r, size, ""
}

// decodeUTF8 decodes the multi-byte UTF-8 sequence at the start of b, which
// must be well-formed by the Unicode standard's table of well-formed byte
// sequences (no overlong forms, surrogates or values above U+10FFFF).
func decodeUTF8(b string) (r rune, size int, msg string) {
	c := b[0]
	lo, hi := byte(0x80), byte(0xBF) // range of the second byte
	switch {
	case c >= 0xC2 && c <= 0xDF:
		size, r = 2, rune(c&0x1F)
	case c == 0xE0:
		size, r, lo = 3, rune(c&0x0F), 0xA0
	case c >= 0xE1 && c <= 0xEC, c == 0xEE, c == 0xEF:
		size, r = 3, rune(c&0x0F)
	case c == 0xED:
		size, r, hi = 3, rune(c&0x0F), 0x9F
	case c == 0xF0:
		size, r, lo = 4, rune(c&0x07), 0x90
	case c >= 0xF1 && c <= 0xF3:
		size, r = 4, rune(c&0x07)
	case c == 0xF4:
		size, r, hi = 4, rune(c&0x07), 0x8F
	case c >= 0xF8 && c < 0xFC:
		return 0, 0, "5-byte length UTF-8 sequence"
	case c >= 0xFC && c < 0xFE:
		return 0, 0, "6-byte length UTF-8 sequence"
	default:
		return 0, 0, byteError(0, c)
	}
	for i := 1; i < size; i++ {
		if i >= len(b) {
			return 0, 0, "unexpected end of stream"
		}
		if b[i] < lo || b[i] > hi {
			return 0, 0, byteError(i, b[i])
		}
		r = r<<6 | rune(b[i]&0x3F)
		lo, hi = 0x80, 0xBF
	}
	return r, size, ""
}

func byteError(index int, b byte) string {
	ordinal := [...]string{"first", "second", "third", "fourth"}[index]
	if b >= 0x20 && b <= 0x7E {
		return fmt.Sprintf("invalid UTF-8 sequence %s byte (0x%02X '%c')", ordinal, b, b)
	}
	return fmt.Sprintf("invalid UTF-8 sequence %s byte (0x%02X)", ordinal, b)
}

// codepointType classifies a codepoint as libbutl's codepoint_type does:
// "control", "format", "private-use", "non-character", "reserved", or
// "graphic" for everything else.
func codepointType(r rune) string {
	in := func(ranges [][2]rune) bool {
		for _, rg := range ranges {
			if r >= rg[0] && r <= rg[1] {
				return true
			}
		}
		return false
	}
	switch {
	case r >= 0x20 && r <= 0x7E:
		return "graphic"
	case r&0xFFFF >= 0xFFFE:
		return "non-character"
	case in(controlRanges):
		return "control"
	case in(formatRanges):
		return "format"
	case in(privateUseRanges):
		return "private-use"
	case in(nonCharacterRanges):
		return "non-character"
	case in(reservedRanges):
		return "reserved"
	}
	return "graphic"
}

// The codepoint ranges of libbutl's unicode.cxx.
var (
	controlRanges = [][2]rune{{0x00, 0x1F}, {0x7F, 0x9F}}
	formatRanges  = [][2]rune{
		{0x000AD, 0x000AD}, {0x00600, 0x00605}, {0x0061C, 0x0061C},
		{0x006DD, 0x006DD}, {0x0070F, 0x0070F}, {0x008E2, 0x008E2},
		{0x0180E, 0x0180E}, {0x0200B, 0x0200F}, {0x0202A, 0x0202E},
		{0x02060, 0x02064}, {0x02066, 0x0206F}, {0x0FEFF, 0x0FEFF},
		{0x0FFF9, 0x0FFFB}, {0x110BD, 0x110BD}, {0x110CD, 0x110CD},
		{0x13430, 0x13438}, {0x1BCA0, 0x1BCA3}, {0x1D173, 0x1D17A},
		{0xE0001, 0xE0001}, {0xE0020, 0xE007F},
	}
	privateUseRanges   = [][2]rune{{0x00E000, 0x00F8FF}, {0x0F0000, 0x10FFFF}}
	nonCharacterRanges = [][2]rune{{0xFDD0, 0xFDEF}}
	reservedRanges     = [][2]rune{
		{0x30000, 0xE0000}, {0xE0002, 0xE001F}, {0xE0080, 0xE00FF}, {0xE01F0, 0xEFFFF},
	}
)

// parser states: expecting a manifest's version pair, in a manifest's body,
// past the end of the stream.
const (
	stateStart = iota
	stateBody
	stateEnd
)

type parser struct {
	s       scanner
	state   int
	version string // the stream's current format version
	count   bool   // values that are copies are not needed (Count)
	at      int    // the byte offset of the name of the pair last read
}

// Parse reads a stream of manifests from r with DefaultLimits and returns
// it as a Stream, which holds the text and reads each manifest's pairs from
// it when asked. file names the stream in errors ("<stdin>" for standard
// input). Each manifest starts
// with its version pair (empty name, value "1"), filled in when the stream
// omits it. An empty stream, or one with only comments and blank lines,
// holds no manifests. A malformed stream is an *Error with the 1-based line
// and column.
func Parse(r io.Reader, file string) (*Stream, error) {
	return DefaultLimits.Parse(r, file)
}

// Limits bound what one parse of a stream may hold, beside its bytes (which
// the caller bounds). A Stream costs at most about 0.6 bytes a byte of
// text, but a caller that builds Manifests from it pays 24 bytes a manifest
// and 48 a pair, and a pair can be as short as 3 bytes, so a caller that
// knows what it expects (one task manifest, a few results) says so. A zero
// field takes the DefaultLimits value.
type Limits struct {
	Manifests int // the most manifests in the stream
	Pairs     int // the most pairs in the stream, version pairs included
}

// DefaultLimits are the limits of Parse and ReadFile: enough for any
// manifest stream of build2's protocol, and at most 48 MB of pairs built.
var DefaultLimits = Limits{Manifests: 100_000, Pairs: 1_000_000}

// maxStream is the largest stream a parse reads: positions are int32 and
// offsets uint32.
const maxStream = 1<<31 - 1

// Parse reads a stream of manifests from r as the package's Parse does,
// with l's limits. A stream past a limit is an *Error at the manifest or
// pair that passes it. The text is read into one string of its size (from
// a reader that does not tell its length, in pieces copied once at the
// end), which the Stream keeps.
func (l Limits) Parse(r io.Reader, file string) (*Stream, error) {
	text, err := readText(r, file)
	if err != nil {
		return nil, err
	}
	return l.parse(text, file)
}

// ParseString parses the stream text as Parse does; the Stream keeps text.
func (l Limits) ParseString(text, file string) (*Stream, error) {
	return l.parse(text, file)
}

// parse reads data in two passes: the first checks the stream and counts its
// manifests, its pairs and the bytes that note where each manifest starts,
// the second notes it in slices made once, at their size. Neither copies a
// name or value.
func (l Limits) parse(data, file string) (*Stream, error) {
	if l.Manifests <= 0 {
		l.Manifests = DefaultLimits.Manifests
	}
	if l.Pairs <= 0 {
		l.Pairs = DefaultLimits.Pairs
	}
	if len(data) > maxStream {
		return nil, &Error{File: file, Msg: fmt.Sprintf("stream longer than %d bytes", maxStream)}
	}
	prev, size := 0, 0
	nm, np, err := l.scan(data, file, func(off int) {
		size += uvarintLen(off - prev)
		prev = off
	})
	if err != nil {
		return nil, err
	}
	s := &Stream{text: data, file: file, npairs: np}
	if nm > 0 {
		s.deltas = make([]byte, 0, size)
		s.index = make([]uint32, 0, 2*((nm+indexEvery-1)/indexEvery))
		prev = 0
		l.scan(data, file, s.add(&prev)) // The first pass saw every error.
		s.lines = lineTable(data)
	}
	return s, nil
}

// Count reads the stream data through, as Parse would, and returns how many
// manifests and pairs it holds, or the error Parse would return; it copies
// no value. A zero limit is no limit.
func (l Limits) Count(data, file string) (manifests, pairs int, err error) {
	return l.scan(data, file, nil)
}

// scan reads the stream data through as Count does, and calls start, if not
// nil, with the byte offset of each manifest's version pair.
func (l Limits) scan(data, file string, start func(off int)) (manifests, pairs int, err error) {
	d := NewDecoder(data, file)
	d.p.count = true
	for {
		nv, first, err := d.Next()
		if err == io.EOF {
			return manifests, pairs, nil
		}
		if err != nil {
			return 0, 0, err
		}
		if first {
			if manifests++; l.Manifests > 0 && manifests > l.Manifests {
				return 0, 0, &Error{File: file, Line: int(nv.Line), Column: int(nv.Column),
					Msg: fmt.Sprintf("more than %d manifests in the stream, the most its reader takes", l.Manifests)}
			}
			if start != nil {
				start(d.p.at)
			}
		}
		if pairs++; l.Pairs > 0 && pairs > l.Pairs {
			return 0, 0, &Error{File: file, Line: int(nv.Line), Column: int(nv.Column),
				Msg: fmt.Sprintf("more than %d name-value pairs in the stream, the most its reader takes", l.Pairs)}
		}
	}
}

// Decoder reads a manifest stream held in memory one pair at a time, so
// that a reader that handles each pair as it comes (manifest decode) needs
// no memory for the pairs it has done with.
type Decoder struct {
	p     parser
	inMan bool  // a manifest is open
	err   error // the error returned, returned again
}

// NewDecoder returns a Decoder of the stream data; file names it in errors.
func NewDecoder(data, file string) *Decoder {
	return &Decoder{p: parser{s: scanner{data: data, file: file, line: 1, col: 1}}}
}

// Next returns the next pair of the stream, and whether it is the version
// pair that starts a manifest; io.EOF at the end of the stream, or an
// *Error, after which the Decoder returns the same error.
func (d *Decoder) Next() (nv Pair, first bool, err error) {
	for d.err == nil {
		nv, end, err := d.p.next()
		if err != nil {
			d.err = err
			break
		}
		if !end {
			first = !d.inMan
			d.inMan = true
			return nv, first, nil
		}
		if !d.inMan { // The end of the stream.
			d.err = io.EOF
			break
		}
		d.inMan = false
	}
	return Pair{}, false, d.err
}

// next returns the next pair, or end at the end of a manifest (a pair with
// an empty name in a manifest's body, left unread to start the next one) or
// of the stream.
func (p *parser) next() (nv Pair, end bool, err error) {
	nv, end, err = p.parseNext()
	if p.s.err != nil { // An invalid character read as the end of stream.
		return Pair{}, false, p.s.err
	}
	return nv, end, err
}

func (p *parser) parseNext() (nv Pair, end bool, err error) {
	s := &p.s
	if p.state == stateEnd {
		return Pair{}, true, nil
	}
	c := p.skipSpaces()
	if p.state == stateBody && c.r == ':' {
		p.state = stateStart
		return Pair{}, true, nil
	}

	p.parseName(&nv)
	p.skipSpaces()
	c = s.peek("manifest")
	s.get(c)
	if c.r == eos {
		if nv.Name != "" {
			return nv, false, p.errorf(c.line, c.col, "':' expected after name")
		}
		p.state = stateEnd
		return Pair{}, true, nil
	}
	if c.r != ':' {
		return nv, false, p.errorf(c.line, c.col, "':' expected after name")
	}

	p.skipSpaces()
	p.parseValue(&nv)
	// What follows a value is a newline or the end of the stream.
	c = s.peek("manifest")
	s.get(c)

	if p.state == stateStart {
		if nv.Name != "" {
			return nv, false, p.errorf(int(nv.Line), int(nv.Column), "format version pair expected")
		}
		if nv.Value == "" {
			if p.version == "" {
				return nv, false, p.errorf(int(nv.ValueLine), int(nv.ValueColumn), "format version value expected")
			}
			nv.Value = p.version
		} else {
			p.version = nv.Value
			if nv.Value != "1" {
				return nv, false, p.errorf(int(nv.ValueLine), int(nv.ValueColumn), "unsupported format version %s", nv.Value)
			}
		}
		p.state = stateBody
	}
	return nv, false, nil
}

func (p *parser) errorf(line, col int, format string, args ...any) *Error {
	return &Error{File: p.s.file, Line: line, Column: col, Msg: fmt.Sprintf(format, args...)}
}

// skipSpaces skips blanks, and at the start of a line also blank lines and
// comment lines, and returns the first character after them (unread).
func (p *parser) skipSpaces() xchar {
	s := &p.s
	c := s.peek("manifest")
	start := c.col == 1
	for ; c.r != eos; c = s.peek("manifest") {
		switch c.r {
		case ' ', '\t':
		case '\n':
			if !start {
				return c
			}
		case '#':
			if !start {
				return c
			}
			s.get(c)
			for c = s.peek("manifest"); c.r != eos && c.r != '\n'; c = s.peek("manifest") {
				s.get(c)
			}
			continue
		default:
			return c
		}
		s.get(c)
	}
	return c
}

func (p *parser) parseName(nv *Pair) {
	s := &p.s
	const what = "manifest name"
	c := s.peek(what)
	nv.Line, nv.Column = int32(c.line), int32(c.col)
	start := c.off
	p.at = start
	for ; c.r != eos; c = s.peek(what) {
		if c.r == ':' || c.r == ' ' || c.r == '\t' || c.r == '\n' {
			break
		}
		s.get(c)
	}
	// A name holds no newline, so it is the text as it is.
	nv.Name = s.data[start:c.off]
}

// parseValue reads a value. One that is the text as it is becomes a
// substring of it; one that differs is read twice, first to learn how long
// its text is, then to copy it into a buffer of that size (unless the
// parser only counts).
func (p *parser) parseValue(nv *Pair) {
	save := p.s
	v := valueText{measure: true}
	p.readValue(nv, &v)
	if !v.copied || p.s.err != nil {
		return
	}
	if p.count && p.state == stateBody { // A version pair's value is checked.
		nv.Value = ""
		return
	}
	span := p.s.off - save.off
	p.s = save
	v = valueText{}
	v.b.Grow(span)
	p.readValue(nv, &v)
}

func (p *parser) readValue(nv *Pair, v *valueText) {
	s := &p.s
	const what = "manifest value"
	c := s.peek(what)
	nv.ValueLine, nv.ValueColumn = int32(c.line), int32(c.col)

	n := 0 // length of v up to its last non-blank (simple values)

	// The multi-line introducer: a lone '\' right after the colon ...
	ml := false
	if c.r == '\\' {
		s.get(c)
		c1 := s.peek(what)
		switch {
		case c1.r == '\n':
			s.get(c1)
			c = s.peek(what)
			ml = true
		case c1.r == eos:
			c = c1
			ml = true
		default:
			s.unget(c)
		}
	}
	// ... or on the line after the name.
	if !ml && c.r == '\n' {
		s.get(c)
		if c1 := s.peek(what); c1.r == '\\' {
			s.get(c1)
			c2 := s.peek(what)
			switch c2.r {
			case '\n':
				s.get(c2)
				c = s.peek(what)
				ml = true
			case eos:
				c = c2
				ml = true
			}
		}
		if !ml {
			s.unget(c)
		}
	}
	if ml { // The value starts on the line after the introducer.
		nv.ValueLine, nv.ValueColumn = int32(c.line), int32(c.col)
	}

	// nl tells that the previous character was a newline of the introducer
	// or of a line continuation: a lone '\' after it ends a multi-line value
	// right there, or adds a literal newline to a simple value.
	for nl := ml; c.r != eos; c = s.peek(what) {
		if nl {
			nl = false
			if c.r == '\\' {
				s.get(c)
				c1 := s.peek(what)
				if c1.r == '\n' || c1.r == eos {
					if ml {
						break
					}
					s.get(c1)
					v.add(s.data, -1, "\n")
					n = v.len()
					continue
				}
				s.unget(c)
			}
		}

		if c.r == '\n' {
			if !ml {
				break // The end of a simple value.
			}
			s.get(c)
			if c1 := s.peek(what); c1.r == '\\' {
				s.get(c1)
				if c2 := s.peek(what); c2.r == '\n' || c2.r == eos {
					break // The multi-line terminator.
				}
				v.add(s.data, c.off, s.text(c))
				s.unget(c1)
				continue
			}
			s.unget(c)
		}

		if c.r == '\\' {
			s.get(c)
			c1 := s.peek(what)
			if c1.r == '\n' || c1.r == eos { // Line continuation.
				if c1.r == '\n' {
					s.get(c1)
					nl = true
				}
				continue
			}
			if c1.r == '\\' { // An escaped backslash at the end of a line.
				s.get(c1)
				v.add(s.data, c.off, "\\")
				n = v.len()
				if c2 := s.peek(what); c2.r != '\n' {
					s.unget(c1) // Not at the end: read the second one again.
				}
				continue
			}
			s.unget(c)
		}

		s.get(c)
		v.add(s.data, c.off, s.text(c))
		if !ml && c.r != ' ' && c.r != '\t' {
			n = v.len()
		}
	}
	if !ml {
		nv.Value = v.string(s.data, n)
	} else {
		nv.Value = v.string(s.data, v.len())
	}
}

// valueText builds a value as a substring of the stream while it is the
// stream's text as it is, and as a copy from the first character that
// differs (an escape, a line continuation, a "\r\n" newline). When
// measuring, it only follows the value's length.
type valueText struct {
	start, end int // the substring data[start:end], until copied
	copied     bool
	measure    bool
	size       int // the length, once copied
	b          strings.Builder
}

// add appends text, read at offset off of data (-1 for text that is not
// there as it is).
func (v *valueText) add(data string, off int, text string) {
	if !v.copied {
		if v.start == v.end && off >= 0 {
			v.start, v.end = off, off
		}
		if off >= 0 && off == v.end && strings.HasPrefix(data[off:], text) {
			v.end += len(text)
			return
		}
		v.copied = true
		v.size = v.end - v.start
		if !v.measure {
			v.b.WriteString(data[v.start:v.end])
		}
	}
	v.size += len(text)
	if !v.measure {
		v.b.WriteString(text)
	}
}

func (v *valueText) len() int {
	if v.copied {
		return v.size
	}
	return v.end - v.start
}

// string returns the value's first n bytes ("" for a copy measured only).
func (v *valueText) string(data string, n int) string {
	if !v.copied {
		return data[v.start : v.start+n]
	}
	if v.measure {
		return ""
	}
	return v.b.String()[:n]
}

// SplitComment splits a value that may carry a comment, "VALUE ; COMMENT",
// as libbutl's manifest_parser::split_comment does. In a single-line value
// the first unescaped ';' separates them, "\;" is a literal ';' and "\\" a
// literal '\', and blanks around the separator are dropped. In a
// multi-line value a line holding only ';' separates them, and a line of
// backslashes followed by ';' is unescaped by halving it ("\;" is ";",
// "\\\;" is "\;").
func SplitComment(v string) (value, comment string) {
	if !strings.Contains(v, "\n") {
		var b strings.Builder
		n := 0 // length of b up to its last non-blank
		i := 0
		for ; i < len(v) && v[i] != ';'; i++ {
			c := v[i]
			if c == '\\' && i+1 < len(v) && (v[i+1] == ';' || v[i+1] == '\\') {
				i++
				c = v[i]
			}
			b.WriteByte(c)
			if c != ' ' && c != '\t' {
				n = b.Len()
			}
		}
		value = b.String()[:n]
		if i < len(v) {
			i++
			for i < len(v) && (v[i] == ' ' || v[i] == '\t') {
				i++
			}
		}
		return value, v[i:]
	}

	var b strings.Builder
	rest := v
	for rest != "" {
		line, after, more := strings.Cut(rest, "\n")
		if strings.TrimLeft(line, "\\") == ";" {
			if line == ";" { // The separator.
				value = strings.TrimSuffix(b.String(), "\n")
				if !more {
					after = ""
				}
				return value, after
			}
			line = line[len(line)/2:]
		}
		b.WriteString(line)
		if more {
			b.WriteByte('\n')
		}
		rest = after
	}
	return b.String(), ""
}
