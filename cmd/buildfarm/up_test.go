package main

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/controller"
	"github.com/buildfarm/buildfarm/internal/machine"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/testenv"
	"github.com/buildfarm/buildfarm/internal/worker"
)

// TestUp runs the README's first command, `buildfarm up --demo`, for real
// from an empty state directory: it makes the busybox machine, starts the
// controller on SQLite and the agent, which bootstraps the machine, and
// submits examples/hello and examples/hello-broken through the
// controller's API; the agent builds each in a one-shot VM. It must exit 0
// with hello ended success and hello-broken error, and leave no process
// running on its state directory. This is also the test of real VMs
// through the real controller and agent.
func TestUp(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedRoot(t)
	testenv.NeedKernel(t)
	worker := testenv.Worker(t, arch.X8664)
	runUpDemo(t, []string{"--worker", worker}, []string{
		"hello 1.0.0 on busybox: success (as expected)",
		"hello-broken 1.0.0 on busybox: error (as expected)",
		"  update: success", // hello's operations are listed
	}, []string{"up: making the busybox machine", "up: controller listening on http://127.0.0.1:", "up: the agent bootstraps", "up: the demo ended as expected"})
}

// TestUpAArch64 runs `buildfarm up --demo --arch aarch64` from an empty
// state directory: up makes the aarch64 busybox machine alone (with the
// worker cross-compiled), writes a buildtab whose default configuration
// targets aarch64, and the agent builds the demo's examples/hello-aarch64
// (whose test checks the guest's uname -m) and hello-broken on it, under
// TCG, through the controller. (TestUpBuildtabArches checks both
// architectures offered together.)
func TestUpAArch64(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedRoot(t)
	testenv.NeedProgram(t, "qemu-system-aarch64")
	testenv.NeedKernelFor(t, arch.AArch64)
	testenv.NeedBusybox(t, arch.AArch64)
	worker := testenv.Worker(t, arch.AArch64)
	state := runUpDemo(t, []string{"--arch", "aarch64", "--worker", "aarch64=" + worker}, []string{
		"hello-aarch64 1.0.0 on busybox-aarch64: success (as expected)",
		"hello-broken 1.0.0 on busybox-aarch64: error (as expected)",
	}, []string{"up: making the busybox-aarch64 machine", "up: the agent bootstraps the busybox-aarch64 machine", "up: the demo ended as expected"})
	bt, err := controller.ReadBuildtab(filepath.Join(state, "buildtab"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := bt.Select(nil); err != nil || len(got) != 1 || got[0].Name != "busybox-aarch64" || got[0].Target != "aarch64-linux-gnu" {
		t.Errorf("the buildtab's default configurations = %+v, %v; want busybox-aarch64 for aarch64-linux-gnu", got, err)
	}
}

// runUpDemo runs up --demo with args from an empty state directory, which
// it returns, and checks that it exits 0 having printed each of outLines
// on its standard output and progress lines on its standard error, and
// that nothing is left running on the state directory.
func runUpDemo(t *testing.T, args, outLines, progress []string) string {
	t.Helper()
	state := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err := run(ctx, append([]string{"up", "--demo", "--state", state, "--listen", "127.0.0.1:0",
		"--examples", filepath.Join("..", "..", "examples")}, args...), nil, &stdout, &stderr)
	if err != nil {
		t.Fatalf("up --demo %s = %v (exit %d)\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, exitCode(err), stdout.String(), stderr.String())
	}
	for _, want := range outLines {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("up --demo printed\n%s\nwant a line %q", stdout.String(), want)
		}
	}
	for _, want := range progress {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("up --demo's progress lacks %q:\n%s", want, stderr.String())
		}
	}
	for _, f := range []string{"controller.db", "buildtab"} {
		if _, err := os.Stat(filepath.Join(state, f)); err != nil {
			t.Errorf("state: %v", err)
		}
	}
	if pids := processesOn(t, state); len(pids) > 0 {
		t.Errorf("processes left running on the state directory after up --demo, killed now: %v", pids)
	}
	return state
}

// processesOn lists the processes whose command line names dir, and
// kills each (SIGKILL, by its pid): a test leaves no process behind, such
// as the QEMU of a VM the agent suspended.
func processesOn(t *testing.T, dir string) []string {
	t.Helper()
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var pids []string
	for _, f := range cmdlines {
		b, err := os.ReadFile(f)
		if err != nil || !bytes.Contains(b, []byte(dir)) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(f)))
		if err != nil || pid == os.Getpid() {
			continue
		}
		pids = append(pids, fmt.Sprintf("%d: %s", pid, strings.ReplaceAll(string(b), "\x00", " ")))
		syscall.Kill(pid, syscall.SIGKILL)
	}
	return pids
}

