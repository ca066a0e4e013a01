package manifest

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// The typed manifests below follow libbbot's manifest.hxx and the bbot
// manual ("Task Request Manifest" to "Bootstrap Manifest"): the same field
// names, the same required and optional fields, the same value syntax, and
// the same order when serialized. Each ParseX function validates one
// manifest (or a stream of them) and returns an *Error on the first problem,
// naming the manifest type, the field and its position; a missing required
// field is reported at the start of the manifest.

// Mode says what to do with fields a typed manifest does not know.
type Mode int

const (
	// Strict rejects unknown fields.
	Strict Mode = iota
	// Lenient keeps unknown fields (in the Extra field of the typed
	// manifest) and writes them back after the known ones, so that peers
	// with newer manifest versions interoperate.
	Lenient
)

// fields reads the pairs of one manifest of kind ("task", "machine
// header", ...) and remembers which single-valued fields it has seen.
type fields struct {
	kind  string
	file  string
	mode  Mode
	m     Manifest
	seen  map[string]bool
	extra []Pair
}

func newFields(kind string, m Manifest, file string, mode Mode) *fields {
	return &fields{kind: kind, file: file, mode: mode, m: m, seen: map[string]bool{}}
}

// pairs returns the manifest's pairs after the version pair.
func (f *fields) pairs() []Pair {
	if len(f.m) > 0 && f.m[0].Name == "" {
		return f.m[1:]
	}
	return f.m
}

// start is where the manifest starts (its version pair).
func (f *fields) start() Pair {
	if len(f.m) > 0 {
		return f.m[0]
	}
	return Pair{}
}

// errorf returns an error at p's name.
func (f *fields) errorf(p Pair, format string, args ...any) *Error {
	return &Error{File: f.file, Line: int(p.Line), Column: int(p.Column),
		Msg: f.kind + " manifest: " + fmt.Sprintf(format, args...)}
}

// invalid reports an invalid value of p, saying why.
func (f *fields) invalid(p Pair, why string) *Error {
	return f.errorf(p, "invalid '%s' value %s: %s", p.Name, quoteValue(p.Value), why)
}

// missing reports a required field that is absent.
func (f *fields) missing(name string) *Error {
	return f.errorf(f.start(), "missing required field '%s'", name)
}

// once fails if a single-valued field appears a second time.
func (f *fields) once(p Pair) error {
	if f.seen[p.Name] {
		return f.errorf(p, "redefinition of '%s'", p.Name)
	}
	f.seen[p.Name] = true
	return nil
}

// set reads p's value into dst, checked by check; p must appear once.
func (f *fields) set(p Pair, dst *string, check func(string) string) error {
	if err := f.once(p); err != nil {
		return err
	}
	if why := check(p.Value); why != "" {
		return f.invalid(p, why)
	}
	*dst = p.Value
	return nil
}

// require reports the first of names that has not been seen.
func (f *fields) require(names ...string) error {
	for _, n := range names {
		if !f.seen[n] {
			return f.missing(n)
		}
	}
	return nil
}

// streamHeader returns the fields of the header manifest of a stream.
func streamHeader(kind string, ms []Manifest, file string, mode Mode) (*fields, error) {
	if len(ms) == 0 {
		return nil, &Error{File: file, Msg: kind + " manifest: empty stream"}
	}
	return newFields(kind, ms[0], file, mode), nil
}

// followedByOne checks that exactly one manifest, what, follows the header
// in ms.
func (f *fields) followedByOne(ms []Manifest, what string) error {
	switch {
	case len(ms) < 2:
		return f.errorf(f.start(), "no %s manifest follows", what)
	case len(ms) > 2:
		return f.errorf(ms[2][0], "more than one %s manifest follows", what)
	}
	return nil
}

// unknown rejects p in strict mode and keeps it in lenient mode.
func (f *fields) unknown(p Pair) error {
	if f.mode == Strict {
		return f.errorf(p, "unknown field '%s'", p.Name)
	}
	f.extra = append(f.extra, Pair{Name: p.Name, Value: p.Value})
	return nil
}

// quoteValue quotes a value for an error message, shortened.
func quoteValue(v string) string {
	const max = 60
	if r := []rune(v); len(r) > max {
		v = string(r[:max]) + "..."
	}
	return "'" + strings.ReplaceAll(v, "\n", `\n`) + "'"
}

// builder collects the pairs of a manifest being serialized.
type builder struct{ m Manifest }

func newBuilder() *builder { return &builder{m: Manifest{{Name: "", Value: "1"}}} }

func (b *builder) add(name, value string) { b.m = append(b.m, Pair{Name: name, Value: value}) }

// opt adds the pair if value is not empty.
func (b *builder) opt(name, value string) {
	if value != "" {
		b.add(name, value)
	}
}

