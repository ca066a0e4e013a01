package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/buildfarm/buildfarm/internal/tftp"
)

func init() {
	register(func(e *env) *cobra.Command {
		cmd := &cobra.Command{
			Use:   "tftp",
			Short: "Serve files over TFTP, or get and put them (the agent-worker channel)",
			Long: `The TFTP server and client that the agent and the worker talk through,
usable on their own: RFC 1350 in octet mode with the options blksize,
tsize, timeout (RFC 2347-2349) and windowsize (RFC 7440).`,
		}
		cmd.AddCommand(tftpServe(e), tftpGet(e), tftpPut(e))
		return cmd
	})
}

func tftpServe(e *env) *cobra.Command {
	var (
		s      tftp.Server
		listen string
		rules  []string
	)
	cmd := &cobra.Command{
		Use:   "serve --root DIR --listen ADDR [--rule RULE]... [--allow-put] [--max-put-size N]",
		Short: "Serve the files beneath a directory",
		Long: `Serve the files beneath --root over TFTP on --listen until SIGINT or
SIGTERM, logging each request to standard error. No name reaches outside
the root: ".." and absolute names are refused, and so are symlinks that
point out of it. Uploads land in a temporary file, renamed into place once
complete.

Rules map request names as bbot's agent does (tftpd-hpa's remap syntax):
FLAGS PATTERN REPLACEMENT, where the flags are G (reads), P (writes) and r
(PATTERN is a regular expression; \1 in REPLACEMENT is its first group).
With rules, a request that no rule maps is refused and uploads need a P
rule; without rules, names are relative to the root and uploads need
--allow-put.

Examples:

  buildfarm tftp serve --root /srv/tftp --listen 127.0.0.1:6969

  buildfarm tftp serve --root /build/tftp/vm1 --listen 127.0.0.1:6969 \
      --rule 'Gr ^/?(.+)$ get/\1' --rule 'Pr ^/?(.+)$ put/\1' \
      --max-put-size 1073741824`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if s.Root == "" || listen == "" {
				return fmt.Errorf("tftp serve: --root and --listen are required")
			}
			for _, r := range rules {
				rule, err := tftp.ParseRule(r)
				if err != nil {
					return fmt.Errorf("--rule: %w", err)
				}
				s.Rules = append(s.Rules, rule)
			}
			if fi, err := os.Stat(s.Root); err != nil || !fi.IsDir() {
				return fmt.Errorf("tftp serve: --root %s is not a directory", s.Root)
			}
			conn, err := net.ListenPacket("udp", listen)
			if err != nil {
				return fmt.Errorf("tftp serve: %w", err)
			}
			defer conn.Close()
			s.Log = e.log
			e.log.Info("tftp: serving", "root", s.Root, "listen", conn.LocalAddr().String(), "rules", len(s.Rules), "allow-put", s.AllowPut)
			return s.Serve(cmd.Context(), conn)
		},
	}
	f := cmd.Flags()
	f.StringVar(&s.Root, "root", "", "`directory` to serve")
	f.StringVar(&listen, "listen", "", "UDP `address` to serve on, for example 127.0.0.1:69 (port 0 picks one; the log says which)")
	f.StringArrayVar(&rules, "rule", nil, "name mapping `rule`, for example 'Gr ^/?(.+)$ get/\\1' (repeatable; first match wins)")
	f.BoolVar(&s.AllowPut, "allow-put", false, "accept uploads when no rules are given")
	f.Int64Var(&s.MaxPutSize, "max-put-size", 0, "largest upload in `bytes` (0: no limit)")
	f.Int64Var(&s.MaxTotalPut, "max-total-put", 0, "most `bytes` of all uploads together (0: no limit)")
	f.DurationVar(&s.Timeout, "timeout", tftp.DefaultTimeout, "retransmission timeout unless a client asks for another")
	return cmd
}

// clientFlags adds the client's options to cmd.
func clientFlags(cmd *cobra.Command, o *tftp.Options) {
	f := cmd.Flags()
	f.IntVar(&o.BlockSize, "blksize", 0, "block `size` to ask for, 8 to 65464 (0: plain RFC 1350, 512)")
	f.IntVar(&o.WindowSize, "windowsize", 0, "`blocks` a window, to ask for (RFC 7440; 0: lock-step)")
	f.DurationVar(&o.Timeout, "timeout", 0, "retransmission timeout, from 1s also asked of the server (0: 1s)")
	f.IntVar(&o.Retries, "retries", tftp.DefaultRetries, "times a packet is resent before giving up")
	f.BoolVar(&o.TransferSize, "tsize", true, "ask for the transfer size (RFC 2349)")
}

func tftpGet(e *env) *cobra.Command {
	var o tftp.Options
	cmd := &cobra.Command{
		Use:   "get ADDR REMOTE LOCAL [--blksize N] [--windowsize N] [--timeout D]",
		Short: "Download a file from a TFTP server",
		Long: `Download the file REMOTE from the TFTP server at ADDR (HOST:PORT) to the
file LOCAL ("-" for standard output). LOCAL is replaced only once the
whole file arrived.

Examples:

  buildfarm tftp get 127.0.0.1:69 manifest ./manifest
  buildfarm tftp get 10.0.2.2:6969 toolchain.tar.gz /tmp/tc.tar.gz --blksize 65464 --windowsize 16`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			addr, remote, local := args[0], args[1], args[2]
			if local == "-" {
				_, err := tftp.Get(cmd.Context(), addr, remote, e.stdout, o)
				return err
			}
			return replaceFile(local, func(w io.Writer) error {
				_, err := tftp.Get(cmd.Context(), addr, remote, w, o)
				return err
			})
		},
	}
	clientFlags(cmd, &o)
	return cmd
}

// replaceFile writes name through a temporary file beside it, renamed into
// place when write succeeded.
func replaceFile(name string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".*")
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	err = write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), name)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

func tftpPut(e *env) *cobra.Command {
	var o tftp.Options
	cmd := &cobra.Command{
		Use:   "put ADDR LOCAL REMOTE [--blksize N] [--windowsize N] [--timeout D]",
		Short: "Upload a file to a TFTP server",
		Long: `Upload the file LOCAL ("-" for standard input) to the TFTP server at ADDR
(HOST:PORT) as REMOTE.

Examples:

  buildfarm tftp put 127.0.0.1:69 ./result.manifest result.manifest
  buildfarm tftp put 10.0.2.2:6969 build.log build.log --blksize 1468 --windowsize 16`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			addr, local, remote := args[0], args[1], args[2]
			if local == "-" {
				return tftp.Put(cmd.Context(), addr, remote, e.stdin, -1, o)
			}
			f, err := os.Open(local)
			if err != nil {
				return err
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			return tftp.Put(cmd.Context(), addr, remote, f, fi.Size(), o)
		},
	}
	clientFlags(cmd, &o)
	return cmd
}
