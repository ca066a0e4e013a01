package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/console"
	"github.com/buildfarm/buildfarm/internal/machine"
	"github.com/buildfarm/buildfarm/internal/netns"
	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/tap"
	"github.com/buildfarm/buildfarm/internal/tftp"
	"github.com/buildfarm/buildfarm/internal/vmrecord"
)

// tftpRules map the guest's requests into the session's directory: reads
// from get/, writes to put/. Anything else is denied.
var tftpRules = []string{
	`Gr ^/?(.+)$ get/\1`,
	`Pr ^/?(.+)$ put/\1`,
}

// maxUpload bounds what one guest may upload in a session.
const maxUpload = 1 << 30

// vmRun is one VM's run for a session: a network namespace of its own
// (unless NoNetNS), the TFTP server on its loopback with the session's
// rules, and the VM; or, with --bridge, a tap device on the bridge and
// the TFTP server on the bridge's address (bridge.go). Start it once;
// Wait for its job; Suspend it for investigation, or Shutdown, Stop or
// Close it. Close runs its clean-up exactly once, and every path ends in
// Close.
type vmRun struct {
	a  *Agent
	s  *session
	vm *qemu.VM
	ns *netns.NS

	// With --bridge (bridge.go): the VM's tap and fresh MAC, and
	// startAwaited, closed when the worker says it awaits its start on
	// the guest channel.
	tap          *tap.Tap
	mac          string
	startAwaited chan struct{}
	awaitedOnce  sync.Once

	// Its console and record (suspend.go); a suspended run is kept, and
	// why says what suspended it.
	con      *console.Server
	rec      vmrecord.Record
	recorded bool
	kept     atomic.Bool
	why      error

	obs atomic.Pointer[vmObserved] // metrics and the task's live log (metrics.go)

	firstRequest chan struct{} // closed at the guest's first TFTP request
	uploaded     chan struct{} // closed when s.want is uploaded
	requestOnce  sync.Once     // closes firstRequest
	uploadOnce   sync.Once     // closes uploaded

	stops     []func() // undo what Start did, in reverse
	closeOnce sync.Once
	closeErr  error
}

func (a *Agent) newVMRun(s *session) *vmRun {
	return &vmRun{a: a, s: s, firstRequest: make(chan struct{}), uploaded: make(chan struct{}), startAwaited: make(chan struct{})}
}

