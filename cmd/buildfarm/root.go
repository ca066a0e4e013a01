package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/buildfarm/buildfarm/internal/buildinfo"
	"github.com/buildfarm/buildfarm/internal/manifest"
)

// exitError carries an exit status for errors that have already been
// reported (for example a manifest error printed as FILE:LINE:COL).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// silent wraps err so that run returns it with the exit code but prints
// nothing more: the command has said what went wrong already.
func silent(code int, err error) error { return &exitError{code: code, err: err} }

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

// env is what every subcommand gets: its streams and a logger.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	log            *slog.Logger
	verbose        bool
}

// subcommands lists the constructors of the top-level subcommands. Each file
// of this package that adds one registers it in an init function, so that
// the parts of the command line can be written side by side.
var subcommands []func(*env) *cobra.Command

func register(f func(*env) *cobra.Command) { subcommands = append(subcommands, f) }

// run executes the command line args and returns the error to exit with.
// Errors not already reported are printed as "buildfarm: ERROR".
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "buildfarm",
		Short: "A build farm in which every build runs in a one-shot virtual machine",
		Long: `buildfarm runs builds in one-shot virtual machines.

A controller queues build tasks; agents on build hosts ask for work, snapshot
a prepared VM image, boot it under QEMU, hand the task to a worker inside the
guest over TFTP, collect the result manifest with its logs, destroy the
snapshot and report back. It speaks build2's manifest protocol (bbot, brep).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(cmd *cobra.Command, _ []string) {
			level := slog.LevelInfo
			if e.verbose {
				level = slog.LevelDebug
			}
			e.log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
		},
	}
	root.PersistentFlags().BoolVarP(&e.verbose, "verbose", "v", false, "log debugging detail to standard error")
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print buildfarm's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(stdout, "buildfarm %s\n", buildinfo.String())
			return err
		},
	})
	for _, f := range subcommands {
		root.AddCommand(f(e))
	}
	e.log = slog.New(slog.NewTextHandler(stderr, nil))
	err := root.ExecuteContext(ctx)
	var ee *exitError
	var me *manifest.Error
	switch {
	case err == nil, errors.As(err, &ee):
	case errors.As(err, &me):
		// A manifest error says where it is, as compilers do:
		// FILE:LINE:COLUMN: error: DESCRIPTION.
		fmt.Fprintln(stderr, me)
	default:
		fmt.Fprintf(stderr, "buildfarm: %v\n", err)
	}
	return err
}
