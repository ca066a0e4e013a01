// Command arch benchmarks aarch64 guests against x86_64 ones on this host,
// side by side in one run, through the buildfarm command as a user runs it:
//
//   - boot: `buildfarm vm boot-test` of the busybox machine of each
//     architecture (image build --preset busybox [--arch aarch64]): QEMU's
//     start to the worker's first sign of life on the console.
//   - hello: `buildfarm agent --fake-request` of examples/hello on the
//     x86_64 machine and examples/hello-aarch64 on the aarch64 one, the
//     whole agent process timed (snapshot, VM, configure, build, test,
//     install, result); each must end in success, and the aarch64 test log
//     must say uname -m: aarch64.
//
// With -hello-c it also builds examples/hello-c-aarch64 once on the debian
// preset for aarch64 (debootstrap --arch=arm64 through qemu-user's binfmt,
// cached after the first time) and reports the image build and the task.
//
// Runs alternate between the architectures so that load on the machine
// hits both alike; it prints each run, the medians and the ratio of
// aarch64 to x86_64. Run as root from the repository (it builds buildfarm
// and both workers with go build):
//
//	go run ./bench/arch [-runs 5] [-accel tcg] [-hello-c]
package main

import (
	"context"
	"errors"
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
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

func main() {
	runs := flag.Int("runs", 5, "runs of each measurement and architecture")
	accelSet := flag.String("accel", "tcg", "accelerator: auto, kvm or tcg")
	helloC := flag.Bool("hello-c", false, "also build examples/hello-c-aarch64 on the aarch64 debian machine, once")
	flag.Parse()
	if err := run(context.Background(), *runs, *accelSet, *helloC); err != nil {
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
	hello   []time.Duration
}

func run(ctx context.Context, runs int, accelSet string, helloC bool) error {
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
	builds := []struct{ out, pkg, goarch string }{
		{bf, "./cmd/buildfarm", ""}, {gs[0].worker, "./cmd/buildfarm-worker", "amd64"}, {gs[1].worker, "./cmd/buildfarm-worker", "arm64"},
	}
	for _, b := range builds {
		if err := testenv.GoBuild(ctx, b.out, b.pkg, b.goarch); err != nil {
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
	fmt.Printf("accel %s, %d runs, alternating x86_64 and aarch64\n", accelSet, runs)
	for i := range runs {
		for _, g := range gs {
			d, err := bootTest(ctx, bf, filepath.Join(tmp, g.machine), accelSet)
			if err != nil {
				return fmt.Errorf("boot %s: %w", g.arch, err)
			}
			g.boot = append(g.boot, d)
			fmt.Printf("run %d %-7s boot to the worker %6.2fs\n", i+1, g.arch, d.Seconds())
		}
		for _, g := range gs {
			d, err := task(ctx, bf, machines, filepath.Join(tmp, "tftp"), accelSet, g.example, g.arch)
			if err != nil {
				return fmt.Errorf("hello %s: %w", g.arch, err)
			}
			g.hello = append(g.hello, d)
			fmt.Printf("run %d %-7s hello task       %6.2fs\n", i+1, g.arch, d.Seconds())
		}
	}
	fmt.Println()
	fmt.Printf("%-22s %10s %10s %8s\n", "median", "x86_64", "aarch64", "ratio")
	for _, row := range []struct {
		name string
		x, a []time.Duration
	}{{"boot to the worker", gs[0].boot, gs[1].boot}, {"whole hello task", gs[0].hello, gs[1].hello}} {
		x, a := median(row.x), median(row.a)
		fmt.Printf("%-22s %9.2fs %9.2fs %7.2fx\n", row.name, x.Seconds(), a.Seconds(), a.Seconds()/x.Seconds())
	}
	if helloC {
		return debianHelloC(ctx, bf, tmp, gs[1].worker, machines, accelSet)
	}
	return nil
}

// firstSign is boot-test's line for the worker's first sign of life.
var firstSign = regexp.MustCompile(`(?m)^(start|first sign of life): +([0-9.]+)s`)

// bootTest runs `buildfarm vm boot-test` on machine dir m and returns the
// time from QEMU's start to the worker's first sign of life.
func bootTest(ctx context.Context, bf, m, accelSet string) (time.Duration, error) {
	out, err := proc.Output(ctx, bf, "vm", "boot-test", "--accel", accelSet, "--memory", "256", m)
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

// task runs examples/EXAMPLE through the agent's --fake-request and
// returns the whole agent process's time; the result must be a success,
// and the test log must name the guest's architecture when it prints it.
func task(ctx context.Context, bf, machines, tftp, accelSet, example string, a arch.Arch) (time.Duration, error) {
	t0 := time.Now()
	out, err := proc.Output(ctx, bf, "agent", "--machines", machines, "--tftp", tftp, "--accel", accelSet,
		"--ram", "256", "--fake-bootstrap", "--build-timeout", "30m",
		"--fake-request", filepath.Join("examples", example, "task.manifest"), "--dump-result")
	took := time.Since(t0)
	if err != nil {
		return 0, err
	}
	ms, err := manifest.Parse(strings.NewReader(string(out)), "result")
	if err != nil || len(ms) != 1 {
		return 0, fmt.Errorf("agent printed %q: want one result manifest (%v)", out, err)
	}
	r, err := manifest.ParseResult(ms[0], "result", manifest.Lenient)
	if err != nil {
		return 0, err
	}
	if r.Status != manifest.StatusSuccess {
		return 0, fmt.Errorf("%s: status %s:\n%s", example, r.Status, out)
	}
	for _, op := range r.Results {
		if op.Operation == "test" && strings.Contains(op.Log, "uname -m:") && !strings.Contains(op.Log, "uname -m: "+string(a)) {
			return 0, fmt.Errorf("%s: the test log does not say uname -m: %s:\n%s", example, a, op.Log)
		}
	}
	return took, nil
}

// debianHelloC makes the aarch64 debian machine and builds
// examples/hello-c-aarch64 on it, once, timing both.
func debianHelloC(ctx context.Context, bf, tmp, worker, machines, accelSet string) error {
	const name = "debian-aarch64"
	m := filepath.Join(tmp, name)
	t0 := time.Now()
	if _, err := proc.Output(ctx, bf, "image", "build", "--preset", "debian", "--arch", "aarch64",
		"--name", name, "--out", m, "--worker", worker); err != nil {
		return err
	}
	built := time.Since(t0)
	if _, err := proc.Output(ctx, bf, "machine", "add", "--machines", machines, "--name", name, m); err != nil {
		return err
	}
	d, err := task(ctx, bf, machines, filepath.Join(tmp, "tftp"), accelSet, "hello-c-aarch64", arch.AArch64)
	if err != nil {
		var pe *proc.Error
		if errors.As(err, &pe) {
			return fmt.Errorf("hello-c-aarch64: %w", err)
		}
		return err
	}
	fmt.Printf("\nhello-c-aarch64 on %s: image build %.1fs (debootstrap cached or not: see the cache), task %.2fs, success, uname -m: aarch64\n",
		name, built.Seconds(), d.Seconds())
	return nil
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
