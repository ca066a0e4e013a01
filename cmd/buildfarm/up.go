package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/buildfarm/buildfarm/internal/agent"
	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/controller"
	"github.com/buildfarm/buildfarm/internal/image"
	"github.com/buildfarm/buildfarm/internal/machine"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/store"
	"github.com/buildfarm/buildfarm/internal/worker"
)

// upOptions are up's command-line options.
type upOptions struct {
	state, listen, examples   string
	metrics                   string   // the agent's metrics address
	arches                    []string // --arch, as given
	workers                   []string // --worker, as given: [ARCH=]FILE
	instances                 int
	buildTimeout, demoTimeout time.Duration
	demo                      bool
}

func init() {
	register(func(e *env) *cobra.Command {
		o := upOptions{listen: "127.0.0.1:8080", metrics: "127.0.0.1:0", buildTimeout: time.Hour, demoTimeout: 20 * time.Minute}
		cmd := &cobra.Command{
			Use:   "up [--state DIR] [--listen ADDR] [--arch ARCH,...] [--demo]",
			Short: "Run the whole farm on this computer: a controller, an agent and the busybox machine",
			Long: `up runs buildfarm's embedded default, the whole farm on one computer, under
one state directory:

  1. It makes the busybox machine of each architecture --arch names
     (image build --preset busybox --arch ARCH; default this host's) and
     adds it to the state's machine volume, unless it is there already:
     busybox for x86_64, busybox-aarch64 for aarch64. A machine that an
     older buildfarm made, whose worker speaks an older protocol than
     this agent's, is made again and upgraded (machine upgrade).
  2. It writes the state's buildtab if it is missing, and adds the lines
     of an architecture it lacks (see below).
  3. It starts a controller on SQLite (state/controller.db) listening on
     --listen (default 127.0.0.1:8080; HOST:0 picks a free port) and prints
     its URL, which is also the dashboard's (metrics at URL/metrics).
  4. It starts one agent in this process, serving that controller with
     long polling, with --instances slots (default: fitted to this host,
     see below), its metrics at http://--metrics/metrics. The agent
     bootstraps each machine that needs it before it asks for tasks.

Then it serves until interrupted (SIGINT or SIGTERM: running VMs are
stopped and their snapshots deleted, the controller answers what it holds
and exits). Submit work to it with

  buildfarm submit --controller URL --dir DIR --template DIR/task.manifest
  buildfarm wait --controller URL ID

--demo submits through the controller's API, from --examples, the hello
of each architecture offered to its busybox configuration (examples/hello
for x86_64; examples/hello-aarch64, whose test checks uname -m, for
aarch64) and examples/hello-broken to the first one's, waits for their
results, prints each one's status and operations, stops the farm, and
exits 0 when each hello ended success and hello-broken error, 1
otherwise.

The buildtab (state/buildtab), written if missing and read at each start;
for the first --arch:

  busybox*  busybox  x86_64-linux-gnu  default
  debian*   debian   x86_64-linux-gnu  gcc

and for each other, aarch64 for example:

  busybox-aarch64*  busybox-aarch64  aarch64-linux-gnu  aarch64
  debian-aarch64*   debian-aarch64   aarch64-linux-gnu  gcc-aarch64

(for aarch64 first, its lines have the classes default and gcc). A
configuration's machine must be of its target's architecture: the
controller matches the architecture each machine's manifest names. A
submission that names no configuration builds on the first
architecture's busybox; "--config debian" (or "gcc") builds on a machine
named debian*, which "machine add" may add (image build --preset debian
makes one), "--config busybox-aarch64" (or "aarch64") on the aarch64
machine. Edit the file to change them; up adds the lines of an
architecture that no configuration targets.

--worker FILE is the buildfarm-worker binary for this host's
architecture, --worker aarch64=FILE the one for aarch64 guests (built with
GOARCH=arm64 CGO_ENABLED=0); by default image build's (beside buildfarm,
then in PATH: buildfarm-worker, or buildfarm-worker-arm64 for aarch64 on
an x86_64 host).

--instances 0 (the default) fits the agent to the host: one VM a CPU
minus one CPU left to the host (the controller, the agent, QEMU's own
threads), and no more VMs than half the available memory holds at the
agent's 512 MiB a VM; at least one. Under TCG each guest CPU keeps a host
CPU busy, so more VMs than that would only slow each other down.

State (default /var/lib/buildfarm as root, else ~/.local/state/buildfarm):

  machines/       the machine volumes (btrfs subvolumes on btrfs)
  tftp/           the agent's per-VM TFTP directories and its result spool
  controller.db   the controller's SQLite database
  buildtab        the build configurations`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return up(cmd.Context(), e, o)
			},
		}
		f := cmd.Flags()
		f.StringVar(&o.state, "state", defaultState(), "state `directory`")
		f.StringVar(&o.listen, "listen", o.listen, "the controller's `address` (HOST:PORT; port 0 picks one)")
		f.StringVar(&o.metrics, "metrics", o.metrics, "the agent's Prometheus metrics `address` (port 0 picks one; the controller's are at its URL/metrics)")
		f.IntVar(&o.instances, "instances", 0, "`number` of tasks the agent performs at once (0: fitted to this host)")
		f.DurationVar(&o.buildTimeout, "build-timeout", o.buildTimeout, "a task's longest build time (controller and agent)")
		f.StringSliceVar(&o.arches, "arch", nil, "guest `architectures` to offer, comma-separated or repeated: x86_64, aarch64 (default this host's)")
		f.StringArrayVar(&o.workers, "worker", nil, "the buildfarm-worker `[ARCH=]FILE` for the machine of this host's architecture, or of ARCH (repeatable; default: beside buildfarm, then in PATH)")
		f.BoolVar(&o.demo, "demo", false, "submit examples/hello and examples/hello-broken (and hello-aarch64 with aarch64), wait for their results, and exit")
		f.StringVar(&o.examples, "examples", "examples", "`directory` holding hello, hello-broken and hello-aarch64 (--demo)")
		f.DurationVar(&o.demoTimeout, "demo-timeout", o.demoTimeout, "how long --demo waits for its results")
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

// upToolchain is the toolchain up's agent has.
const upToolchain = "default"

// upArch is an architecture up offers: its busybox machine and the
// worker binary for it ("": image build's default).
type upArch struct {
	arch    arch.Arch
	machine string
	worker  string
}

// upMachineName is the name of up's busybox machine of a, also the name
// of its configuration: busybox for x86_64, busybox-ARCH for another.
func upMachineName(a arch.Arch) string {
	if a == arch.X8664 {
		return "busybox"
	}
	return "busybox-" + string(a)
}

// upArches reads --arch (default this host's architecture, x86_64 on
// another host) and --worker ([ARCH=]FILE, a plain FILE for the host's
// architecture).
func upArches(names, workers []string) ([]upArch, error) {
	host := arch.Host()
	if host == "" {
		host = arch.X8664
	}
	if len(names) == 0 {
		names = []string{string(host)}
	}
	var as []upArch
	for _, n := range names {
		a, err := arch.Parse(strings.TrimSpace(n))
		if err != nil {
			return nil, fmt.Errorf("--arch: %w", err)
		}
		if !slices.ContainsFunc(as, func(u upArch) bool { return u.arch == a }) {
			as = append(as, upArch{arch: a, machine: upMachineName(a)})
		}
	}
	for _, w := range workers {
		a, file := host, w
		if pre, rest, ok := strings.Cut(w, "="); ok {
			if pa, err := arch.Parse(pre); err == nil {
				a, file = pa, rest
			}
		}
		i := slices.IndexFunc(as, func(u upArch) bool { return u.arch == a })
		switch {
		case file == "":
			return nil, fmt.Errorf("--worker %q: no file", w)
		case i < 0:
			return nil, fmt.Errorf("--worker %q: a worker for %s, which --arch does not offer", w, a)
		case as[i].worker != "":
			return nil, fmt.Errorf("--worker %q: a second worker for %s", w, a)
		}
		as[i].worker = file
	}
	return as, nil
}

// up runs the farm (see the command's help):
//
//  1. Write the buildtab if missing, add the lines of an architecture it
//     lacks, and read it.
//  2. Open the store and listen, so that a busy address is said at once.
//  3. Make each architecture's busybox machine and add it, unless it is
//     there.
//  4. Serve the controller and run the agent, each until ctx ends or
//     either fails.
//  5. With --demo, submit the examples, wait for their results, print
//     them and stop the farm; else serve until interrupted.
func up(ctx context.Context, e *env, o upOptions) error {
	arches, err := upArches(o.arches, o.workers)
	if err != nil {
		return err
	}
	demo := upDemoTasks(arches)
	if o.demo {
		for _, d := range demo {
			if _, err := os.Stat(filepath.Join(o.examples, d.example, "task.manifest")); err != nil {
				return fmt.Errorf("--demo: examples: %w (run up from a clone of buildfarm, or give --examples)", err)
			}
		}
	}
	if o.instances < 0 {
		return fmt.Errorf("--instances %d: must not be negative (0: fitted to this host)", o.instances)
	}
	if o.buildTimeout <= 0 {
		return fmt.Errorf("--build-timeout %v: must be positive", o.buildTimeout)
	}
	// 1.
	if err := os.MkdirAll(o.state, 0o755); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	bt, added, err := upBuildtab(filepath.Join(o.state, "buildtab"), arches)
	if err != nil {
		return err
	}
	for _, a := range added {
		fmt.Fprintf(e.stderr, "up: buildtab: added the configurations of %s\n", a)
	}
	// 2.
	st, err := store.Open(ctx, filepath.Join(o.state, "controller.db"), e.log)
	if err != nil {
		return err
	}
	defer st.Close()
	co := controller.DefaultOptions()
	co.Listen, co.Buildtab, co.BuildTimeout = o.listen, bt, o.buildTimeout
	srv, err := controller.New(st, co, e.log)
	if err != nil {
		return err
	}
	if err := srv.Listen(); err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("%w: another controller or program is listening there; stop it, or give up another --listen address (127.0.0.1:0 picks a free port)", err)
		}
		return err
	}
	machines := filepath.Join(o.state, "machines")
	ao := agent.DefaultOptions()
	ao.Machines, ao.TFTP = machines, filepath.Join(o.state, "tftp")
	ao.ToolchainName = upToolchain
	ao.Instances = o.instances
	if ao.Instances == 0 {
		ao.Instances = fitInstances(runtime.NumCPU(), memAvailable(), ao.CPUs, ao.MemoryMB)
	}
	ao.BuildStartup, ao.BuildTimeout = 2*time.Minute, o.buildTimeout
	ao.BootstrapStartup, ao.BootstrapTimeout = 2*time.Minute, 10*time.Minute
	if ao.Metrics, err = pickPort(o.metrics); err != nil {
		return fmt.Errorf("--metrics %s: %w", o.metrics, err)
	}
	a, err := agent.New(ao, e.log, io.Discard)
	if err != nil {
		return err
	}
	// 3.
	for _, ua := range arches {
		if err := upMakeMachine(ctx, e, machines, o.state, ua); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.stderr, "up: controller listening on %s\n", srv.URL())
	fmt.Fprintf(e.stderr, "up: dashboard at %s/ (metrics: %s/metrics, the agent's http://%s/metrics)\n", srv.URL(), srv.URL(), ao.Metrics)
	for _, ua := range arches {
		if !bootstrapped(machines, ua.machine, upToolchain) {
			fmt.Fprintf(e.stderr, "up: the agent bootstraps the %s machine before it asks for tasks\n", ua.machine)
		}
	}
	fmt.Fprintf(e.stderr, "up: agent serving with %d instance(s)\n", ao.Instances)
	if !o.demo {
		fmt.Fprintf(e.stderr, "up: serving until interrupted; submit work with\n  buildfarm submit --controller %s --dir DIR --template DIR/task.manifest\n", srv.URL())
	}

	// 4.
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	var srvErr, agentErr error
	wg.Go(func() {
		defer stop()
		if srvErr = srv.Serve(fctx); srvErr != nil {
			srvErr = fmt.Errorf("controller: %w", srvErr)
		}
	})
	wg.Go(func() {
		defer stop()
		if agentErr = a.Run(fctx, []string{srv.URL()}); agentErr != nil {
			agentErr = fmt.Errorf("agent: %w", agentErr)
		} else if fctx.Err() == nil {
			agentErr = errors.New("agent: stopped by itself")
		}
	})
	// 5.
	var demoErr error
	if o.demo {
		demoErr = upDemo(fctx, e, srv.URL(), o, demo)
		stop()
	}
	<-fctx.Done()
	fmt.Fprintf(e.stderr, "up: stopping\n")
	wg.Wait()
	if err := errors.Join(srvErr, agentErr); err != nil {
		return err
	}
	return demoErr // nil when interrupted: a clean stop
}

