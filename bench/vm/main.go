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
//     agent's "starting the task's VM" log record to the arrival of the
//     worker's first TFTP request (its log record, at the transfer's end,
//     less the transfer's duration).
//   - warm: the same with --start auto: the VM restored from the warm
//     state.
//   - raw (busybox only), on QEMU's pc machine and on q35 (the one the
//     agent's x86_64 VMs use): `qemu-system-x86_64 -machine M -bios
//     qboot.rom -kernel K -initrd I -append ...` of the same kernel, with
//     the same kernel command line as the machine's (image.Cmdline), and
//     an init that runs poweroff -f at once, the whole process timed.
//
// It prints each run, the medians, and the ratios taken round by round
// (a round runs every variant once, back to back): warm over cold (start
// to first request, and the whole task), and cold's start to first request
// over each raw boot; the headline raw ratio is over the faster raw
// machine (by median). It writes all of it, with the load average, date,
// commit, kernel and settings, to -json (bench/vm/results.json).
//
// -stages boots the busybox machine (its kernel, initrd, command line and
// an overlay over its disk, as the agent would, without a TFTP server) and
// prints when each line of its console appeared, from QEMU's start: the
// cost of each stage from kernel start to the worker (the kernel runs
// quiet, so the first line is the init's).
//
//	go run ./bench/vm [-runs 5] [-accel tcg] [-presets busybox,debian] [-stages] [-keep] [-v] [-json bench/vm/results.json]
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
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
	"github.com/buildfarm/buildfarm/internal/tftp"
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
	json          string
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
	flag.StringVar(&c.json, "json", filepath.Join("bench", "vm", "results.json"), "`file` to write the results to as JSON (empty: none)")
	flag.Parse()
	c.presets = strings.Split(presets, ",")
	if c.runs < 1 {
		fmt.Fprintln(os.Stderr, "bench/vm: -runs must be at least 1")
		os.Exit(2)
	}
	if err := run(context.Background(), c); err != nil {
		fmt.Fprintln(os.Stderr, "bench/vm:", err)
		os.Exit(1)
	}
}

// rawMachines are the QEMU machines the raw boot is timed on: QEMU's
// default pc, and q35, which the agent's x86_64 VMs use.
var rawMachines = []string{"pc", "q35"}

