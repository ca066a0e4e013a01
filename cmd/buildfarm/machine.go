package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/buildfarm/buildfarm/internal/agent"
	"github.com/buildfarm/buildfarm/internal/machine"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/vmrecord"
)

// machineFlags are the options every machine subcommand shares.
type machineFlags struct {
	store  machine.Store
	volume string
}

func (mf *machineFlags) add(cmd *cobra.Command, withVolume bool) {
	f := cmd.Flags()
	f.StringVar(&mf.store.Dir, "machines", "", "the machines directory (the agent's --machines)")
	cmd.MarkFlagRequired("machines")
	f.StringVar(&mf.store.Backend, "backend", "", "storage backend: btrfs or fallback (default: btrfs on btrfs, fallback elsewhere)")
	if withVolume {
		f.StringVar(&mf.volume, "volume", machine.DefaultVolume, "the volume, a directory in --machines")
	}
}

func init() {
	register(func(e *env) *cobra.Command {
		cmd := &cobra.Command{
			Use:   "machine",
			Short: "Add, upgrade, remove and list build machines on a live build host",
			Long: `Manage the machines in an agent's --machines directory:

  <machines>/<volume>/<name>/
      <name>-<P>.<R>/          read-only revision R (P: bootstrap protocol)
      <name>-<P> -> <name>-<P>.<R>   the current revision
      <name>-<toolchain>/      bootstrapped by the agent for a toolchain
      <name>-<toolchain>-<xxx>/    a running task's snapshot

On btrfs each is a subvolume; elsewhere directories with reflink copies or
qcow2 overlays. Every change is safe while agents run: a new revision appears
only when its link does, an upgrade switches the link by an atomic rename
(running tasks keep their snapshots; agents re-bootstrap when they next
enumerate), and a removal unlinks first and waits for running tasks.`,
		}
		cmd.AddCommand(machineAddCmd(e, false), machineAddCmd(e, true), machineRemoveCmd(e), machineListCmd(e), machineCleanCmd(e))
		return cmd
	})
}

// machineAddCmd is `machine add` or, with upgrade, `machine upgrade`.
func machineAddCmd(e *env, upgrade bool) *cobra.Command {
	var (
		mf          machineFlags
		name        string
		receive     string
		incremental string
	)
	use, short, long := "add --machines DIR [--volume V] --name NAME (SRC | --receive FILE)",
		"Add a new machine as revision <P>.0, read-only, and link it",
		`Add machine NAME from SRC: a machine directory (manifest, disk.img and/or
kernel, initrd, cmdline), as made by "buildfarm image build", or a read-only
btrfs subvolume. On a btrfs volume a subvolume on the same file system is
snapshotted and one on another btrfs is sent (btrfs send | btrfs receive);
anything else is copied, with reflinks where the file systems allow.

NAME must be the name in SRC's machine manifest: agents offer controllers
the manifest's name and match tasks against it, so "machine list", the
agent and the controllers all know the machine by one name. Another NAME
is refused with an error naming both; nothing is added.

From another host, send the revision's subvolume over ssh:

  btrfs send /machines/default/NAME/NAME-1.0 |
    ssh HOST buildfarm machine add --machines /machines --name NAME --receive -

and later only the difference to the previous revision:

  btrfs send -p /machines/default/NAME/NAME-1.0 /machines/default/NAME/NAME-1.1 |
    ssh HOST buildfarm machine upgrade --machines /machines --name NAME --receive -`
	if upgrade {
		use, short, long = "upgrade --machines DIR [--volume V] --name NAME [--incremental PARENT] (SRC | --receive FILE)",
			"Add a new revision of a machine and switch its link to it atomically",
			`Add revision <P>.<R+1> of machine NAME from SRC (as for "machine add"; its
manifest must name NAME) and
switch the link <NAME>-<P> to it by an atomic rename. Tasks running in
snapshots of the old revision keep them; agents bootstrap the new revision
when they next enumerate their machines. The previous revision is kept (for
a rollback, and as the parent of incremental sends); older ones are deleted.

With --incremental PARENT (btrfs), SRC and PARENT are read-only subvolumes
and the current revision was received from PARENT: only the difference is
sent (btrfs send -p PARENT SRC | btrfs receive). --receive takes a stream
made on another host, full or incremental (see "machine add --help").`
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long,
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var src machine.Source
			switch {
			case len(args) == 1 && receive == "":
				src.Dir, src.Parent = args[0], incremental
			case len(args) == 0 && receive != "" && incremental == "":
				src.Stream = e.stdin
				if receive != "-" {
					f, err := os.Open(receive)
					if err != nil {
						return err
					}
					defer f.Close()
					src.Stream = f
				}
			default:
				return errors.New("want SRC or --receive FILE (--incremental only with SRC)")
			}
			mf.store.Log = e.log
			v, err := mf.store.Volume(mf.volume, !upgrade)
			if err != nil {
				return err
			}
			var inst *machine.Installed
			verb := "added"
			if upgrade {
				inst, err = v.Upgrade(cmd.Context(), name, src)
				verb = "upgraded"
			} else {
				inst, err = v.Add(cmd.Context(), name, src)
			}
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(e.stdout, "%s %s: revision %s in %s (%s backend, %s)\n",
				verb, name, inst.Revision, inst.Dir, v.Backend.Name(), inst.Method)
			return err
		},
	}
	mf.add(cmd, true)
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "the machine's name")
	cmd.MarkFlagRequired("name")
	f.StringVar(&receive, "receive", "", "read a btrfs send stream from FILE (- for standard input) instead of SRC")
	if upgrade {
		f.StringVar(&incremental, "incremental", "", "send only the difference from the read-only subvolume PARENT (btrfs send -p)")
	}
	return cmd
}