// Start starts the run:
//
//  1. A network namespace, unless disabled: its loopback holds only the
//     TFTP socket, so the guest reaches that and nothing else. With
//     --bridge instead: a tap on the bridge, a fresh MAC, and the TFTP
//     socket on the bridge's address (bridge.go).
//  2. The TFTP server on that socket, with the session's rules; every
//     request is a sign of life, and the wanted upload ends the job.
//  3. The VM: the machine's kernel, initrd and command line plus the
//     worker's parameters, its disk from the snapshot. A VM restored on
//     a bridge gets its start over the guest channel before Start
//     returns.
//
// The caller fills the session's get/ directory before, and calls Close
// after, also when Start fails.
func (r *vmRun) Start(ctx context.Context) error {
	a, s := r.a, r.s
	// Not port 69: QEMU's user-mode networking answers TFTP to 10.0.2.2:69
	// itself (with "Access violation" when it has no tftp= directory).
	listen := fmt.Sprintf("127.0.0.1:%d", s.port)
	tftpAddr := fmt.Sprintf("10.0.2.2:%d", s.port)
	var conn net.PacketConn
	var err error
	listenTransfer := func() (net.PacketConn, error) { return net.ListenPacket("udp4", "127.0.0.1:0") }
	netCfg, netArg := qemu.Net{Mode: qemu.NetUser, MAC: s.mac}, "buildfarm.net=user"
	switch {
	case a.opts.Bridge != "":
		var b *bridged
		if b, err = r.onBridge(ctx); err != nil {
			return err
		}
		tftpAddr, listenTransfer, netCfg, netArg = b.tftpAddr, b.listenTransfer, b.net, b.arg
		if conn, err = net.ListenPacket("udp4", tftpAddr); err == nil {
			var f net.PacketConn
			if f, err = r.filterPeers(conn); err != nil {
				conn.Close()
				return err
			}
			conn = f
		}
	case a.opts.NoNetNS:
		conn, err = net.ListenPacket("udp4", listen)
	default:
		if r.ns, err = netns.New(ctx); err != nil {
			return fmt.Errorf("vm %s: %w", s.name, err)
		}
		ns := r.ns
		r.stops = append(r.stops, func() {
			if !r.kept.Load() { // a suspended VM keeps its namespace
				ns.Delete(context.WithoutCancel(ctx))
			}
		})
		conn, err = ns.ListenPacket(ctx, "udp4", listen)
		listenTransfer = func() (net.PacketConn, error) {
			return ns.ListenPacket(context.WithoutCancel(ctx), "udp4", "127.0.0.1:0")
		}
	}
	if err != nil {
		return fmt.Errorf("vm %s: tftp socket: %w", s.name, err)
	}
	rules, err := parseRules(tftpRules)
	if err != nil {
		conn.Close()
		return err
	}
	// Each request is logged only in verbose mode; the guest's progress
	// reports are logged as they arrive either way.
	var tftpLog *slog.Logger
	if a.log.Enabled(ctx, slog.LevelDebug) {
		tftpLog = a.log.With("vm", s.name)
	}
	srv := r.tftpServer(rules, tftpLog, listenTransfer)
	sctx, scancel := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(sctx, conn)
	}()
	r.stops = append(r.stops, func() { scancel(); conn.Close(); <-served })

	m, err := loadMachineFiles(s.machineDir)
	if err != nil {
		return err
	}
	guest, err := machine.Arch(s.machineDir)
	if err != nil {
		return err
	}
	acc := qemu.TCG // KVM runs only guests of the host's architecture
	if guest == arch.Host() {
		if acc, err = a.accelerator(ctx); err != nil {
			return err
		}
	}
	cfg := qemu.Config{
		Name:     s.name,
		Arch:     guest,
		CPUs:     a.opts.CPUs,
		MemoryMB: a.opts.MemoryMB,
		Accel:    acc,
		Kernel:   m.kernel,
		Initrd:   m.initrd,
		// buildfarm.net=user: the guest's init sets the address user-mode
		// networking would lease it, without DHCP; buildfarm.net=dhcp on a
		// bridge.
		Append:   strings.TrimSpace(m.cmdline + " buildfarm.mode=" + s.mode + " buildfarm.tftp=" + tftpAddr + " " + netArg),
		Net:      netCfg,
		NoReboot: true,
		Extra:    m.options,
	}
	if m.disk != "" {
		cfg.Drives = []qemu.Drive{{Path: m.disk, Format: m.diskFormat}}
	}
	if r.ns != nil {
		cfg.NetNS = r.ns.Path()
	}
	vmDir := filepath.Join(s.tftpDir, "vm")
	if err := checkSockets(vmDir); err != nil {
		return err
	}
	console.SetPorts(&cfg, vmDir)
	if s.configure != nil { // last: a warm start's key covers the whole VM
		if err := s.configure(ctx, &cfg); err != nil {
			return err
		}
	}
	vm, err := qemu.New(cfg, vmDir, a.log)
	if err != nil {
		return err
	}
	a.log.Debug("starting VM", "vm", s.name, "command", vm.CommandLine())
	r.obs.Store(a.observeStart(ctx))
	if err := vm.Start(ctx); err != nil {
		return err
	}
	r.vm = vm
	if s.resaving { // no console, no start (see session.resaving)
		return nil
	}
	if err := r.startConsole(ctx); err != nil {
		return err
	}
	if r.tap != nil {
		r.watchAwaitStart()
		if cfg.Incoming != "" {
			return r.sendStart(ctx, tftpAddr)
		}
	}
	return nil
}

