package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/buildfarm/buildfarm/internal/netns"
	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/qmp"
)

// ErrStarted means Start was called twice.
var ErrStarted = errors.New("VM already started")

// ErrExited means the VM exited before the call could do its work.
var ErrExited = errors.New("VM has exited")

// Error is a VM that failed to start or ended abnormally: what happened,
// the tail of what QEMU printed, and, when it is recognised, a diagnosis
// saying what to do.
type Error struct {
	VM        string
	Op        string // start, run
	Err       error
	Output    string // the tail of QEMU's own standard output and error
	Diagnosis string
	Command   string // the QEMU command line, shell-quoted, to run it by hand
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "vm %s: %s: %v", e.VM, e.Op, e.Err)
	if s := strings.TrimSpace(e.Output); s != "" {
		fmt.Fprintf(&b, ": qemu says: %s", s)
	}
	if e.Diagnosis != "" {
		fmt.Fprintf(&b, " (%s)", e.Diagnosis)
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Files a VM keeps in its working directory.
const (
	QMPSocketName = "qmp.sock"
	SerialLogName = "serial.log"
	OutputName    = "qemu.log" // QEMU's own standard output and error
)

// VM is one QEMU process and its guest. Its methods are safe for
// concurrent use.
type VM struct {
	cfg  Config
	dir  string
	log  *slog.Logger
	args []string

	started atomic.Bool
	mu      sync.Mutex // guards the fields below until done is closed
	pid     int
	tether  *proc.Tether
	client  *qmp.Client
	vnc     string

	done chan struct{} // closed once QEMU has exited and clean-up has run
	err  error         // how QEMU ended; set before done is closed
}

// New returns a VM that will run cfg in the working directory dir, which
// must be empty or not exist yet. The serial log and QMP socket default to
// files in dir.
func New(cfg Config, dir string, log *slog.Logger) (*VM, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", cfg.Name, err)
	}
	if cfg.Name == "" {
		cfg.Name = filepath.Base(dir)
	}
	// QEMU runs in dir: paths relative to ours would not find their files.
	abs := func(p *string) error {
		if *p == "" || filepath.IsAbs(*p) {
			return nil
		}
		a, err := filepath.Abs(*p)
		*p = a
		return err
	}
	cfg.Drives = slices.Clone(cfg.Drives)
	cfg.Ports = slices.Clone(cfg.Ports)
	paths := []*string{&cfg.Kernel, &cfg.Initrd, &cfg.SerialLog, &cfg.QMPSocket, &cfg.NetNS, &cfg.SerialSocket, &cfg.RAMFile}
	for i := range cfg.Ports {
		paths = append(paths, &cfg.Ports[i].Socket)
	}
	if cfg.Firmware != "default" {
		paths = append(paths, &cfg.Firmware)
	}
	for i := range cfg.Drives {
		paths = append(paths, &cfg.Drives[i].Path)
	}
	for _, p := range paths {
		if err := abs(p); err != nil {
			return nil, fmt.Errorf("vm %s: %w", cfg.Name, err)
		}
	}
	if cfg.SerialLog == "" {
		cfg.SerialLog = filepath.Join(dir, SerialLogName)
	}
	if cfg.QMPSocket == "" {
		cfg.QMPSocket = filepath.Join(dir, QMPSocketName)
	}
	// sun_path holds 108 bytes with its terminating NUL.
	socks := []string{cfg.QMPSocket, cfg.SerialSocket}
	for _, p := range cfg.Ports {
		socks = append(socks, p.Socket)
	}
	for _, s := range socks {
		if len(s) > 107 {
			return nil, fmt.Errorf("vm %s: socket path %s is too long for a unix socket", cfg.Name, s)
		}
	}
	args, err := cfg.Args()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &VM{cfg: cfg, dir: dir, log: log.With("vm", cfg.Name), args: args, done: make(chan struct{})}, nil
}

// Args returns QEMU's command line.
func (v *VM) Args() []string { return v.args }