// TestUpListenBusy checks that up says clearly that its address is taken,
// before it spends minutes making a machine.
func TestUpListenBusy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	state := t.TempDir()
	var stdout, stderr bytes.Buffer
	err = run(context.Background(), []string{"up", "--state", state, "--listen", ln.Addr().String()}, nil, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "address already in use") || !strings.Contains(err.Error(), "127.0.0.1:0 picks a free port") {
		t.Fatalf("up on a busy address = %v, want it to say the address is in use and what to do", err)
	}
	if strings.Contains(stderr.String(), "making the busybox machine") {
		t.Errorf("up made a machine before finding its address busy:\n%s", stderr.String())
	}
	// The buildtab it wrote is one the controller reads, with both
	// machines' configurations.
	bt, err := controller.ReadBuildtab(filepath.Join(state, "buildtab"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, class string }{{"busybox", "default"}, {"debian", "gcc"}} {
		got, err := bt.Select([]string{c.class})
		if err != nil || len(got) != 1 || got[0].Name != c.name {
			t.Errorf("buildtab class %s selects %+v, %v; want configuration %s", c.class, got, err, c.name)
		}
	}
}

func TestUpBadOptions(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--instances", "-1"}, "--instances -1"},
		{[]string{"--build-timeout", "0s"}, "--build-timeout 0s"},
		{[]string{"--demo", "--examples", "/nonexistent"}, "--demo: examples"},
		{[]string{"--arch", "x86_64,sparc"}, `--arch: architecture "sparc"`},
		{[]string{"--arch", "x86_64", "--worker", "aarch64=/w"}, "which --arch does not offer"},
	} {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), append([]string{"up", "--state", t.TempDir()}, tc.args...), nil, &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("up %v = %v, want an error naming %q", tc.args, err, tc.want)
		}
	}
}

func TestFitInstances(t *testing.T) {
	const gib = 1 << 30
	for _, tc := range []struct {
		ncpu     int
		avail    int64
		cpu, ram int
		want     int
	}{
		{1, 8 * gib, 1, 512, 1},    // at least one
		{2, 8 * gib, 1, 512, 1},    // one CPU left to the host
		{8, 64 * gib, 1, 512, 7},   // CPUs bound it
		{8, 64 * gib, 2, 512, 3},   // two CPUs a VM
		{16, 2 * gib, 1, 512, 2},   // memory bounds it: half of 2 GiB
		{16, 0, 1, 512, 15},        // memory unknown
		{16, 100 << 20, 1, 512, 1}, // too little memory: still one
	} {
		if got := fitInstances(tc.ncpu, tc.avail, tc.cpu, tc.ram); got != tc.want {
			t.Errorf("fitInstances(%d, %d, %d, %d) = %d, want %d", tc.ncpu, tc.avail, tc.cpu, tc.ram, got, tc.want)
		}
	}
}

func TestUpArches(t *testing.T) {
	host := arch.Host()
	for _, tc := range []struct {
		arches, workers []string
		want            []upArch
		err             string
	}{
		{nil, nil, []upArch{{host, upMachineName(host), ""}}, ""},
		{[]string{"x86_64", "aarch64"}, []string{"/w/amd64", "aarch64=/w/arm64"},
			[]upArch{{arch.X8664, "busybox", "/w/amd64"}, {arch.AArch64, "busybox-aarch64", "/w/arm64"}}, ""},
		{[]string{"arm64", "aarch64"}, []string{"arm64=/w/arm64"}, []upArch{{arch.AArch64, "busybox-aarch64", "/w/arm64"}}, ""},
		{[]string{"aarch64", "amd64"}, nil, []upArch{{arch.AArch64, "busybox-aarch64", ""}, {arch.X8664, "busybox", ""}}, ""},
		{[]string{"riscv64"}, nil, nil, `--arch: architecture "riscv64"`},
		{[]string{"x86_64"}, []string{"aarch64=/w/arm64"}, nil, "which --arch does not offer"},
		{[]string{"x86_64"}, []string{"x86_64="}, nil, "no file"},
		{[]string{"x86_64"}, []string{"x86_64=/a", "x86_64=/b"}, nil, "a second worker for x86_64"},
	} {
		if host != arch.X8664 && len(tc.workers) > 0 && !strings.Contains(tc.workers[0], "=") {
			continue // a plain --worker is the host's
		}
		got, err := upArches(tc.arches, tc.workers)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("upArches(%q, %q) = %v, %v; want an error with %q", tc.arches, tc.workers, got, err, tc.err)
		case tc.err == "" && (err != nil || !slices.Equal(got, tc.want)):
			t.Errorf("upArches(%q, %q) = %v, %v; want %v", tc.arches, tc.workers, got, err, tc.want)
		}
	}
}

