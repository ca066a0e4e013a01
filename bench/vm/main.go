// Command vm benchmarks how buildfarm's task VMs start, on the machines
// `buildfarm image build` makes (the busybox preset, and with -presets
// busybox,debian the debian one too), under the chosen accelerator (TCG
// here). It needs root (network namespaces), QEMU, the cached guest
// kernel, go, and for the debian preset debootstrap and the network; run
// it from the module root.
//
// For each preset the machine is built (buildfarm-worker built by go build
// with CGO_ENABLED=0 and -worker-ldflags), added to a volume in a
// temporary directory (the fallback backend) and bootstrapped by the agent,
// which then saves its warm state; all untimed. Then, in turns:
//
//   - cold: package agent in process, --start cold, --fake-request
//     examples/hello/task.manifest (examples/hello-c for debian)
//     --dump-result, timed around the whole Agent.Run; and from the
//     agent's "starting the task's VM" log record to its "VM booted" (the
//     worker's first TFTP request).
//   - warm: the same with --start auto: the VM restored from the warm
//     state.
//   - raw (busybox only): `qemu-system-x86_64 -bios qboot.rom -kernel K
//     -initrd I -append ...` of the same kernel with an init that runs
//     poweroff -f at once, the whole process timed.
//
// It prints each run, the medians, warm over cold (start to first request,
// and the whole task), and cold's start to first request over raw.
//
// -stages boots the busybox machine (its kernel, initrd, command line and
// an overlay over its disk, as the agent would, without a TFTP server) and
// prints when each line of its console appeared, from QEMU's start: the
// cost of each stage from kernel start to the worker (the kernel runs
// quiet, so the first line is the init's).
//
//	go run ./bench/vm [-runs 5] [-accel tcg] [-presets busybox,debian] [-stages] [-keep] [-v]
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/buildfarm/buildfarm/internal/accel"
	"github.com/buildfarm/buildfarm/internal/agent"
	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/cache"
	"github.com/buildfarm/buildfarm/internal/image"
	"github.com/buildfarm/buildfarm/internal/machine"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/qemu/guesttest"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

type config struct {
	runs          int
	accel         string
	presets       []string
	stages        bool
	ram           int
	workerLDFlags string
	keep          bool
	verbose       bool
}

