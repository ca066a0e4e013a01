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
directory for its toolchain, asks each controller in turn for a task,
performs it in a fresh snapshot of a machine in a one-shot VM that reaches
nothing but the agent's TFTP server, and returns the result.

Without a controller, --fake-request runs one task from a file:

  buildfarm agent --machines /build/machines \
      --fake-request examples/hello/task.manifest --dump-result

The directory holding the task manifest is packed as the task's sources
(its buildfarm-archive field names the archive). A VM that never makes its
first TFTP request has mis-booted and is retried; one that misses a
deadline or ends abnormally is suspended, not destroyed, for investigation.
SIGTERM stops the running VM, deletes its snapshot and exits 0.`,
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
		f.IntVar(&o.TFTPPort, "tftp-port", o.TFTPPort, "base TFTP `port` (plus the instance number) when VMs share the host's network")
		f.IntVar(&o.Instance, "instance", o.Instance, "instance `number` of this agent on the host")
		f.StringVar(&o.ToolchainName, "toolchain-name", o.ToolchainName, "toolchain `name`")
		f.IntVar(&o.ToolchainNum, "toolchain-num", o.ToolchainNum, "toolchain `number`")
		f.StringVar(&o.ToolchainVer, "toolchain-ver", o.ToolchainVer, "toolchain `version`")
		f.StringVar(&o.ToolchainID, "toolchain-id", o.ToolchainID, "toolchain `id`; a new one re-bootstraps the machines")
		f.StringVar(&o.Toolchain, "toolchain", o.Toolchain, "`directory` of toolchain files the worker installs at bootstrap")
		f.StringVar(&o.Artifacts, "artifacts", o.Artifacts, "`directory` to keep tasks' artifacts in (NAME-VERSION/FILE); the worker uploads what the steps leave in $BUILDFARM_ARTIFACTS")
		f.IntVar(&o.CPU, "cpu", o.CPU, "virtual `CPUs` per VM")
		f.IntVar(&o.RAM, "ram", o.RAM, "`MiB` of memory per VM")
		f.StringVar(&o.Accel, "accel", o.Accel, "accelerator: kvm, tcg, or auto (KVM only when a test guest really runs under it)")
		f.DurationVar(&o.BootstrapStartup, "bootstrap-startup", o.BootstrapStartup, "bootstrap VM's time to its first TFTP request")
		f.DurationVar(&o.BootstrapTimeout, "bootstrap-timeout", o.BootstrapTimeout, "bootstrap's time to upload its manifest")
		f.IntVar(&o.BootstrapRetries, "bootstrap-retries", o.BootstrapRetries, "retries of a bootstrap VM that mis-booted")
		f.DurationVar(&o.BuildStartup, "build-startup", o.BuildStartup, "build VM's time to its first TFTP request")
		f.DurationVar(&o.BuildTimeout, "build-timeout", o.BuildTimeout, "build's time to upload its result")
		f.IntVar(&o.BuildRetries, "build-retries", o.BuildRetries, "retries of a build VM that mis-booted")
		f.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", o.ShutdownTimeout, "VM's time to power off after its job")
		f.DurationVar(&o.RequestTimeout, "request-timeout", o.RequestTimeout, "time for a controller to answer a request")
		f.DurationVar(&o.RequestInterval, "request-interval", o.RequestInterval, "pause after a round of requests that got no task")
		f.StringVar(&o.AuthKey, "auth-key", o.AuthKey, "private key `file` for signing controllers' challenges")
		f.StringSliceVar(&o.Trust, "trust", o.Trust, "repository certificate `fingerprint` to trust (repeatable)")
		f.BoolVar(&o.FakeBootstrap, "fake-bootstrap", o.FakeBootstrap, "record machines as bootstrapped without booting them")
		f.StringVar(&o.FakeMachine, "fake-machine", o.FakeMachine, "machine header manifest `file` to use instead of enumerating machines")
		f.BoolVar(&o.FakeBuild, "fake-build", o.FakeBuild, "answer tasks with an abort result without booting a VM")
		f.StringVar(&o.FakeRequest, "fake-request", o.FakeRequest, "task manifest `file` to perform instead of asking controllers")
		f.BoolVar(&o.DumpMachines, "dump-machines", o.DumpMachines, "print the machines' header manifests and exit")
		f.BoolVar(&o.DumpTask, "dump-task", o.DumpTask, "print the task manifest and exit")
		f.BoolVar(&o.DumpResult, "dump-result", o.DumpResult, "print the result manifest and exit")
		f.BoolVar(&o.NoNetNS, "no-netns", o.NoNetNS, "run VMs in the host's network namespace (no isolation; for non-root use)")
		f.BoolVar(&o.Once, "once", o.Once, "perform one task, then exit")
		return cmd
	})
}