// TestUpBuildtabArches checks the buildtab up writes for two
// architectures: each configuration is given only its architecture's
// machine, whatever order the agent offers them in, and the demo's tasks
// go to configurations that exist; and that an older buildtab without
// aarch64 gets its lines, once, with the user's lines kept.
func TestUpBuildtabArches(t *testing.T) {
	arches, err := upArches([]string{"x86_64", "aarch64"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "buildtab")
	bt, added, err := upBuildtab(file, arches)
	if err != nil || len(added) != 0 {
		t.Fatalf("upBuildtab on an empty state = %v, %v; want no error and nothing added", added, err)
	}
	x86 := manifest.MachineHeader{Name: "busybox", Arch: string(arch.X8664)}
	arm := manifest.MachineHeader{Name: "busybox-aarch64", Arch: string(arch.AArch64)}
	want := map[string]string{"busybox": "busybox", "busybox-aarch64": "busybox-aarch64"}
	for _, offered := range [][]manifest.MachineHeader{{x86, arm}, {arm, x86}} {
		if got := bt.Machines(offered); !maps.Equal(got, want) {
			t.Errorf("Machines(%v) = %v, want %v", offered, got, want)
		}
	}
	if got := bt.Machines([]manifest.MachineHeader{arm}); got["busybox"] != "" {
		t.Errorf("the x86_64 configuration busybox was given the aarch64 machine: %v", got)
	}
	for class, name := range map[string]string{"default": "busybox", "gcc": "debian", "aarch64": "busybox-aarch64", "gcc-aarch64": "debian-aarch64"} {
		got, err := bt.Select([]string{class})
		if err != nil || len(got) != 1 || got[0].Name != name {
			t.Errorf("class %s selects %+v, %v; want configuration %s", class, got, err, name)
		}
	}
	if c, _ := bt.Config("debian-aarch64"); c.Target != "aarch64-linux-gnu" || c.MachinePattern != "debian-aarch64*" {
		t.Errorf("configuration debian-aarch64 = %+v, want debian-aarch64* for aarch64-linux-gnu", c)
	}
	var examples []string
	for _, d := range upDemoTasks(arches) {
		examples = append(examples, d.example+"@"+d.config)
		if _, ok := bt.Config(d.config); !ok {
			t.Errorf("demo task %s goes to configuration %s, which the buildtab lacks", d.example, d.config)
		}
	}
	if want := []string{"hello@busybox", "hello-broken@busybox", "hello-aarch64@busybox-aarch64"}; !slices.Equal(examples, want) {
		t.Errorf("demo tasks %q, want %q", examples, want)
	}

	// An older state's buildtab, edited by its user, for x86_64 alone.
	const old = "# mine\nbusybox*  busybox  x86_64-linux-gnu  default\nmine*  mine  x86_64-linux-gnu  extra\n"
	if err := os.WriteFile(file, []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	bt, added, err = upBuildtab(file, arches)
	if err != nil || !slices.Equal(added, []arch.Arch{arch.AArch64}) {
		t.Fatalf("upBuildtab on an x86_64 buildtab = %v, %v; want aarch64 added", added, err)
	}
	if got := bt.Machines([]manifest.MachineHeader{x86, arm}); !maps.Equal(got, want) {
		t.Errorf("after adding: Machines = %v, want %v", got, want)
	}
	if got, _ := os.ReadFile(file); !strings.HasPrefix(string(got), old) {
		t.Errorf("the user's lines were not kept:\n%s", got)
	}
	before, _ := os.ReadFile(file)
	if _, added, err := upBuildtab(file, arches); err != nil || len(added) != 0 {
		t.Errorf("upBuildtab again = %v, %v; want nothing added", added, err)
	}
	if after, _ := os.ReadFile(file); !bytes.Equal(before, after) {
		t.Errorf("upBuildtab again changed the file:\n%s", after)
	}
}

// TestUpOlderWorker checks how up tells that a machine it made earlier
// holds a worker of an older protocol (so that it makes the machine again):
// by the version its bootstrapped copy records.
func TestUpOlderWorker(t *testing.T) {
	machines := t.TempDir()
	dir := filepath.Join(machines, machine.DefaultVolume, "busybox", "busybox-"+upToolchain)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(v uint64) {
		t.Helper()
		bm := &manifest.BootstrappedMachine{
			Machine:   manifest.Machine{ID: "busybox-1.0", Name: "busybox", Summary: "busybox", Type: "kvm"},
			Toolchain: manifest.Toolchain{ID: "t"},
			Bootstrap: manifest.Bootstrap{Versions: []manifest.ToolVersion{{Tool: worker.VersionTool, Version: v}}},
		}
		if err := manifest.WriteFile(filepath.Join(dir, machine.BootstrappedFile), []manifest.Manifest{bm.Manifest()}); err != nil {
			t.Fatal(err)
		}
	}
	if v, ok := olderWorker(machines, "busybox", upToolchain); ok {
		t.Errorf("olderWorker(not bootstrapped) = %d, true; want false", v)
	}
	write(worker.Version - 1)
	if v, ok := olderWorker(machines, "busybox", upToolchain); !ok || v != worker.Version-1 {
		t.Errorf("olderWorker(bootstrapped by protocol %d) = %d, %v; want %d, true", worker.Version-1, v, ok, worker.Version-1)
	}
	write(worker.Version)
	if v, ok := olderWorker(machines, "busybox", upToolchain); ok {
		t.Errorf("olderWorker(bootstrapped by this protocol) = %d, true; want false", v)
	}
}
