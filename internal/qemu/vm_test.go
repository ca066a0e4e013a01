package qemu_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/netns"
	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/qemu/guesttest"
	"github.com/buildfarm/buildfarm/internal/qmp"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// start makes and starts a VM in a fresh working directory. When the test
// ends the VM is forced down and its pid checked gone; a failed test shows
// the console's tail and QEMU's command line.
func start(t *testing.T, cfg qemu.Config) *qemu.VM {
	t.Helper()
	testenv.NeedVM(t)
	testenv.NeedProgram(t, "qemu-system-x86_64")
	if cfg.Accel == "" {
		cfg.Accel = qemu.TCG
	}
	vm, err := qemu.New(cfg, filepath.Join(t.TempDir(), "vm"), slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := vm.Start(ctx); err != nil {
		t.Fatalf("Start: %v\ncommand: %s", err, vm.CommandLine())
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("QEMU: %s\nconsole tail:\n%s", vm.CommandLine(), vm.SerialTail(3000))
		}
		pid := vm.PID()
		if err := vm.Forcedown(context.Background()); err != nil {
			t.Error(err)
		}
		if alive(pid) {
			t.Errorf("QEMU pid %d still alive after Forcedown", pid)
		}
	})
	return vm
}

// alive reports whether pid is a live process (not a zombie).
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z")
}

// TestBootSuspendResumePowerdown boots a guest that starts acpid only 2 s
// after its first sign of life, as the busybox machine's set-up starts it
// after the worker: a press of the power button before that goes unseen,
// and Shutdown presses it again.
func TestBootSuspendResumePowerdown(t *testing.T) {
	testenv.NeedVM(t)
	k := testenv.NeedKernel(t)
	testenv.NeedProgram(t, "busybox")
	initrd := filepath.Join(t.TempDir(), "initrd")
	if err := guesttest.Write(t.Context(), initrd, k, guesttest.Mounts+`echo "`+guesttest.StartedLine+`"
(sleep 2; `+guesttest.PowerButtonScript+`echo "power button watched") &
while :; do echo "tick $(cut -d' ' -f1 /proc/uptime)"; sleep 0.2; done
`, guesttest.PowerButton...); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	vm := start(t, qemu.Config{Name: "boot", Kernel: k.Image, Initrd: initrd, Append: guesttest.Append, Net: qemu.Net{Mode: qemu.NetNone}})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	events := vm.QMP().Subscribe()
	defer events.Close()

	line, err := vm.WaitConsole(ctx, "the started line", qemu.Contains("test: started"))
	if err != nil {
		t.Fatal(err)
	}
	if line != guesttest.StartedLine {
		t.Errorf("WaitConsole() = %q, want %q", line, guesttest.StartedLine)
	}
	t.Logf("first sign of life after %v", time.Since(t0).Round(time.Millisecond))

	info := vm.Info()
	if info.PID != vm.PID() || info.PID <= 0 || !alive(info.PID) {
		t.Errorf("Info().PID = %d, want QEMU's live pid", info.PID)
	}
	if fi, err := os.Stat(info.QMPSocket); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("Info().QMPSocket = %s: %v, want a socket", info.QMPSocket, err)
	}

	// Suspended, the guest stops ticking; resumed, it goes on.
	if err := vm.Suspend(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := vm.Status(ctx); err != nil || st != "paused" {
		t.Errorf("Status() after Suspend = %q, %v, want paused", st, err)
	}
	size := func() int64 {
		fi, err := os.Stat(info.SerialLog)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	before := size()
	time.Sleep(700 * time.Millisecond)
	if after := size(); after != before {
		t.Errorf("console grew from %d to %d bytes while suspended", before, after)
	}
	if err := vm.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := vm.Status(ctx); err != nil || st != "running" {
		t.Errorf("Status() after Resume = %q, %v, want running", st, err)
	}
	if tail := vm.SerialTail(4096); strings.Contains(tail, "power button watched") {
		t.Fatalf("acpid started before the test pressed the button:\n%s", tail)
	}
	ok, err := vm.Shutdown(ctx)
	if err != nil || !ok {
		t.Fatalf("Shutdown() = %v, %v, want true", ok, err)
	}
	if tail := vm.SerialTail(4096); !strings.Contains(tail, "power button watched") {
		t.Errorf("the guest powered off before acpid watched its button:\n%s", tail)
	}
	// Every waiter gets the same answer: a clean exit.
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := vm.Wait(ctx); err != nil {
				t.Errorf("Wait() = %v, want nil after a clean power-off", err)
			}
		}()
	}
	wg.Wait()
	if alive(info.PID) {
		t.Errorf("QEMU pid %d alive after Shutdown", info.PID)
	}
	if _, err := os.Stat(info.QMPSocket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("QMP socket after exit: %v, want removed", err)
	}
	var got []string
	for {
		ev, err := events.Next(ctx)
		if err != nil {
			break
		}
		got = append(got, ev.Name)
	}
	// The button pressed more than once: before acpid and after.
	if !regexp.MustCompile(`^STOP RESUME POWERDOWN( POWERDOWN)+ SHUTDOWN$`).MatchString(strings.Join(got, " ")) {
		t.Errorf("events = %v, want STOP RESUME, POWERDOWN twice or more, SHUTDOWN", got)
	}
	if err := vm.Resume(ctx); !errors.Is(err, qemu.ErrExited) {
		t.Errorf("Resume() after exit = %v, want ErrExited", err)
	}
}

