package console_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/console"
	"github.com/buildfarm/buildfarm/internal/image"
	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/testenv"
	"github.com/buildfarm/buildfarm/internal/tftp"
	"github.com/buildfarm/buildfarm/internal/worker"
)

// guest is a busybox VM with a console, whose worker runs the one step
// of a task served over TFTP.
type guest struct {
	vm   *qemu.VM
	srv  *console.Server
	link string
}

// buildMachine builds the worker and the busybox machine.
func buildMachine(t *testing.T, ctx context.Context) (string, *image.Machine) {
	t.Helper()
	dir := t.TempDir()
	w := testenv.Worker(t, arch.X8664)
	out := filepath.Join(dir, "busybox")
	m, err := image.Build(ctx, image.Options{Preset: "busybox", Out: out, Worker: w, DiskSize: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return out, m
}

// serveTask serves a task whose one step is step, over TFTP on the
// host's loopback, and returns the port.
func serveTask(t *testing.T, step string) int {
	t.Helper()
	root := t.TempDir()
	task := fmt.Sprintf(": 1\nname: console-test\nversion: 1.0.0\nrepository-url: https://example.org/x.git\nmachine: busybox\ntarget: x86_64-linux-gnu\nbuildfarm-configure: %s\n", step)
	if err := os.WriteFile(filepath.Join(root, "task.manifest"), []byte(task), 0o644); err != nil {
		t.Fatal(err)
	}
	// The worker fetches its result key before any step runs.
	if err := os.WriteFile(filepath.Join(root, worker.KeyFile), []byte(strings.Repeat("5a", 16)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		(&tftp.Server{Root: root, AllowPut: true, MaxPutSize: 1 << 20}).Serve(ctx, conn)
	}()
	t.Cleanup(func() { cancel(); conn.Close(); <-done })
	return conn.LocalAddr().(*net.UDPAddr).Port
}

// boot starts the machine in dir with disk as its disk, its worker's
// task on TFTP port, and a console linked as link.
func boot(t *testing.T, ctx context.Context, dir, disk string, m *image.Machine, port int, noReboot bool) *guest {
	t.Helper()
	cmdline, err := os.ReadFile(filepath.Join(dir, image.CmdlineFile))
	if err != nil {
		t.Fatal(err)
	}
	// Unix socket paths are short: keep the VM's directory near the root.
	work, err := os.MkdirTemp("", "bf-console-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	cfg := qemu.Config{
		Accel:    qemu.TCG,
		Kernel:   filepath.Join(dir, image.KernelFile),
		Initrd:   filepath.Join(dir, image.InitrdFile),
		Append:   strings.TrimSpace(string(cmdline)) + " buildfarm.tftp=10.0.2.2:" + strconv.Itoa(port),
		Drives:   []qemu.Drive{{Path: disk}},
		Net:      qemu.Net{Mode: qemu.NetUser, MAC: m.MAC},
		NoReboot: noReboot,
	}
	vmDir := filepath.Join(work, "vm")
	console.SetPorts(&cfg, vmDir)
	vm, err := qemu.New(cfg, vmDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	g := &guest{vm: vm, link: console.LinkPath(filepath.Join(work, "links"), "default", 1)}
	t.Cleanup(func() {
		vm.Forcedown(context.Background())
		if t.Failed() {
			t.Logf("QEMU: %s\nconsole:\n%s", vm.CommandLine(), vm.SerialTail(4096))
		}
	})
	if g.srv, err = console.StartVM(ctx, vm, nil, g.link); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.srv.Close() })
	return g
}

// stream runs a streaming command on a connection of its own and hands
// what it prints to lines, until the test or stop ends it.
type stream struct {
	mu   sync.Mutex
	text strings.Builder
	stop context.CancelFunc
	done chan struct{}
}

func (s *stream) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.text.Write(b)
}

func (s *stream) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.text.String()
}

