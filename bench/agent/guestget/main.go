// Command guestget is bench/agent's guest-side TFTP client: it fetches one
// file with package tftp's client, the code buildfarm-worker uses for the
// task, its sources and the toolchain, with the worker's options
// (worker.Config.TFTPOptions) unless flags change them. It writes the file as the worker writes a
// sources archive (straight into a file) and prints the payload bytes and
// the transfer's own time in nanoseconds:
//
//	guestget [-blksize N] [-windowsize N] HOST:PORT REMOTE LOCAL
//
// The harness builds it static (CGO_ENABLED=0) into the guest's
// initramfs; it is not part of buildfarm.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/buildfarm/buildfarm/internal/tftp"
	"github.com/buildfarm/buildfarm/internal/worker"
)

func main() {
	opt := worker.DefaultConfig().TFTPOptions()
	flag.IntVar(&opt.BlockSize, "blksize", opt.BlockSize, "blksize to ask for")
	flag.IntVar(&opt.WindowSize, "windowsize", opt.WindowSize, "windowsize to ask for (0: none, lock-step)")
	flag.Parse()
	if flag.NArg() != 3 {
		fmt.Fprintln(os.Stderr, "usage: guestget [-blksize N] [-windowsize N] HOST:PORT REMOTE LOCAL")
		os.Exit(2)
	}
	if err := get(flag.Arg(0), flag.Arg(1), flag.Arg(2), opt); err != nil {
		fmt.Fprintln(os.Stderr, "guestget:", err)
		os.Exit(1)
	}
}

func get(addr, remote, local string, opt tftp.Options) error {
	f, err := os.Create(local)
	if err != nil {
		return err
	}
	t0 := time.Now()
	n, err := tftp.Get(context.Background(), addr, remote, f, opt)
	d := time.Since(t0)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	fmt.Printf("%d %d\n", n, d.Nanoseconds())
	return nil
}
