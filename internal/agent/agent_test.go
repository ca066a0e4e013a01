package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/archive"
	"github.com/buildfarm/buildfarm/internal/image"
	"github.com/buildfarm/buildfarm/internal/machine"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/netns"
	"github.com/buildfarm/buildfarm/internal/qmp"
	"github.com/buildfarm/buildfarm/internal/testenv"
	"github.com/buildfarm/buildfarm/internal/vmrecord"
)

// bin holds the binaries built once for the tests: buildfarm (for the
// tests that run the agent as a process) and buildfarm-worker.
var bin struct {
	once      sync.Once
	dir, err  string
	buildfarm string
	worker    string
}

func binaries(t *testing.T) (buildfarm, worker string) {
	t.Helper()
	bin.once.Do(func() {
		dir, err := os.MkdirTemp("", "buildfarm-agent-test-")
		if err != nil {
			bin.err = err.Error()
			return
		}
		bin.dir = dir
		bin.buildfarm = filepath.Join(dir, "buildfarm")
		bin.worker = filepath.Join(dir, "buildfarm-worker")
		ctx := context.Background()
		if err := testenv.GoBuild(ctx, bin.buildfarm, "./cmd/buildfarm", ""); err != nil {
			bin.err = err.Error()
			return
		}
		if err := testenv.BuildWorker(ctx, bin.worker, arch.Host()); err != nil {
			bin.err = err.Error()
		}
	})
	if bin.err != "" {
		t.Fatal(bin.err)
	}
	return bin.buildfarm, bin.worker
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bin.dir != "" {
		os.RemoveAll(bin.dir)
	}
	os.Exit(code)
}

// farm is a build host for a test: a machines directory with one volume
// holding the busybox machine, and a TFTP directory. Its Write collects
// the agent's log.
type farm struct {
	machines, tftp  string
	registry, links string // of VM records and console links
	log             logBuffer
}

func (f *farm) Write(p []byte) (int, error) { return f.log.Write(p) }

// newFarm builds a machine (the busybox preset unless opts names another,
// with opts' extras) and adds it to a volume: on btrfs on a loop device, or
// on the fallback backend in a temporary directory.
func newFarm(t *testing.T, btrfs bool, opts image.Options) *farm {
	t.Helper()
	testenv.NeedVM(t)
	testenv.NeedRoot(t)
	testenv.NeedKernel(t)
	_, worker := binaries(t)
	root := t.TempDir()
	if btrfs {
		root = testenv.Btrfs(t, 8<<30) // sparse: room for the debian machine's 2 GiB disk
	}
	f := &farm{machines: filepath.Join(root, "machines"), tftp: filepath.Join(root, "tftp"),
		registry: testenv.VMRegistry(t), links: filepath.Join(t.TempDir(), "console")}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", f.log.String())
		}
	})
	if opts.Preset == "" {
		opts.Preset = "busybox"
	}
	opts.Out, opts.Worker = filepath.Join(t.TempDir(), opts.Preset), worker
	if _, err := image.Build(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	v, err := (&machine.Store{Dir: f.machines}).Volume(machine.DefaultVolume, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Add(context.Background(), opts.Preset, machine.Source{Dir: opts.Out}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { checkNothingLeft(t, f) })
	return f
}

func (f *farm) options() Options {
	o := DefaultOptions()
	o.Machines, o.TFTP = f.machines, f.tftp
	o.Registry, o.ConsoleLinks = f.registry, f.links
	o.Accel = "tcg"
	o.MemoryMB = 256
	o.BootstrapStartup, o.BuildStartup = 30*time.Second, 30*time.Second
	o.BootstrapTimeout, o.BuildTimeout = 60*time.Second, 60*time.Second
	o.ShutdownTimeout = 10 * time.Second
	o.Start = StartCold // the warm start has its own tests (warm_test.go)
	return o
}

// run runs the agent in-process and returns what it dumped.
func (f *farm) run(t *testing.T, o Options) (string, error) {
	t.Helper()
	var out bytes.Buffer
	a, err := New(o, slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug})), &out)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	err = a.Run(ctx, nil)
	return out.String(), err
}

// buildAll runs the agent on its fake request and wants a successful build
// with all four operations.
func (f *farm) buildAll(t *testing.T, o Options) *manifest.Result {
	t.Helper()
	out, err := f.run(t, o)
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	res := parseResult(t, out)
	if res.Status != manifest.StatusSuccess || len(res.Results) != 4 {
		t.Fatalf("result %v with %d operations, want success with 4:\n%s", res.Status, len(res.Results), out)
	}
	return res
}