// tftpServer is the TFTP server of r's session: its rules, the limits of
// uploads (uploads.go), and r's hooks.
func (r *vmRun) tftpServer(rules []tftp.Rule, log *slog.Logger, listenTransfer func() (net.PacketConn, error)) *tftp.Server {
	return &tftp.Server{
		Root:           r.s.tftpDir,
		Rules:          rules,
		MaxPutSize:     maxUpload,
		MaxTotalPut:    maxUpload,
		PutLimit:       r.s.putLimit,
		ReadOnce:       r.s.readOnce,
		Log:            log,
		ListenTransfer: listenTransfer,
		OnRequest:      r.onRequest,
	}
}

// onRequest is the TFTP server's hook: every request is a sign of life,
// progress reports are logged, and the wanted upload ends the job.
func (r *vmRun) onRequest(req tftp.Request) {
	r.a.observeRequest(r, req)
	if r.s.onRequest != nil {
		r.s.onRequest(req)
	}
	r.requestOnce.Do(func() { close(r.firstRequest) })
	if req.Op == tftp.OpWrite && req.Err == nil {
		r.a.uploaded(r.s, req.Filename)
		if strings.TrimPrefix(req.Filename, "/") == r.s.want {
			r.uploadOnce.Do(func() { close(r.uploaded) })
		}
	}
}

// Wait waits for the job within the session's deadlines: the first TFTP
// request before the startup deadline (or ErrMisboot; ErrMisboot and
// ErrNoResult when the VM stopped first), then the wanted upload before the
// job's deadline (or ErrTimeout; ErrNoResult when the VM stopped first).
// The errors carry the serial console's tail. Wait has one caller.
func (r *vmRun) Wait(ctx context.Context) error {
	if err := r.waitFor(ctx, r.firstRequest, r.s.startup, ErrMisboot); err != nil {
		if errors.Is(err, ErrNoResult) {
			return fmt.Errorf("%w: %w", ErrMisboot, err)
		}
		return err
	}
	r.a.log.Info("VM booted", "vm", r.s.name)
	return r.waitFor(ctx, r.uploaded, r.s.timeout, ErrTimeout)
}

func (r *vmRun) waitFor(ctx context.Context, what <-chan struct{}, d time.Duration, timeoutErr error) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-what:
		return nil
	case <-r.vm.Done():
		select {
		case <-what: // the upload and the exit raced
			return nil
		default:
		}
		return fmt.Errorf("vm %s: %w (%v); serial console:\n%s", r.s.name, ErrNoResult, r.vm.Wait(ctx), r.vm.SerialTail(2048))
	case <-t.C:
		return fmt.Errorf("vm %s: %w after %v; serial console:\n%s", r.s.name, timeoutErr, d, r.vm.SerialTail(2048))
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Suspend pauses the VM because of why, and detaches it so that it
// outlives the agent (keepSuspended then records it): it keeps everything
// Start made for investigation, until Close.
func (r *vmRun) Suspend(ctx context.Context, why error) error {
	if r.vm == nil {
		return fmt.Errorf("vm %s: not started", r.s.name)
	}
	if err := r.vm.Suspend(ctx); err != nil {
		return err
	}
	r.why = why
	r.kept.Store(true)
	if err := r.vm.Detach(ctx); err != nil {
		r.a.log.Warn("suspended VM not detached: it ends with the agent", "vm", r.s.name, "err", err)
	}
	return nil
}