func (b *builder) extra(ps []Pair) {
	for _, p := range ps {
		b.add(p.Name, p.Value)
	}
}

// Value syntaxes, each compiled at its first use: a program that links
// the package pays nothing for those it does not use (the guest's worker
// starts under emulation, where the eight cost about 5 ms).

var (
	// A bpkg package name: starts with a letter, ends with a letter, digit
	// or '+', holds letters, digits, '_', '+', '-' and '.'.
	packageNameRE = lazyRE(`^[A-Za-z][A-Za-z0-9_+.-]*[A-Za-z0-9+]$`)
	// A bpkg version: [+<epoch>-]<upstream>[-<release>][+<revision>][#<iteration>].
	versionRE = lazyRE(`^(\+[0-9]+-)?[0-9A-Za-z]+(\.[0-9A-Za-z]+)*(-([0-9A-Za-z]+(\.[0-9A-Za-z]+)*)?)?(\+[0-9]+)?(#[0-9]+)?$`)
	// A standard version: [+<epoch>-]<maj>.<min>.<patch>[-(a|b).<num>[.<snapsn>[.<snapid>]]|-][+<revision>].
	standardVersionRE = lazyRE(`^(\+[1-9][0-9]*-)?[0-9]+\.[0-9]+\.[0-9]+(-((a|b)\.[0-9]+(\.([0-9]+|z)(\.[0-9A-Za-z]{1,16})?)?)?)?(\+[1-9][0-9]*)?$`)
	// A target triplet: cpu-vendor-os[-...].
	tripletRE = lazyRE(`^[A-Za-z0-9_.]+(-[A-Za-z0-9_.]+)+$`)
	// A repository certificate fingerprint: SHA256 as 32 colon-separated
	// upper-case hex bytes.
	certFingerprintRE = lazyRE(`^[0-9A-F]{2}(:[0-9A-F]{2}){31}$`)
	// An agent's public key fingerprint: SHA256 as 64 lower-case hex digits.
	sha256RE = lazyRE(`^[0-9a-f]{64}$`)
	// A MAC address.
	macRE = lazyRE(`^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$`)
	// An environment variable name.
	envNameRE = lazyRE(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// lazyRE returns a function that compiles expr at its first call.
func lazyRE(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}

// CompileSyntaxes compiles now what the value checks would compile at
// their first use (a guest's worker warming up before its state is saved).
func CompileSyntaxes() {
	for _, re := range []func() *regexp.Regexp{packageNameRE, versionRE, standardVersionRE, tripletRE, certFingerprintRE, sha256RE, macRE, envNameRE} {
		re()
	}
}

// word checks that v is one non-empty word (no whitespace).
func word(v string) string {
	switch {
	case v == "":
		return "empty value"
	case strings.ContainsAny(v, " \t\n"):
		return "contains whitespace"
	}
	return ""
}

func nonEmpty(v string) string {
	if strings.TrimSpace(v) == "" {
		return "empty value"
	}
	return ""
}

func packageName(v string) string {
	if !packageNameRE().MatchString(v) {
		return "not a package name (a letter first; letters, digits, '_', '+', '-', '.'; a letter, digit or '+' last)"
	}
	return ""
}

func packageVersion(v string) string {
	if !versionRE().MatchString(v) {
		return "not a package version ([+<epoch>-]<upstream>[-<release>][+<revision>])"
	}
	return ""
}

func standardVersion(v string) string {
	if !standardVersionRE().MatchString(v) {
		return "not a standard version (<major>.<minor>.<patch>[-(a|b).<num>[.<snapshot>]][+<revision>])"
	}
	return ""
}

func triplet(v string) string {
	if !tripletRE().MatchString(v) {
		return "not a target triplet (<cpu>-<vendor>-<os>)"
	}
	return ""
}

// httpURL checks an absolute http or https URL, as controllers' result and
// upload URLs are.
func httpURL(v string) string {
	u, err := url.Parse(v)
	switch {
	case err != nil:
		return err.Error()
	case u.Scheme != "http" && u.Scheme != "https":
		return "not an http or https URL"
	case u.Host == "":
		return "no host in URL"
	}
	return ""
}

// repositoryURL checks a remote repository location (pkg or git, over
// http(s), git, ssh or file).
func repositoryURL(v string) string {
	if s := word(v); s != "" {
		return s
	}
	u, err := url.Parse(v)
	switch {
	case err != nil:
		return err.Error()
	case u.Scheme == "":
		return "not a URL (no scheme)"
	case u.Scheme == "file":
		if u.Path == "" {
			return "no path in file URL"
		}
	case u.Host == "":
		return "no host in URL"
	}
	return ""
}

// kib checks a positive amount of memory in KiB.
func kib(v string) (uint64, string) {
	n, err := strconv.ParseUint(v, 10, 64)
	switch {
	case err != nil:
		return 0, "not a number of kilobytes"
	case n == 0:
		return 0, "zero"
	}
	return n, ""
}

func boolean(v string) (bool, string) {
	switch v {
	case "true":
		return true, ""
	case "false":
		return false, ""
	}
	return false, "not true or false"
}

func base64Text(v string) string {
	if v == "" {
		return "empty value"
	}
	if _, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(v, "\n", "")); err != nil {
		return "not base64: " + err.Error()
	}
	return ""
}

// environmentLines checks lines of NAME=VALUE, blank lines and # comments,
// as in the auxiliary-environment value.
func environmentLines(v string) string {
	for i, line := range strings.Split(v, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		name, _, ok := strings.Cut(line, "=")
		if !ok || !envNameRE().MatchString(name) {
			return fmt.Sprintf("line %d is not a NAME=VALUE assignment", i+1)
		}
	}
	return ""
}

// Quoted lists: values such as target-config, warning-regex and a
// machine's options are lists of words separated by blanks, where a word
// may hold blanks inside single or double quotes (libbutl's
// string_parser). The words are kept as written, quotes included; Unquote
// removes them.

var errUnterminated = errors.New("unterminated quoted string")

// splitQuoted splits v into words, keeping their quotes.
func splitQuoted(v string) ([]string, error) {
	var words []string
	var w strings.Builder
	in := false // inside a word
	var quote rune
	for _, c := range v {
		switch {
		case quote != 0:
			w.WriteRune(c)
			if c == quote {
				quote = 0
			}
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if in {
				words = append(words, w.String())
				w.Reset()
				in = false
			}
		default:
			in = true
			w.WriteRune(c)
			if c == '"' || c == '\'' {
				quote = c
			}
		}
	}
	if quote != 0 {
		return nil, errUnterminated
	}
	if in {
		words = append(words, w.String())
	}
	return words, nil
}

// Unquote removes the single and double quotes of a word of a quoted list
// (see Machine.Options), as libbutl's string_parser does.
func Unquote(word string) string {
	var b strings.Builder
	var quote rune
	for _, c := range word {
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote == 0 && (c == '"' || c == '\''):
			quote = c
		default:
			b.WriteRune(c)
		}
	}
	return b.String()
}