func parseResult(t *testing.T, out string) *manifest.Result {
	t.Helper()
	ms, err := manifest.Parse(strings.NewReader(out), "dumped result")
	if err != nil || ms.Len() != 1 {
		t.Fatalf("dumped result %q: %v", out, err)
	}
	res, err := manifest.ParseResult(ms.Manifest(0), "dumped result", manifest.Strict)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// checkNothingLeft fails the test if a QEMU, a task snapshot or a network
// namespace of ours survived.
func checkNothingLeft(t *testing.T, f *farm) {
	t.Helper()
	if out, _ := exec.Command("pgrep", "-af", "qemu-system.*"+f.tftp).Output(); len(out) > 0 {
		t.Errorf("QEMU left running:\n%s", out)
	}
	for _, m := range snapshots(f) {
		t.Errorf("snapshot left behind: %s", m)
	}
	if names, _ := netns.Ours(); len(names) > 0 {
		t.Errorf("network namespaces left behind: %v", names)
	}
}

func fakeRequest(example string) string {
	return filepath.Join("..", "..", "examples", example, "task.manifest")
}

// TestBuildHello is the first end-to-end path: bootstrap the busybox
// machine, build examples/hello in a one-shot VM, and examples/hello-broken.
func TestBuildHello(t *testing.T) {
	for _, backend := range []struct {
		name  string
		btrfs bool
	}{{"btrfs", true}, {"fallback", false}} {
		t.Run(backend.name, func(t *testing.T) {
			f := newFarm(t, backend.btrfs, image.Options{})
			o := f.options()
			o.FakeRequest, o.DumpResult = fakeRequest("hello"), true
			o.Artifacts = t.TempDir()
			res := f.buildAll(t, o)
			for _, r := range res.Results {
				if r.Status != manifest.StatusSuccess || !strings.Contains(r.Log, "$ sh ./") {
					t.Errorf("%s: %v, log %q", r.Operation, r.Status, r.Log)
				}
			}
			if b, err := os.ReadFile(filepath.Join(o.Artifacts, "hello-1.0.0", "hello")); err != nil || !strings.Contains(string(b), "Hello, World!") {
				t.Errorf("artifact hello-1.0.0/hello = %q, %v; want the program the build made", b, err)
			}
			if !strings.Contains(f.log.String(), "machine bootstrapped") {
				t.Errorf("the machine was not bootstrapped")
			}
			if backend.name == "fallback" {
				return
			}
			// The machine is bootstrapped now: the next task uses it as
			// it is, and a failing test is an error with its log.
			o.FakeRequest = fakeRequest("hello-broken")
			out, err := f.run(t, o)
			if err != nil {
				t.Fatalf("agent: %v", err)
			}
			res = parseResult(t, out)
			last := res.Results[len(res.Results)-1]
			if res.Status != manifest.StatusError || last.Operation != "test" || last.Status != manifest.StatusError ||
				!strings.Contains(last.Log, "FAIL: greeting: got 'Hello, Wrold!'") {
				t.Errorf("hello-broken: %v, last operation %s %v %q; want error in test with the failing test's log", res.Status, last.Operation, last.Status, last.Log)
			}
			if n := strings.Count(f.log.String(), "machine bootstrapped"); n != 1 {
				t.Errorf("bootstrapped %d times over two runs, want once", n)
			}
		})
	}
}

// hangingFarm is a farm whose busybox machine's init never starts the
// worker: it says so on the console and sleeps.
func hangingFarm(t *testing.T) *farm {
	hang := filepath.Join(t.TempDir(), "init")
	os.WriteFile(hang, []byte("#!/bin/sh\necho 'init: hanging on purpose'\nexec sleep 3600\n"), 0o755)
	return newFarm(t, false, image.Options{InitOverride: hang})
}

// checkHangingLog checks that the serial log of rec, a paused VM of
// hangingFarm, is still there and holds what its init said. The kernel
// boots quietly, and under TCG on a loaded host it may not have reached
// init within the startup deadline: then the VM is resumed until its init
// speaks, into the same file, and paused again, as it was.
func checkHangingLog(t *testing.T, rec vmrecord.Record) {
	t.Helper()
	const said = "init: hanging on purpose"
	b, err := os.ReadFile(rec.SerialLog)
	if err != nil {
		t.Errorf("serial log of the suspended VM: %v", err)
		return
	}
	if strings.Contains(string(b), said) {
		return
	}
	t.Logf("serial log %s of the suspended VM: %q before the guest's init spoke; resuming the VM until it does", rec.SerialLog, b)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := qmp.Dial(ctx, rec.QMP)
	if err != nil {
		t.Fatalf("suspended VM %s: QMP: %v", rec.Name, err)
	}
	defer c.Close()
	if _, err := c.Execute(ctx, "cont", nil); err != nil {
		t.Fatalf("suspended VM %s: %v", rec.Name, err)
	}
	defer c.Execute(context.WithoutCancel(ctx), "stop", nil)
	start := time.Now()
	for ctx.Err() == nil {
		if b, err = os.ReadFile(rec.SerialLog); err == nil && strings.Contains(string(b), said) {
			t.Logf("the guest's init spoke %v after the VM was resumed", time.Since(start).Round(time.Millisecond))
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("serial log %s of the suspended VM, resumed for 3 minutes: %q, %v; want the guest's output", rec.SerialLog, b, err)
}

// TestMisbootSuspends: a machine whose worker never starts is retried, then
// suspended and reported; the agent goes on, and when it exits the VM is
// still there, paused, with its snapshot, serial log, sockets, network
// namespace and record. The next agent, past --suspend-limit, destroys it.
func TestMisbootSuspends(t *testing.T) {
	f := hangingFarm(t)
	o := f.options()
	o.FakeBootstrap = true
	o.FakeRequest, o.DumpResult = fakeRequest("hello"), true
	o.BuildStartup, o.BuildRetries = 6*time.Second, 1
	out, err := f.run(t, o)
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	res := parseResult(t, out)
	if res.Status != manifest.StatusAbnormal || !strings.Contains(res.Results[0].Log, "mis-boot") {
		t.Errorf("result %v %q, want abnormal, mis-boot", res.Status, res.Results[0].Log)
	}
	log := f.log.String()
	if n := strings.Count(log, "build VM mis-booted; retrying"); n != 1 {
		t.Errorf("%d retries logged, want 1", n)
	}
	if !strings.Contains(log, "VM suspended for investigation") || !strings.Contains(log, "qmp=") {
		t.Errorf("no report of the suspended VM in the log")
	}
	rec := suspendedVM(t, f, "hello/1.0.0", "mis-boot")
	checkSuspended(t, rec, "paused")
	checkHangingLog(t, rec)

	// The next agent, with the VM past its --suspend-limit, destroys it.
	o.FakeRequest, o.DumpResult, o.DumpMachines = "", false, true
	o.SuspendLimit = time.Millisecond
	if _, err := f.run(t, o); err != nil {
		t.Fatalf("second agent: %v", err)
	}
	checkDestroyed(t, f, rec)
}

// TestMisbootBootstrapSuspends: a bootstrap VM that never starts its
// worker is suspended, and keeps its TFTP directory, serial log and QMP
// socket when the bootstrap gives up and when the agent exits.
func TestMisbootBootstrapSuspends(t *testing.T) {
	f := hangingFarm(t)
	o := f.options()
	o.DumpMachines = true
	o.BootstrapStartup, o.BootstrapRetries = 10*time.Second, 0
	if _, err := f.run(t, o); err != nil {
		t.Fatalf("agent: %v", err)
	}
	rec := suspendedVM(t, f, "bootstrap", "mis-boot")
	checkSuspended(t, rec, "paused")
	checkHangingLog(t, rec)
	// The next agent (which does not boot the machine again) destroys it
	// past the limit.
	o.SuspendLimit, o.FakeBootstrap = time.Millisecond, true
	if _, err := f.run(t, o); err != nil {
		t.Fatalf("second agent: %v", err)
	}
	checkDestroyed(t, f, rec)
}

// suspendedVM returns the one VM recorded in f's registry, which must be
// a suspended VM whose record says why (containing why).
func suspendedVM(t *testing.T, f *farm, task, why string) vmrecord.Record {
	t.Helper()
	recs, err := vmrecord.Registry{Dir: f.registry}.List()
	if err != nil || len(recs) != 1 {
		t.Fatalf("VM records: %+v, %v; want one suspended VM", recs, err)
	}
	rec := recs[0]
	t.Cleanup(func() { // in case the test failed before destroying it
		if rec.Alive() {
			syscall.Kill(-rec.PID, syscall.SIGKILL)
			gone(rec.PID, 5*time.Second)
		}
		if rec.NetNS != "" {
			exec.Command("ip", "netns", "delete", rec.NetNS).Run()
		}
	})
	if rec.State != vmrecord.Suspended || !strings.Contains(rec.Why, why) || rec.Machine != "busybox" || rec.Task != task {
		t.Errorf("record %+v, want busybox's VM for %s suspended because of %q", rec, task, why)
	}
	return rec
}

// checkSuspended checks that the suspended VM of rec is still there: its
// QEMU, in QMP state status, its snapshot, TFTP directory and network
// namespace.
func checkSuspended(t *testing.T, rec vmrecord.Record, status string) {
	t.Helper()
	if !rec.Alive() {
		t.Fatalf("suspended VM %s: QEMU %d is gone", rec.Name, rec.PID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, rec.QMP)
	if err != nil {
		t.Fatalf("suspended VM %s: QMP: %v", rec.Name, err)
	}
	st, err := c.QueryStatus(ctx)
	c.Close()
	if err != nil || st.Status != status {
		t.Errorf("suspended VM %s: QMP status %q, %v; want %s", rec.Name, st.Status, err, status)
	}
	for _, p := range []string{rec.Snapshot, rec.TFTP, rec.SerialLog, rec.Dir, filepath.Join(netns.Dir, rec.NetNS)} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("suspended VM %s: %v", rec.Name, err)
		}
	}
}

// checkDestroyed checks that nothing of the VM of rec is left: no
// process, snapshot, network namespace, TFTP directory or record.
func checkDestroyed(t *testing.T, f *farm, rec vmrecord.Record) {
	t.Helper()
	if !gone(rec.PID, 10*time.Second) {
		t.Errorf("VM %s: QEMU %d still runs", rec.Name, rec.PID)
	}
	// The record goes last, once the rest is deleted.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := (vmrecord.Registry{Dir: f.registry}).Read(rec.Name); errors.Is(err, vmrecord.ErrNotFound) {
			break
		}
	}
	for _, p := range []string{rec.Snapshot, rec.TFTP, filepath.Join(netns.Dir, rec.NetNS)} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("VM %s: %s left behind", rec.Name, p)
		}
	}
	if _, err := (vmrecord.Registry{Dir: f.registry}).Read(rec.Name); !errors.Is(err, vmrecord.ErrNotFound) {
		t.Errorf("VM %s: record still there (%v)", rec.Name, err)
	}
}