// Shutdown gives the guest the shutdown deadline to power off by itself
// (the worker's init does after the job), then Closes the run.
func (r *vmRun) Shutdown(ctx context.Context) {
	t := time.NewTimer(r.s.shutdown)
	defer t.Stop()
	select {
	case <-r.vm.Done():
	case <-t.C:
		r.a.log.Warn("VM did not power off after its job; forcing it down", "vm", r.s.name, "after", r.s.shutdown)
	case <-ctx.Done():
	}
	if err := r.Close(context.WithoutCancel(ctx)); err != nil {
		r.a.log.Warn("forcing VM down", "vm", r.s.name, "err", err)
	}
}

// Stop forces the VM down now, for a build whose result is in: its
// snapshot is discarded, so nothing the guest does after its job (the
// worker's exit, the init's sync and power-off: 0.1-0.2 s under TCG)
// matters. A bootstrap's VM, whose disk is kept, gets Shutdown instead.
func (r *vmRun) Stop(ctx context.Context) {
	if err := r.Close(context.WithoutCancel(ctx)); err != nil {
		r.a.log.Warn("forcing VM down", "vm", r.s.name, "err", err)
	}
}

// Close forces the VM down, closes its console, removes its record, ends
// the TFTP server and deletes the network namespace. Later calls return the first call's result.
func (r *vmRun) Close(ctx context.Context) error {
	r.closeOnce.Do(func() {
		if r.vm != nil {
			r.closeErr = r.vm.Forcedown(ctx)
		}
		r.closeConsole()
		for i := len(r.stops) - 1; i >= 0; i-- {
			r.stops[i]()
		}
		r.stops = nil
	})
	return r.closeErr
}

// boot runs one VM for s (the caller has filled get/ after s.prepare) and
// waits for its job. It returns the run, which the caller shuts down. A VM
// that missed its job's deadline, or mis-booted on the last try (last),
// is suspended for investigation and returned with the error; the caller
// keeps it. On other errors nothing is left running.
func (a *Agent) boot(ctx context.Context, s *session, last bool) (*vmRun, error) {
	r := a.newVMRun(s)
	if err := r.Start(ctx); err != nil {
		r.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	err := r.Wait(ctx)
	if err == nil {
		return r, nil
	}
	if errors.Is(err, ErrMisboot) {
		a.metrics.misboots.Inc()
	}
	if errors.Is(err, ErrTimeout) || last && errors.Is(err, ErrMisboot) && !errors.Is(err, ErrNoResult) {
		if serr := r.Suspend(context.WithoutCancel(ctx), err); serr != nil {
			r.Close(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("%w (and suspending it failed: %v)", err, serr)
		}
		return r, err
	}
	r.Close(context.WithoutCancel(ctx))
	return nil, err
}

func parseRules(specs []string) ([]tftp.Rule, error) {
	var rules []tftp.Rule
	for _, s := range specs {
		r, err := tftp.ParseRule(s)
		if err != nil {
			return nil, fmt.Errorf("tftp rule %q: %w", s, err)
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// machineFiles are the VM files of a machine directory.
type machineFiles struct {
	kernel, initrd, cmdline string
	disk, diskFormat        string
	options                 []string
}

// loadMachineFiles finds the VM files in dir: kernel, initrd and cmdline for
// direct kernel boot, and the disk (machine.Disk).
func loadMachineFiles(dir string) (*machineFiles, error) {
	m := &machineFiles{}
	exists := func(name string) bool { _, err := os.Stat(filepath.Join(dir, name)); return err == nil }
	if exists("kernel") {
		m.kernel = filepath.Join(dir, "kernel")
		if exists("initrd") {
			m.initrd = filepath.Join(dir, "initrd")
		}
		if b, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil {
			m.cmdline = strings.TrimSpace(string(b))
		}
	}
	disk, format, err := machine.Disk(dir)
	switch {
	case err == nil:
		m.disk, m.diskFormat = disk, format
	case !errors.Is(err, machine.ErrNotFound):
		return nil, err
	}
	if m.kernel == "" && m.disk == "" {
		return nil, fmt.Errorf("machine %s: no kernel and no disk.img to boot", dir)
	}
	return m, nil
}
