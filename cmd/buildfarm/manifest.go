package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/buildfarm/buildfarm/internal/manifest"
)

// manifestSubcommands are added to `buildfarm manifest` by other files' init functions.
var manifestSubcommands []func(*env) *cobra.Command

func init() {
	register(func(e *env) *cobra.Command {
		cmd := &cobra.Command{
			Use:   "manifest",
			Short: "Read, write and check build2 manifests",
			Long: `Read, write and check build2 manifests, the text format of build2's
bbot/brep protocol that buildfarm speaks: "name: value" lines, each manifest
starting with the format version pair ": 1", several manifests in one stream
separated by a line with an empty name.`,
			Args: cobra.NoArgs, // So that an unknown subcommand is an error.
			RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
		}
		cmd.AddCommand(manifestDecodeCommand(e), manifestEncodeCommand(e))
		for _, f := range manifestSubcommands {
			cmd.AddCommand(f(e))
		}
		return cmd
	})
}

func manifestDecodeCommand(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "decode [FILE]",
		Short: "Print a manifest stream as JSON",
		Long: `Decode reads a stream of build2 manifests from FILE (standard input when FILE
is missing or "-") and prints it as JSON on one line: a list of manifests,
each a list of [name, value] pairs that starts with the version pair ["", "1"].

A malformed stream exits with status 1 and one line on standard error:
FILE:LINE:COLUMN: error: DESCRIPTION (FILE is <stdin> for standard input).`,
		Example: `  $ printf ': 1\nname: hello\nsummary: Hello, world\n' | buildfarm manifest decode
  [[["","1"],["name","hello"],["summary","Hello, world"]]]`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			text, name, err := readManifestText(e, args)
			if err != nil {
				return err
			}
			return decodeManifests(e.stdout, text, name)
		},
	}
}

// decodeManifests prints the stream text as JSON, pair by pair, so that its
// memory is the text's and no more. The stream is read through once first,
// so that a malformed one prints nothing.
func decodeManifests(stdout io.Writer, text, name string) error {
	if _, _, err := (manifest.Limits{}).Count(text, name); err != nil {
		return err
	}
	w := bufio.NewWriter(stdout)
	w.WriteByte('[')
	d := manifest.NewDecoder(text, name)
	n := 0
	for {
		p, first, err := d.Next()
		if err != nil { // io.EOF: the first pass saw every error.
			break
		}
		switch {
		case first && n > 0:
			w.WriteString("],[")
		case first:
			w.WriteByte('[')
		default:
			w.WriteByte(',')
		}
		if first {
			n++
		}
		w.WriteByte('[')
		writeJSONString(w, p.Name)
		w.WriteByte(',')
		writeJSONString(w, p.Value)
		w.WriteByte(']')
	}
	if n > 0 {
		w.WriteByte(']')
	}
	w.WriteString("]\n")
	if err := w.Flush(); err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	return nil
}

// writeJSONString writes s as a JSON string the way encoding/json does
// without HTML escaping: quotes, backslashes and control characters escaped,
// invalid UTF-8 as U+FFFD, and U+2028 and U+2029 escaped.
func writeJSONString(w *bufio.Writer, s string) {
	const hex = "0123456789abcdef"
	w.WriteByte('"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			w.WriteString(s[start:i])
			switch c {
			case '"', '\\':
				w.WriteByte('\\')
				w.WriteByte(c)
			case '\n':
				w.WriteString(`\n`)
			case '\r':
				w.WriteString(`\r`)
			case '\t':
				w.WriteString(`\t`)
			case '\b':
				w.WriteString(`\b`)
			case '\f':
				w.WriteString(`\f`)
			default:
				w.WriteString(`\u00`)
				w.WriteByte(hex[c>>4])
				w.WriteByte(hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || r == '\u2028' || r == '\u2029' {
			w.WriteString(s[start:i])
			if r == utf8.RuneError {
				w.WriteString(`\ufffd`)
			} else {
				w.WriteString(`\u202`)
				w.WriteByte(hex[r&0xF])
			}
			i += size
			start = i
			continue
		}
		i += size
	}
	w.WriteString(s[start:])
	w.WriteByte('"')
}

func manifestEncodeCommand(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "encode [FILE]",
		Short: "Write JSON as a manifest stream",
		Long: `Encode reads JSON from FILE (standard input when FILE is missing or "-") in
the form that decode prints, a list of manifests, each a list of
[name, value] pairs that starts with the version pair ["", "1"], and writes
it as a build2 manifest stream, folding long lines as build2 does.

Encode refuses, naming the manifest and the pair, what cannot be written so
that it reads back the same: a missing or unsupported version pair, a name
that is empty, starts with '#', or holds ':' or whitespace, and names or
values with invalid UTF-8, control characters other than tab and newline,
or carriage returns.`,
		Example: `  $ echo '[[["","1"],["name","hello"],["summary"," two\nlines"]]]' | buildfarm manifest encode
  : 1
  name: hello
  summary:\
   two
  lines
  \`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, name, err := readManifestInput(e, args)
			if err != nil {
				return err
			}
			ms, err := decodeJSONManifests(data)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if err := manifest.Serialize(e.stdout, ms); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			return nil
		},
	}
}

// decodeJSONManifests reads the JSON that `manifest decode` prints: a list
// of manifests, each a list of [name, value] pairs of strings.
func decodeJSONManifests(data []byte) ([]manifest.Manifest, error) {
	// encoding/json would quietly replace invalid UTF-8 with U+FFFD.
	if !utf8.Valid(data) {
		return nil, errors.New("JSON: not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var raw [][][]*string
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("JSON: want a list of manifests, each a list of [name, value] pairs: %w", err)
	}
	if raw == nil {
		return nil, errors.New("JSON: want a list of manifests, got null")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("JSON: unexpected data after the list of manifests")
	}
	ms := make([]manifest.Manifest, 0, len(raw))
	for i, pairs := range raw {
		m := make(manifest.Manifest, 0, len(pairs))
		for j, p := range pairs {
			if len(p) != 2 || p[0] == nil || p[1] == nil {
				return nil, fmt.Errorf("JSON: manifest %d, pair %d: want [name, value], two strings", i+1, j+1)
			}
			m = append(m, manifest.Pair{Name: *p[0], Value: *p[1]})
		}
		ms = append(ms, m)
	}
	return ms, nil
}

// readManifestText reads, as readManifestInput does, into a string without
// a copy: the parser's names and values are substrings of it.
func readManifestText(e *env, args []string) (text, name string, err error) {
	var b strings.Builder
	var r io.Reader = e.stdin
	name, what := "<stdin>", "standard input"
	if len(args) > 0 && args[0] != "-" {
		f, err := os.Open(args[0])
		if err != nil {
			return "", "", err
		}
		defer f.Close()
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			b.Grow(int(fi.Size()) + 1)
		}
		r, name, what = f, args[0], args[0]
	}
	if _, err := io.Copy(&b, r); err != nil {
		return "", "", fmt.Errorf("read %s: %w", what, err)
	}
	return b.String(), name, nil
}

// readManifestInput reads the file named by the only argument, or standard input
// when there is none or it is "-", and returns its content and its name for
// messages.
func readManifestInput(e *env, args []string) (data []byte, name string, err error) {
	if len(args) == 0 || args[0] == "-" {
		data, err = io.ReadAll(e.stdin)
		if err != nil {
			return nil, "", fmt.Errorf("read standard input: %w", err)
		}
		return data, "<stdin>", nil
	}
	data, err = os.ReadFile(args[0])
	if err != nil {
		return nil, "", err
	}
	return data, args[0], nil
}