// CommandLine returns QEMU's command line shell-quoted, to paste into a
// terminal (run it in the VM's working directory).
func (v *VM) CommandLine() string {
	q := make([]string, len(v.args))
	for i, a := range v.args {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_=,.:/@+", r))
		}) < 0 {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}

// Start starts QEMU and connects to its QMP socket; ctx bounds only the
// start. The VM then runs until the guest powers off, Shutdown or
// Forcedown, or this process dies. Start may be called once.
func (v *VM) Start(ctx context.Context) error {
	if !v.started.CompareAndSwap(false, true) {
		return fmt.Errorf("vm %s: %w", v.cfg.Name, ErrStarted)
	}
	fail := func(err error) error {
		v.finish(err)
		return err
	}
	if err := os.MkdirAll(v.dir, 0o755); err != nil {
		return fail(fmt.Errorf("vm %s: %w", v.cfg.Name, err))
	}
	if entries, err := os.ReadDir(v.dir); err != nil {
		return fail(fmt.Errorf("vm %s: %w", v.cfg.Name, err))
	} else if len(entries) > 0 {
		return fail(fmt.Errorf("vm %s: working directory %s is not empty", v.cfg.Name, v.dir))
	}
	out, err := os.Create(filepath.Join(v.dir, OutputName))
	if err != nil {
		return fail(fmt.Errorf("vm %s: %w", v.cfg.Name, err))
	}
	started := make(chan error, 1)
	go v.supervise(out, started)
	if err := <-started; err != nil {
		return err
	}
	v.log.Debug("qemu started", "pid", v.PID(), "cmd", v.CommandLine())

	// QEMU makes its QMP socket early, but after we return from fork.
	var c *qmp.Client
	for {
		c, err = qmp.Dial(ctx, v.cfg.QMPSocket)
		if err == nil {
			break
		}
		select {
		case <-v.done:
			if v.err == nil {
				return v.startError(errors.New("QEMU exited at once"))
			}
			var e *Error
			if errors.As(v.err, &e) {
				return v.startError(e.Err)
			}
			return v.startError(v.err)
		case <-ctx.Done():
			v.kill()
			<-v.done
			return v.startError(fmt.Errorf("waiting for QMP: %w", ctx.Err()))
		case <-time.After(5 * time.Millisecond):
		}
	}
	v.mu.Lock()
	v.client = c
	v.mu.Unlock()
	select {
	case <-v.done: // it exited meanwhile: finish may have missed the client
		c.Close()
		return v.err
	default:
	}
	if v.cfg.Incoming != "" && v.cfg.IncomingDevices {
		err := setIgnoreShared(ctx, c, true)
		if err == nil {
			_, err = c.Execute(ctx, "migrate-incoming", map[string]any{"uri": v.cfg.Incoming})
		}
		if err != nil {
			v.kill()
			<-v.done
			return v.startError(fmt.Errorf("restoring the devices' state: %w", err))
		}
	}
	if v.cfg.VNC != "" {
		var vnc struct {
			Host    string `json:"host"`
			Service string `json:"service"`
		}
		if err := c.Run(ctx, "query-vnc", nil, &vnc); err == nil {
			v.mu.Lock()
			v.vnc = vnc.Host + ":" + vnc.Service
			v.mu.Unlock()
		}
	}
	return nil
}

