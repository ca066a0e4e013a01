// Command arch benchmarks aarch64 guests against x86_64 ones on this host,
// side by side in one run, through the buildfarm command as a user runs it:
//
//   - boot: `buildfarm vm boot-test` of the busybox machine of each
//     architecture (image build --preset busybox [--arch aarch64]): QEMU's
//     start to the worker's first sign of life on the console.
//   - hello: `buildfarm agent --fake-request` of examples/hello on the
//     x86_64 machine and examples/hello-aarch64 on the aarch64 one, the
//     whole agent process timed (snapshot, VM, configure, build, test,
//     install, result) at the agent's defaults (--start auto: the x86_64
//     task's VM restored from the machine's warm state; an aarch64 guest
//     under TCG always boots cold); each must end in success, and the
//     aarch64 test log must say uname -m: aarch64. A first, untimed task
//     of each architecture lets the agent bootstrap both machines and
//     save the x86_64 one's warm state; each timed run's result says how
//     its VM started (warm or cold), and results.json keeps it.
//   - hello, cold: the same with --start cold (the task's VM booted).
//
// With -hello-c it also builds examples/hello-c-aarch64 once on the debian
// preset for aarch64 (debootstrap --arch=arm64 through qemu-user's binfmt,
// cached after the first time) and reports the image build and the task.
//
// Runs alternate between the architectures so that load on the machine
// hits both alike; it prints each run, the medians and the ratio of
// aarch64 to x86_64, and writes the same figures (each run, the medians
// and ranges, the ratios, the load average, the date, the commit and the
// kernels) to -results, bench/arch/results.json. The workers are built as
// scripts/up builds the shipped one (-worker-ldflags "-s -w"). Run as
// root from the repository (it builds buildfarm and both workers with go
// build):
//
//	go run ./bench/arch [-runs 5] [-accel tcg] [-hello-c] [-results FILE]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/cache"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// config is the command line.
type config struct {
	runs          int
	accel         string
	helloC        bool
	workerLDFlags string
	results       string
}

func main() {
	var c config
	flag.IntVar(&c.runs, "runs", 5, "runs of each measurement and architecture")
	flag.StringVar(&c.accel, "accel", "tcg", "accelerator: auto, kvm or tcg")
	flag.BoolVar(&c.helloC, "hello-c", false, "also build examples/hello-c-aarch64 on the aarch64 debian machine, once")
	flag.StringVar(&c.workerLDFlags, "worker-ldflags", "-s -w", "go build -ldflags of both buildfarm-workers (scripts/up's)")
	flag.StringVar(&c.results, "results", filepath.Join("bench", "arch", "results.json"), "JSON `file` to write the figures to (empty: none)")
	flag.Parse()
	if c.runs < 1 {
		fmt.Fprintf(os.Stderr, "bench/arch: -runs %d: want at least 1\n", c.runs)
		os.Exit(2)
	}
	if err := run(context.Background(), c); err != nil {
		fmt.Fprintln(os.Stderr, "bench/arch:", err)
		os.Exit(1)
	}
}

// guest is one architecture's side of the bench.
type guest struct {
	arch    arch.Arch
	machine string // its busybox machine's name
	example string // the hello task for it
	worker  string
	boot    []time.Duration
	hello   taskRuns // at the agent's defaults
	cold    taskRuns // --start cold
}

// taskRuns is the timed runs of one kind of task.
type taskRuns struct {
	took   []time.Duration
	starts []string // how each task's VM started: warm or cold
}

func (t *taskRuns) add(d time.Duration, start string) {
	t.took, t.starts = append(t.took, d), append(t.starts, start)
}