// paused is a VM that boots nothing: QEMU stopped before the first
// instruction, answering QMP. It starts in a few milliseconds.
func paused(name string) qemu.Config {
	return qemu.Config{Name: name, Paused: true, Net: qemu.Net{Mode: qemu.NetNone}}
}

func TestShutdownTimeoutThenForcedown(t *testing.T) {
	vm := start(t, paused("stuck"))
	ctx := t.Context()
	// A guest that never runs does not act on the power button.
	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	ok, err := vm.Shutdown(sctx)
	cancel()
	if ok || err != nil {
		t.Errorf("Shutdown() of a stopped guest = %v, %v, want false, nil", ok, err)
	}
	if !alive(vm.PID()) {
		t.Fatal("QEMU died after an unanswered power-down")
	}
	pid := vm.PID()
	if err := vm.Forcedown(ctx); err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		t.Errorf("QEMU pid %d alive after Forcedown", pid)
	}
	if err := vm.Start(ctx); !errors.Is(err, qemu.ErrStarted) {
		t.Errorf("second Start() = %v, want ErrStarted", err)
	}
}

func TestStartFailures(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedProgram(t, "qemu-system-x86_64")

	t.Run("not empty", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "x"), nil, 0o644)
		cfg := paused("full")
		cfg.Accel = qemu.TCG
		vm, err := qemu.New(cfg, dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		if err := vm.Forcedown(ctx); err != nil {
			t.Errorf("Forcedown() before Start = %v, want nil", err)
		}
		if err := vm.Start(t.Context()); err == nil || !strings.Contains(err.Error(), "not empty") {
			t.Errorf("Start() in a non-empty directory = %v, want an error saying so", err)
		}
	})

	t.Run("missing kernel", func(t *testing.T) {
		cfg := qemu.Config{Name: "nokernel", Accel: qemu.TCG, Kernel: "/nonexistent/vmlinuz", Net: qemu.Net{Mode: qemu.NetNone}}
		vm, err := qemu.New(cfg, filepath.Join(t.TempDir(), "vm"), nil)
		if err != nil {
			t.Fatal(err)
		}
		err = vm.Start(t.Context())
		var qe *qemu.Error
		if !errors.As(err, &qe) || !strings.Contains(qe.Output, "/nonexistent/vmlinuz") || qe.Diagnosis == "" {
			t.Errorf("Start() with a missing kernel = %v, want a *qemu.Error with QEMU's output and a diagnosis", err)
		}
		if werr := vm.Wait(t.Context()); werr == nil {
			t.Errorf("Wait() after a failed start = nil, want the error")
		}
	})

	t.Run("no qemu", func(t *testing.T) {
		cfg := paused("noqemu")
		cfg.Accel = qemu.TCG
		cfg.Binary = "qemu-system-nonexistent"
		vm, err := qemu.New(cfg, filepath.Join(t.TempDir(), "vm"), nil)
		if err != nil {
			t.Fatal(err)
		}
		err = vm.Start(t.Context())
		var qe *qemu.Error
		if !errors.As(err, &qe) || !errors.Is(err, exec.ErrNotFound) || !strings.Contains(qe.Diagnosis, "install") {
			t.Errorf("Start() without QEMU = %v, want exec.ErrNotFound and a diagnosis saying to install it", err)
		}
	})
}