// supervise starts QEMU and waits for it, on an OS thread locked for the
// whole life of the VM: Pdeathsig fires when the thread that started the
// child ends, so the thread must outlive QEMU, and end with it. The thread
// is thrown away afterwards (it may have entered the VM's namespace).
func (v *VM) supervise(out *os.File, started chan<- error) {
	runtime.LockOSThread() // never unlocked, see above
	defer out.Close()
	if v.cfg.NetNS != "" {
		if err := netns.Enter(v.cfg.NetNS); err != nil {
			err = fmt.Errorf("vm %s: %w", v.cfg.Name, err)
			v.finish(err)
			started <- err
			return
		}
	}
	// The VM is not tied to any context: it ends by Shutdown, Forcedown or
	// the death of this process.
	// QEMU runs under a tether (package proc): tied to this process until
	// Detach.
	cmd := proc.Command(context.Background(), v.args[0], v.args[1:]...)
	cmd.Dir = v.dir
	cmd.Stdout, cmd.Stderr = out, out
	t, err := proc.StartTethered(cmd)
	if err != nil {
		var pe *proc.Error
		if errors.As(err, &pe) {
			err = pe.Err
		}
		err = v.startError(err)
		v.finish(err)
		started <- err
		return
	}
	defer t.Close()
	v.mu.Lock()
	v.pid = t.PID
	v.tether = t
	v.mu.Unlock()
	started <- nil
	err = t.Cmd.Wait()
	if err != nil {
		err = &Error{VM: v.cfg.Name, Op: "run", Err: err, Output: v.outputTail(), Command: v.CommandLine()}
	}
	v.finish(err)
}

// finish records how the VM ended and cleans up, once.
func (v *VM) finish(err error) {
	v.mu.Lock()
	select {
	case <-v.done:
		v.mu.Unlock()
		return
	default:
	}
	c := v.client
	v.err = err
	v.mu.Unlock()
	if c != nil {
		c.Close()
	}
	os.Remove(v.cfg.QMPSocket)
	if err != nil {
		v.log.Debug("qemu ended", "err", err)
	} else {
		v.log.Debug("qemu exited")
	}
	close(v.done)
}

// startError wraps err as a failed start with QEMU's output and a diagnosis.
func (v *VM) startError(err error) error {
	out := v.outputTail()
	d := diagnose(out)
	if errors.Is(err, exec.ErrNotFound) {
		d = "QEMU is not installed: install Debian's qemu-system-x86 (scripts/deps does)"
	}
	return &Error{VM: v.cfg.Name, Op: "start", Err: err, Output: out, Diagnosis: d, Command: v.CommandLine()}
}

// outputTail returns the end of what QEMU printed.
func (v *VM) outputTail() string { return tail(filepath.Join(v.dir, OutputName), 2048) }

// SerialTail returns the last n bytes of the serial console log, for
// error messages.
func (v *VM) SerialTail(n int) string { return tail(v.cfg.SerialLog, n) }

