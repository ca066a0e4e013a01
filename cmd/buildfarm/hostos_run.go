package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/buildfarm/buildfarm/internal/hostos"
	"github.com/buildfarm/buildfarm/internal/notify"
)

func init() {
	hostosCommands = append(hostosCommands, hostosMonitorCmd, hostosInstallCmd)
}

func hostosMonitorCmd(e *env) *cobra.Command {
	var (
		src                    configSource
		machines, tftpDir, key string
		hostOS, systemd        bool
		agentArgs              []string
		cpus, ramG             int
		dhcpScript             string
	)
	cmd := &cobra.Command{
		Use:   "monitor (--cmdline STRING | --cmdline-file FILE | --config FILE) [options]",
		Short: "Fetch the toolchains and supervise the agent instances",
		Long: `The monitor of a build host, in this order:

  1. With --host-os (the host OS image's init passes it): set the host up.
     Storage by label: buildos.state mounted at /state, buildos.machines
     (volume "default") and buildos.machines.VOLUME under /build/machines;
     without a machine volume, print how to make one and exit 2 (the init
     then stops at a shell). Stray snapshots of the last boot are removed.
     Network: the first Ethernet interface with carrier on the public
     bridge br0 with DHCP; the hostname from the lease or build-MAC; the
     private bridge br1 with DHCP for guests (udhcpd) and NAT, looked at
     as a guest sees it (a lease, and the build id fetched through the
     NAT; a warning otherwise). SSH (dropbear) for user build with
     buildos.ssh_key only.
  2. Read the upstream build id (buildos.buildid_url), and fetch each
     toolchain's files into <tftp>/toolchains/NAME/ (see "hostos" and the
     README).
  3. Start each toolchain's agent instances ("buildfarm agent", one
     process each) with their slice (--cpu, --ram), nice value,
     controllers and trust; restart one that crashes with back-off, and
     mail the admin (buildos.smtp_relay, buildos.admin_email).
  4. Poll the build id and the checksums files every --poll. On a change,
     drain the agents (SIGHUP: their builds finish) and then, on the host
     OS, reboot; on an ordinary host, start the changed toolchain's agents
     again on the new toolchain. Mail the admin about each.

The agents' key (their --auth-key, for controllers that require
authentication) is --auth-key FILE, made (Ed25519) when there is none; with
--host-os it is /state/etc/host-key.pem by default, on the state volume so
that it lasts (without one it is made again at each boot). Its public half
is written beside it (.pub.pem); when the key is new, the monitor prints it
with its fingerprint and mails it to the admin, to be registered with
"buildfarm controller key add".

Bridges: with --host-os, where the set-up made br0 and br1, each agent gets
--bridge with its toolchain's buildos.bridge (br1, the private NAT bridge
with DHCP, by default). On an ordinary host an agent gets --bridge only
when the configuration names its toolchain's bridge (the admin makes that
bridge, with DHCP for the guests on it); otherwise its VMs have user-mode
networking.

With --systemd (what "hostos install" writes), each agent instance runs in
a transient scope buildfarm-agent-TOOLCHAIN-N.scope in buildfarm.slice,
limited to its slice (systemd-run --scope).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			d, err := src.derive(e, cpus, ramG)
			if err != nil {
				return err
			}
			if hostOS {
				s := &hostos.Setup{Config: d.Config, Root: "/", Log: e.log, DHCPScript: dhcpScript}
				res, err := s.Run(ctx)
				if errors.Is(err, hostos.ErrNoMachines) {
					fmt.Fprintf(e.stderr, "\n%v\n\n", err)
					return silent(2, err)
				}
				if err != nil {
					return err
				}
				if machines == "" {
					machines = res.Storage.Machines
				}
				if key == "" {
					state := res.Storage.State
					if state == "" {
						state = "/state"
						e.log.Warn("no state volume (buildos.state): the agents' key is made again at each boot, and must be registered again")
					}
					key = filepath.Join(state, hostos.StateKey)
				}
			}
			if machines == "" {
				machines = "/build/machines"
			}
			if tftpDir == "" {
				tftpDir = "/build/tftp"
			}
			tcDir := filepath.Join(tftpDir, "toolchains")
			if err := os.MkdirAll(tcDir, 0o755); err != nil {
				return err
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			fetch := &hostos.Fetcher{}
			if isTerminal(e.stderr) {
				fetch.Progress = e.stderr
			}
			m := &hostos.Monitor{
				Config: d, Toolchains: &hostos.Toolchains{Dir: tcDir, Fetch: fetch, Log: e.log},
				Agent: []string{exe, "agent"}, AgentArgs: agentArgs, Machines: machines, TFTP: tftpDir,
				HostOS: hostOS, Log: e.log, AgentOutput: e.stderr,
			}
			if key != "" {
				if m.HostKey, err = hostos.EnsureHostKey(key); err != nil {
					return err
				}
				if m.HostKey.Created {
					host, _ := os.Hostname()
					fmt.Fprintf(e.stderr, "\n%s\n", m.HostKey.Register(host))
				}
			}
			if poll, _ := cmd.Flags().GetDuration("poll"); poll > 0 {
				m.Poll = poll
			}
			if systemd {
				m.Wrap = hostos.ScopeCommand
			}
			if c := d.Config; c.SMTPRelay != "" && c.AdminEmail != "" {
				relay := c.SMTPRelay
				if _, _, err := net.SplitHostPort(relay); err != nil {
					relay += ":25"
				}
				if m.Mail, err = notify.New(notify.Config{Relay: relay, To: c.AdminEmail, Log: e.log}); err != nil {
					return err
				}
				go m.Mail.Run(ctx)
			}
			return m.Run(ctx)
		},
	}
	src.flags(cmd, true)
	f := cmd.Flags()
	f.BoolVar(&hostOS, "host-os", false, "this is the host OS: set the host up first, and reboot on a change upstream")
	f.BoolVar(&systemd, "systemd", false, "run each agent instance in a systemd scope limited to its slice")
	f.StringVar(&machines, "machines", "", "the agents' machines `directory` (default /build/machines)")
	f.StringVar(&tftpDir, "tftp", "", "the agents' TFTP `directory`; the toolchains go in its toolchains/ (default /build/tftp)")
	f.StringVar(&key, "auth-key", "", "the agents' private key `file`, made if missing (--host-os: /state/etc/host-key.pem)")
	f.StringArrayVar(&agentArgs, "agent-arg", nil, "one more `option` for every agent (repeatable; for tests and debugging, e.g. --fake-build)")
	f.Duration("poll", 0, "pause between looks upstream (default 5m)")
	f.IntVar(&cpus, "cpus", 0, "slice as if the host had `N` CPUs (default: its own)")
	f.IntVar(&ramG, "ram-gb", 0, "slice as if the host had `N` GiB of RAM (default: its own)")
	f.StringVar(&dhcpScript, "dhcp-script", "", "udhcpc's event `script` (--host-os)")
	return cmd
}

func hostosInstallCmd(e *env) *cobra.Command {
	var in hostos.Install
	var root string
	cmd := &cobra.Command{
		Use:   "install --config FILE [--root DIR] [--state DIR] [--machines DIR] [--tftp DIR] [--auth-key FILE]",
		Short: "Write the systemd units of an ordinary host",
		Long: `Write, under --root (default /), the units that run this host as the host
OS would, from the configuration file (NAME=VALUE lines, see "hostos"):

  /etc/buildfarm/hostos.conf                 the configuration, copied
  /etc/systemd/system/buildfarm-hostos.service
      the monitor ("hostos monitor --config ... --systemd"), enabled in
      multi-user.target; it fetches the toolchains and supervises the
      agents, and creates the state, machines and TFTP directories
  /etc/systemd/system/buildfarm.slice
      the agents' slice, limited to the sum of their slices
  /etc/buildfarm/host-key.pem (--auth-key)
      the agents' key, made (Ed25519) when there is none, and its public
      half host-key.pub.pem, printed with its fingerprint: register it
      with "buildfarm controller key add" at controllers that require
      authentication (--auth-key= for none)

Each agent instance runs in a scope of its own, buildfarm-agent-TOOLCHAIN-N
.scope, limited to its slice (CPUQuota and MemoryMax), so that
"systemctl status buildfarm.slice" shows every instance. Then:

  systemctl daemon-reload && systemctl start buildfarm-hostos`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := hostos.ReadFile(in.Config)
			if err != nil {
				return err
			}
			h, err := hostos.ThisHost()
			if err != nil {
				return err
			}
			if in.Derived, err = hostos.Derive(c, h); err != nil {
				return err
			}
			if in.Program == "" {
				if in.Program, err = os.Executable(); err != nil {
					return err
				}
			}
			in.Root = root
			wrote, err := in.Write()
			for _, p := range wrote {
				fmt.Fprintln(e.stdout, p)
			}
			if err == nil && in.Key != nil {
				host, _ := os.Hostname()
				fmt.Fprintf(e.stderr, "\n%s\n", in.Key.Register(host))
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&in.Config, "config", "", "the configuration `file`")
	f.StringVar(&root, "root", "/", "install under this `directory`")
	f.StringVar(&in.Program, "program", "", "the buildfarm `binary` the units run (default: this one)")
	f.StringVar(&in.State, "state", "", "state `directory` (default /var/lib/buildfarm)")
	f.StringVar(&in.Machines, "machines", "", "machines `directory` (default <state>/machines)")
	f.StringVar(&in.TFTP, "tftp", "", "TFTP `directory` (default <state>/tftp)")
	f.StringVar(&in.AuthKey, "auth-key", hostos.InstallKey, "the agents' private key `file`, made if missing (\"\": none)")
	cmd.MarkFlagRequired("config")
	return cmd
}
