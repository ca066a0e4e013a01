package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/buildfarm/buildfarm/internal/manifest"
)

func init() {
	manifestSubcommands = append(manifestSubcommands, manifestCheckCommand)
}

func manifestCheckCommand(e *env) *cobra.Command {
	var kind string
	var lenient bool
	cmd := &cobra.Command{
		Use:   "check --type TYPE [FILE]",
		Short: "Validate a typed bbot/brep manifest and print it serialized",
		Long: `Check reads a manifest stream from FILE (standard input when FILE is missing
or "-"), validates it as a manifest of TYPE with the field names and value
syntax of build2's bbot and brep, and prints it serialized: the known fields
in the order build2 writes them.

TYPE is one of:
  ` + strings.Join(manifest.Kinds, ", ") + `.
task-request, task-response and result-request are streams: a header
manifest followed by the machine headers, the task or the result.

Unknown fields are an error, unless --lenient is given: then they are kept
and printed after the known ones, so manifests of newer peers pass through.

An invalid manifest exits with status 1 and one line on standard error:
FILE:LINE:COLUMN: error: DESCRIPTION (FILE is <stdin> for standard input),
the description naming the manifest type and the field.`,
		Example: `  $ printf ': 1\nid: linux-1.0\nname: linux\nsummary: Debian\ntype: kvm\n' |
      buildfarm manifest check --type machine
  : 1
  id: linux-1.0
  name: linux
  summary: Debian
  type: kvm

  $ printf ': 1\nname: hello\nversion: 1.0\nstatus: ok\n' | buildfarm manifest check --type result
  <stdin>:4:1: error: result manifest: invalid status 'ok' in 'status'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if kind == "" {
				return fmt.Errorf("manifest check: --type is required (one of: %s)", strings.Join(manifest.Kinds, ", "))
			}
			// An unknown type fails before reading anything.
			if _, err := manifest.Check(kind, nil, "", manifest.Strict); errors.Is(err, manifest.ErrKind) {
				return fmt.Errorf("manifest check: %w", err)
			}
			data, name, err := readManifestInput(e, args)
			if err != nil {
				return err
			}
			mode := manifest.Strict
			if lenient {
				mode = manifest.Lenient
			}
			st, err := manifest.Parse(bytes.NewReader(data), name)
			var ms []manifest.Manifest
			if err == nil {
				ms, err = manifest.Check(kind, st.Manifests(), name, mode)
			}
			if err != nil {
				return err
			}
			return manifest.Serialize(e.stdout, ms)
		},
	}
	cmd.Flags().StringVar(&kind, "type", "", "manifest type: "+strings.Join(manifest.Kinds, ", "))
	cmd.Flags().BoolVar(&lenient, "lenient", false, "keep unknown fields instead of rejecting them")
	return cmd
}
