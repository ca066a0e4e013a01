package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/buildfarm/buildfarm/internal/console"
	"github.com/buildfarm/buildfarm/internal/netns"
	"github.com/buildfarm/buildfarm/internal/notify"
	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/qmp"
	"github.com/buildfarm/buildfarm/internal/tap"
	"github.com/buildfarm/buildfarm/internal/vmrecord"
)

// This file is the life of a VM beyond its job: its console and record
// while it runs, and, when it is suspended for investigation, everything
// that keeps it (and lets it go) across the agent's restarts.
//
// Every VM the agent starts gets a console (package console) on
// console.sock in its directory, linked from --console-links as
// TOOLCHAIN-INSTANCE.sock (TOOLCHAIN-INSTANCE.SLOT.sock with --instances
// above 1), and a record (package vmrecord) in --registry, state running;
// both go when the VM is destroyed.
//
// A suspended VM is paused (QMP stop) and detached (qemu.VM.Detach): its
// QEMU outlives the agent, the one exception to "a QEMU never outlives its
// agent". It keeps its snapshot, network namespace, TFTP directory (get/,
// put/ and the VM's directory: serial log, QMP and console sockets) and a
// record saying why (state suspended), and the admin is emailed. Then:
//
//  1. It is destroyed --suspend-limit after it was suspended: by this
//     agent while it runs (a watcher looks every second), or by the next
//     agent of this toolchain and instance at its start.
//  2. A host keeps at most --suspend-max suspended VMs (all agents' records
//     count): past it, the oldest is destroyed at once (its QEMU killed; the
//     agent that kept it deletes the rest), and the email about the new one
//     says so. The host goes on taking tasks.
//  3. The admin removes one with `buildfarm console VM halt`: the agent
//     sees its QEMU gone and deletes the rest (snapshot, namespace, TFTP
//     directory, record) within a second, or at its next start.
//  4. An agent that starts finds the suspended VMs of its toolchain and
//     instance in the registry: it re-opens the consoles of those alive,
//     destroys those past the limit, and deletes what dead ones left. It
//     spares every live VM's snapshot and namespace (of any agent) when it
//     cleans up strays.

// keptVM is a suspended VM the agent looks after: one it suspended (run
// set) or one it found at its start (run nil).
type keptVM struct {
	rec  vmrecord.Record
	run  *vmRun
	snap *snapshot       // to delete with it; nil: stray clean-up deletes it
	con  *console.Server // its console (for run, run.con)
	qmp  *qmp.Client     // the console's QMP connection, for one found at start
}

func (a *Agent) registry() vmrecord.Registry { return vmrecord.Registry{Dir: a.opts.Registry} }

// ours reports whether rec is a VM of this agent's toolchain and instance.
func (a *Agent) ours(rec vmrecord.Record) bool {
	return rec.Toolchain == a.opts.toolchain() && rec.Instance == a.opts.Instance
}

// consoleLink is the predictable console path of slot's VM.
func (a *Agent) consoleLink(slot int) string {
	if a.opts.Instances > 1 {
		return console.SlotLinkPath(a.opts.ConsoleLinks, a.opts.toolchain(), a.opts.Instance, slot+1)
	}
	return console.LinkPath(a.opts.ConsoleLinks, a.opts.toolchain(), a.opts.Instance)
}

// maxSocket is the longest path a unix socket may have (sun_path holds 108
// bytes with the terminating NUL).
const maxSocket = 107

// checkSockets says why the sockets of a VM in dir cannot be made.
func checkSockets(dir string) error {
	for _, name := range []string{console.SocketName, console.SerialSocketName, console.GuestSocketName, console.NotifySocketName, qemu.QMPSocketName} {
		if p := filepath.Join(dir, name); len(p) > maxSocket {
			return fmt.Errorf("vm directory %s: its socket %s is %d bytes, more than the %d a unix socket's path may have: use a shorter --tftp directory", dir, p, len(p), maxSocket)
		}
	}
	return nil
}

