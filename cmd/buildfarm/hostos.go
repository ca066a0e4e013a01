package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/buildfarm/buildfarm/internal/hostos"
)

func init() {
	register(func(e *env) *cobra.Command {
		cmd := &cobra.Command{
			Use:   "hostos",
			Short: "The host OS: buildos.* configuration, toolchains, the agents' monitor, set-up and systemd units",
			Long: `A build host is configured by buildos.* parameters, after build2's Build
OS: on the kernel command line when it boots the host OS image (buildfarm
image build --preset hostos), or in a file (--config) on an ordinary host.

Host-wide parameters:
  buildos.smtp_relay=HOST[:PORT]   SMTP relay for admin email
  buildos.admin_email=ADDRESS      the admin's address
  buildos.buildid_url=URL          the upstream buildos-buildid; a change reboots the host
  buildos.ssh_key="TYPE KEY [C]"   the public key that may log in as user build
  buildos.cpu_overcommit=N[/D]     CPU overcommit ratio (1 by default)
  buildos.ram_overcommit=N[/D]     RAM overcommit ratio (1 by default)
  buildos.cpu_reserved=N           CPUs kept for the host (0 by default)
  buildos.ram_reserved=N           GiB of RAM kept for the host (4 by default)

Per-toolchain parameters (no suffix: the toolchain "default"; names are
letters, digits and '_', no '-'):
  buildos.toolchain_url[.NAME]=URL      the toolchain's checksums file (http, https, tftp, file)
  buildos.toolchain_trust[.NAME]=FP     fingerprint written to the toolchain's trust file
  buildos.instances[.NAME]=N            agent instances (1 by default)
  buildos.nice[.NAME]=N                 the agents' nice value, -20 to 19 (0 by default)
  buildos.bridge[.NAME]=br0|br1         the guests' bridge (br1, private NAT, by default)
  buildos.controller_url[.NAME]=URL     a controller (repeatable; at least one)
  buildos.controller_trust[.NAME]=FP    a repository fingerprint to trust (repeatable)

Values holding spaces are double-quoted on the kernel command line. An
unknown buildos.* parameter is a warning; a bad value is an error naming
the parameter. A --config file holds one NAME=VALUE a line, NAME with or
without the buildos. prefix; # starts a comment line.

The CPUs less cpu_reserved, times cpu_overcommit, and the RAM less
ram_reserved, times ram_overcommit, are shared equally among all agent
instances of all toolchains: each instance's VM gets that slice.`,
		}
		cmd.AddCommand(hostosConfigCmd(e))
		for _, f := range hostosCommands {
			cmd.AddCommand(f(e))
		}
		return cmd
	})
}

// hostosCommands are the hostos subcommands that other files add.
var hostosCommands []func(*env) *cobra.Command

// configSource is the --cmdline, --cmdline-file and --config flags that
// say where a hostos command reads the buildos.* parameters from.
type configSource struct {
	cmdline, cmdlineFile, file string
}

func (s *configSource) flags(cmd *cobra.Command, withFile bool) {
	f := cmd.Flags()
	f.StringVar(&s.cmdline, "cmdline", "", "a kernel command `line` holding buildos.* parameters")
	if withFile {
		f.StringVar(&s.cmdlineFile, "cmdline-file", "", "read the kernel command line from `FILE` (/proc/cmdline on the host OS)")
		f.StringVar(&s.file, "config", "", "read NAME=VALUE lines from `FILE` (an ordinary host)")
	}
}

func (s *configSource) read() (*hostos.Config, error) {
	n := 0
	for _, v := range []string{s.cmdline, s.cmdlineFile, s.file} {
		if v != "" {
			n++
		}
	}
	switch {
	case n != 1:
		return nil, fmt.Errorf("give one of --cmdline, --cmdline-file and --config")
	case s.cmdline != "":
		return hostos.ParseCmdline(s.cmdline)
	case s.cmdlineFile != "":
		return hostos.ReadCmdlineFile(s.cmdlineFile)
	default:
		return hostos.ReadFile(s.file)
	}
}

// derive reads the configuration and applies it to this host, or to the
// CPUs and GiB given (0: this host's).
func (s *configSource) derive(e *env, cpus, ramGB int) (*hostos.Derived, error) {
	c, err := s.read()
	if err != nil {
		return nil, err
	}
	for _, w := range c.Warnings {
		e.log.Warn(w)
	}
	h, err := hostos.ThisHost()
	if err != nil && (cpus == 0 || ramGB == 0) {
		return nil, err
	}
	if cpus > 0 {
		h.CPUs = cpus
	}
	if ramGB > 0 {
		h.RAMKiB = int64(ramGB) << 20
	}
	return hostos.Derive(c, h)
}

func hostosConfigCmd(e *env) *cobra.Command {
	var (
		src        configSource
		cpus, ramG int
	)
	cmd := &cobra.Command{
		Use:   "config (--cmdline STRING | --cmdline-file FILE | --config FILE) [--cpus N] [--ram-gb N]",
		Short: "Print the derived host configuration as JSON",
		Long: `Print the configuration that the buildos.* parameters give on this host
(or on one with --cpus CPUs and --ram-gb GiB of RAM) as JSON: the host-wide
settings, "host" (its CPUs and RAM in KiB), and "toolchains", each with
name, toolchain_url, toolchain_trust, instances, nice, bridge, controllers,
controller_trust, and cpus and ram_kib, the slice of each of its agent
instances. Warnings about unknown parameters go to standard error and into
"warnings".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := src.derive(e, cpus, ramG)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(e.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(d)
		},
	}
	src.flags(cmd, true)
	cmd.Flags().IntVar(&cpus, "cpus", 0, "the host's `CPUs` (default: this host's)")
	cmd.Flags().IntVar(&ramG, "ram-gb", 0, "the host's RAM in `GiB` (default: this host's)")
	return cmd
}