func newNS(t *testing.T) *netns.NS {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedProgram(t, "ip")
	ns, err := netns.New(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Delete(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return ns
}

// serveTFTP answers every read request on c with one DATA packet holding
// reply (a whole file of under 512 bytes), as a TFTP server would.
func serveTFTP(c net.PacketConn, reply string) {
	buf := make([]byte, 1500)
	for {
		n, addr, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		if n >= 2 && buf[0] == 0 && buf[1] == 1 { // RRQ
			c.WriteTo(append([]byte{0, 3, 0, 1}, reply...), addr)
		}
	}
}

// serveTCP writes reply to every connection on l.
func serveTCP(l net.Listener, reply string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Write([]byte(reply + "\n"))
		c.Close()
	}
}

// TestIsolation boots a guest in a network namespace of its own with
// user-mode networking: it reaches the TCP and TFTP (UDP) services opened
// inside that namespace, as 10.0.2.2, and not those of the host.
func TestIsolation(t *testing.T) {
	testenv.NeedVM(t)
	k := testenv.NeedKernel(t)
	ns := newNS(t)
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	defer cancel()

	listenTCP := func(inside bool, reply string) int {
		var l net.Listener
		var err error
		if inside {
			l, err = ns.Listen(ctx, "tcp", "127.0.0.1:0")
		} else {
			l, err = net.Listen("tcp", "127.0.0.1:0")
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go serveTCP(l, reply)
		return l.Addr().(*net.TCPAddr).Port
	}
	listenUDP := func(inside bool, reply string) int {
		var c net.PacketConn
		var err error
		if inside {
			c, err = ns.ListenPacket(ctx, "udp", "127.0.0.1:0")
		} else {
			c, err = net.ListenPacket("udp", "127.0.0.1:0")
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		go serveTFTP(c, reply)
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	nsTCP := listenTCP(true, "ns-tcp-ok")
	nsUDP := listenUDP(true, "ns-udp-ok")
	hostTCP := listenTCP(false, "host-tcp-LEAK")
	hostUDP := listenUDP(false, "host-udp-LEAK")
	// And a service on all the host's addresses, tried at its own address.
	ext, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ext.Close() })
	go serveTCP(ext, "host-ext-LEAK")
	hostIP := "192.0.2.1" // TEST-NET-1 when the host has no address but loopback
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() {
				hostIP = ipn.IP.String()
				break
			}
		}
	}

	body := fmt.Sprintf(`ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
tcp() { r=$(nc -w 2 $2 $3 </dev/null 2>&1); echo "RESULT $1 ${r:-nothing}"; }
udp() { rm -f /tmp/f; timeout 3 tftp -g -r f -l /tmp/f $2 $3 >/dev/null 2>&1; echo "RESULT $1 $(cat /tmp/f 2>/dev/null || echo nothing)"; }
tcp ns-tcp 10.0.2.2 %d
udp ns-udp 10.0.2.2 %d
tcp host-tcp 10.0.2.2 %d
udp host-udp 10.0.2.2 %d
tcp host-ext %s %d
echo RESULT done
poweroff -f
`, nsTCP, nsUDP, hostTCP, hostUDP, hostIP, ext.Addr().(*net.TCPAddr).Port)
	initrd := guesttest.Initramfs(t, k, body, guesttest.Network...)
	vm := start(t, qemu.Config{Name: "isolated", Kernel: k.Image, Initrd: initrd, Append: guesttest.Append, NetNS: ns.Path()})
	if err := vm.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	results := map[string]string{}
	f, err := os.Open(vm.Info().SerialLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(s.Text()), "RESULT "); ok {
			name, val, _ := strings.Cut(rest, " ")
			results[name] = val
		}
	}
	for _, c := range []struct {
		name    string
		reached bool
	}{
		{"ns-tcp", true},
		{"ns-udp", true},
		{"host-tcp", false},
		{"host-udp", false},
		{"host-ext", false},
	} {
		got := results[c.name]
		if c.reached && got != c.name+"-ok" {
			t.Errorf("guest's %s = %q, want %q", c.name, got, c.name+"-ok")
		}
		if !c.reached && (strings.Contains(got, "LEAK") || got == "") {
			t.Errorf("guest's %s = %q, want a failure to connect", c.name, got)
		}
	}
	if _, ok := results["done"]; !ok {
		t.Errorf("guest did not finish its checks; results %v", results)
	}
}