func main() {
	var c config
	var presets string
	flag.IntVar(&c.runs, "runs", 5, "runs of each variant")
	flag.StringVar(&c.accel, "accel", "tcg", "accelerator: auto, kvm or tcg")
	flag.StringVar(&presets, "presets", "busybox", "machines to measure: busybox, debian (comma-separated)")
	flag.BoolVar(&c.stages, "stages", false, "also time the busybox machine's console lines from QEMU's start")
	flag.IntVar(&c.ram, "ram", agent.DefaultOptions().MemoryMB, "guest RAM, MiB (the agent's default)")
	flag.StringVar(&c.workerLDFlags, "worker-ldflags", "-s -w", "go build -ldflags of buildfarm-worker")
	flag.BoolVar(&c.keep, "keep", false, "keep the temporary directory (machines, agent logs) and print it")
	flag.BoolVar(&c.verbose, "v", false, "log the agent at debug level (each TFTP request, timed), to PRESET/agent.log in the temporary directory")
	flag.Parse()
	c.presets = strings.Split(presets, ",")
	if err := run(context.Background(), c); err != nil {
		fmt.Fprintln(os.Stderr, "bench/vm:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, c config) error {
	k, err := cache.GuestKernel()
	if err != nil {
		return err
	}
	if c.accel, err = (&accel.Prober{}).Resolve(ctx, c.accel); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "bench-vm-")
	if err != nil {
		return err
	}
	if c.keep {
		fmt.Println("temporary directory (kept):", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	workerBin := filepath.Join(tmp, "buildfarm-worker")
	var ldflags []string
	if c.workerLDFlags != "" {
		ldflags = []string{c.workerLDFlags}
	}
	if err := testenv.BuildWorker(ctx, workerBin, arch.Host(), ldflags...); err != nil {
		return err
	}
	fi, err := os.Stat(workerBin)
	if err != nil {
		return err
	}
	fmt.Printf("kernel %s, accel %s, RAM %d MiB, buildfarm-worker %.1f MiB (-ldflags %q), %d runs each, alternating; load average %s\n",
		k.Version, c.accel, c.ram, float64(fi.Size())/(1<<20), c.workerLDFlags, c.runs, loadAverage())
	defer func() { fmt.Printf("load average at the end: %s\n", loadAverage()) }()
	raw := filepath.Join(tmp, "raw.initrd")
	if err := guesttest.Write(ctx, raw, k, "#!/bin/busybox sh\n/bin/busybox poweroff -f\n"); err != nil {
		return err
	}
	for _, preset := range c.presets {
		f, err := newFarm(ctx, c, filepath.Join(tmp, preset), preset, workerBin)
		if err != nil {
			return fmt.Errorf("%s: %w", preset, err)
		}
		if c.stages && preset == "busybox" {
			if err := stages(ctx, c, f, filepath.Join(tmp, "stages")); err != nil {
				return err
			}
		}
		variants := []variant{
			{name: preset + " cold", run: func() (timing, error) { return f.task(ctx, agent.StartCold) }},
			{name: preset + " warm", run: func() (timing, error) { return f.task(ctx, agent.StartAuto) }},
		}
		if preset == "busybox" {
			variants = append(variants, variant{name: "raw qemu, trivial init, qboot", run: func() (timing, error) {
				d, err := runRaw(ctx, k, c, raw, tmp)
				return timing{total: d, boot: d}, err
			}})
		}
		med, err := measure(c.runs, variants)
		if err != nil {
			return err
		}
		fmt.Printf("%s: warm / cold, start to first request: %.2f; whole task: %.2f\n", preset,
			med[1].boot.Seconds()/med[0].boot.Seconds(), med[1].total.Seconds()/med[0].total.Seconds())
		if preset == "busybox" {
			fmt.Printf("busybox: cold start to first request / raw trivial boot: %.2f\n", med[0].boot.Seconds()/med[2].boot.Seconds())
		}
		if size := f.stateSize(); size > 0 {
			fmt.Printf("%s: warm state %d MiB\n", preset, size>>20)
		}
	}
	return nil
}

// loadAverage is the host's load averages over 1, 5 and 15 minutes: other
// processes on the host slow the guests, which run under TCG.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

// timing is one run: the whole of it, and its VM's start to the worker's
// first request (for raw, the whole QEMU process).
type timing struct{ total, boot time.Duration }

type variant struct {
	name string
	run  func() (timing, error)
}

// measure runs the variants in turn, runs times, and returns the medians.
func measure(runs int, vs []variant) ([]timing, error) {
	ts := make([][]timing, len(vs))
	for i := range runs {
		for j, v := range vs {
			time.Sleep(time.Second) // let the last run's teardown settle
			t, err := v.run()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", v.name, err)
			}
			ts[j] = append(ts[j], t)
			fmt.Printf("run %d  %-32s total %.2fs  start to first request %.3fs\n", i+1, v.name, t.total.Seconds(), t.boot.Seconds())
		}
	}
	med := make([]timing, len(vs))
	for j, v := range vs {
		totals, boots := make([]time.Duration, 0, runs), make([]time.Duration, 0, runs)
		for _, t := range ts[j] {
			totals, boots = append(totals, t.total), append(boots, t.boot)
		}
		slices.Sort(totals)
		slices.Sort(boots)
		med[j] = timing{total: totals[len(totals)/2], boot: boots[len(boots)/2]}
		fmt.Printf("median %-32s total %.2fs (min %.2fs, max %.2fs)  start to first request %.3fs (min %.3fs, max %.3fs)\n", v.name,
			med[j].total.Seconds(), totals[0].Seconds(), totals[len(totals)-1].Seconds(),
			med[j].boot.Seconds(), boots[0].Seconds(), boots[len(boots)-1].Seconds())
	}
	return med, nil
}

// farm is a machine added to a volume and bootstrapped, with the agent's
// options for its task.
type farm struct {
	dir, preset string
	opts        agent.Options
	level       slog.Level
	v           *machine.Volume
	log         *os.File
}

func newFarm(ctx context.Context, c config, dir, preset, workerBin string) (*farm, error) {
	img := filepath.Join(dir, "image")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	t0 := time.Now()
	if _, err := image.Build(ctx, image.Options{Preset: preset, Out: img, Worker: workerBin}); err != nil {
		return nil, err
	}
	f := &farm{dir: dir, preset: preset}
	if c.verbose {
		f.level = slog.LevelDebug
	}
	machines := filepath.Join(dir, "machines")
	var err error
	if f.v, err = (&machine.Store{Dir: machines}).Volume(machine.DefaultVolume, true); err != nil {
		return nil, err
	}
	if _, err := f.v.Add(ctx, preset, machine.Source{Dir: img}); err != nil {
		return nil, err
	}
	o := agent.DefaultOptions()
	o.Machines, o.TFTP = machines, filepath.Join(dir, "tftp")
	o.Accel, o.MemoryMB = c.accel, c.ram
	o.BootstrapStartup, o.BuildStartup = 120*time.Second, 120*time.Second
	o.BootstrapTimeout, o.BuildTimeout = 600*time.Second, 600*time.Second
	o.ShutdownTimeout = 30 * time.Second
	o.BootstrapRetries, o.BuildRetries = 0, 0 // a retry would hide in the timing: fail instead
	o.FakeRequest, o.DumpResult = filepath.Join("examples", "hello", "task.manifest"), true
	if preset == "debian" {
		o.FakeRequest = filepath.Join("examples", "hello-c", "task.manifest")
	}
	f.opts = o
	if f.log, err = os.Create(filepath.Join(dir, "agent.log")); err != nil {
		return nil, err
	}
	// Bootstrap, build the warm state and run the task once, untimed.
	if _, err := f.task(ctx, agent.StartAuto); err != nil {
		return nil, fmt.Errorf("first task: %w", err)
	}
	if f.stateSize() == 0 {
		return nil, fmt.Errorf("no warm state after the first task (log %s)", f.log.Name())
	}
	fmt.Printf("%s machine built, added, bootstrapped and its warm state saved in %.1fs\n", preset, time.Since(t0).Seconds())
	return f, nil
}

func (f *farm) stateSize() int64 {
	for _, ws := range agent.WarmStates(f.v.Dir, f.preset) {
		return ws.Bytes
	}
	return 0
}

// task runs the agent on the task with --start start, and times it.
func (f *farm) task(ctx context.Context, start string) (timing, error) {
	o := f.opts
	o.Start = start
	h := stamps{slog.NewTextHandler(f.log, &slog.HandlerOptions{Level: f.level}), &marks{at: map[string]time.Time{}}}
	var out bytes.Buffer
	a, err := agent.New(o, slog.New(h), &out)
	if err != nil {
		return timing{}, err
	}
	t0 := time.Now()
	err = a.Run(ctx, nil)
	total := time.Since(t0)
	if err != nil {
		return timing{}, err
	}
	ms, err := manifest.Parse(&out, "dumped result")
	if err != nil || ms.Len() != 1 {
		return timing{}, fmt.Errorf("dumped result %q: %v", out.String(), err)
	}
	res, err := manifest.ParseResult(ms.Manifest(0), "dumped result", manifest.Lenient)
	if err != nil {
		return timing{}, err
	}
	want := agent.StartWarm
	if start == agent.StartCold {
		want = agent.StartCold
	}
	if res.Status != manifest.StatusSuccess || res.Start != want {
		return timing{}, fmt.Errorf("result %v, started %q; want success, %s (log %s)", res.Status, res.Start, want, f.log.Name())
	}
	h.m.mu.Lock()
	defer h.m.mu.Unlock()
	s, b := h.m.at["starting the task's VM"], h.m.at["VM booted"]
	if s.IsZero() || b.IsZero() {
		return timing{}, fmt.Errorf("no start or first request in the agent's log %s", f.log.Name())
	}
	return timing{total: total, boot: b.Sub(s)}, nil
}

// stamps keeps the time of the last log record of each message.
type stamps struct {
	slog.Handler
	m *marks
}

type marks struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (s stamps) Handle(ctx context.Context, r slog.Record) error {
	s.m.mu.Lock()
	s.m.at[r.Message] = r.Time
	s.m.mu.Unlock()
	return s.Handler.Handle(ctx, r)
}

func (s stamps) WithAttrs(as []slog.Attr) slog.Handler { return stamps{s.Handler.WithAttrs(as), s.m} }
func (s stamps) WithGroup(g string) slog.Handler       { return stamps{s.Handler.WithGroup(g), s.m} }

// stages boots the bootstrapped busybox machine as the agent would (no
// TFTP server: the worker's first request goes unanswered) and prints,
// for each console line, when it appeared (medians over the runs).
func stages(ctx context.Context, c config, f *farm, dir string) error {
	boot := filepath.Join(f.v.Dir, f.preset, f.preset+"-"+f.opts.ToolchainName)
	cmdline, err := os.ReadFile(filepath.Join(boot, "cmdline"))
	if err != nil {
		return err
	}
	type line struct {
		text string
		at   []time.Duration
	}
	var lines []*line
	for i := range c.runs {
		d := filepath.Join(dir, fmt.Sprint(i))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		base, format, err := machine.Disk(boot)
		if err != nil {
			return err
		}
		disk := filepath.Join(d, "disk.qcow2") // an overlay: the guest writes to its disk
		if err := proc.Run(ctx, nil, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", format, disk); err != nil {
			return err
		}
		cfg := qemu.Config{Name: "stages", Accel: c.accel, MemoryMB: c.ram, Kernel: filepath.Join(boot, "kernel"),
			Initrd: filepath.Join(boot, "initrd"), Drives: []qemu.Drive{{Path: disk, Format: "qcow2"}}, NoReboot: true,
			Append: strings.TrimSpace(string(cmdline)) + " buildfarm.mode=build buildfarm.tftp=10.0.2.2:23401 buildfarm.net=user"}
		got, err := consoleTimes(ctx, cfg, filepath.Join(d, "vm"))
		if err != nil {
			return err
		}
		for j, g := range got {
			if j == len(lines) {
				lines = append(lines, &line{text: g.text})
			}
			if j < len(lines) {
				lines[j].at = append(lines[j].at, g.at)
			}
		}
		os.RemoveAll(d)
	}
	fmt.Printf("busybox machine's console, median time of each line from QEMU's start (%d runs):\n", c.runs)
	for _, l := range lines {
		slices.Sort(l.at)
		fmt.Printf("  %6.3fs  %s\n", l.at[len(l.at)/2].Seconds(), l.text)
	}
	return nil
}

type stamped struct {
	text string
	at   time.Duration
}

// consoleTimes starts cfg, and returns the console's lines with the time
// each appeared, up to the worker's start line and one more second.
func consoleTimes(ctx context.Context, cfg qemu.Config, dir string) ([]stamped, error) {
	vm, err := qemu.New(cfg, dir, nil)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	defer vm.Forcedown(context.WithoutCancel(ctx))
	t0 := time.Now()
	if err := vm.Start(ctx); err != nil {
		return nil, err
	}
	var out []stamped
	var seen int
	var end time.Time
	for ctx.Err() == nil {
		b, _ := os.ReadFile(vm.Info().SerialLog)
		complete := strings.Split(string(b), "\n")
		complete = complete[:len(complete)-1]
		for ; seen < len(complete); seen++ {
			t := strings.TrimSpace(complete[seen])
			if t == "" {
				continue
			}
			out = append(out, stamped{t, time.Since(t0)})
			if end.IsZero() && strings.Contains(t, "buildfarm-worker") && strings.Contains(t, ": started") {
				end = time.Now().Add(time.Second)
			}
		}
		if !end.IsZero() && time.Now().After(end) {
			return out, nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil, fmt.Errorf("no worker start on the console; console:\n%s", vm.SerialTail(2000))
}

func runRaw(ctx context.Context, k cache.Kernel, c config, initrd, dir string) (time.Duration, error) {
	args := []string{"-nodefaults", "-no-user-config", "-display", "none", "-machine", "pc,accel=" + c.accel,
		"-m", fmt.Sprint(c.ram), "-bios", qemu.QbootROM, "-kernel", k.Image, "-initrd", initrd, "-append", guesttest.Append,
		"-serial", "file:" + filepath.Join(dir, "raw-serial.log"), "-no-reboot"}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	t0 := time.Now()
	if err := proc.Run(ctx, nil, "qemu-system-x86_64", args...); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}