// startConsole starts the console of r's VM, which runs, and writes its
// record (state running). Called by Start.
func (r *vmRun) startConsole(ctx context.Context) error {
	a, s := r.a, r.s
	var links []string
	if l := a.consoleLink(s.slot); len(l) <= maxSocket {
		links = append(links, l)
	} else {
		a.log.Warn("no console link: its path is too long for a unix socket", "vm", s.name, "link", l)
	}
	con, err := console.StartVM(ctx, r.vm, a.log, links...)
	if err != nil {
		return fmt.Errorf("vm %s: %w", s.name, err)
	}
	r.con = con
	info := r.vm.Info()
	r.rec = vmrecord.Record{
		Name: s.name, Machine: s.machine, Toolchain: a.opts.toolchain(), Instance: a.opts.Instance, Task: s.task,
		State: vmrecord.Running, Since: time.Now().UTC(), PID: info.PID, AgentPID: os.Getpid(),
		Dir: info.Dir, TFTP: s.tftpDir, Snapshot: s.machineDir, QMP: info.QMPSocket, SerialLog: info.SerialLog,
		Serial: info.SerialSocket, Console: con.Socket(),
	}
	if r.ns != nil {
		r.rec.NetNS = r.ns.Name
	}
	if r.tap != nil {
		r.rec.Tap = r.tap.Name
	}
	if err := a.registry().Write(r.rec); err != nil {
		return err
	}
	r.recorded = true
	return nil
}

// closeConsole closes r's console and removes its record (the VM is
// being destroyed). Called by Close.
func (r *vmRun) closeConsole() {
	if r.con != nil {
		r.con.Close()
	}
	if r.recorded {
		if err := r.a.registry().Remove(r.rec.Name); err != nil {
			r.a.log.Warn("removing a VM's record", "vm", r.rec.Name, "err", err)
		}
	}
}

// keepSuspended keeps r, which Suspend paused and detached, for
// investigation with its snapshot snap: it records it (state suspended,
// why: r.why), says where it is in the log and to the admin, and enforces
// --suspend-max.
func (a *Agent) keepSuspended(r *vmRun, snap *snapshot) {
	why := "suspended"
	if r.why != nil {
		why = r.why.Error()
	}
	now := time.Now().UTC()
	r.rec.State, r.rec.Since, r.rec.Why = vmrecord.Suspended, now, why
	r.rec.Expires = now.Add(a.opts.SuspendLimit)
	if err := a.registry().Write(r.rec); err != nil {
		a.log.Error("recording a suspended VM", "vm", r.rec.Name, "err", err)
	}
	k := &keptVM{rec: r.rec, run: r, snap: snap, con: r.con}
	a.mu.Lock()
	a.kept[r.rec.Name] = k
	a.mu.Unlock()
	look := append(r.rec.Commands(), "buildfarm vm list")
	a.log.Error("VM suspended for investigation", "vm", r.rec.Name, "machine", r.rec.Machine, "task", r.rec.Task,
		"snapshot", snap.dir, "qmp", r.rec.QMP, "serial", r.rec.SerialLog, "console", r.rec.Console, "pid", r.rec.PID,
		"until", r.rec.Expires.Format(time.RFC3339), "look", strings.Join(look, "; "))
	if dropped := a.enforceSuspendMax(); dropped != "" {
		why += "\n\n" + dropped
	}
	a.notify(notify.Event{Kind: notify.Suspended, Machine: r.rec.Machine, Task: r.rec.Task,
		Why: fmt.Sprintf("VM %s: %s\n\nIt is kept until %s (--suspend-limit %v), or until halted.",
			r.rec.Name, why, r.rec.Expires.Format(time.RFC3339), a.opts.SuspendLimit),
		Look: look})
}

// enforceSuspendMax destroys the oldest suspended VMs of the host while
// there are more than --suspend-max, and says which.
func (a *Agent) enforceSuspendMax() string {
	recs, _ := a.registry().List() // oldest first
	var live []vmrecord.Record
	for _, rec := range recs {
		if rec.State == vmrecord.Suspended && rec.Alive() {
			live = append(live, rec)
		}
	}
	var destroyed []string
	for len(live) > a.opts.SuspendMax {
		rec := live[0]
		live = live[1:]
		a.log.Warn("too many suspended VMs: destroying the oldest", "vm", rec.Name, "since", rec.Since, "suspend-max", a.opts.SuspendMax)
		a.mu.Lock()
		k := a.kept[rec.Name]
		a.mu.Unlock()
		if k != nil && a.ours(rec) {
			a.destroy(context.Background(), k, "--suspend-max")
		} else {
			kill(rec) // its agent deletes the rest when it sees it gone
		}
		destroyed = append(destroyed, rec.Name)
	}
	if len(destroyed) == 0 {
		return ""
	}
	return fmt.Sprintf("This host keeps at most %d suspended VMs (--suspend-max), so the oldest were destroyed: %s.",
		a.opts.SuspendMax, strings.Join(destroyed, ", "))
}

