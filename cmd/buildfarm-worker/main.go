// Command buildfarm-worker runs inside each guest VM: it fetches its task
// from the agent over TFTP, runs the build's steps and uploads the result
// manifest with the logs. It is a small static binary (CGO_ENABLED=0) with
// no database or web code, so guest images stay small.
//
// Its first sign of life is the line "buildfarm-worker VERSION: started" on
// standard output, which the guest's init connects to the console.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/buildfarm/buildfarm/internal/buildinfo"
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
	if len(args) == 1 && (args[0] == "version" || args[0] == "--version") {
		_, err := fmt.Fprintf(stdout, "buildfarm-worker %s\n", buildinfo.String())
		return err
	}
	fmt.Fprintf(stdout, "buildfarm-worker %s: started\n", buildinfo.String())
	_ = ctx
	return nil
}