// The helper process of TestParentDeath: it starts a VM from a goroutine
// whose OS thread then ends (which would fire a Pdeathsig tied to that
// thread), prints QEMU's pid and waits to be killed.
func init() {
	dir := os.Getenv("BUILDFARM_QEMU_HELPER_DIR")
	if dir == "" {
		return
	}
	vm, err := qemu.New(qemu.Config{Name: "orphan", Accel: qemu.TCG, Paused: true, Net: qemu.Net{Mode: qemu.NetNone}}, dir, nil)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	errc := make(chan error)
	go func() {
		runtime.LockOSThread() // and never unlocked: this thread ends with the goroutine
		errc <- vm.Start(context.Background())
	}()
	if err := <-errc; err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	time.Sleep(300 * time.Millisecond) // let the starting thread go away
	if os.Getenv("BUILDFARM_QEMU_HELPER_DETACH") == "1" {
		if err := vm.Detach(context.Background()); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
	}
	fmt.Printf("pid %d\n", vm.PID())
	select {}
}

func TestParentDeath(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedProgram(t, "qemu-system-x86_64")
	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), "BUILDFARM_QEMU_HELPER_DIR="+filepath.Join(t.TempDir(), "vm"))
	pid := parentDeath(t, helper)
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("QEMU %d still alive 5 s after its parent was killed", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDetachOutlivesParent: a detached QEMU outlives the process that
// started it, and answers QMP after its death.
func TestDetachOutlivesParent(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedProgram(t, "qemu-system-x86_64")
	dir := filepath.Join(t.TempDir(), "vm")
	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), "BUILDFARM_QEMU_HELPER_DIR="+dir, "BUILDFARM_QEMU_HELPER_DETACH=1")
	pid := parentDeath(t, helper)
	time.Sleep(500 * time.Millisecond)
	if !alive(pid) {
		t.Fatalf("detached QEMU %d died with its parent", pid)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, filepath.Join(dir, qemu.QMPSocketName))
	if err != nil {
		t.Fatalf("QMP of the detached VM: %v", err)
	}
	defer c.Close()
	if st, err := c.QueryStatus(ctx); err != nil || st.Status != "prelaunch" && st.Status != "paused" {
		t.Errorf("detached VM's status = %+v, %v; want it stopped as it started", st, err)
	}
}