// kill ends the QEMU of rec, if it is still that QEMU: QMP quit, then
// SIGKILL to its process group, and waits (up to 10 s) until it is gone.
func kill(rec vmrecord.Record) {
	if !rec.Alive() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	if c, err := qmp.Dial(ctx, rec.QMP); err == nil {
		c.Execute(ctx, "quit", nil)
		c.Close()
	}
	cancel()
	for i := 0; rec.Alive(); i++ {
		if i == 40 || i == 60 {
			syscall.Kill(-rec.PID, syscall.SIGKILL)
		}
		if i == 100 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// destroy ends a kept VM and deletes everything it kept: QEMU, console,
// network namespace, snapshot, TFTP directory and record.
func (a *Agent) destroy(ctx context.Context, k *keptVM, why string) {
	a.mu.Lock()
	delete(a.kept, k.rec.Name)
	a.mu.Unlock()
	ctx = context.WithoutCancel(ctx)
	if k.run != nil {
		k.run.kept.Store(false)
		k.run.Close(ctx) // QEMU, console, TFTP server, namespace, record
	} else {
		if k.con != nil {
			k.con.Close()
		}
		if k.qmp != nil {
			k.qmp.Close()
		}
		kill(k.rec)
		a.deleteLeftovers(ctx, k.rec)
	}
	if k.snap != nil && k.snap.delete != nil {
		if err := k.snap.delete(ctx); err != nil {
			a.log.Warn("deleting the snapshot of a suspended VM", "dir", k.snap.dir, "err", err)
		}
	} else if k.rec.Snapshot != "" && a.opts.FakeMachine == "" {
		keep, _ := a.liveFiles()
		if _, err := a.store().CleanStray(ctx, keep...); err != nil {
			a.log.Warn("deleting the snapshot of a suspended VM", "dir", k.rec.Snapshot, "err", err)
		}
	}
	if k.rec.TFTP != "" {
		os.RemoveAll(k.rec.TFTP)
	}
	a.registry().Remove(k.rec.Name)
	a.log.Info("suspended VM destroyed", "vm", k.rec.Name, "why", why)
}

// deleteLeftovers deletes the network namespace and TFTP directory of a
// VM whose QEMU is gone; the snapshot goes with the strays, and the record
// last.
func (a *Agent) deleteLeftovers(ctx context.Context, rec vmrecord.Record) {
	if rec.NetNS != "" {
		if _, err := os.Stat(filepath.Join(netns.Dir, rec.NetNS)); err == nil {
			if err := (&netns.NS{Name: rec.NetNS}).Delete(ctx); err != nil {
				a.log.Warn("deleting a dead VM's network namespace", "vm", rec.Name, "err", err)
			}
		}
	}
	if rec.Tap != "" {
		if err := (&tap.Tap{Name: rec.Tap}).Delete(); err != nil {
			a.log.Warn("deleting a dead VM's tap", "vm", rec.Name, "err", err)
		}
	}
	if rec.TFTP != "" {
		os.RemoveAll(rec.TFTP)
	}
}

// liveFiles returns the snapshots and network namespaces of the host's
// VMs that still run, by their records: what stray clean-up must spare.
func (a *Agent) liveFiles() (snaps, nses []string) {
	recs, err := a.registry().List()
	if err != nil {
		a.log.Warn("reading the VM registry", "dir", a.opts.Registry, "err", err)
	}
	for _, rec := range recs {
		if !rec.Alive() {
			continue
		}
		if rec.Snapshot != "" {
			snaps = append(snaps, rec.Snapshot)
		}
		if rec.NetNS != "" {
			nses = append(nses, rec.NetNS)
		}
	}
	return snaps, nses
}

// adoptSuspended is step 1 of Run for the registry: it finds this
// toolchain's and instance's VMs, keeps the suspended ones that run and
// are not past the limit (re-opening their consoles), destroys those past
// it, kills the running ones (their agent died), and deletes what dead
// ones left. It returns the TFTP directories to spare.
func (a *Agent) adoptSuspended(ctx context.Context) (spare []string) {
	recs, err := a.registry().List()
	if err != nil {
		a.log.Warn("reading the VM registry", "dir", a.opts.Registry, "err", err)
	}
	for _, rec := range recs {
		if !a.ours(rec) {
			continue
		}
		alive := rec.Alive()
		switch {
		case alive && rec.State == vmrecord.Suspended && time.Since(rec.Since) < a.opts.SuspendLimit:
			k := &keptVM{rec: rec}
			if err := a.reopenConsole(ctx, k); err != nil {
				a.log.Warn("suspended VM found without a console", "vm", rec.Name, "err", err)
			}
			a.mu.Lock()
			a.kept[rec.Name] = k
			a.mu.Unlock()
			spare = append(spare, rec.TFTP)
			a.log.Info("suspended VM found", "vm", rec.Name, "machine", rec.Machine, "task", rec.Task,
				"since", rec.Since, "why", firstLine(rec.Why), "console", rec.Console)
		case alive && rec.State == vmrecord.Suspended:
			a.destroy(ctx, &keptVM{rec: rec}, "--suspend-limit passed")
		case alive && rec.AgentPID != os.Getpid() && proc.Alive(rec.AgentPID):
			spare = append(spare, rec.TFTP) // another agent's (a second one of this instance?)
		default:
			if alive { // a running VM whose agent died
				kill(rec)
			}
			a.log.Info("deleting what a VM that is gone left", "vm", rec.Name, "state", rec.State)
			a.deleteLeftovers(ctx, rec)
			a.registry().Remove(rec.Name) // its snapshot is a stray now
		}
	}
	return spare
}

// reopenConsole starts the console of a suspended VM found at start.
func (a *Agent) reopenConsole(ctx context.Context, k *keptVM) error {
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := qmp.Dial(qctx, k.rec.QMP)
	if err != nil {
		return err
	}
	cfg := console.FromDir(k.rec.Name, k.rec.Dir, c)
	cfg.Log = a.log
	con, err := console.Start(qctx, cfg)
	if err != nil {
		c.Close()
		return err
	}
	k.con, k.qmp = con, c
	return nil
}

// watchKept destroys the kept VMs past --suspend-limit, and deletes what
// those halted by the admin left, every second until ctx ends.
func (a *Agent) watchKept(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		ks := make([]*keptVM, 0, len(a.kept))
		for _, k := range a.kept {
			ks = append(ks, k)
		}
		a.mu.Unlock()
		for _, k := range ks {
			switch {
			case !k.rec.Alive():
				a.destroy(ctx, k, "its QEMU is gone (halted)")
			case time.Since(k.rec.Since) >= a.opts.SuspendLimit:
				a.destroy(ctx, k, "--suspend-limit passed")
			}
		}
	}
}

// releaseKept lets the kept VMs go as the agent exits: their consoles
// close (the next agent re-opens them); the VMs stay.
func (a *Agent) releaseKept() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for name, k := range a.kept {
		if k.con != nil {
			k.con.Close()
		}
		if k.qmp != nil {
			k.qmp.Close()
		}
		if k.run != nil && k.run.vm != nil {
			k.run.vm.Release()
		}
		if k.snap != nil && k.snap.release != nil {
			k.snap.release() // the next agent spares it by its record
		}
		delete(a.kept, name)
		a.log.Info("suspended VM left running for investigation", "vm", name, "until", k.rec.Since.Add(a.opts.SuspendLimit).Format(time.RFC3339))
	}
}