func run(ctx context.Context, c config) error {
	res := results{Measured: time.Now().UTC().Format(time.RFC3339), Accel: c.accel, Runs: c.runs,
		RAM: guestRAM, CPUs: 1, WorkerLDFlags: c.workerLDFlags, GuestKernel: map[arch.Arch]string{}}
	var err error
	if res.Commit, err = testenv.Commit(ctx); err != nil {
		return err
	}
	res.HostKernel, res.QEMU = testenv.HostKernel(), testenv.QEMUVersion(ctx, "qemu-system-x86_64")
	for _, a := range arch.All {
		k, err := cache.GuestKernelFor(a)
		if err != nil {
			return err
		}
		res.GuestKernel[a] = k.Version
	}
	tmp, err := os.MkdirTemp("", "bench-arch-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bf := filepath.Join(tmp, "buildfarm")
	gs := []*guest{
		{arch: arch.X8664, machine: "busybox", example: "hello", worker: filepath.Join(tmp, "buildfarm-worker")},
		{arch: arch.AArch64, machine: "busybox-aarch64", example: "hello-aarch64", worker: filepath.Join(tmp, "buildfarm-worker-arm64")},
	}
	if err := testenv.GoBuild(ctx, bf, "./cmd/buildfarm", ""); err != nil {
		return err
	}
	var ldflags []string
	if c.workerLDFlags != "" {
		ldflags = []string{c.workerLDFlags}
	}
	for _, g := range gs {
		if err := testenv.BuildWorker(ctx, g.worker, g.arch, ldflags...); err != nil {
			return err
		}
	}
	machines := filepath.Join(tmp, "machines")
	for _, g := range gs {
		m := filepath.Join(tmp, g.machine)
		if _, err := proc.Output(ctx, bf, "image", "build", "--preset", "busybox", "--arch", string(g.arch),
			"--name", g.machine, "--out", m, "--worker", g.worker); err != nil {
			return err
		}
		if _, err := proc.Output(ctx, bf, "machine", "add", "--machines", machines, "--name", g.machine, m); err != nil {
			return err
		}
	}
	res.LoadBefore = testenv.LoadAverage()
	fmt.Printf("accel %s, %d runs, alternating x86_64 and aarch64, commit %s, load average %s\n",
		c.accel, c.runs, res.Commit, res.LoadBefore)
	for _, g := range gs {
		d, start, err := task(ctx, bf, machines, filepath.Join(tmp, "tftp"), c.accel, g.example, g.arch, "")
		if err != nil {
			return fmt.Errorf("hello %s, untimed: %w", g.arch, err)
		}
		fmt.Printf("untimed %-7s hello task, bootstrap and warm states %6.2fs (%s)\n", g.arch, d.Seconds(), start)
	}
	for i := range c.runs {
		res.RunLoad = append(res.RunLoad, testenv.LoadAverage())
		for _, g := range gs {
			d, err := bootTest(ctx, bf, filepath.Join(tmp, g.machine), c.accel)
			if err != nil {
				return fmt.Errorf("boot %s: %w", g.arch, err)
			}
			g.boot = append(g.boot, d)
			fmt.Printf("run %d %-7s boot to the worker %6.2fs\n", i+1, g.arch, d.Seconds())
		}
		for _, how := range []string{"", "cold"} {
			for _, g := range gs {
				d, start, err := task(ctx, bf, machines, filepath.Join(tmp, "tftp"), c.accel, g.example, g.arch, how)
				if err != nil {
					return fmt.Errorf("hello %s, --start %q: %w", g.arch, how, err)
				}
				runs, name := &g.hello, "hello task"
				if how == "cold" {
					runs, name = &g.cold, "hello task, cold"
				}
				runs.add(d, start)
				fmt.Printf("run %d %-7s %-18s %6.2fs (%s)\n", i+1, g.arch, name, d.Seconds(), start)
			}
		}
	}
	res.LoadAfter = testenv.LoadAverage()
	fmt.Printf("\nload average %s\n", res.LoadAfter)
	fmt.Printf("%-22s %22s %22s %8s %18s\n", "median (range)", "x86_64", "aarch64", "ratio", "ratio by run")
	res.Rows = []row{
		newRow("boot to the worker", "vm boot-test: QEMU start to the worker's first sign of life", gs[0].boot, gs[1].boot),
		newTaskRow("whole hello task", "agent --fake-request examples/hello[-aarch64]/task.manifest, whole process, the agent's defaults (--start auto)", gs[0].hello, gs[1].hello),
		newTaskRow("whole hello task, cold", "the same with --start cold", gs[0].cold, gs[1].cold),
	}
	for _, r := range res.Rows {
		fmt.Printf("%-22s %22s %22s %7.2fx %18s\n", r.Name, r.X8664.String(), r.AArch64.String(),
			r.Ratio, fmt.Sprintf("%.2f (%.2f-%.2f)", r.RatioByRun.Median, r.RatioByRun.Min, r.RatioByRun.Max))
	}
	if c.helloC {
		hc, err := debianHelloC(ctx, bf, tmp, gs[1].worker, machines, c.accel)
		if err != nil {
			return err
		}
		res.HelloC = hc
	}
	if c.results == "" {
		return nil
	}
	if err := testenv.WriteResults(c.results, res); err != nil {
		return err
	}
	fmt.Printf("wrote %s\n", c.results)
	return nil
}

// guestRAM is the guest RAM, MiB, of every VM of the bench.
const guestRAM = 256

// results is what -results holds: the figures of the last run.
type results struct {
	Measured      string               `json:"measured"`
	Commit        string               `json:"commit"`
	HostKernel    string               `json:"host_kernel"`
	GuestKernel   map[arch.Arch]string `json:"guest_kernel"`
	QEMU          string               `json:"qemu"`
	Accel         string               `json:"accel"`
	Runs          int                  `json:"runs"`
	RAM           int                  `json:"ram_mib"`
	CPUs          int                  `json:"cpus"`
	WorkerLDFlags string               `json:"worker_ldflags"`
	LoadBefore    string               `json:"load_average_before"`
	LoadAfter     string               `json:"load_average_after"`
	RunLoad       []string             `json:"load_average_each_run"`
	Rows          []row                `json:"rows"`
	HelloC        *helloCResult        `json:"hello_c_aarch64,omitempty"`
}

// row is one measurement of both architectures.
type row struct {
	Name    string `json:"name"`
	What    string `json:"what"`
	X8664   series `json:"x86_64"`
	AArch64 series `json:"aarch64"`
	// Ratio is aarch64's median over x86_64's.
	Ratio float64 `json:"aarch64_over_x86_64"`
	// RatioByRun is aarch64 over x86_64 run by run (the two ran back to
	// back in each run).
	RatioByRun spread `json:"aarch64_over_x86_64_by_run"`
}

// series is one architecture's times of one measurement.
type series struct {
	RunsNS   []int64 `json:"runs_ns"`
	MedianNS int64   `json:"median_ns"`
	MinNS    int64   `json:"min_ns"`
	MaxNS    int64   `json:"max_ns"`
	// Starts says how each run's task VM started (warm or cold).
	Starts []string `json:"start_each_run,omitempty"`
}

func (s series) String() string {
	sec := func(ns int64) float64 { return time.Duration(ns).Seconds() }
	return fmt.Sprintf("%.2fs (%.2f-%.2f)", sec(s.MedianNS), sec(s.MinNS), sec(s.MaxNS))
}

// spread is the median and range of a few ratios.
type spread struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// helloCResult is -hello-c's figures.
type helloCResult struct {
	ImageBuildNS int64  `json:"image_build_ns"`
	TaskNS       int64  `json:"task_ns"`
	Start        string `json:"start"`
}

func newRow(name, what string, x, a []time.Duration) row {
	r := row{Name: name, What: what, X8664: newSeries(x), AArch64: newSeries(a)}
	r.Ratio = float64(r.AArch64.MedianNS) / float64(r.X8664.MedianNS)
	ratios := make([]float64, len(x))
	for i := range x {
		ratios[i] = a[i].Seconds() / x[i].Seconds()
	}
	slices.Sort(ratios)
	r.RatioByRun = spread{Median: ratios[len(ratios)/2], Min: ratios[0], Max: ratios[len(ratios)-1]}
	return r
}

// newTaskRow is newRow of two taskRuns, with how each task's VM started.
func newTaskRow(name, what string, x, a taskRuns) row {
	r := newRow(name, what, x.took, a.took)
	r.X8664.Starts, r.AArch64.Starts = x.starts, a.starts
	return r
}

func newSeries(ds []time.Duration) series {
	s := series{RunsNS: make([]int64, len(ds))}
	for i, d := range ds {
		s.RunsNS[i] = int64(d)
	}
	sorted := slices.Clone(s.RunsNS)
	slices.Sort(sorted)
	s.MedianNS, s.MinNS, s.MaxNS = sorted[len(sorted)/2], sorted[0], sorted[len(sorted)-1]
	return s
}

// firstSign is boot-test's line for the worker's first sign of life.
var firstSign = regexp.MustCompile(`(?m)^(start|first sign of life): +([0-9.]+)s`)

// bootTest runs `buildfarm vm boot-test` on machine dir m and returns the
// time from QEMU's start to the worker's first sign of life.
func bootTest(ctx context.Context, bf, m, accelSet string) (time.Duration, error) {
	out, err := proc.Output(ctx, bf, "vm", "boot-test", "--accel", accelSet, "--memory", strconv.Itoa(guestRAM), m)
	if err != nil {
		return 0, err
	}
	var sum float64
	ms := firstSign.FindAllStringSubmatch(string(out), -1)
	if len(ms) != 2 {
		return 0, fmt.Errorf("boot-test printed %q: want its start and first sign of life", out)
	}
	for _, m := range ms {
		s, _ := strconv.ParseFloat(m[2], 64)
		sum += s
	}
	return time.Duration(sum * float64(time.Second)), nil
}

// task runs examples/EXAMPLE through the agent's --fake-request, with
// --start start unless it is empty, and returns the whole agent process's
// time and how the task's VM started (the result's buildfarm-start); the
// result must be a success, and the test log must name the guest's
// architecture when it prints it.
func task(ctx context.Context, bf, machines, tftp, accelSet, example string, a arch.Arch, start string) (time.Duration, string, error) {
	args := []string{"agent", "--machines", machines, "--tftp", tftp, "--accel", accelSet,
		"--ram", strconv.Itoa(guestRAM), "--fake-bootstrap", "--build-timeout", "30m",
		"--fake-request", filepath.Join("examples", example, "task.manifest"), "--dump-result"}
	if start != "" {
		args = append(args, "--start", start)
	}
	t0 := time.Now()
	out, err := proc.Output(ctx, bf, args...)
	took := time.Since(t0)
	if err != nil {
		return 0, "", err
	}
	ms, err := manifest.Parse(strings.NewReader(string(out)), "result")
	if err != nil || ms.Len() != 1 {
		return 0, "", fmt.Errorf("agent printed %q: want one result manifest (%v)", out, err)
	}
	r, err := manifest.ParseResult(ms.Manifest(0), "result", manifest.Lenient)
	if err != nil {
		return 0, "", err
	}
	if r.Status != manifest.StatusSuccess {
		return 0, "", fmt.Errorf("%s: status %s:\n%s", example, r.Status, out)
	}
	for _, op := range r.Results {
		if op.Operation == "test" && strings.Contains(op.Log, "uname -m:") && !strings.Contains(op.Log, "uname -m: "+string(a)) {
			return 0, "", fmt.Errorf("%s: the test log does not say uname -m: %s:\n%s", example, a, op.Log)
		}
	}
	return took, r.Start, nil
}

// debianHelloC makes the aarch64 debian machine and builds
// examples/hello-c-aarch64 on it, once, timing both.
func debianHelloC(ctx context.Context, bf, tmp, worker, machines, accelSet string) (*helloCResult, error) {
	const name = "debian-aarch64"
	m := filepath.Join(tmp, name)
	t0 := time.Now()
	if _, err := proc.Output(ctx, bf, "image", "build", "--preset", "debian", "--arch", "aarch64",
		"--name", name, "--out", m, "--worker", worker); err != nil {
		return nil, err
	}
	built := time.Since(t0)
	if _, err := proc.Output(ctx, bf, "machine", "add", "--machines", machines, "--name", name, m); err != nil {
		return nil, err
	}
	d, start, err := task(ctx, bf, machines, filepath.Join(tmp, "tftp"), accelSet, "hello-c-aarch64", arch.AArch64, "")
	if err != nil {
		return nil, fmt.Errorf("hello-c-aarch64: %w", err)
	}
	fmt.Printf("\nhello-c-aarch64 on %s: image build %.1fs (debootstrap cached or not: see the cache), task %.2fs (%s), success, uname -m: aarch64\n",
		name, built.Seconds(), d.Seconds(), start)
	return &helloCResult{ImageBuildNS: int64(built), TaskNS: int64(d), Start: start}, nil
}