func run(ctx context.Context, c config) error {
	k, err := cache.GuestKernel()
	if err != nil {
		return err
	}
	if c.accel, err = (&accel.Prober{}).Resolve(ctx, c.accel); err != nil {
		return err
	}
	res := Results{Measured: time.Now().UTC().Format(time.RFC3339), CPUs: runtime.NumCPU(), Kernel: k.Version,
		Accel: c.accel, RAM: c.ram, WorkerLDFlags: c.workerLDFlags, Runs: c.runs, Cmdline: image.Cmdline,
		RawMachines: rawMachines, LoadBefore: testenv.LoadAverage(), QEMU: testenv.QEMUVersion(ctx, "qemu-system-x86_64")}
	if res.Commit, err = commit(ctx); err != nil {
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
	res.WorkerMiB = round2(float64(fi.Size()) / (1 << 20))
	fmt.Printf("kernel %s, accel %s, RAM %d MiB, buildfarm-worker %.1f MiB (-ldflags %q), %d runs each, alternating; commit %s; load average %s\n",
		k.Version, c.accel, c.ram, res.WorkerMiB, c.workerLDFlags, c.runs, res.Commit, res.LoadBefore)
	raw := filepath.Join(tmp, "raw.initrd")
	if err := guesttest.Write(ctx, raw, k, "#!/bin/busybox sh\n/bin/busybox poweroff -f\n"); err != nil {
		return err
	}
	for _, preset := range c.presets {
		f, err := newFarm(ctx, c, filepath.Join(tmp, preset), preset, workerBin)
		if err != nil {
			return fmt.Errorf("%s: %w", preset, err)
		}
		pr := PresetResults{Preset: preset}
		if c.stages && preset == "busybox" {
			if pr.Stages, err = stages(ctx, c, f, filepath.Join(tmp, "stages")); err != nil {
				return err
			}
		}
		variants := []variant{
			{name: preset + " cold", run: func() (timing, error) { return f.task(ctx, agent.StartCold) }},
			{name: preset + " warm", run: func() (timing, error) { return f.task(ctx, agent.StartAuto) }},
		}
		if preset == "busybox" {
			for _, m := range rawMachines {
				variants = append(variants, variant{name: "raw qemu " + m + ", trivial init", run: func() (timing, error) {
					d, err := runRaw(ctx, k, c, m, raw, tmp)
					return timing{total: d, boot: d}, err
				}})
			}
		}
		ts, err := measure(c.runs, variants)
		if err != nil {
			return err
		}
		for j, v := range variants {
			vr := VariantResults{Name: v.name, Boot: newSeries(col(ts[j], func(t timing) time.Duration { return t.boot }))}
			if j < 2 {
				total := newSeries(col(ts[j], func(t timing) time.Duration { return t.total }))
				vr.Total = &total
			}
			pr.Variants = append(pr.Variants, vr)
		}
		ratio := func(name string, a, b int, pick func(timing) time.Duration) {
			r := Ratio{Name: name}
			for i := range ts[a] {
				r.Rounds = append(r.Rounds, round3(pick(ts[a][i]).Seconds()/pick(ts[b][i]).Seconds()))
			}
			r.Median, r.Min, r.Max = spread(r.Rounds)
			pr.Ratios = append(pr.Ratios, r)
			fmt.Printf("%s: %s, round by round: median %.2f (%.2f-%.2f)\n", preset, name, r.Median, r.Min, r.Max)
		}
		boot := func(t timing) time.Duration { return t.boot }
		ratio("warm / cold, start to first request", 1, 0, boot)
		ratio("warm / cold, whole task", 1, 0, func(t timing) time.Duration { return t.total })
		if preset == "busybox" {
			fastest := 2
			for j := range rawMachines {
				ratio("cold start to first request / raw "+rawMachines[j]+" trivial boot", 0, 2+j, boot)
				if pr.Variants[2+j].Boot.Median < pr.Variants[fastest].Boot.Median {
					fastest = 2 + j
				}
			}
			pr.FastestRaw = rawMachines[fastest-2]
			fmt.Printf("busybox: the faster raw boot (by median) is on %s: cold / raw %s is the headline ratio\n", pr.FastestRaw, pr.FastestRaw)
		}
		if size := f.stateSize(); size > 0 {
			pr.WarmStateMiB = size >> 20
			fmt.Printf("%s: warm state %d MiB\n", preset, size>>20)
		}
		res.Presets = append(res.Presets, pr)
	}
	res.LoadAfter = testenv.LoadAverage()
	fmt.Printf("load average at the end: %s\n", res.LoadAfter)
	if c.json == "" {
		return nil
	}
	return testenv.WriteResults(c.json, res)
}

// Results are what -json holds; times are in seconds.
type Results struct {
	Measured      string          `json:"measured"`
	Commit        string          `json:"commit"`
	CPUs          int             `json:"host_cpus"`
	Kernel        string          `json:"guest_kernel"`
	Cmdline       string          `json:"kernel_cmdline"`
	QEMU          string          `json:"qemu"`
	Accel         string          `json:"accel"`
	RAM           int             `json:"guest_ram_mib"`
	WorkerMiB     float64         `json:"worker_mib"`
	WorkerLDFlags string          `json:"worker_ldflags"`
	Runs          int             `json:"runs"`
	RawMachines   []string        `json:"raw_machines"`
	LoadBefore    string          `json:"load_average_before"`
	LoadAfter     string          `json:"load_average_after"`
	Presets       []PresetResults `json:"presets"`
}

// PresetResults are one machine's figures.
type PresetResults struct {
	Preset       string           `json:"preset"`
	Variants     []VariantResults `json:"variants"`
	Ratios       []Ratio          `json:"ratios"`
	FastestRaw   string           `json:"fastest_raw_machine,omitempty"`
	WarmStateMiB int64            `json:"warm_state_mib"`
	Stages       []Stage          `json:"stages,omitempty"`
}

// VariantResults are one variant's runs: its start to the worker's first
// request (for raw, the whole QEMU process) and, for the agent's, the
// whole task.
type VariantResults struct {
	Name  string  `json:"name"`
	Boot  Series  `json:"start_to_first_request_s"`
	Total *Series `json:"whole_task_s,omitempty"`
}

// Series are the runs in order, and their median and range.
type Series struct {
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Runs   []float64 `json:"runs"`
}

// Ratio is a ratio taken round by round.
type Ratio struct {
	Name   string    `json:"name"`
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Rounds []float64 `json:"rounds"`
}

// Stage is a console line of the -stages boots, timed from QEMU's start.
type Stage struct {
	Line   string  `json:"line"`
	Median float64 `json:"median_s"`
	Min    float64 `json:"min_s"`
	Max    float64 `json:"max_s"`
}

func newSeries(ds []time.Duration) Series {
	s := Series{}
	for _, d := range ds {
		s.Runs = append(s.Runs, round3(d.Seconds()))
	}
	s.Median, s.Min, s.Max = spread(s.Runs)
	return s
}

// spread returns the median, the least and the greatest of xs.
func spread(xs []float64) (median, least, greatest float64) {
	sorted := slices.Clone(xs)
	slices.Sort(sorted)
	return sorted[len(sorted)/2], sorted[0], sorted[len(sorted)-1]
}

func col[T any](xs []T, f func(T) time.Duration) []time.Duration {
	out := make([]time.Duration, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}

func round2(x float64) float64 { return math.Round(x*100) / 100 }
func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

// commit returns the repository's commit (HEAD), abbreviated, with
// "+changes" when the working tree differs from it.
func commit(ctx context.Context) (string, error) {
	c, err := testenv.Commit(ctx)
	if err != nil {
		return "", err
	}
	if st, err := proc.Output(ctx, "git", "status", "--porcelain", "--untracked-files=no"); err == nil && len(bytes.TrimSpace(st)) > 0 {
		c += "+changes"
	}
	return c, nil
}

// timing is one run: the whole of it, and its VM's start to the worker's
// first request (for raw, the whole QEMU process).
type timing struct{ total, boot time.Duration }

type variant struct {
	name string
	run  func() (timing, error)
}

// measure runs the variants in turn, runs times, prints each run and the
// medians, and returns the runs of each variant.
func measure(runs int, vs []variant) ([][]timing, error) {
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
	for j, v := range vs {
		total := newSeries(col(ts[j], func(t timing) time.Duration { return t.total }))
		boot := newSeries(col(ts[j], func(t timing) time.Duration { return t.boot }))
		fmt.Printf("median %-32s total %.2fs (min %.2fs, max %.2fs)  start to first request %.3fs (min %.3fs, max %.3fs)\n", v.name,
			total.Median, total.Min, total.Max, boot.Median, boot.Min, boot.Max)
	}
	return ts, nil
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
	s, b := h.m.at["starting the task's VM"], h.m.at[firstRequest]
	if s.IsZero() || b.IsZero() || h.m.at["VM booted"].IsZero() {
		return timing{}, fmt.Errorf("no start or first request in the agent's log %s", f.log.Name())
	}
	return timing{total: total, boot: b.Sub(s)}, nil
}

// firstRequest is the mark of the worker's first TFTP request: when it
// arrived, which is its log record's time (the transfer's end) less the
// transfer's duration.
const firstRequest = "first TFTP request"

// stamps keeps the time of the last log record of each message, and the
// arrival of the first TFTP request.
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
	if _, ok := s.m.at[firstRequest]; !ok && strings.HasPrefix(r.Message, "tftp: request") {
		r.Attrs(func(a slog.Attr) bool {
			if req, ok := a.Value.Any().(tftp.Request); ok {
				s.m.at[firstRequest] = r.Time.Add(-req.Duration)
				return false
			}
			return true
		})
	}
	s.m.mu.Unlock()
	if !s.Handler.Enabled(ctx, r.Level) {
		return nil
	}
	return s.Handler.Handle(ctx, r)
}

// Enabled takes every record: the agent logs each TFTP request only when
// its logger takes debug records (the log file gets those of its level).
func (s stamps) Enabled(context.Context, slog.Level) bool { return true }

func (s stamps) WithAttrs(as []slog.Attr) slog.Handler { return stamps{s.Handler.WithAttrs(as), s.m} }
func (s stamps) WithGroup(g string) slog.Handler       { return stamps{s.Handler.WithGroup(g), s.m} }

// stages boots the bootstrapped busybox machine as the agent would (no
// TFTP server: the worker's first request goes unanswered) and prints,
// for each console line, when it appeared (medians over the runs).
func stages(ctx context.Context, c config, f *farm, dir string) ([]Stage, error) {
	boot := filepath.Join(f.v.Dir, f.preset, f.preset+"-"+f.opts.ToolchainName)
	cmdline, err := os.ReadFile(filepath.Join(boot, "cmdline"))
	if err != nil {
		return nil, err
	}
	type line struct {
		text string
		at   []time.Duration
	}
	var lines []*line
	for i := range c.runs {
		d := filepath.Join(dir, fmt.Sprint(i))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		base, format, err := machine.Disk(boot)
		if err != nil {
			return nil, err
		}
		disk := filepath.Join(d, "disk.qcow2") // an overlay: the guest writes to its disk
		if err := proc.Run(ctx, nil, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", format, disk); err != nil {
			return nil, err
		}
		cfg := qemu.Config{Name: "stages", Accel: c.accel, MemoryMB: c.ram, Kernel: filepath.Join(boot, "kernel"),
			Initrd: filepath.Join(boot, "initrd"), Drives: []qemu.Drive{{Path: disk, Format: "qcow2"}}, NoReboot: true,
			Append: strings.TrimSpace(string(cmdline)) + " buildfarm.mode=build buildfarm.tftp=10.0.2.2:23401 buildfarm.net=user"}
		got, err := consoleTimes(ctx, cfg, filepath.Join(d, "vm"))
		if err != nil {
			return nil, err
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
	var out []Stage
	for _, l := range lines {
		slices.Sort(l.at)
		st := Stage{Line: l.text, Median: round3(l.at[len(l.at)/2].Seconds()), Min: round3(l.at[0].Seconds()), Max: round3(l.at[len(l.at)-1].Seconds())}
		out = append(out, st)
		fmt.Printf("  %6.3fs  %s\n", st.Median, l.text)
	}
	return out, nil
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

// runRaw boots the kernel with initrd (whose init powers off at once) on
// QEMU's machine, with the machines' kernel command line, and times the
// whole QEMU process.
func runRaw(ctx context.Context, k cache.Kernel, c config, machine, initrd, dir string) (time.Duration, error) {
	args := []string{"-nodefaults", "-no-user-config", "-display", "none", "-machine", machine + ",accel=" + c.accel,
		"-m", fmt.Sprint(c.ram), "-bios", qemu.QbootROM, "-kernel", k.Image, "-initrd", initrd, "-append", image.Cmdline,
		"-serial", "file:" + filepath.Join(dir, "raw-serial.log"), "-no-reboot"}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	t0 := time.Now()
	if err := proc.Run(ctx, nil, "qemu-system-x86_64", args...); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}