// notify mails ev to the admin, with --smtp-relay and --admin-email.
func (a *Agent) notify(ev notify.Event) {
	if a.mail != nil {
		a.mail.Notify(ev)
	}
}

// notifyOnce mails ev unless an event of its kind about its machine went
// out before in this agent's life, for what enumeration finds again and
// again (a skipped machine, a failed bootstrap).
func (a *Agent) notifyOnce(ev notify.Event) {
	key := ev.Kind + "\x00" + ev.Machine
	a.mu.Lock()
	told := a.told[key]
	a.told[key] = true
	a.mu.Unlock()
	if !told {
		a.notify(ev)
	}
}

// runMailer runs the admin's mailer until stop is called, which waits
// for what is pending to be sent.
func (a *Agent) runMailer() (stop func()) {
	if a.mail == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.mail.Run(ctx)
	}()
	return func() { cancel(); <-done }
}

// NotifyCrash tells the admin, through m, that the agent instance of o
// ended abnormally (err; logTail is the end of its log) and was restarted:
// what a supervisor calls when it restarts a crashed agent.
func NotifyCrash(m *notify.Mailer, o Options, err error, logTail string) {
	why := fmt.Sprintf("agent %s instance %d ended: %v", o.toolchain(), o.Instance, err)
	if t := strings.TrimSpace(logTail); t != "" {
		why += "\n\nThe end of its log:\n" + t
	}
	m.Notify(notify.Event{Kind: notify.AgentCrashed, Why: why,
		Look: []string{"buildfarm vm list", "buildfarm doctor"}})
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