// upMakeMachine makes ua's busybox machine and adds it to the default
// volume under machines, unless it is there already.
func upMakeMachine(ctx context.Context, e *env, machines, state string, ua upArch) error {
	ms := &machine.Store{Dir: machines, Log: e.log}
	v, err := ms.Volume(machine.DefaultVolume, true)
	if err != nil {
		return err
	}
	_, _, err = v.Current(ua.machine)
	upgrade := false
	switch {
	case err == nil:
		old, ok := olderWorker(machines, ua.machine, upToolchain)
		if !ok {
			return nil
		}
		// Its image holds that worker, which this agent's protocol has
		// left behind: bootstrapping it again would not help.
		fmt.Fprintf(e.stderr, "up: the %s machine was bootstrapped by worker protocol %d, this buildfarm's is %d: making it again\n", ua.machine, old, worker.Version)
		upgrade = true
	case !errors.Is(err, machine.ErrRemoved) && !errors.Is(err, machine.ErrNotFound) && !errors.Is(err, fs.ErrNotExist):
		return err
	default:
		fmt.Fprintf(e.stderr, "up: making the %s machine\n", ua.machine)
	}
	tmp, err := os.MkdirTemp(state, ".image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	opts := image.Options{Preset: "busybox", Name: ua.machine, Arch: ua.arch, Out: filepath.Join(tmp, ua.machine), Worker: ua.worker, Log: e.log}
	if isTerminal(e.stderr) {
		opts.Progress = e.stderr
	}
	if _, err := image.Build(ctx, opts); err != nil {
		return err
	}
	if upgrade {
		if _, err := v.Upgrade(ctx, ua.machine, machine.Source{Dir: opts.Out}); err != nil {
			return err
		}
		fmt.Fprintf(e.stderr, "up: machine %s upgraded in %s\n", ua.machine, v.Dir)
		return nil
	}
	if _, err := v.Add(ctx, ua.machine, machine.Source{Dir: opts.Out}); err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "up: machine %s added to %s\n", ua.machine, v.Dir)
	return nil
}