// startAgent runs the buildfarm binary's agent on f with args, and waits
// until its VM's QEMU runs; it returns the agent and QEMU's pid.
func startAgent(t *testing.T, f *farm, args ...string) (*exec.Cmd, int) {
	t.Helper()
	buildfarm, _ := binaries(t)
	args = append([]string{"agent", "--machines", f.machines, "--tftp", f.tftp, "--accel", "tcg", "--ram", "256",
		"--registry", f.registry, "--console-links", f.links, "--fake-bootstrap", "--build-startup", "60s", "--start", "cold"}, args...)
	cmd := exec.Command(buildfarm, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if out, _ := exec.Command("pgrep", "-f", "qemu-system.*"+f.tftp).Output(); len(out) > 0 {
			var pid int
			fmt.Sscan(string(out), &pid)
			return cmd, pid
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no QEMU started by %v", args)
	return nil, 0
}

func gone(pid int, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(pid, 0); err != nil {
			return true
		}
		// A zombie has exited too: its parent has not reaped it yet.
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && strings.Contains(string(b), ") Z ") {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

func snapshots(f *farm) []string {
	ms, _ := filepath.Glob(filepath.Join(f.machines, "*", "*", "*-default-*"))
	var out []string
	for _, m := range ms {
		if !strings.HasSuffix(m, ".lock") {
			out = append(out, m)
		}
	}
	return out
}

// TestKillAndRestart: SIGKILL of the agent mid-build takes its QEMU with
// it, and the next start leaves no snapshot and no namespace behind.
func TestKillAndRestart(t *testing.T) {
	f := newFarm(t, false, image.Options{})
	agent, qemu := startAgent(t, f, "--fake-request", fakeRequest("hello"), "--dump-result")
	if len(snapshots(f)) != 1 {
		t.Fatalf("snapshots while building: %v, want one", snapshots(f))
	}
	agent.Process.Signal(syscall.SIGKILL)
	agent.Wait()
	if !gone(qemu, 5*time.Second) {
		syscall.Kill(qemu, syscall.SIGKILL)
		t.Fatalf("QEMU %d outlived its SIGKILLed agent", qemu)
	}
	if len(snapshots(f)) != 1 {
		t.Fatalf("snapshots after the crash: %v, want the one left behind", snapshots(f))
	}
	// The next start cleans up; --dump-machines then exits.
	buildfarm, _ := binaries(t)
	out, err := exec.Command(buildfarm, "agent", "--machines", f.machines, "--tftp", f.tftp, "--registry", f.registry, "--fake-bootstrap", "--dump-machines").CombinedOutput()
	if err != nil {
		t.Fatalf("restarted agent: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "name: busybox") || !strings.Contains(string(out), "removed a stray snapshot") {
		t.Errorf("restarted agent said:\n%s\nwant the machine header and the stray snapshot removed", out)
	}
	if s := snapshots(f); len(s) != 0 {
		t.Errorf("snapshots after a restart: %v", s)
	}
}

// TestSIGTERM: SIGTERM stops the VM, deletes the snapshot and exits 0.
func TestSIGTERM(t *testing.T) {
	f := newFarm(t, false, image.Options{})
	agent, qemu := startAgent(t, f, "--fake-request", fakeRequest("hello"), "--dump-result")
	agent.Process.Signal(syscall.SIGTERM)
	if err := agent.Wait(); err != nil {
		t.Errorf("agent after SIGTERM: %v, want exit 0", err)
	}
	if !gone(qemu, time.Second) {
		t.Errorf("QEMU %d still running after the agent exited", qemu)
	}
	if s := snapshots(f); len(s) != 0 {
		t.Errorf("snapshots after SIGTERM: %v", s)
	}
}

// TestBuildHelloC builds a C project with make and tests it with make check
// on the debian machine: a real compiler in a one-shot VM.
func TestBuildHelloC(t *testing.T) {
	f := newFarm(t, true, image.Options{Preset: "debian"})
	o := f.options()
	o.FakeBootstrap = true
	o.MemoryMB = 512
	o.FakeRequest, o.DumpResult = fakeRequest("hello-c"), true
	res := f.buildAll(t, o)
	logs := map[string]string{}
	for _, r := range res.Results {
		logs[r.Operation] = r.Log
	}
	if !strings.Contains(logs["update"], "cc -O2 -Wall -Werror") || !strings.Contains(logs["test"], "PASS: named") {
		t.Errorf("update log %q, test log %q: want the compiler run and the tests passing", logs["update"], logs["test"])
	}
}

// TestBuildThroughController builds examples/hello in a real VM for a
// controller: the task comes over HTTP with its sources at a URL, the agent
// downloads and checks them, the worker builds them, and the result is
// uploaded after a failed first try (from the spool).
func TestBuildThroughController(t *testing.T) {
	f := newFarm(t, false, image.Options{})
	task, srcDir, err := ReadTaskFile(fakeRequest("hello"))
	if err != nil {
		t.Fatal(err)
	}
	var packed bytes.Buffer
	if err := archive.Pack(&packed, srcDir, func(name string) bool { return name == task.Archive }); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(packed.Bytes())
	c := newTestController(t)
	c.archives[task.Archive] = packed.Bytes()
	c.failResults = 1
	task.ArchiveURL, task.ArchiveSHA256 = c.srv.URL+"/archive/"+task.Archive, hex.EncodeToString(sum[:])
	c.give(task)

	o := f.options()
	o.FakeBootstrap = true
	o.RequestInterval = time.Second
	a, err := New(o, slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug})), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, []string{c.url()}) }()
	rr := c.waitResult(t, 4*time.Minute)
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after cancellation = %v, want nil", err)
	}
	if rr.Result.Status != manifest.StatusSuccess || len(rr.Result.Results) != 4 {
		t.Errorf("result %v with %d operations, want success with 4: %+v", rr.Result.Status, len(rr.Result.Results), rr.Result.Results)
	}
	if !strings.Contains(f.log.String(), "sources downloaded") {
		t.Errorf("the agent did not log the sources' download")
	}
}