func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > int64(n) {
		f.Seek(fi.Size()-int64(n), io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// Done is closed when QEMU has exited and the VM is cleaned up.
func (v *VM) Done() <-chan struct{} { return v.done }

// Wait waits until QEMU has exited and returns how it ended: nil when it
// exited normally (the guest powered off, or was shut down), an *Error
// otherwise. Every caller gets the same answer. It returns ctx's error
// when ctx ends first.
func (v *VM) Wait(ctx context.Context) error {
	select {
	case <-v.done:
		return v.err
	case <-ctx.Done():
		return fmt.Errorf("vm %s: wait: %w", v.cfg.Name, ctx.Err())
	}
}

// QMP returns the VM's QMP client, for commands and events of its own
// (nil before Start has returned).
func (v *VM) QMP() *qmp.Client {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.client
}

func (v *VM) execute(ctx context.Context, command string) error {
	c := v.QMP()
	if c == nil {
		return fmt.Errorf("vm %s: %s: %w", v.cfg.Name, command, ErrExited)
	}
	if _, err := c.Execute(ctx, command, nil); err != nil {
		if errors.Is(err, qmp.ErrClosed) {
			return fmt.Errorf("vm %s: %s: %w", v.cfg.Name, command, ErrExited)
		}
		return fmt.Errorf("vm %s: %w", v.cfg.Name, err)
	}
	return nil
}

// Shutdown asks the guest to power off (ACPI power button, QMP
// system_powerdown) and waits until QEMU exits or ctx ends. A guest does
// not see a press before it handles the button (the busybox machine:
// until its set-up is done, a fraction of a second after the worker
// starts), so Shutdown presses it again every RepressInterval. It reports
// whether the guest made it; the error is for a request that could not
// be made. A guest that did not make it is still running: Forcedown it.
func (v *VM) Shutdown(ctx context.Context) (bool, error) {
	select {
	case <-v.done:
		return true, nil
	default:
	}
	t := time.NewTicker(RepressInterval)
	defer t.Stop()
	for {
		if err := v.execute(ctx, "system_powerdown"); err != nil {
			if errors.Is(err, ErrExited) {
				<-v.done
				return true, nil
			}
			if ctx.Err() != nil {
				return false, nil
			}
			return false, err
		}
		select {
		case <-v.done:
			v.log.Debug("guest powered off")
			return true, nil
		case <-ctx.Done():
			v.log.Info("guest did not power off in time")
			return false, nil
		case <-t.C:
		}
	}
}

// RepressInterval is how often Shutdown presses the power button.
const RepressInterval = time.Second

// Forcedown stops QEMU now: QMP quit, then SIGTERM to its process group,
// then SIGKILL, each after a short grace period, and waits for it to exit
// (bounded by ctx). The guest's disk may be left unclean.
func (v *VM) Forcedown(ctx context.Context) error {
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-v.done:
			return true
		case <-t.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
	if !v.started.Load() || wait(0) {
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, time.Second)
	err := v.execute(qctx, "quit")
	cancel()
	if err == nil || errors.Is(err, ErrExited) {
		if wait(2 * time.Second) {
			return nil
		}
	}
	if v.signal(syscall.SIGTERM); wait(2 * time.Second) {
		return nil
	}
	v.kill()
	if wait(5 * time.Second) {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("vm %s: forcedown: %w", v.cfg.Name, ctx.Err())
	}
	return fmt.Errorf("vm %s: forcedown: QEMU (pid %d) survived SIGKILL", v.cfg.Name, v.PID())
}

func (v *VM) signal(sig syscall.Signal) {
	if pid := v.PID(); pid > 0 {
		select {
		case <-v.done: // its pid may be reused by now
		default:
			syscall.Kill(-pid, sig)
		}
	}
}

func (v *VM) kill() { v.signal(syscall.SIGKILL) }

// PID returns QEMU's process id (0 before Start).
func (v *VM) PID() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.pid
}

// Detach unties QEMU from this process: it keeps running when this
// process exits, until it exits itself or is killed (by its pid, which
// outlives the VM value). The VM's methods keep working while this process
// lives. It is the one exception to "a QEMU never outlives its parent",
// for a VM kept for investigation.
func (v *VM) Detach(ctx context.Context) error {
	v.mu.Lock()
	t := v.tether
	v.mu.Unlock()
	if t == nil || !v.Running() {
		return fmt.Errorf("vm %s: detach: %w", v.cfg.Name, ErrExited)
	}
	if err := t.Release(ctx); err != nil {
		return fmt.Errorf("vm %s: detach: %w", v.cfg.Name, err)
	}
	v.log.Debug("qemu detached: it outlives this process", "pid", t.PID)
	return nil
}

// Release closes this process's QMP connection to a detached VM, so that
// another process can connect (QEMU serves one QMP client at a time), as
// this one lets the VM go. Only Done, Wait, Info and PID work afterwards.
func (v *VM) Release() {
	v.mu.Lock()
	c := v.client
	v.client = nil
	v.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// Suspend stops the guest's CPUs (QMP stop); the VM keeps its state.
func (v *VM) Suspend(ctx context.Context) error { return v.execute(ctx, "stop") }

// Resume restarts the guest's CPUs (QMP cont).
func (v *VM) Resume(ctx context.Context) error { return v.execute(ctx, "cont") }

// Status returns QEMU's run state (query-status): running, paused, ...
func (v *VM) Status(ctx context.Context) (string, error) {
	c := v.QMP()
	if c == nil {
		return "", fmt.Errorf("vm %s: status: %w", v.cfg.Name, ErrExited)
	}
	s, err := c.QueryStatus(ctx)
	if err != nil {
		return "", fmt.Errorf("vm %s: %w", v.cfg.Name, err)
	}
	return s.Status, nil
}

// shellQuote quotes s for /bin/sh, which QEMU's exec: migration runs.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// IncomingFile is the Config.Incoming value that restores the state
// SaveState wrote to file.
func IncomingFile(file string) (string, error) {
	abs, err := filepath.Abs(file)
	if err != nil {
		return "", err
	}
	return "exec:cat " + shellQuote(abs), nil
}

// SaveState stops the guest, writes its whole state (memory and devices)
// to file and leaves it stopped (QMP status postmigrate), for a VM started
// later with the same configuration and Incoming set to IncomingFile(file):
// a warm start, which runs at once. Forcedown the saved VM afterwards.
func (v *VM) SaveState(ctx context.Context, file string) error {
	return v.save(ctx, file, false)
}

// SaveDevices is SaveState for a VM whose memory is its RAMFile, shared:
// file gets the devices' state only (QEMU's x-ignore-shared), a few
// hundred KiB, and the RAM file, as the guest left it when it stopped,
// is the rest. A VM started later with the same configuration, that
// RAMFile (shared or not), Incoming set to IncomingFile(file) and
// IncomingDevices restores it without reading the memory first: the
// guest's pages are read from the file as it touches them.
//
// The RAM file must not change after the save, and QEMU's devices can
// still write the guest's memory in a stopped VM: a host end connecting
// to or leaving a virtio-serial port (Config.Ports) has QEMU put a
// control message in the guest's queue. Keep the ports' host ends as they
// are until QEMU has exited (Forcedown).
func (v *VM) SaveDevices(ctx context.Context, file string) error {
	if v.cfg.RAMFile == "" || !v.cfg.RAMShared {
		return fmt.Errorf("vm %s: save devices: the VM's memory is not a shared RAM file", v.cfg.Name)
	}
	return v.save(ctx, file, true)
}

// save stops the guest and migrates it to file, without its shared
// memory when devicesOnly.
func (v *VM) save(ctx context.Context, file string, devicesOnly bool) error {
	c := v.QMP()
	if c == nil {
		return fmt.Errorf("vm %s: save state: %w", v.cfg.Name, ErrExited)
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return fmt.Errorf("vm %s: save state: %w", v.cfg.Name, err)
	}
	if err := setIgnoreShared(ctx, c, devicesOnly); err != nil {
		return fmt.Errorf("vm %s: save state to %s: %w", v.cfg.Name, abs, err)
	}
	// The guest stops first, and its memory is written while it stands
	// still: a live migration under TCG (QEMU 7.2) missed pages that a
	// running aarch64 guest wrote during it, about one save in five (the
	// restored guest's memory was corrupt: hung timers, oopses, crashed
	// workers). The state carries no run state (the command line's
	// migration.store-global-state=off), so the restored guest runs at
	// once, as that of a live migration would.
	if _, err := c.Execute(ctx, "stop", nil); err != nil {
		return fmt.Errorf("vm %s: save state to %s: %w", v.cfg.Name, abs, err)
	}
	if _, err := c.Execute(ctx, "migrate", map[string]any{"uri": "exec:cat > " + shellQuote(abs)}); err != nil {
		return fmt.Errorf("vm %s: save state to %s: %w", v.cfg.Name, abs, err)
	}
	for {
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := c.Run(ctx, "query-migrate", nil, &st); err != nil {
			return fmt.Errorf("vm %s: save state to %s: %w", v.cfg.Name, abs, err)
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("vm %s: save state to %s: %s: %s", v.cfg.Name, abs, st.Status, st.ErrorDesc)
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			c.Execute(context.WithoutCancel(ctx), "migrate_cancel", nil)
			return fmt.Errorf("vm %s: save state to %s: %w", v.cfg.Name, abs, ctx.Err())
		}
	}
}

// setIgnoreShared sets QEMU's x-ignore-shared migration capability: a
// state then leaves out the memory in shared RAM files, and its reader
// expects none. Both ends of a migration must agree on it.
func setIgnoreShared(ctx context.Context, c *qmp.Client, on bool) error {
	_, err := c.Execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": on}},
	})
	return err
}