// parentDeath runs helper, which starts a VM and prints QEMU's pid, kills
// the helper and returns the pid (killed at the test's end).
func parentDeath(t *testing.T, helper *exec.Cmd) int {
	t.Helper()
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	helper.Stderr = os.Stderr
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	defer helper.Wait()
	defer helper.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("helper: %v", err)
	}
	var pid int
	if _, err := fmt.Sscanf(line, "pid %d", &pid); err != nil {
		t.Fatalf("helper said %q: %v", line, err)
	}
	t.Cleanup(func() {
		if alive(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	if !alive(pid) {
		t.Fatalf("QEMU %d died when the thread that started it ended, before its parent", pid)
	}
	if err := helper.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestInfoVNC(t *testing.T) {
	cfg := paused("info")
	cfg.VNC = "127.0.0.1:40,to=99" // the first free display from 40 on
	vm := start(t, cfg)
	info := vm.Info()
	host, port, err := net.SplitHostPort(info.VNC)
	if n, _ := strconv.Atoi(port); err != nil || host != "127.0.0.1" || n < 5940 || n > 5999 {
		t.Fatalf("Info().VNC = %q, want 127.0.0.1:59xx", info.VNC)
	}
	c, err := net.DialTimeout("tcp", info.VNC, 2*time.Second)
	if err != nil {
		t.Fatalf("dial VNC %s: %v", info.VNC, err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 12)
	if _, err := io.ReadFull(c, b); err != nil || !strings.HasPrefix(string(b), "RFB ") {
		t.Errorf("VNC greeting = %q, %v, want RFB", b, err)
	}
}

func TestRelativePaths(t *testing.T) {
	// Paths relative to the caller's directory must reach QEMU absolute,
	// since QEMU runs in the VM's own directory.
	dir := t.TempDir()
	t.Chdir(dir)
	cfg := qemu.Config{Accel: qemu.TCG, Kernel: "m/kernel", Initrd: "m/initrd", Drives: []qemu.Drive{{Path: "m/disk.img"}}}
	vm, err := qemu.New(cfg, "vm", nil)
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Join(vm.Args(), " ")
	for _, want := range []string{"-kernel " + dir + "/m/kernel", "-initrd " + dir + "/m/initrd", "file=" + dir + "/m/disk.img,",
		"path=" + dir + "/vm/serial.log", "unix:" + dir + "/vm/qmp.sock,"} {
		if !strings.Contains(args, want) {
			t.Errorf("Args() = %s, want it to hold %s", args, want)
		}
	}
	if cfg.Drives[0].Path != "m/disk.img" {
		t.Errorf("New changed the caller's drives: %v", cfg.Drives)
	}
}

// TestWarmStart saves a booted guest's state and restores it in a new
// QEMU, which goes on where the first stopped and still powers off.
func TestWarmStart(t *testing.T) {
	testenv.NeedVM(t)
	k := testenv.NeedKernel(t)
	initrd := guesttest.Initramfs(t, k, `echo "`+guesttest.StartedLine+`"
while :; do echo "tick $(cut -d' ' -f1 /proc/uptime)"; sleep 0.2; done
`, guesttest.PowerButton...)
	cfg := qemu.Config{Name: "warm", Kernel: k.Image, Initrd: initrd, Append: guesttest.Append, Net: qemu.Net{Mode: qemu.NetNone}}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	first := start(t, cfg)
	if _, err := first.WaitConsole(ctx, "a tick", qemu.Contains("tick ")); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "state")
	t0 := time.Now()
	if err := first.SaveState(ctx, state); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(state)
	if err != nil || fi.Size() < 1<<20 {
		t.Fatalf("saved state %s: %v, want a file of some MB", state, err)
	}
	t.Logf("saved %d MB in %v", fi.Size()>>20, time.Since(t0).Round(time.Millisecond))
	if st, err := first.Status(ctx); err != nil || st != "postmigrate" {
		t.Errorf("Status() after SaveState = %q, %v, want postmigrate", st, err)
	}
	if err := first.Forcedown(ctx); err != nil {
		t.Fatal(err)
	}

	// The whole state restored into a RAM file, mapped shared; from there
	// the devices alone are saved.
	ram := filepath.Join(t.TempDir(), "ram")
	shared := cfg
	shared.RAMFile, shared.RAMShared = ram, true
	if shared.Incoming, err = qemu.IncomingFile(state); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	second := start(t, shared)
	line, err := second.WaitConsole(ctx, "a tick after the restore", qemu.Contains("tick "))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("restored to %q in %v", line, time.Since(t1).Round(time.Millisecond))
	if strings.Contains(second.SerialTail(4096), "Linux version") || strings.Contains(second.SerialTail(4096), "started") {
		t.Errorf("the restored guest booted again; console:\n%s", second.SerialTail(4096))
	}
	if err := first.SaveDevices(ctx, filepath.Join(t.TempDir(), "x")); err == nil {
		t.Errorf("SaveDevices of a VM without a RAM file: no error")
	}
	devices := filepath.Join(t.TempDir(), "devices")
	if err := second.SaveDevices(ctx, devices); err != nil {
		t.Fatal(err)
	}
	if err := second.Forcedown(ctx); err != nil {
		t.Fatal(err)
	}
	di, err := os.Stat(devices)
	if err != nil || di.Size() > 4<<20 {
		t.Fatalf("devices' state %s: %v, want a file under 4 MiB (the memory is the RAM file's)", devices, err)
	}
	ri, err := os.Stat(ram)
	if err != nil || ri.Size() != 256<<20 {
		t.Fatalf("RAM file %s: %v, want the guest's 256 MiB", ram, err)
	}
	sum := func() [32]byte {
		b, err := os.ReadFile(ram)
		if err != nil {
			t.Fatal(err)
		}
		return sha256.Sum256(b)
	}
	before := sum()
	t.Logf("state of %d MB: devices %d KB, RAM file %d MB", fi.Size()>>20, di.Size()>>10, ri.Size()>>20)

	// The devices restored, the RAM file mapped copy on write: the guest
	// goes on, and the file is not written.
	private := cfg
	private.RAMFile, private.IncomingDevices = ram, true
	if private.Incoming, err = qemu.IncomingFile(devices); err != nil {
		t.Fatal(err)
	}
	third := start(t, private)
	if _, err := third.WaitConsole(ctx, "a tick after the devices' restore", qemu.Contains("tick ")); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(third.SerialTail(4096), "started") {
		t.Errorf("the restored guest booted again; console:\n%s", third.SerialTail(4096))
	}
	ok, err := third.Shutdown(ctx)
	if err != nil || !ok {
		t.Errorf("Shutdown() of the restored guest = %v, %v, want true", ok, err)
	}
	if sum() != before {
		t.Errorf("the RAM file changed under a guest that maps it copy on write")
	}
}
