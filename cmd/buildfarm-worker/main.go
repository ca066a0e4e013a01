// Command buildfarm-worker runs inside each guest VM: it fetches its task
// from the agent over TFTP, runs the build's steps and uploads the result
// manifest with the logs (see package worker). It is a small static binary
// (CGO_ENABLED=0) with no database or web code, so guest images stay small.
//
// Its first sign of life is the line "buildfarm-worker VERSION: started" on
// standard output, which the guest's init connects to the console. Its
// configuration comes from the buildfarm.* kernel parameters, which flags
// override (for running it by hand, outside a guest).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/buildfarm/buildfarm/internal/buildinfo"
	"github.com/buildfarm/buildfarm/internal/worker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "buildfarm-worker: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("buildfarm-worker", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() {
		fmt.Fprintf(stderr, `usage: buildfarm-worker [flags] [version]

Runs one build (or bootstrap) in a guest VM, talking to the agent over TFTP.
Configuration comes from the kernel command line (buildfarm.tftp,
buildfarm.mode, buildfarm.dir, buildfarm.blksize); flags override it.

`)
		fl.PrintDefaults()
	}
	cmdline := fl.String("cmdline", "/proc/cmdline", "kernel command line `file` to read buildfarm.* parameters from")
	tftpAddr := fl.String("tftp", "", "agent's TFTP server `HOST:PORT` (default from the command line, else 10.0.2.2:23401)")
	mode := fl.String("mode", "", "build or bootstrap (default from the command line, else build)")
	dir := fl.String("dir", "", "work `directory` (default from the command line, else /build)")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() == 1 && fl.Arg(0) == "version" {
		_, err := fmt.Fprintf(stdout, "buildfarm-worker %s\n", buildinfo.String())
		return err
	}
	if fl.NArg() != 0 {
		fl.Usage()
		return fmt.Errorf("unexpected arguments %q", fl.Args())
	}
	fmt.Fprintf(stdout, "buildfarm-worker %s: started\n", buildinfo.String())

	cfg := worker.DefaultConfig()
	if b, err := os.ReadFile(*cmdline); err == nil {
		if err := cfg.ParseCmdline(string(b)); err != nil {
			return err
		}
	} else if *cmdline != "/proc/cmdline" {
		return err
	}
	if *tftpAddr != "" {
		cfg.TFTP = *tftpAddr
	}
	if *mode != "" {
		cfg.Mode = worker.Mode(*mode)
	}
	if *dir != "" {
		cfg.Dir = *dir
	}
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("worker", buildinfo.String())
	return worker.New(cfg, log).Run(ctx)
}