func startStream(t *testing.T, ctx context.Context, sock, command string, in io.Reader) *stream {
	t.Helper()
	c, err := console.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	s := &stream{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer c.Close()
		rep, err := c.Stream(sctx, command, in, s)
		if err != nil || !rep.OK {
			fmt.Fprintf(s, "STREAM FAILED: %+v %v\n", rep, err)
		}
	}()
	t.Cleanup(func() { cancel(); <-s.done })
	return s
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() (bool, string)) {
	t.Helper()
	end := time.Now().Add(d)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("waiting %v for %s; last seen:\n%s", d, what, state)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func do(t *testing.T, ctx context.Context, c *console.Client, command string) console.Reply {
	t.Helper()
	rep, err := c.Do(ctx, command)
	if err != nil {
		t.Fatalf("console %q: %v", command, err)
	}
	if !rep.OK {
		t.Fatalf("console %q: ERR %s", command, rep.Message)
	}
	return rep
}

func uptime(t *testing.T, ctx context.Context, c *console.Client) float64 {
	t.Helper()
	rep := do(t, ctx, c, "proc uptime")
	f := strings.Fields(rep.Body)
	if len(f) != 2 {
		t.Fatalf("proc uptime = %q, want two numbers", rep.Body)
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		t.Fatalf("proc uptime = %q: %v", rep.Body, err)
	}
	return v
}

// TestConsole boots the busybox machine under TCG and drives every console
// command through the real socket, checking the guest's state: over QMP,
// through the guest channel, on the serial console, and by booting the
// backup.
func TestConsole(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedKernel(t)
	e2fsck := testenv.NeedProgram(t, "e2fsck")
	debugfs := testenv.NeedProgram(t, "debugfs")
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	dir, m := buildMachine(t, ctx)

	// The first VM's step leaves a marker on the build disk and waits.
	port := serveTask(t, "echo marker-for-the-backup > /build/marker && sync && sleep 3600")
	g := boot(t, ctx, dir, filepath.Join(dir, image.DiskFile), m, port, false)
	c, err := console.Dial(ctx, g.link) // by the predictable path
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// notify: the worker's boot message, then its stage messages.
	notes := startStream(t, ctx, g.srv.Socket(), "notify", nil)
	waitFor(t, "the worker's boot message on notify", 2*time.Minute, func() (bool, string) {
		s := notes.String()
		return strings.Contains(s, " boot buildfarm-worker ") && strings.Contains(s, ": started"), s
	})
	waitFor(t, "the step to start", time.Minute, func() (bool, string) {
		s := notes.String()
		return strings.Contains(s, " progress configure started"), s
	})

	t.Run("help and version", func(t *testing.T) {
		rep := do(t, ctx, c, "help")
		for _, cmd := range console.Commands() {
			if !strings.Contains(rep.Body, "  "+cmd.Name) {
				t.Errorf("help does not list %s:\n%s", cmd.Name, rep.Body)
			}
		}
		rep = do(t, ctx, c, "version")
		if !strings.Contains(rep.Body, "buildfarm ") || !strings.Contains(rep.Body, "qemu 7.") && !strings.Contains(rep.Body, "qemu 8.") && !strings.Contains(rep.Body, "qemu 9.") {
			t.Errorf("version = %q, want buildfarm's and QEMU's versions", rep.Body)
		}
		if rep, err := c.Do(ctx, "frobnicate"); err != nil || rep.OK {
			t.Errorf("unknown command = %+v, %v; want ERR", rep, err)
		}
		if rep, err := c.Do(ctx, "proc ../etc/passwd"); err != nil || rep.OK {
			t.Errorf("proc ../etc/passwd = %+v, %v; want ERR", rep, err)
		}
		if rep, err := c.Do(ctx, "proc self/root/etc/passwd"); err != nil || rep.OK {
			t.Errorf("proc self/root/etc/passwd = %+v, %v; want ERR (the guest refuses links out of /proc)", rep, err)
		}
	})

	t.Run("stop and go", func(t *testing.T) {
		for _, step := range []struct{ cmd, want string }{{"stop", "paused"}, {"go", "running"}} {
			do(t, ctx, c, step.cmd)
			if got, err := g.vm.Status(ctx); err != nil || got != step.want {
				t.Errorf("after %s QMP says %q, %v; want %q", step.cmd, got, err, step.want)
			}
		}
	})

	t.Run("proc uptime grows", func(t *testing.T) {
		u1 := uptime(t, ctx, c)
		time.Sleep(1500 * time.Millisecond)
		if u2 := uptime(t, ctx, c); u2 <= u1 {
			t.Errorf("proc uptime %v then %v, want it to grow", u1, u2)
		}
	})

	t.Run("log", func(t *testing.T) {
		mark := fmt.Sprintf("console-test-log-%d", time.Now().UnixNano())
		do(t, ctx, c, "log "+mark)
		if rep := do(t, ctx, c, "proc kmsg"); !strings.Contains(rep.Body, mark) {
			t.Errorf("kernel log lacks %q:\n%s", mark, tailOf(rep.Body))
		}
	})

	t.Run("sysrq and attach", func(t *testing.T) {
		serial := startStream(t, ctx, g.srv.Socket(), "attach", nil)
		time.Sleep(500 * time.Millisecond) // the relay connects to QEMU's socket
		do(t, ctx, c, "sysrq h")
		waitFor(t, "sysrq's help in the kernel log", 30*time.Second, func() (bool, string) {
			rep := do(t, ctx, c, "proc kmsg")
			return strings.Contains(rep.Body, "sysrq: HELP"), tailOf(rep.Body)
		})
		waitFor(t, "sysrq's help on the attached serial console", 30*time.Second, func() (bool, string) {
			s := serial.String()
			return strings.Contains(s, "HELP"), s
		})
		serial.stop()
	})

	t.Run("config and remove a disk", func(t *testing.T) {
		rep := do(t, ctx, c, "config")
		if !strings.Contains(rep.Body, "disk virtio0: "+filepath.Join(dir, image.DiskFile)) || !strings.Contains(rep.Body, "chardev serial0: ") {
			t.Errorf("config lists:\n%s\nwant the boot disk and the serial console", rep.Body)
		}
		if rep := do(t, ctx, c, "config serial0"); !strings.Contains(rep.Message, "serial.sock") {
			t.Errorf("config serial0 = %q, want its socket", rep.Message)
		}
		extra := filepath.Join(t.TempDir(), "extra.img")
		if err := os.WriteFile(extra, make([]byte, 4<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		do(t, ctx, c, "config extra="+extra)
		if rep := do(t, ctx, c, "config extra"); !strings.Contains(rep.Message, extra) {
			t.Errorf("config extra = %q, want %s", rep.Message, extra)
		}
		waitFor(t, "the guest to list the hot-added disk", time.Minute, func() (bool, string) {
			rep := do(t, ctx, c, "proc partitions")
			return strings.Contains(rep.Body, "vdb"), rep.Body
		})
		do(t, ctx, c, "remove extra")
		waitFor(t, "the guest to drop the removed disk", 30*time.Second, func() (bool, string) {
			rep := do(t, ctx, c, "proc partitions")
			return !strings.Contains(rep.Body, "vdb"), rep.Body
		})
		if rep, err := c.Do(ctx, "config extra"); err != nil || rep.OK {
			t.Errorf("config extra after remove = %+v, %v; want ERR", rep, err)
		}
	})

	t.Run("config and remove a NIC", func(t *testing.T) {
		count := func() int { return strings.Count(do(t, ctx, c, "proc net/dev").Body, "eth") }
		n := count()
		do(t, ctx, c, "config net1=user")
		waitFor(t, "the guest to see the hot-added NIC", time.Minute, func() (bool, string) {
			return count() == n+1, do(t, ctx, c, "proc net/dev").Body
		})
		do(t, ctx, c, "remove net1")
		waitFor(t, "the guest to drop the NIC", 30*time.Second, func() (bool, string) {
			return count() == n, do(t, ctx, c, "proc net/dev").Body
		})
	})

	backup := filepath.Join(t.TempDir(), "backup.img")
	t.Run("backup", func(t *testing.T) {
		rep := do(t, ctx, c, "backup "+backup)
		if !strings.Contains(rep.Body, "frozen") {
			t.Errorf("backup said %q, want the guest's file systems frozen", rep.Body)
		}
		if got, err := g.vm.Status(ctx); err != nil || got != "running" {
			t.Errorf("after backup QMP says %q, %v; want running", got, err)
		}
		if out, err := exec.CommandContext(ctx, e2fsck, "-fn", backup).CombinedOutput(); err != nil {
			t.Errorf("e2fsck -fn of the backup: %v\n%s", err, out)
		}
		out, err := exec.CommandContext(ctx, debugfs, "-R", "cat /marker", backup).Output()
		if err != nil || !strings.Contains(string(out), "marker-for-the-backup") {
			t.Errorf("the backup's /marker = %q, %v; want the step's marker", out, err)
		}
		// The guest goes on after the thaw: its channel answers.
		uptime(t, ctx, c)
	})

	t.Run("reboot", func(t *testing.T) {
		boots := func() int { return strings.Count(g.vm.SerialTail(1<<20), "init: buildfarm guest ") }
		do(t, ctx, c, "reboot")
		waitFor(t, "the guest to boot again", 2*time.Minute, func() (bool, string) {
			return boots() == 2, g.vm.SerialTail(2048)
		})
		waitFor(t, "the worker's boot message after the reboot", 2*time.Minute, func() (bool, string) {
			s := notes.String()
			return strings.Count(s, " boot buildfarm-worker ") == 2, s
		})
	})

	t.Run("halt", func(t *testing.T) {
		do(t, ctx, c, "halt")
		select {
		case <-g.vm.Done():
		case <-time.After(30 * time.Second):
			t.Fatal("QEMU still runs 30s after halt")
		}
	})

	// The backup boots: a second VM's step reads the marker from it and
	// writes it to the notification port, as any guest program may.
	t.Run("backup boots; cad", func(t *testing.T) {
		port := serveTask(t, "cat /build/marker > /dev/virtio-ports/org.buildfarm.notify && sleep 3600")
		g2 := boot(t, ctx, dir, backup, m, port, true)
		notes := startStream(t, ctx, g2.srv.Socket(), "notify", nil)
		waitFor(t, "the backup's marker on the notification port", 2*time.Minute, func() (bool, string) {
			s := notes.String()
			return strings.Contains(s, " notify marker-for-the-backup"), s
		})
		c2, err := console.Dial(ctx, g2.srv.Socket())
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close()
		do(t, ctx, c2, "cad")
		select {
		case <-g2.vm.Done(): // the guest rebooted, and -no-reboot ended QEMU
		case <-time.After(time.Minute):
			t.Fatalf("QEMU still runs a minute after cad; console:\n%s", g2.vm.SerialTail(2048))
		}
	})
}

func tailOf(s string) string {
	if len(s) > 3000 {
		return s[len(s)-3000:]
	}
	return s
}