// olderWorker reports the worker protocol version that name's bootstrapped
// copy for toolchain in the default volume records, when it is older than
// this buildfarm's worker.Version. A machine image made by an older
// buildfarm holds that older worker (up makes its machine only once), and
// the agent cannot run tasks on it.
func olderWorker(machines, name, toolchain string) (uint64, bool) {
	path := filepath.Join(machines, machine.DefaultVolume, name, name+"-"+toolchain, machine.BootstrappedFile)
	ms, err := manifest.Limits{Manifests: 1}.ReadFile(path)
	if err != nil || ms.Len() != 1 {
		return 0, false
	}
	bm, err := manifest.ParseBootstrappedMachine(ms.Manifest(0), path, manifest.Lenient)
	if err != nil {
		return 0, false
	}
	for _, tv := range bm.Bootstrap.Versions {
		if tv.Tool == worker.VersionTool && tv.Version < worker.Version {
			return tv.Version, true
		}
	}
	return 0, false
}

// bootstrapped reports whether name looks bootstrapped for toolchain in
// the default volume (for a progress line only; the agent decides).
func bootstrapped(machines, name, toolchain string) bool {
	_, err := os.Stat(filepath.Join(machines, machine.DefaultVolume, name, name+"-"+toolchain))
	return err == nil
}

