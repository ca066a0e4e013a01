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
	"time"

	"github.com/buildfarm/buildfarm/internal/machine"
	"github.com/buildfarm/buildfarm/internal/netns"
	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/tftp"
)

// tftpRules map the guest's requests into the session's directory: reads
// from get/, writes to put/. Anything else is denied.
var tftpRules = []string{
	`Gr ^/?(.+)$ get/\1`,
	`Pr ^/?(.+)$ put/\1`,
}

// maxUpload bounds what one guest may upload in a session.
const maxUpload = 1 << 30

// running is a session's VM while it runs: the agent keeps it to stop it on
// SIGTERM, or, suspended, for investigation.
type running struct {
	s    *session
	vm   *qemu.VM
	ns   *netns.NS
	stop func()    // ends the TFTP server and deletes the namespace
	snap *snapshot // kept with a suspended VM
}

// release forces the VM down and frees what the session holds.
func (r *running) release(ctx context.Context) error {
	var err error
	if r.vm != nil {
		err = r.vm.Forcedown(ctx)
	}
	r.stop()
	return err
}

// boot runs one VM for s: it prepares the TFTP directory (the caller has
// filled get/ after prepare), starts the TFTP server and the VM in a
// network namespace of their own, and waits for s.want to be uploaded
// within the deadlines. It returns the running VM, which the caller shuts
// down. A VM that missed its job's deadline, or mis-booted on the last try
// (last), is suspended for investigation and returned with the error; the
// caller keeps it.
func (a *Agent) boot(ctx context.Context, s *session, last bool) (*running, error) {
	// 1. A network namespace, unless disabled: its loopback holds only the
	//    TFTP socket, so the guest reaches that and nothing else.
	// 2. The TFTP server on that socket, with the session's rules; every
	//    request is a sign of life, and the wanted upload ends the wait.
	// 3. The VM: the machine's kernel, initrd and command line plus the
	//    worker's parameters, its disk from the snapshot.
	// 4. Deadlines: startup (first request), job (the upload), and the VM's
	//    own exit; the caller handles shutdown.
	r := &running{s: s, stop: func() {}}
	var stops []func()
	r.stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
		stops = nil
	}
	fail := func(err error) (*running, error) {
		r.release(context.WithoutCancel(ctx))
		return nil, err
	}

	// Not port 69: QEMU's user-mode networking answers TFTP to 10.0.2.2:69
	// itself (with "Access violation" when it has no tftp= directory).
	var conn net.PacketConn
	var err error
	port := a.opts.TFTPPort + a.opts.Instance
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	tftpAddr := fmt.Sprintf("10.0.2.2:%d", port)
	listenTransfer := func() (net.PacketConn, error) { return net.ListenPacket("udp4", "127.0.0.1:0") }
	if a.opts.NoNetNS {
		conn, err = net.ListenPacket("udp4", listen)
	} else {
		if r.ns, err = netns.New(ctx); err != nil {
			return fail(fmt.Errorf("vm %s: %w", s.name, err))
		}
		ns := r.ns
		stops = append(stops, func() { ns.Delete(context.WithoutCancel(ctx)) })
		conn, err = ns.ListenPacket(ctx, "udp4", listen)
		listenTransfer = func() (net.PacketConn, error) {
			return ns.ListenPacket(context.WithoutCancel(ctx), "udp4", "127.0.0.1:0")
		}
	}
	if err != nil {
		return fail(fmt.Errorf("vm %s: tftp socket: %w", s.name, err))
	}

	firstRequest := make(chan struct{})
	uploaded := make(chan struct{})
	var once1, once2 sync.Once
	rules, err := parseRules(tftpRules)
	if err != nil {
		return fail(err)
	}
	// Each request is logged only in verbose mode; the guest's progress
	// reports are logged as they arrive either way.
	var tftpLog *slog.Logger
	if a.log.Enabled(ctx, slog.LevelDebug) {
		tftpLog = a.log.With("vm", s.name)
	}
	srv := &tftp.Server{
		Root:           s.tftpDir,
		Rules:          rules,
		MaxPutSize:     maxUpload,
		MaxTotalPut:    maxUpload,
		Log:            tftpLog,
		ListenTransfer: listenTransfer,
		OnRequest: func(req tftp.Request) {
			once1.Do(func() { close(firstRequest) })
			if req.Op == tftp.OpWrite && req.Err == nil {
				a.uploaded(s, req.Filename)
				if strings.TrimPrefix(req.Filename, "/") == s.want {
					once2.Do(func() { close(uploaded) })
				}
			}
		},
	}
	sctx, scancel := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(sctx, conn)
	}()
	stops = append(stops, func() { scancel(); conn.Close(); <-served })

	m, err := loadMachineFiles(s.machineDir)
	if err != nil {
		return fail(err)
	}
	accel, err := a.accelerator(ctx)
	if err != nil {
		return fail(err)
	}
	cfg := qemu.Config{
		Name:     s.name,
		CPUs:     a.opts.CPU,
		MemoryMB: a.opts.RAM,
		Accel:    accel,
		Kernel:   m.kernel,
		Initrd:   m.initrd,
		Append:   strings.TrimSpace(m.cmdline + " buildfarm.mode=" + s.mode + " buildfarm.tftp=" + tftpAddr),
		Net:      qemu.Net{Mode: qemu.NetUser, MAC: s.mac},
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
	if r.vm, err = qemu.New(cfg, vmDir, a.log); err != nil {
		return fail(err)
	}
	a.log.Debug("starting VM", "vm", s.name, "command", r.vm.CommandLine())
	if err := r.vm.Start(ctx); err != nil {
		return fail(err)
	}

	wait := func(what <-chan struct{}, d time.Duration, timeoutErr error) error {
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
			return fmt.Errorf("vm %s: %w (%v); serial console:\n%s", s.name, ErrNoResult, r.vm.Wait(ctx), r.vm.SerialTail(2048))
		case <-t.C:
			return fmt.Errorf("vm %s: %w after %v; serial console:\n%s", s.name, timeoutErr, d, r.vm.SerialTail(2048))
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	suspend := func(err error) (*running, error) {
		if serr := r.vm.Suspend(context.WithoutCancel(ctx)); serr != nil {
			return fail(fmt.Errorf("%w (and suspending it failed: %v)", err, serr))
		}
		return r, err
	}
	if err := wait(firstRequest, s.startup, ErrMisboot); err != nil {
		if errors.Is(err, ErrNoResult) {
			return fail(fmt.Errorf("%w: %w", ErrMisboot, err))
		}
		if errors.Is(err, ErrMisboot) && last {
			return suspend(err)
		}
		return fail(err)
	}
	a.log.Info("VM booted", "vm", s.name)
	if err := wait(uploaded, s.timeout, ErrTimeout); err != nil {
		if errors.Is(err, ErrTimeout) {
			return suspend(err)
		}
		return fail(err)
	}
	return r, nil
}

// shutdown gives the guest the shutdown deadline to power off by itself (the
// worker's init does after the job), then forces it down, and frees the
// session.
func (a *Agent) shutdown(ctx context.Context, r *running) {
	t := time.NewTimer(r.s.shutdown)
	defer t.Stop()
	select {
	case <-r.vm.Done():
	case <-t.C:
		a.log.Warn("VM did not power off after its job; forcing it down", "vm", r.s.name, "after", r.s.shutdown)
	case <-ctx.Done():
	}
	if err := r.release(context.WithoutCancel(ctx)); err != nil {
		a.log.Warn("forcing VM down", "vm", r.s.name, "err", err)
	}
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
