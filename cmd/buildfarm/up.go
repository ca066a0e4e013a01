package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/buildfarm/buildfarm/internal/agent"
	"github.com/buildfarm/buildfarm/internal/image"
	"github.com/buildfarm/buildfarm/internal/machine"
	"github.com/buildfarm/buildfarm/internal/manifest"
)

func init() {
	register(func(e *env) *cobra.Command {
		var state, task, worker string
		cmd := &cobra.Command{
			Use:   "up [--state DIR] [--task FILE]",
			Short: "Run the farm on this computer (today: one build of examples/hello in a VM)",
			Long: `up runs buildfarm's embedded default under one state directory.

Today that is one build in a real one-shot VM: it makes the busybox machine
(once), adds it to the state directory's machine volume, and has an agent
bootstrap it (once) and build the task — examples/hello by default — in a
fresh snapshot, printing the result manifest. Once the controller exists,
up will run the whole farm: a controller on embedded SQLite, one agent and
the default machine.

State (default /var/lib/buildfarm as root, else ~/.local/state/buildfarm):

  machines/   the machine volumes (btrfs subvolumes on btrfs)
  tftp/       the agent's per-VM TFTP directories

It exits 0 when the build succeeded (or warned), 1 otherwise.`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return up(cmd.Context(), e, state, task, worker)
			},
		}
		cmd.Flags().StringVar(&state, "state", defaultState(), "state `directory`")
		cmd.Flags().StringVar(&worker, "worker", "", "buildfarm-worker `binary` for the machine (default: beside buildfarm, then in PATH)")
		cmd.Flags().StringVar(&task, "task", filepath.Join("examples", "hello", "task.manifest"), "task manifest `file` to build; its directory holds the sources")
		return cmd
	})
}

func defaultState() string {
	if os.Geteuid() == 0 {
		return "/var/lib/buildfarm"
	}
	if d, err := os.UserHomeDir(); err == nil {
		return filepath.Join(d, ".local", "state", "buildfarm")
	}
	return "buildfarm-state"
}

// up is the main job on the embedded default:
//
//  1. Make the busybox machine and add it to the state's volume, unless it
//     is there already.
//  2. Run an agent on the task: it bootstraps the machine (first time),
//     builds the task in a one-shot VM and prints the result.
func up(ctx context.Context, e *env, state, task, worker string) error {
	if _, err := os.Stat(task); err != nil {
		return fmt.Errorf("task %s: %w (run up from a clone of buildfarm, or give --task)", task, err)
	}
	machines := filepath.Join(state, "machines")
	store := &machine.Store{Dir: machines, Log: e.log}
	v, err := store.Volume(machine.DefaultVolume, true)
	if err != nil {
		return err
	}
	const name = "busybox"
	if _, _, err := v.Current(name); err != nil {
		if !errors.Is(err, machine.ErrRemoved) && !errors.Is(err, machine.ErrNotFound) && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		fmt.Fprintf(e.stderr, "up: making the %s machine\n", name)
		tmp, err := os.MkdirTemp(state, ".image-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		opts := image.Options{Preset: name, Out: filepath.Join(tmp, name), Worker: worker, Log: e.log}
		if isTerminal(e.stderr) {
			opts.Progress = e.stderr
		}
		if _, err := image.Build(ctx, opts); err != nil {
			return err
		}
		if _, err := v.Add(ctx, name, machine.Source{Dir: opts.Out}); err != nil {
			return err
		}
		fmt.Fprintf(e.stderr, "up: machine %s added to %s\n", name, v.Dir)
	}

	o := agent.DefaultOptions()
	o.Machines, o.TFTP = machines, filepath.Join(state, "tftp")
	o.FakeRequest, o.DumpResult = task, true
	o.BuildStartup, o.BuildTimeout = 2*time.Minute, 10*time.Minute
	o.BootstrapStartup, o.BootstrapTimeout = 2*time.Minute, 10*time.Minute
	var result bytes.Buffer
	a, err := agent.New(o, e.log, io.MultiWriter(e.stdout, &result))
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "up: building %s in a one-shot VM\n", task)
	if err := a.Run(ctx, nil); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return silent(1, ctx.Err())
	}
	ms, err := manifest.Parse(&result, "result")
	if err != nil || len(ms) != 1 {
		return fmt.Errorf("the agent printed no result manifest: %v", err)
	}
	res, err := manifest.ParseResult(ms[0], "result", manifest.Lenient)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "up: %s %s: %s\n", res.Name, res.Version, res.Status)
	if res.Status != manifest.StatusSuccess && res.Status != manifest.StatusWarning {
		return silent(1, fmt.Errorf("build %s", res.Status))
	}
	return nil
}