// Info describes a running VM.
type Info struct {
	Name      string
	PID       int
	Dir       string // its working directory
	QMPSocket string
	SerialLog string
	// SerialSocket is the unix socket the serial console is on, if asked
	// for (Config.SerialSocket).
	SerialSocket string
	Ports        []Port // its virtio-serial ports
	VNC          string // host:port of its VNC server, if any
	NetNS        string
	Drives       []Drive // its disks, as configured
}

// Info returns what a console needs to reach the VM.
func (v *VM) Info() Info {
	v.mu.Lock()
	defer v.mu.Unlock()
	return Info{Name: v.cfg.Name, PID: v.pid, Dir: v.dir, QMPSocket: v.cfg.QMPSocket,
		SerialLog: v.cfg.SerialLog, SerialSocket: v.cfg.SerialSocket,
		Ports: slices.Clone(v.cfg.Ports), VNC: v.vnc, NetNS: v.cfg.NetNS, Drives: slices.Clone(v.cfg.Drives)}
}

// WaitConsole waits until a line of the serial console satisfies match
// and returns that line. It fails when QEMU exits first, or ctx ends; the
// error then carries the tail of the console.
func (v *VM) WaitConsole(ctx context.Context, what string, match func(line string) bool) (string, error) {
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	var r *bufio.Reader
	var partial []byte
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if f == nil {
			if fo, err := os.Open(v.cfg.SerialLog); err == nil {
				f, r = fo, bufio.NewReader(fo)
			}
		}
		exited := false
		select {
		case <-v.done:
			exited = true // read what is left, then give up
		default:
		}
		for r != nil {
			line, err := r.ReadBytes('\n')
			partial = append(partial, line...)
			if err != nil && !exited {
				break // an incomplete line: wait for the rest
			}
			if l := strings.TrimRight(string(partial), "\r\n"); match(l) {
				return l, nil
			}
			partial = partial[:0]
			if err != nil {
				break
			}
		}
		var err error
		if exited {
			err = ErrExited
		}
		if err == nil {
			select {
			case <-tick.C:
				continue
			case <-v.done:
				continue
			case <-ctx.Done():
				err = ctx.Err()
			}
		}
		return "", fmt.Errorf("vm %s: waiting for %s on the console: %w; console:\n%s", v.cfg.Name, what, err, v.SerialTail(2048))
	}
}

// Contains matches a console line that contains s, for WaitConsole.
func Contains(s string) func(string) bool {
	return func(line string) bool { return strings.Contains(line, s) }
}

// diagnose explains a QEMU failure it recognises in QEMU's output.
func diagnose(out string) string {
	switch {
	case strings.Contains(out, "/dev/net/tun"):
		return "cannot open /dev/net/tun: load the tun module and run as root"
	case strings.Contains(out, "Could not access KVM") || strings.Contains(out, "failed to initialize kvm"):
		return "KVM is not usable here: use --accel tcg (or auto)"
	case strings.Contains(out, "Address already in use"):
		return "a port QEMU listens on (VNC?) is taken"
	case strings.Contains(out, "could not load kernel") || strings.Contains(out, "could not load initrd") ||
		strings.Contains(out, "Could not open") || strings.Contains(out, "could not open"):
		return "a file of the machine is missing or unreadable"
	}
	return ""
}

// Running reports whether QEMU is still running.
func (v *VM) Running() bool {
	select {
	case <-v.done:
		return false
	default:
		return v.PID() > 0
	}
}