// upBuildtab reads the buildtab at file, writing the default one for
// arches first if it is missing, and adding the lines of each of arches
// that no configuration targets; it returns those.
func upBuildtab(file string, arches []upArch) (*controller.Buildtab, []arch.Arch, error) {
	if _, err := os.Stat(file); errors.Is(err, fs.ErrNotExist) {
		if err := os.WriteFile(file, []byte(defaultUpBuildtab(arches)), 0o644); err != nil {
			return nil, nil, fmt.Errorf("buildtab: %w", err)
		}
	}
	bt, err := controller.ReadBuildtab(file)
	if err != nil {
		return nil, nil, err
	}
	var more strings.Builder
	var added []arch.Arch
	for _, ua := range arches {
		if !slices.ContainsFunc(bt.Configs, func(c controller.Config) bool { return arch.Check(c.Target, ua.arch) == nil }) {
			more.WriteString(upBuildtabLines(ua.arch, false))
			added = append(added, ua.arch)
		}
	}
	if len(added) == 0 {
		return bt, nil, nil
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("buildtab: %w", err)
	}
	_, err = f.WriteString(more.String())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, nil, fmt.Errorf("buildtab: %w", err)
	}
	bt, err = controller.ReadBuildtab(file)
	return bt, added, err
}

// defaultUpBuildtab is the buildtab up writes: for the first of arches,
// its busybox machine in the default class and the debian machine (gcc,
// make) in class gcc; for each other, the same in classes ARCH and
// gcc-ARCH.
func defaultUpBuildtab(arches []upArch) string {
	var b strings.Builder
	b.WriteString(`# Build configurations of "buildfarm up", one a line:
#   MACHINE-PATTERN CONFIG-NAME TARGET [CLASS...]
# A submission that names none builds in class "default" (busybox); name
# "debian" or "gcc" for the debian machine (image build --preset debian).
# A configuration runs on a machine of its target's architecture.
`)
	for i, ua := range arches {
		b.WriteString(upBuildtabLines(ua.arch, i == 0))
	}
	return b.String()
}

