package agent

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/machine"
	"github.com/buildfarm/buildfarm/internal/machine/machinetest"
)

// storeOptions are options for an agent on a real machine store (the
// fallback backend in a temporary directory) with --fake-bootstrap and
// --fake-build: enumeration, bootstrap commits and task snapshots are
// real, VMs are not.
func storeOptions(t *testing.T) (Options, *machine.Volume) {
	dir := t.TempDir()
	o := fakeOptions(t)
	o.FakeMachine, o.FakeBootstrap = "", true
	o.Machines = filepath.Join(dir, "machines")
	v, err := (&machine.Store{Dir: o.Machines, Backend: machine.BackendFallback}).Volume(machine.DefaultVolume, true)
	if err != nil {
		t.Fatal(err)
	}
	return o, v
}

// TestReenumerate: the agent enumerates its machines before each task
// request, as bbot does: a machine added, upgraded or removed under a
// running agent is offered (and bootstrapped), its new revision used, or
// no longer offered, at the next request.
func TestReenumerate(t *testing.T) {
	o, v := storeOptions(t)
	src := t.TempDir()
	machinetest.MakeMachine(t, filepath.Join(src, "r1"), "busybox", "busybox-r1", 1)
	machinetest.MakeMachine(t, filepath.Join(src, "r2"), "busybox", "busybox-r2", 2)
	machinetest.MakeMachine(t, filepath.Join(src, "debian"), "debian", "debian-r1", 3)
	ctx := context.Background()
	if _, err := v.Add(ctx, "busybox", machine.Source{Dir: filepath.Join(src, "r1")}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Add(ctx, "debian", machine.Source{Dir: filepath.Join(src, "debian")}); err != nil {
		t.Fatal(err)
	}
	c := newTestController(t)
	var log logBuffer
	runAgent(t, o, &log, c.url())

	c.give(helloTask("busybox"))
	rr := c.waitResult(t, 30*time.Second)
	if l := rr.Result.Results[0].Log; !strings.Contains(l, "machine busybox id busybox-r1") {
		t.Errorf("first task's log %q, want it run on revision busybox-r1", l)
	}

	// Upgrade under the running agent: the next request offers the new
	// revision, bootstrapped afresh, and the task runs on it.
	if _, err := v.Upgrade(ctx, "busybox", machine.Source{Dir: filepath.Join(src, "r2")}); err != nil {
		t.Fatal(err)
	}
	c.give(helloTask("busybox"))
	rr = c.waitResult(t, 30*time.Second)
	if l := rr.Result.Results[0].Log; !strings.Contains(l, "machine busybox id busybox-r2") {
		t.Errorf("task after the upgrade: log %q, want it run on revision busybox-r2", l)
	}
	if n := strings.Count(log.String(), "machine bootstrapped"); n != 3 {
		t.Errorf("%d bootstraps logged, want 3 (busybox's two revisions, debian)", n)
	}
	c.mu.Lock()
	last := c.requests[len(c.requests)-1]
	c.mu.Unlock()
	if len(last.Machines) != 2 || last.Machines[0].ID != "busybox-r2" {
		t.Errorf("request after the upgrade offers %+v, want busybox-r2 and debian", last.Machines)
	}

	// Remove it: it is no longer offered.
	if err := v.Remove(ctx, "busybox", nil); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	n := len(c.requests)
	c.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		req := c.requests[len(c.requests)-1]
		done := len(c.requests) > n+1
		c.mu.Unlock()
		if done {
			if len(req.Machines) != 1 || req.Machines[0].Name != "debian" {
				t.Errorf("request after the removal offers %+v, want debian only", req.Machines)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("no task request after the removal")
}

// TestInstances: with --instances 2 two slots ask for tasks at once, under
// names of their own, and their VMs' TFTP directories and ports differ.
func TestInstances(t *testing.T) {
	c := newTestController(t)
	c.hold = 20 * time.Second
	o := fakeOptions(t)
	o.Instances, o.LongPoll = 2, 20*time.Second
	runAgent(t, o, &logBuffer{}, c.url())
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		n := c.maxInFlight
		c.mu.Unlock()
		if n == 2 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.give(helloTask("busybox"))
	c.give(helloTask("busybox"))
	c.waitResult(t, 20*time.Second)
	c.waitResult(t, 20*time.Second)
	c.mu.Lock()
	names := map[string]bool{}
	for _, r := range c.requests {
		names[r.Agent] = true
	}
	max := c.maxInFlight
	c.mu.Unlock()
	if max != 2 || len(names) != 2 {
		t.Errorf("%d requests held at once under names %v, want 2 under two names", max, names)
	}

	a, err := New(o, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s0 := a.newSession(0, "/m/busybox-default-1234", "build")
	s1 := a.newSession(1, "/m/busybox-default-1234", "build")
	if s0.tftpDir == s1.tftpDir || s0.port == s1.port || s0.name == s1.name {
		t.Errorf("slots 0 and 1 share a TFTP directory (%s, %s), port (%d, %d) or VM name", s0.tftpDir, s1.tftpDir, s0.port, s1.port)
	}
}

func TestOptionsCheck(t *testing.T) {
	if err := func() error { o := DefaultOptions(); return o.Check() }(); err != nil {
		t.Fatalf("DefaultOptions().Check() = %v", err)
	}
	for _, tc := range []struct {
		edit func(*Options)
		want string
	}{
		{func(o *Options) { o.RequestTimeout = 0 }, "--request-timeout 0s: must be positive"},
		{func(o *Options) { o.RequestInterval = -time.Second }, "--request-interval -1s: must be positive"},
		{func(o *Options) { o.BuildTimeout = 0 }, "--build-timeout 0s: must be positive"},
		{func(o *Options) { o.ShutdownTimeout = 0 }, "--shutdown-timeout 0s: must be positive"},
		{func(o *Options) { o.LongPoll = -time.Second }, "--long-poll -1s: must not be negative"},
		{func(o *Options) { o.BuildRetries = -1 }, "--build-retries -1: must not be negative"},
		{func(o *Options) { o.BootstrapRetries = -1 }, "--bootstrap-retries -1: must not be negative"},
		{func(o *Options) { o.Instances = 0 }, "--instances 0: must be 1 or more"},
		{func(o *Options) { o.Instances, o.Once = 2, true }, "--once with --instances 2"},
		{func(o *Options) { o.MaxArchive = 0 }, "--max-archive 0: must be positive"},
		{func(o *Options) { o.ToolchainVersion = "" }, `--toolchain-ver ""`},
		{func(o *Options) { o.ToolchainVersion = "1.0" }, "not a standard version"},
		{func(o *Options) { o.SuspendLimit = 0 }, "--suspend-limit 0s: must be positive"},
		{func(o *Options) { o.SuspendMax = 0 }, "--suspend-max 0: must be 1 or more"},
		{func(o *Options) { o.SMTPRelay = "mail:25" }, `--smtp-relay "mail:25" --admin-email "": give both`},
		{func(o *Options) { o.Registry = "" }, "--registry: empty"},
		{func(o *Options) { o.ToolchainNum = 0 }, "--toolchain-num 0: must be 1 to 9"},
		{func(o *Options) { o.ToolchainNum = 10 }, "--toolchain-num 10: must be 1 to 9"},
		{func(o *Options) { o.Instance = 100 }, "--instance 100: must be 1 to 99"},
		{func(o *Options) { o.TFTPPort, o.Instances = 60000, 8 }, "--tftp-port 60000: with --toolchain-num 1, --instance 1 and --instances 8 the ports run to 67001"},
		{func(o *Options) { o.Trust = []string{"yes", "AB:CD"} }, "not 'yes' or a SHA256 certificate fingerprint"},
	} {
		o := DefaultOptions()
		tc.edit(&o)
		if err := o.Check(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Check() = %v, want an error with %q", err, tc.want)
		}
	}
}

// TestToolchainNum checks that agents of two toolchains with the same
// instance number on one host share nothing that would collide: TFTP
// port, TFTP directory, spool, agent name; and that toolchain 1 keeps the
// layout it had.
func TestToolchainNum(t *testing.T) {
	type layout struct {
		port             int
		tftp, spool, who string
	}
	of := func(num, instance int) layout {
		o := DefaultOptions()
		o.ToolchainNum, o.Instance = num, instance
		if err := o.Check(); err != nil {
			t.Fatal(err)
		}
		a, err := New(o, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		s := a.newSession(0, "/m/busybox-default-1234", "build")
		return layout{s.port, filepath.Dir(s.tftpDir), o.spoolDir(), a.agentName(0)}
	}
	host, _ := os.Hostname()
	if got, want := of(1, 1), (layout{23401, "/build/tftp/1", "/build/tftp/spool/1", host + "-1"}); got != want {
		t.Errorf("toolchain 1 instance 1: %+v, want %+v", got, want)
	}
	if got, want := of(2, 1), (layout{23501, "/build/tftp/101", "/build/tftp/spool/101", host + "-101"}); got != want {
		t.Errorf("toolchain 2 instance 1: %+v, want %+v", got, want)
	}
}

// TestTrustGoesToTheWorker checks that --trust's fingerprints are added to
// the task the worker gets, once each, beside the task's own.
func TestTrustGoesToTheWorker(t *testing.T) {
	const fp1 = "37:CE:2C:A5:1D:CF:93:81:D7:07:46:AD:66:B3:C3:90:83:B8:96:9E:34:F0:E7:B3:A2:B0:6C:EF:66:A4:BE:65"
	const fp2 = "00:CE:2C:A5:1D:CF:93:81:D7:07:46:AD:66:B3:C3:90:83:B8:96:9E:34:F0:E7:B3:A2:B0:6C:EF:66:A4:BE:65"
	o := DefaultOptions()
	o.Trust = []string{fp1, fp2}
	a, err := New(o, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	task := helloTask("busybox")
	task.Trust = []string{fp1}
	get := t.TempDir()
	if err := WriteTask(get, a.withTrust(task), ""); err != nil {
		t.Fatal(err)
	}
	got, _, err := ReadTaskFile(filepath.Join(get, "task.manifest"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{fp1, fp2}; !slices.Equal(got.Trust, want) {
		t.Errorf("the worker's task trusts %v, want %v", got.Trust, want)
	}
	if len(task.Trust) != 1 {
		t.Errorf("the controller's task was changed: trust %v", task.Trust)
	}
}
