package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
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
			data, name, err := readManifestInput(e, args)
			if err != nil {
				return err
			}
			ms, err := manifest.Parse(bytes.NewReader(data), name)
			if err != nil {
				return err
			}
			out := make([][][2]string, 0, len(ms))
			for _, m := range ms {
				pairs := make([][2]string, 0, len(m))
				for _, p := range m {
					pairs = append(pairs, [2]string{p.Name, p.Value})
				}
				out = append(out, pairs)
			}
			enc := json.NewEncoder(e.stdout)
			enc.SetEscapeHTML(false)
			if err := enc.Encode(out); err != nil {
				return fmt.Errorf("write JSON: %w", err)
			}
			return nil
		},
	}
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