// quotedList checks a quoted list value and returns its words.
func quotedList(v string) ([]string, string) {
	ws, err := splitQuoted(v)
	if err != nil {
		return nil, err.Error()
	}
	if len(ws) == 0 {
		return nil, "empty value"
	}
	return ws, ""
}

// Nested manifests: a bootstrapped machine manifest holds its machine,
// toolchain and bootstrap manifests as the values of its fields, each
// written as a manifest of its own.

// nested parses the value of p as one manifest, with positions in the
// enclosing file.
func (f *fields) nested(p Pair) (Manifest, error) {
	st, err := DefaultLimits.ParseString(p.Value, f.file)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			line, col := shift(p, e.Line, e.Column)
			return nil, &Error{File: f.file, Line: line, Column: col,
				Msg: fmt.Sprintf("%s manifest: in '%s': %s", f.kind, p.Name, e.Msg)}
		}
		return nil, fmt.Errorf("%s manifest: in '%s': %w", f.kind, p.Name, err)
	}
	if st.Len() != 1 {
		return nil, f.errorf(p, "'%s' holds %d manifests, want 1", p.Name, st.Len())
	}
	m := st.Manifest(0)
	for i := range m {
		m[i].Line, m[i].Column = shift(p, m[i].Line, m[i].Column)
		m[i].ValueLine, m[i].ValueColumn = shift(p, m[i].ValueLine, m[i].ValueColumn)
	}
	return m, nil
}

// shift maps a position inside p's value to the enclosing file.
func shift[T int | int32](p Pair, line, col T) (T, T) {
	if line == 0 || p.ValueLine == 0 {
		return line, col
	}
	if line == 1 {
		col += T(p.ValueColumn) - 1
	}
	return line + T(p.ValueLine) - 1, col
}

// nestedValue serializes m as the value of a field. Should m hold what
// Serialize refuses (values built in code with invalid UTF-8), its pairs are
// written plainly, so that serializing the enclosing manifest reports it.
func nestedValue(m Manifest) string {
	var b bytes.Buffer
	if err := Serialize(&b, []Manifest{m}); err != nil {
		b.Reset()
		for _, p := range m {
			fmt.Fprintf(&b, "%s: %s\n", p.Name, p.Value)
		}
	}
	return strings.TrimSuffix(b.String(), "\n")
}
