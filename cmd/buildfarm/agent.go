package main

import (
	"github.com/spf13/cobra"

	"github.com/buildfarm/buildfarm/internal/agent"
)

func init() {
	register(func(e *env) *cobra.Command {
		o := agent.DefaultOptions()
		cmd := &cobra.Command{
			Use:   "agent [options] [CONTROLLER_URL...]",
			Short: "Run builds in one-shot VMs for controllers (bbot's agent)",
			Long: `The agent runs on a build host. It bootstraps the machines of its machines
directory for its toolchain and serves the controllers given as URLs, as
bbot's agent does, in this order:

  1. Deliver the results an earlier run could not upload (the spool).
  2. Enumerate the machines again (so that "machine add", "upgrade" and
     "remove" reach a running agent), bootstrapping those that need it.
  3. POST a task request (text/manifest) to each CONTROLLER_URL in turn,
     offering the machines by their manifests' names, until one answers
     with a task. The header Buildfarm-Wait: SECONDS lets a controller hold
     the request up to --long-poll (shared out among the controllers; a
     bbot controller ignores it). A controller that fails, answers garbage
     or too much, or is slower than --request-timeout is logged and
     skipped. Without a task, the agent backs off (about 1 s at first,
     doubling with jitter up to --request-interval) and goes to 2.
  4. Refuse a task whose challenge it cannot sign (no --auth-key), and one
     without buildfarm-* steps (an error result says so). Download the
     task's sources from its buildfarm-archive-url (at most --max-archive
     bytes), checked against buildfarm-archive-sha256.
  5. Perform the task in a fresh snapshot of its machine, in a one-shot VM
     that reaches nothing but the agent's TFTP server.
  6. Sign the challenge, write the result to the spool, and POST it to the
     task's result URL. An upload that fails stays spooled and is retried
     with back-off (also after a restart) until the controller takes it,
     or refuses it for good (a 4xx other than 408 and 429: logged, dropped).

--instances N performs N tasks at once, each in its own VM with --cpu CPUs
and --ram MiB (the flags give each VM's share, so the host needs N times
as much). The spool is --spool, by default <tftp>/spool/<instance>.

Challenges are signed with --auth-key as bbot signs them: RSA keys with
PKCS#1 v1.5 over the challenge's bytes (openssl rsautl -sign), Ed25519 keys
(the default kind for a new agent) as Ed25519 does. Make a key with

  openssl genpkey -algorithm ed25519 -out key.pem

and register its public half with the controller. HTTPS controllers are
verified against the system's roots plus --ca.

Without a controller, --fake-request runs one task from a file:

  buildfarm agent --machines /build/machines \
      --fake-request examples/hello/task.manifest --dump-result

The task's buildfarm-archive file is taken from the directory holding
the task manifest; when it is not there, that directory is packed as the
task's sources, up to 256 MiB. A directory that is not a project's is
refused rather than packed: the file system's root, a directory just
below it (such as /tmp), and home directories (/root, /home/NAME, $HOME).

After bootstrapping a machine the agent boots it once more to the point
where its worker waits for a task, and saves that VM's state beside the
machine: its devices' state, and its memory in a sparse RAM file, which
each restored VM maps copy on write. With --start auto (the default) or
warm, a task's VM is restored from that state instead of booted
(0.35-0.5 s to the worker's first request under TCG here, against about
3 s for a boot of the busybox machine), and the worker gets the host's
time and fresh random bytes; a state that does not
fit (another QEMU, --ram, --cpu, machine or toolchain) or fails to restore
gives a cold boot, logged with the reason, and is built again. Each result
says how its VM started in its buildfarm-start field (warm or cold).

Networking: by default each VM has QEMU's user-mode networking in a
network namespace of its own, whose only service is the agent's TFTP
server. With --bridge NAME each VM is on that host bridge instead, as
Build OS runs them (br0 public, br1 private with NAT and DHCP for
guests): a tap device of its own on the bridge (deleted with the VM;
leftovers of a dead agent are deleted at the next start), a fresh random
MAC, an address from the bridge's DHCP server, and the agent's TFTP
server on the bridge's IPv4 address, on the VM's --tftp-port, taking
requests only from the address the host's neighbour table gives the VM's
MAC (the other guests on the bridge cannot read its task or upload its
result). The guest otherwise reaches whatever the bridge reaches. A VM
restored from its warm state on a bridge gets its start over its
virtio-serial guest channel, not the network: the worker gives its
interface the VM's fresh MAC and asks DHCP for a new lease before it
says anything on the network.

A VM that never makes its
first TFTP request has mis-booted and is retried; one that misses a
deadline or ends abnormally is suspended, not destroyed, for investigation.
SIGTERM stops the running VMs, deletes their snapshots and exits 0.
SIGHUP drains the agent: it asks for no more tasks, lets those under way
finish and reports them, then exits 0.

Every VM has a management console (buildfarm console VM, after
uml_mconsole) on console.sock in its directory, linked from --console-links
as TOOLCHAIN-INSTANCE.sock (TOOLCHAIN-INSTANCE.SLOT.sock with --instances
above 1), and a record in --registry (buildfarm vm list shows them).

A suspended VM is paused and outlives the task and the agent, the one
exception to "a QEMU never outlives its agent": it keeps its QEMU process,
snapshot, network namespace, serial log, sockets and TFTP directory, and a
record saying why. The admin is emailed (with --smtp-relay and
--admin-email). An agent that starts finds the suspended VMs of its
toolchain and instance and re-opens their consoles. A suspended VM is
destroyed --suspend-limit after it was suspended, or when the admin ends it
with "buildfarm console VM halt" (the agent then deletes what it kept
within a second, or at its next start). A host keeps at most --suspend-max
suspended VMs: past it, the oldest is destroyed, the email about the new
one says so, and the agent goes on taking tasks.

Admin email goes through --smtp-relay (HOST:PORT, no authentication,
STARTTLS when offered) to --admin-email, on a suspended VM, a failed
bootstrap and a skipped machine, at most one mail (or digest) every 15
minutes.`,
			RunE: func(cmd *cobra.Command, args []string) error {
				a, err := agent.New(o, e.log, e.stdout)
				if err != nil {
					return err
				}
				return a.Run(cmd.Context(), args)
			},
		}
		f := cmd.Flags()
		f.StringVar(&o.Machines, "machines", o.Machines, "machines `directory`: one subdirectory per volume")
		f.StringVar(&o.TFTP, "tftp", o.TFTP, "TFTP `directory`: one subdirectory per running VM")
		f.IntVar(&o.TFTPPort, "tftp-port", o.TFTPPort, "base TFTP `port` when VMs share the host's network (plus the instance number, 100 per toolchain number above 1, and 1000 per slot)")
		f.IntVar(&o.Instance, "instance", o.Instance, "instance `number` of this agent among its toolchain's on the host (1 to 99)")
		f.IntVar(&o.Instances, "instances", o.Instances, "`number` of tasks performed at once, each in its own VM")
		f.StringVar(&o.Spool, "spool", o.Spool, "`directory` of results not yet delivered (default <tftp>/spool/<instance>)")
		f.StringVar(&o.ToolchainName, "toolchain-name", o.ToolchainName, "toolchain `name`")
		f.IntVar(&o.ToolchainNum, "toolchain-num", o.ToolchainNum, "toolchain `number` (1 to 9), its own for each toolchain with agents on the host: adds 100 to the instance's TFTP port, TFTP directory <tftp>/<number> and spool <tftp>/spool/<number> for each number above 1")
		f.StringVar(&o.ToolchainVersion, "toolchain-ver", o.ToolchainVersion, "toolchain `version` (a standard version, as task requests carry it)")
		f.StringVar(&o.ToolchainID, "toolchain-id", o.ToolchainID, "toolchain `id`; a new one re-bootstraps the machines")
		f.StringVar(&o.Toolchain, "toolchain", o.Toolchain, "`directory` of toolchain files the worker installs at bootstrap")
		f.StringVar(&o.Artifacts, "artifacts", o.Artifacts, "`directory` to keep tasks' artifacts in (NAME-VERSION/FILE); the worker uploads what the steps leave in $BUILDFARM_ARTIFACTS")
		f.IntVar(&o.CPUs, "cpu", o.CPUs, "virtual `CPUs` of each VM (each of --instances VMs gets this many)")
		f.IntVar(&o.MemoryMB, "ram", o.MemoryMB, "`MiB` of memory of each VM (each of --instances VMs gets this much)")
		f.StringVar(&o.Accel, "accel", o.Accel, "accelerator: kvm, tcg, or auto (KVM only when a test guest really runs under it)")
		f.StringVar(&o.Start, "start", o.Start, "how task VMs start: warm (restored from a state saved after bootstrap, built first where missing), cold (booted), or auto (warm where a valid state exists)")
		f.DurationVar(&o.BootstrapStartup, "bootstrap-startup", o.BootstrapStartup, "bootstrap VM's time to its first TFTP request")
		f.DurationVar(&o.BootstrapTimeout, "bootstrap-timeout", o.BootstrapTimeout, "bootstrap's time to upload its manifest")
		f.IntVar(&o.BootstrapRetries, "bootstrap-retries", o.BootstrapRetries, "retries of a bootstrap VM that mis-booted")
		f.DurationVar(&o.BuildStartup, "build-startup", o.BuildStartup, "build VM's time to its first TFTP request")
		f.DurationVar(&o.BuildTimeout, "build-timeout", o.BuildTimeout, "build's time to upload its result")
		f.IntVar(&o.BuildRetries, "build-retries", o.BuildRetries, "retries of a build VM that mis-booted")
		f.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", o.ShutdownTimeout, "bootstrap VM's time to power off after its job (a build's VM is forced down once its result is in)")
		f.DurationVar(&o.RequestTimeout, "request-timeout", o.RequestTimeout, "time for one exchange with a controller, beyond the long poll")
		f.DurationVar(&o.RequestInterval, "request-interval", o.RequestInterval, "longest pause between rounds of task requests (the back-off's cap)")
		f.DurationVar(&o.LongPoll, "long-poll", o.LongPoll, "how long a controller may hold a task request waiting for a task (0: no long polling)")
		f.Int64Var(&o.MaxArchive, "max-archive", o.MaxArchive, "largest sources archive downloaded, in `bytes`")
		f.StringVar(&o.AuthKey, "auth-key", o.AuthKey, "private key `file` (PEM, Ed25519 or RSA) for signing controllers' challenges")
		f.StringVar(&o.CA, "ca", o.CA, "PEM `file` of CA certificates to verify HTTPS controllers with, beside the system's roots")
		f.StringVar(&o.Metrics, "metrics", o.Metrics, "serve Prometheus metrics at http://`ADDR`/metrics (VM boots and boot time, snapshot time, mis-boots, suspended VMs, TFTP bytes, spooled results)")
		f.StringSliceVar(&o.Trust, "trust", o.Trust, "repository certificate `fingerprint` (SHA256, XX:XX:...) to trust, or yes (repeatable): added to each task's trust, which the worker gives the steps as $BUILDFARM_TRUST")
		f.BoolVar(&o.FakeBootstrap, "fake-bootstrap", o.FakeBootstrap, "record machines as bootstrapped without booting them")
		f.StringVar(&o.FakeMachine, "fake-machine", o.FakeMachine, "machine header manifest `file` to use instead of enumerating machines")
		f.BoolVar(&o.FakeBuild, "fake-build", o.FakeBuild, "take each task's snapshot, then answer abort without booting a VM")
		f.StringVar(&o.FakeRequest, "fake-request", o.FakeRequest, "task manifest `file` to perform instead of asking controllers")
		f.BoolVar(&o.DumpMachines, "dump-machines", o.DumpMachines, "print the machines' header manifests and exit")
		f.BoolVar(&o.DumpTask, "dump-task", o.DumpTask, "print the task manifest and exit")
		f.BoolVar(&o.DumpResult, "dump-result", o.DumpResult, "print the result manifest and exit")
		f.StringVar(&o.Registry, "registry", o.Registry, "`directory` of the host's VM records (buildfarm vm list reads them)")
		f.StringVar(&o.ConsoleLinks, "console-links", o.ConsoleLinks, "`directory` of the console links TOOLCHAIN-INSTANCE[.SLOT].sock")
		f.DurationVar(&o.SuspendLimit, "suspend-limit", o.SuspendLimit, "how long a suspended VM is kept before it is destroyed")
		f.IntVar(&o.SuspendMax, "suspend-max", o.SuspendMax, "suspended VMs the host keeps at most; past it the oldest is destroyed")
		f.StringVar(&o.SMTPRelay, "smtp-relay", o.SMTPRelay, "`HOST:PORT` of the SMTP relay for admin email (none by default)")
		f.StringVar(&o.AdminEmail, "admin-email", o.AdminEmail, "the admin's email `address`")
		f.BoolVar(&o.NoNetNS, "no-netns", o.NoNetNS, "run VMs in the host's network namespace (no isolation; for non-root use)")
		f.StringVar(&o.Bridge, "bridge", o.Bridge, "put each VM on the host bridge `NAME` (such as Build OS's br0 or br1) through a tap device of its own with a fresh MAC, configured by DHCP, the agent's TFTP server on the bridge's IPv4 address (default: user networking, each VM in a network namespace of its own; needs root)")
		f.BoolVar(&o.Once, "once", o.Once, "perform one task, deliver its result, then exit (with --instances 1)")
		return cmd
	})
}