func machineRemoveCmd(e *env) *cobra.Command {
	var (
		mf      machineFlags
		name    string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "remove --machines DIR [--volume V] --name NAME [--timeout D]",
		Short: "Unlink a machine, wait for its running tasks, then delete it",
		Long: `Remove machine NAME: unlink it at once (agents stop bootstrapping it and
start no new task in it), wait for the bootstrap or the tasks running in it
to finish, reporting what it waits for, then delete all of it. If --timeout
passes first, the machine stays unlinked and the command fails; run it again
to finish.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			mf.store.Log = e.log
			v, err := mf.store.Volume(mf.volume, false)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if timeout > 0 {
				var cancel func()
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			var reported time.Duration = -1
			err = v.Remove(ctx, name, func(busy []string, waited time.Duration) {
				if reported < 0 || waited-reported >= 10*time.Second {
					reported = waited
					fmt.Fprintf(e.stderr, "remove %s: waiting %s for %d running task(s): %v\n", name, waited.Round(time.Second), len(busy), busy)
				}
			})
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(e.stdout, "removed %s\n", name)
			return err
		},
	}
	mf.add(cmd, true)
	cmd.Flags().StringVar(&name, "name", "", "the machine's name")
	cmd.MarkFlagRequired("name")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "how long to wait for running tasks (0: no limit)")
	return cmd
}

func machineListCmd(e *env) *cobra.Command {
	var mf machineFlags
	cmd := &cobra.Command{
		Use:   "list --machines DIR",
		Short: "Print the machine header manifests of the current revisions",
		Long: `Print, as a manifest stream, the header (id, name, summary) of the current
revision of every machine in every volume, as bbot's agent --dump-machines
does, with buildfarm-arch, the guest's architecture (x86_64 or aarch64).
Machines being removed (unlinked) are left out. After the headers, a
comment line for each warm state an agent saved (see agent --start) gives
its machine, toolchain and size on disk.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			mf.store.Log = e.log
			ls, err := mf.store.List()
			if err != nil {
				return err
			}
			if err := writeMachineList(e.stdout, ls); err != nil {
				return err
			}
			return writeWarmStates(e.stdout, &mf.store, ls)
		},
	}
	mf.add(cmd, false)
	return cmd
}

// writeMachineList writes the headers as one manifest stream.
func writeMachineList(w io.Writer, ls []machine.Listed) error {
	ms := make([]manifest.Manifest, 0, len(ls))
	for _, l := range ls {
		h := l.Machine.Header()
		h.Arch = string(l.Machine.Architecture()) // said even when the manifest does not
		ms = append(ms, h.Manifest())
	}
	if len(ms) == 0 {
		return nil
	}
	return manifest.Serialize(w, ms)
}

// writeWarmStates writes a comment line for each machine's warm states.
func writeWarmStates(w io.Writer, s *machine.Store, ls []machine.Listed) error {
	for _, l := range ls {
		v, err := s.Volume(l.Volume, false)
		if err != nil {
			return err
		}
		for _, ws := range agent.WarmStates(v.Dir, l.Name) {
			if _, err := fmt.Fprintf(w, "# warm state: machine %s, toolchain %s, %d bytes (%d MiB)\n", l.Name, ws.Toolchain, ws.Bytes, ws.Bytes>>20); err != nil {
				return err
			}
		}
	}
	return nil
}

func machineCleanCmd(e *env) *cobra.Command {
	var mf machineFlags
	var registry string
	cmd := &cobra.Command{
		Use:   "clean --machines DIR",
		Short: "Delete the task snapshots and unfinished bootstraps that crashed agents left",
		Long: `Delete, in every machine of every volume, the task snapshots, bootstraps and
imports whose owning process is gone (their lock is free), as the agent does
when it starts. Snapshots of running agents, and those of the VMs recorded
in --registry that still run (suspended VMs), are left alone.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			mf.store.Log = e.log
			var keep []string
			recs, _ := vmrecord.Registry{Dir: registry}.List()
			for _, r := range recs {
				if r.Alive() && r.Snapshot != "" {
					keep = append(keep, r.Snapshot)
				}
			}
			deleted, err := mf.store.CleanStray(cmd.Context(), keep...)
			for _, d := range deleted {
				fmt.Fprintf(e.stdout, "deleted %s\n", d)
			}
			return err
		},
	}
	mf.add(cmd, false)
	cmd.Flags().StringVar(&registry, "registry", vmrecord.DefaultDir, "`directory` of the host's VM records")
	return cmd
}