// upBuildtabLines are the busybox and debian configurations of a: in
// classes default and gcc when first, else ARCH and gcc-ARCH.
func upBuildtabLines(a arch.Arch, first bool) string {
	busybox, debian := upMachineName(a), "debian"
	classes := []string{"default", "gcc"}
	if a != arch.X8664 {
		debian += "-" + string(a)
	}
	if !first {
		classes = []string{string(a), "gcc-" + string(a)}
	}
	target := string(a) + "-linux-gnu"
	w := len(busybox) // the columns' widths
	return fmt.Sprintf("%-*s  %-*s  %s  %s\n%-*s  %-*s  %s  %s\n",
		w+1, busybox+"*", w, busybox, target, classes[0],
		w+1, debian+"*", w, debian, target, classes[1])
}

// fitInstances is how many VMs of cpu CPUs and ram MiB each fit a host of
// ncpu CPUs and avail bytes of available memory (0: unknown): one CPU is
// left to the host, half of the memory to everything else; at least one.
func fitInstances(ncpu int, avail int64, cpu, ram int) int {
	n := (ncpu - 1) / max(cpu, 1)
	if avail > 0 {
		n = min(n, int(avail/2/(int64(ram)<<20)))
	}
	return max(n, 1)
}

// memAvailable is /proc/meminfo's MemAvailable in bytes, 0 if unknown.
func memAvailable() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 2 && fs[0] == "MemAvailable:" {
			kb, err := strconv.ParseInt(fs[1], 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// demoTask is one example --demo submits, the configuration it goes to
// and the status it should end with.
type demoTask struct {
	example, config string
	want            manifest.Status
}

// upDemoTasks are the tasks of --demo: hello and hello-broken on the
// first architecture's busybox, and each other's hello (hello-ARCH but
// for x86_64) on its own.
func upDemoTasks(arches []upArch) []demoTask {
	hello := func(a arch.Arch) string {
		if a == arch.X8664 {
			return "hello"
		}
		return "hello-" + string(a)
	}
	var ds []demoTask
	for i, ua := range arches {
		ds = append(ds, demoTask{hello(ua.arch), ua.machine, manifest.StatusSuccess})
		if i == 0 {
			ds = append(ds, demoTask{"hello-broken", ua.machine, manifest.StatusError})
		}
	}
	return ds
}

// upDemo submits the examples to the controller at url through its API,
// waits for their results and prints them: for each, a line with its
// status and then its operations. It returns an error (exit 1) unless
// each ended as expected.
func upDemo(ctx context.Context, e *env, url string, o upOptions, demoTasks []demoTask) error {
	c, err := controller.NewAPIClient(url, "", nil)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, o.demoTimeout)
	defer cancel()
	ids := make([]int64, len(demoTasks))
	for i, d := range demoTasks {
		dir := filepath.Join(o.examples, d.example)
		s, err := submitWork(ctx, c, controller.SubmitRequest{Configs: []string{d.config}, Submitter: "buildfarm up --demo"},
			filepath.Join(dir, "task.manifest"), dir, "")
		if err != nil {
			return fmt.Errorf("--demo: submit %s: %w", dir, err)
		}
		ids[i] = s.ID
		fmt.Fprintf(e.stderr, "up: submitted %s: submission %d\n", dir, s.ID)
	}
	var bad []string
	for i, d := range demoTasks {
		s, err := c.Wait(ctx, ids[i], 500*time.Millisecond)
		if err != nil {
			return fmt.Errorf("--demo: %s: %w", d.example, err)
		}
		for _, t := range s.Tasks {
			res, err := demoResult(ctx, c, t)
			if err != nil {
				return fmt.Errorf("--demo: %s: %w", d.example, err)
			}
			verdict := "as expected"
			if t.Status != d.want.String() {
				verdict = "expected " + d.want.String()
				bad = append(bad, fmt.Sprintf("%s ended %s, expected %s", d.example, t.Status, d.want))
			}
			fmt.Fprintf(e.stdout, "%s %s on %s: %s (%s)\n", t.Name, t.Version, dash(t.Machine), t.Status, verdict)
			if t.Reason != "" {
				fmt.Fprintf(e.stdout, "  reason: %s\n", t.Reason)
			}
			if res != nil {
				for _, op := range res.Results {
					fmt.Fprintf(e.stdout, "  %s: %s\n", op.Operation, op.Status)
					if op.Status != manifest.StatusSuccess {
						for _, l := range lastLines(op.Log, 5) {
							fmt.Fprintf(e.stdout, "    | %s\n", l)
						}
					}
				}
			}
		}
	}
	if len(bad) > 0 {
		fmt.Fprintf(e.stderr, "up: the demo failed: %s\n", strings.Join(bad, "; "))
		return silent(1, fmt.Errorf("--demo: %s", strings.Join(bad, "; ")))
	}
	fmt.Fprintf(e.stderr, "up: the demo ended as expected; \"buildfarm up\" keeps the farm serving\n")
	return nil
}

// demoResult fetches and parses a done task's result manifest; nil when
// it has none (a task that ended without a result, for example abnormal
// after its leases ran out).
func demoResult(ctx context.Context, c *controller.APIClient, t controller.Task) (*manifest.Result, error) {
	res, err := c.ParsedResult(ctx, t.ID)
	var ae *controller.APIError
	if errors.As(err, &ae) && ae.StatusCode == 404 {
		return nil, nil
	}
	return res, err
}

// lastLines returns the last n non-empty lines of s.
func lastLines(s string, n int) []string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return nil
	}
	return lines[max(0, len(lines)-n):]
}

// pickPort is addr with a port picked for it when it asks for port 0 (a
// port free a moment ago), so that its address can be printed.
func pickPort(addr string) (string, error) {
	if _, port, err := net.SplitHostPort(addr); err != nil || port != "0" {
		return addr, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
