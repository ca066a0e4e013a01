package agent

// Warm start: a task's VM restored from a saved state instead of booted.
//
// Each bootstrapped machine gets a warm machine, beside its bootstrapped
// copy in the machine's directory:
//
//	<name>/.<name>-<toolchain>.warm/       a snapshot of <name>-<toolchain>, its
//	                                       disk as the saved guest left it
//	<name>/.<name>-<toolchain>.warm.ram    the guest's memory (a sparse file)
//	<name>/.<name>-<toolchain>.warm.kernel the part of the kernel a
//	                                       restore reads (restoreKernel)
//	<name>/.<name>-<toolchain>.warm.state  the guest's devices
//	<name>/.<name>-<toolchain>.warm.key    what the state depends on (warmKey)
//
// The agent makes it after a bootstrap, and whenever it is missing at an
// enumeration: it boots a snapshot of the bootstrapped machine with the
// worker's buildfarm.start=wait (and warmKernelArgs), waits for the
// worker's first request (for worker.StartFile, which it never serves: the
// worker waits for its task), stops the guest and saves its state (a
// migration to a file, qemu.VM.SaveState) and forces QEMU down. Then it
// moves the memory out of the state (toRAMFile): QEMU restores that
// state once into the RAM file, mapped shared, and saves the devices
// alone (qemu.VM.SaveDevices). It keeps the snapshot as the warm
// machine. The key is written last: a warm machine without one is not
// there.
//
// A task then takes its snapshot of the warm machine, not of the
// bootstrapped one (the guest's memory holds that disk's mounted file
// system), and QEMU maps the RAM file copy on write and restores the
// devices (-incoming): the restore reads no memory, and the guest reads
// the pages it touches from the file as it goes, which its other tasks
// share in the page cache. (A state with the memory in it made QEMU
// read and write all of the guest's 512 MiB first: 0.3-1.5 s here, most
// of it the host kernel zeroing the fresh pages.) It does so in a fresh
// network namespace whose TFTP server listens on the port the state was
// saved with: from the guest's side, 10.0.2.2:PORT is where it was. From
// QEMU's start to the restored worker's first request the agent keeps
// the start file fresh, written again every startRefresh: the host's time
// and 64 random bytes. The worker sets the clock, adds the
// bytes to the kernel's random pool, credited, and reseeds the kernel's
// generator (RNDADDENTROPY, RNDRESEEDCRNG), then asks for its task as a
// cold-booted worker does. What stays the same in every VM restored from
// one state: the kernel's layout (KASLR was decided at the saved boot),
// the processes' address-space layouts and PIDs of init and the worker,
// the boot id and, with user networking, the MAC address of the machine
// and the guest's address 10.0.2.15 (every guest has that one,
// cold-booted or not, and the network remembers nothing: each VM has a
// namespace and a slirp of its own). None of these is a secret that a
// task could use against another: the VM is one-shot, reaches nothing
// but its agent's TFTP server, and no two tasks share it. On a bridge
// (--bridge, bridge.go) the network would remember: there the worker
// awaits its start on the guest channel instead, with its interface down
// from before the save, and each restored VM gets a fresh MAC and a new
// DHCP lease with its start, before it says anything on the network.
//
// The key (warmKey) holds the machine id, the toolchain id, the worker
// version, the QEMU program (path, size, modification time) and its
// version, the accelerator and CPU model, memory, CPUs, the TFTP port and
// the whole QEMU command line with its per-VM paths left out (so the
// device set too), and the state's and the RAM file's sizes with a hash
// of their ends. A task whose key does not match, whose state or RAM file
// is missing or changed,
// or whose restored worker does not ask for its start within warmStartup,
// boots cold; the agent logs why and deletes the warm machine, which the
// next enumeration builds again. A machine that is bootstrapped again
// (upgraded, or a new toolchain) loses its warm machine before the
// bootstrap, and a removed machine loses it with its directory.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/buildfarm/buildfarm/internal/machine"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/tftp"
	"github.com/buildfarm/buildfarm/internal/worker"
)

// --start values.
const (
	// StartAuto restores a task's VM when its machine has a valid warm
	// state, and boots it cold otherwise; states are built after each
	// bootstrap and when missing at an enumeration (not again for
	// warmRetry after a failed build).
	StartAuto = "auto"
	// StartWarm is StartAuto that also builds a missing state before a
	// task, and logs a cold boot as an error.
	StartWarm = "warm"
	// StartCold always boots; warm states are neither built nor used.
	StartCold = "cold"
)

// StartField is the result manifest field of our own that says how the
// task's VM started: warm (restored) or cold (booted).
const StartField = "buildfarm-start"

// warmStartup is a restored VM's time to its worker's first request: a
// restore takes well under a second, a boot several.
const warmStartup = 15 * time.Second

// warmKernelArgs are added to the kernel command line of the VM a warm
// state is saved from (and so to the key of the VMs restored from it):
// init_on_free=1 makes the guest's kernel zero each page it frees, from
// the start of its boot (the initrd once unpacked, the kernel's
// set-up), and QEMU leaves zero pages out of the state it saves first
// (the busybox machine's: 67 MB instead of 104-108), and so out of the
// RAM file that state is moved into (toRAMFile): their blocks are never
// written, and the file stays sparse (86-88 MiB on disk of 512 MiB).
// Cold boots do without: zeroing costs them and saves them nothing.
const warmKernelArgs = "init_on_free=1"

// warmRetry is how long StartAuto waits before building again a warm
// state whose build failed.
const warmRetry = 10 * time.Minute

// errWarmFailed means a warm start failed before the worker asked for its
// task: the task is run again in a cold-booted VM.
var errWarmFailed = errors.New("warm start failed")

// errWarmInvalid means the warm state does not fit the VM to start.
var errWarmInvalid = errors.New("warm state does not fit")

// warmFiles are the paths of a machine's warm state.
type warmFiles struct {
	dir, ram, kernel, state, key string
}

func (a *Agent) warmFilesOf(v *machine.Volume, name string) warmFiles {
	base := filepath.Join(v.Dir, name, "."+name+"-"+a.opts.toolchain()+".warm")
	return warmFiles{dir: base, ram: base + ".ram", kernel: base + ".kernel", state: base + ".state", key: base + ".key"}
}

// warmState is a machine's warm state as saved: its files and key.
type warmState struct {
	files warmFiles
	key   manifest.Manifest
}

// get returns the value of the key's field name.
func (w *warmState) get(name string) string {
	for _, p := range w.key {
		if p.Name == name {
			return p.Value
		}
	}
	return ""
}

// warmBuilds remembers failed builds of warm states, for warmRetry.
type warmBuilds struct {
	mu       sync.Mutex
	failed   map[string]time.Time // by state file
	versions map[string]string    // QEMU's --version by program file
}

// readWarm reads the key of m's warm state; nil when there is none.
func (a *Agent) readWarm(m *machineState) (*warmState, error) {
	f := a.warmFilesOf(m.volume, m.name)
	ms, err := manifest.ReadFile(f.key)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err == nil && ms.Len() != 1 {
		err = fmt.Errorf("%s: %d manifests, want 1", f.key, ms.Len())
	}
	if err != nil {
		return nil, err
	}
	return &warmState{files: f, key: ms.Manifest(0)}, nil
}

// warmStarts reports whether task VMs may start warm: not with --start
// cold, nor with --fake-build, which starts no VM.
func (a *Agent) warmStarts() bool { return a.opts.Start != StartCold && !a.opts.FakeBuild }

// warmFor returns the warm state to restore a task's VM of m from, or nil
// for a cold boot (--start cold or --fake-build, a machine without a disk
// of ours, no state). With --start warm a missing state is built first.
func (a *Agent) warmFor(ctx context.Context, slot int, m *machineState) *warmState {
	if !a.warmStarts() || m.fake || m.volume == nil {
		return nil
	}
	w, err := a.readWarm(m)
	if err != nil {
		a.log.Warn("warm state unreadable; cold boot, and the state will be built again", "machine", m.name, "err", err)
		a.dropWarm(ctx, m.volume, m.name, "unreadable key")
		return nil
	}
	if w == nil && a.opts.Start == StartWarm {
		a.enumMu.Lock()
		err := a.buildWarm(ctx, slot, m)
		a.enumMu.Unlock()
		if err != nil {
			a.log.Error("warm state not built; cold boot", "machine", m.name, "err", err)
			return nil
		}
		w, err = a.readWarm(m)
		if err != nil {
			a.log.Error("warm state unreadable; cold boot", "machine", m.name, "err", err)
			return nil
		}
	}
	if w == nil {
		a.log.Info("no warm state; cold boot", "machine", m.name)
	}
	return w
}

// ensureWarm builds the warm state of each of ms that has none (see
// StartAuto). The caller holds enumMu.
func (a *Agent) ensureWarm(ctx context.Context, slot int, ms []*machineState) {
	if !a.warmStarts() {
		return
	}
	for _, m := range ms {
		if m.fake || m.volume == nil || ctx.Err() != nil {
			continue
		}
		f := a.warmFilesOf(m.volume, m.name)
		if _, err := os.Stat(f.key); err == nil {
			continue
		}
		a.warm.mu.Lock()
		at, failed := a.warm.failed[f.state]
		a.warm.mu.Unlock()
		if failed && time.Since(at) < warmRetry && a.opts.Start == StartAuto {
			continue
		}
		if err := a.buildWarm(ctx, slot, m); err != nil {
			if ctx.Err() != nil {
				return
			}
			a.log.Error("warm state not built; its tasks boot cold", "machine", m.name, "err", err, "retry-in", warmRetry)
			a.warm.mu.Lock()
			if a.warm.failed == nil {
				a.warm.failed = map[string]time.Time{}
			}
			a.warm.failed[f.state] = time.Now()
			a.warm.mu.Unlock()
			continue
		}
		a.warm.mu.Lock()
		delete(a.warm.failed, f.state)
		a.warm.mu.Unlock()
	}
}

// buildWarm makes m's warm state (see the top of this file), replacing
// the one there is.
func (a *Agent) buildWarm(ctx context.Context, slot int, m *machineState) error {
	t0 := time.Now()
	f := a.warmFilesOf(m.volume, m.name)
	snap, err := m.volume.SnapshotForTask(ctx, m.name, a.opts.toolchain())
	if err != nil {
		return fmt.Errorf("warm state of %s: %w", m.name, err)
	}
	kept := false
	defer func() {
		if !kept {
			snap.Delete(context.WithoutCancel(ctx))
		}
	}()
	s := a.newSession(slot, snap.Dir, worker.ModeBuild)
	s.mac = m.mac
	defer os.RemoveAll(s.tftpDir)
	if err := s.prepare(); err != nil {
		return err
	}
	var key manifest.Manifest
	s.configure = func(ctx context.Context, cfg *qemu.Config) error {
		cfg.Append = strings.TrimSpace(cfg.Append + " " + a.startArg() + " " + warmKernelArgs)
		var err error
		key, err = a.warmKey(ctx, m, s.port, cfg)
		return err
	}
	a.log.Info("building warm state", "machine", m.name, "vm", s.name)
	r := a.newVMRun(s)
	defer r.Close(context.WithoutCancel(ctx))
	if err := r.Start(ctx); err != nil {
		return fmt.Errorf("warm state of %s: %w", m.name, err)
	}
	if err := r.waitFor(ctx, r.awaitingStart(), s.startup, ErrMisboot); err != nil {
		return fmt.Errorf("warm state of %s: the worker did not ask for its start: %w", m.name, err)
	}
	booted := time.Since(t0)
	whole, ram, devices := f.state+".whole.tmp", f.ram+".tmp", f.state+".tmp"
	for _, tmp := range []string{whole, ram, devices} {
		defer os.Remove(tmp)
	}
	if err := r.vm.SaveState(ctx, whole); err != nil {
		return fmt.Errorf("warm state of %s: %w", m.name, err)
	}
	if err := r.Close(ctx); err != nil {
		return fmt.Errorf("warm state of %s: %w", m.name, err)
	}
	wholeSize, err := fileSize(whole)
	if err != nil {
		return fmt.Errorf("warm state of %s: %w", m.name, err)
	}
	if err := a.toRAMFile(ctx, s, whole, ram, devices); err != nil {
		return fmt.Errorf("warm state of %s: %w", m.name, err)
	}
	os.Remove(whole)
	size, sample, err := stateSample(devices, "state file")
	if err != nil {
		return fmt.Errorf("warm state of %s: %w", m.name, err)
	}
	ramSize, ramSample, err := stateSample(ram, "RAM file")
	if err != nil {
		return fmt.Errorf("warm state of %s: %w", m.name, err)
	}
	key = append(key, manifest.Pair{Name: "state-size", Value: strconv.FormatInt(size, 10)},
		manifest.Pair{Name: "state-sample", Value: sample},
		manifest.Pair{Name: "ram-size", Value: strconv.FormatInt(ramSize, 10)},
		manifest.Pair{Name: "ram-sample", Value: ramSample})
	a.dropWarm(ctx, m.volume, m.name, "")
	kept = true
	if err := snap.Keep(f.dir); err != nil {
		return fmt.Errorf("warm state of %s: %w", m.name, err)
	}
	if err := os.Rename(ram, f.ram); err != nil {
		return fmt.Errorf("warm state of %s: %w", m.name, err)
	}
	if err := os.Rename(devices, f.state); err != nil {
		return fmt.Errorf("warm state of %s: %w", m.name, err)
	}
	if err := restoreKernel(filepath.Join(f.dir, "kernel"), f.kernel); err != nil {
		return fmt.Errorf("warm state of %s: %w", m.name, err)
	}
	if err := manifest.WriteFile(f.key+".tmp", []manifest.Manifest{key}); err != nil {
		return fmt.Errorf("warm state of %s: %w", m.name, err)
	}
	if err := os.Rename(f.key+".tmp", f.key); err != nil {
		return fmt.Errorf("warm state of %s: %w", m.name, err)
	}
	a.log.Info("warm state built", "machine", m.name, "state", f.state, "KiB", size>>10,
		"ram-file", f.ram, "ram-MiB-on-disk", diskUsage(f.ram)>>20, "whole-state-MiB", wholeSize>>20,
		"boot", booted.Round(time.Millisecond), "took", time.Since(t0).Round(time.Millisecond))
	return nil
}

// toRAMFile restores the whole state (memory and devices) in session s's
// VM into ram, a new RAM file mapped shared, and saves the devices alone
// to devices (qemu.VM.SaveDevices): ram and devices are then the state of
// the same guest, which a VM with ram mapped copy on write restores. The
// guest runs for the moment between the restore and the save.
func (a *Agent) toRAMFile(ctx context.Context, s *session, whole, ram, devices string) error {
	if err := os.Remove(ram); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.RemoveAll(filepath.Join(s.tftpDir, "vm")); err != nil { // the saved VM's
		return err
	}
	configure := s.configure
	s.configure = func(ctx context.Context, cfg *qemu.Config) error {
		if err := configure(ctx, cfg); err != nil {
			return err
		}
		cfg.RAMFile, cfg.RAMShared = ram, true
		var err error
		cfg.Incoming, err = qemu.IncomingFile(whole)
		return err
	}
	s.resaving = true
	defer func() { s.configure, s.resaving = configure, false }()
	var ends []net.Conn // closed after QEMU is gone: deferred before r.Close
	defer func() {
		for _, c := range ends {
			c.Close()
		}
	}()
	r := a.newVMRun(s)
	defer r.Close(context.WithoutCancel(ctx))
	if err := r.Start(ctx); err != nil {
		return err
	}
	// Each virtio-serial port has a host end for the whole move, as the
	// saved VM's had (its console's), read and thrown away: the restored
	// guests then find their ports connected, and nothing connects, leaves
	// or unblocks a port after the devices' save (see session.resaving).
	for _, p := range r.vm.Info().Ports {
		c, err := net.Dial("unix", p.Socket)
		if err != nil {
			return fmt.Errorf("restoring into the RAM file: port %s: %w", p.Name, err)
		}
		ends = append(ends, c)
		go io.Copy(io.Discard, c)
	}
	ctx, cancel := context.WithTimeout(ctx, warmStartup)
	defer cancel()
	for {
		st, err := r.vm.Status(ctx)
		if err != nil {
			return fmt.Errorf("restoring into the RAM file: %w", err)
		}
		if st == "running" {
			break
		}
		if st != "inmigrate" {
			return fmt.Errorf("restoring into the RAM file: the VM is %s, not running", st)
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("restoring into the RAM file: %w", ctx.Err())
		}
	}
	if err := r.vm.SaveDevices(ctx, devices); err != nil {
		return err
	}
	return r.Close(ctx)
}

// restoreKernel writes to out the part of a Linux kernel that QEMU
// reads when it restores a guest, or nothing for a kernel of another
// kind (whose restores read it whole). A restored guest never boots its
// kernel, but QEMU (7.2) still reads the -kernel file whole: the busybox
// machine's bzImage is 14 MB (3,300 page faults and 60-70 ms of its
// start here), for the option ROM the saved VM had, linuxboot_dma.bin (a
// RAM block the state holds); aarch64's Image is 27 MB, for a ROM blob
// that a restore never copies into the guest. The part: a bzImage's boot
// protocol header and setup code; an arm64 Image's first 4 KiB, whose
// header gives QEMU the kernel's load offset and size (image_size), and
// so the same places for the initrd and the device tree as the whole
// Image.
func restoreKernel(kernel, out string) error {
	f, err := os.Open(kernel)
	if err != nil {
		return err
	}
	defer f.Close()
	head := make([]byte, 0x210)
	n, err := io.ReadFull(f, head)
	switch {
	case err == nil && string(head[0x202:0x206]) == "HdrS":
		sects := int(head[0x1f1])
		if sects == 0 {
			sects = 4
		}
		part := make([]byte, (sects+1)*512)
		if _, err := f.ReadAt(part, 0); err != nil {
			return fmt.Errorf("%s: %w", kernel, err)
		}
		return writeFileAtomic(out, part)
	case n >= 64 && string(head[56:60]) == "ARM\x64" && binary.LittleEndian.Uint64(head[16:24]) != 0:
		part := make([]byte, 4096)
		n, err := f.ReadAt(part, 0)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("%s: %w", kernel, err)
		}
		return writeFileAtomic(out, part[:n])
	}
	return nil
}

// fileSize returns the size of file.
func fileSize(file string) (int64, error) {
	fi, err := os.Stat(file)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// diskUsage returns the bytes file takes on disk (a sparse file's
// holes take none), or 0.
func diskUsage(file string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(file, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}

// dropWarm deletes machine name's warm state in v, saying why (unless
// why is empty), key first.
func (a *Agent) dropWarm(ctx context.Context, v *machine.Volume, name, why string) {
	f := a.warmFilesOf(v, name)
	_, err := os.Lstat(f.key)
	had := err == nil
	if err := os.Remove(f.key); err != nil && !errors.Is(err, fs.ErrNotExist) {
		a.log.Warn("deleting warm state", "file", f.key, "err", err)
	}
	for _, file := range []string{f.state, f.ram, f.kernel} {
		if err := os.Remove(file); err != nil && !errors.Is(err, fs.ErrNotExist) {
			a.log.Warn("deleting warm state", "file", file, "err", err)
		}
	}
	if err := v.DeleteKept(context.WithoutCancel(ctx), f.dir); err != nil {
		a.log.Warn("deleting warm machine", "dir", f.dir, "err", err)
	}
	if had && why != "" {
		a.log.Info("warm state deleted", "machine", name, "why", why)
	}
}

// taskSnapshot is the task's snapshot of m: of its warm machine for a warm
// start, of its bootstrapped machine otherwise.
func (a *Agent) taskSnapshot(ctx context.Context, m *machineState, w *warmState) (*snapshot, error) {
	if w == nil {
		return a.snapshotForTask(ctx, m)
	}
	s, err := m.volume.SnapshotOf(ctx, m.name, a.opts.toolchain(), w.files.dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errWarmFailed, err)
	}
	a.log.Info("task snapshot of the warm machine", "dir", s.Dir, "how", s.Method)
	return &snapshot{dir: s.Dir, delete: s.Delete}, nil
}

// warmSession makes s restore w, machine m's state: the state's TFTP port (in a namespace of
// its own the port is free), the short startup deadline, the check of the
// key against the VM about to start, -incoming, and the start file
// kept fresh until the restored worker's first request (keepStartFresh).
func (a *Agent) warmSession(s *session, m *machineState, w *warmState) {
	if p, err := strconv.Atoi(w.get("tftp-port")); err == nil && !a.opts.NoNetNS && a.opts.Bridge == "" {
		s.port = p
	}
	s.startup = min(s.startup, warmStartup)
	// The saved key names a QEMU program (path, size, time) and its
	// version: that program, unchanged, need not be asked again.
	a.knownQEMUVersion(w.get("qemu"), w.get("qemu-version"))
	var t0 time.Time
	var once sync.Once
	asked := make(chan struct{})
	s.configure = func(ctx context.Context, cfg *qemu.Config) error {
		cfg.Append = strings.TrimSpace(cfg.Append + " " + a.startArg() + " " + warmKernelArgs)
		key, err := a.warmKey(ctx, m, s.port, cfg)
		if err != nil {
			return err
		}
		if err := w.check(key); err != nil {
			return err
		}
		cfg.RAMFile, cfg.RAMShared, cfg.IncomingDevices = w.files.ram, false, true
		if _, err := os.Stat(w.files.kernel); err == nil {
			cfg.Kernel = w.files.kernel
		}
		if cfg.Incoming, err = qemu.IncomingFile(w.files.state); err != nil {
			return err
		}
		t0 = time.Now()
		if a.opts.Bridge == "" {
			go a.keepStartFresh(s, asked)
		}
		return nil
	}
	if a.opts.Bridge != "" {
		return // the start goes over the guest channel (bridge.go)
	}
	s.onRequest = func(tftp.Request) {
		once.Do(func() {
			close(asked)
			a.log.Info("VM restored: the worker asked for its start", "vm", s.name, "after", time.Since(t0).Round(time.Millisecond))
		})
	}
}

// startRefresh is how often keepStartFresh writes the start file again:
// the time a restored worker sets its clock to is at most that old when
// the worker asks for it (and then the transfer's time).
const startRefresh = 20 * time.Millisecond

// keepStartFresh writes s's start file, and again every startRefresh,
// until asked is closed (the restored worker's first request, which so
// gets its start at once instead of asking again) or warmStartup passes.
// It stops quietly when the session's directory is gone (a restore that
// failed).
func (a *Agent) keepStartFresh(s *session, asked <-chan struct{}) {
	tick := time.NewTicker(startRefresh)
	defer tick.Stop()
	deadline := time.NewTimer(warmStartup)
	defer deadline.Stop()
	for {
		if err := writeStart(s.getDir()); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				a.log.Debug("start file not written: the session is over", "vm", s.name)
			} else {
				a.log.Error("start file not written", "vm", s.name, "err", err)
			}
			return
		}
		select {
		case <-asked:
			return
		case <-deadline.C:
			return
		case <-tick.C:
		}
	}
}

// check compares the key of the VM about to start with the saved one,
// field by field, and checks the state and RAM files against their sizes
// and samples.
func (w *warmState) check(now manifest.Manifest) error {
	for _, p := range now {
		if saved := w.get(p.Name); saved != p.Value {
			return fmt.Errorf("%w: %s is %q now, the state was saved with %q", errWarmInvalid, p.Name, p.Value, saved)
		}
	}
	for _, f := range []struct{ what, path, field string }{
		{"state file", w.files.state, "state"},
		{"RAM file", w.files.ram, "ram"},
	} {
		size, sample, err := stateSample(f.path, f.what)
		if err != nil {
			return fmt.Errorf("%w: %w", errWarmInvalid, err)
		}
		if s := strconv.FormatInt(size, 10); s != w.get(f.field+"-size") || sample != w.get(f.field+"-sample") {
			return fmt.Errorf("%w: %s %s changed since it was saved (size %s, saved %s; or its contents): corrupt", errWarmInvalid, f.what, f.path, s, w.get(f.field+"-size"))
		}
	}
	return nil
}

// restoreFailed reports whether a warm VM's boot error means the restore
// failed before the worker asked for its task: it did not start, or made
// no request in time.
func restoreFailed(err error) bool {
	return errors.Is(err, ErrMisboot) || !errors.Is(err, ErrTimeout) && !errors.Is(err, ErrNoResult)
}

// warmFailed logs why a warm start failed and deletes the state, which
// the next enumeration builds again.
func (a *Agent) warmFailed(ctx context.Context, m *machineState, w *warmState, err error) {
	log := a.log.Warn
	if a.opts.Start == StartWarm {
		log = a.log.Error
	}
	log("warm start failed; booting cold, and the warm state will be built again", "machine", m.name, "why", err)
	a.dropWarm(ctx, m.volume, m.name, "warm start failed")
}

// startedHow says how a VM restored from w (nil: booted) started: warm or
// cold.
func startedHow(w *warmState) string {
	if w != nil {
		return StartWarm
	}
	return StartCold
}

// setStarted records in res how its VM started (StartField).
func setStarted(res *manifest.Result, w *warmState) { res.Start = startedHow(w) }

// writeStart writes the worker's start file into dir (get/): the host's
// time and random bytes, renamed into place whole.
func writeStart(dir string) error {
	s := &worker.Start{Random: make([]byte, 64)}
	if _, err := rand.Read(s.Random); err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+worker.StartFile+".tmp")
	s.Time = time.Now()
	if err := manifest.WriteFile(tmp, []manifest.Manifest{s.Manifest()}); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, worker.StartFile))
}

// stateSample returns the size of a state or RAM file (what) and a hash
// of its size, first and last 64 KiB: a check cheap enough for every task
// that still notices a truncated, replaced or scribbled-over file.
// (Damage in the middle shows as a restore that fails or does not reach
// the worker.)
func stateSample(path, what string) (int64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, "", fmt.Errorf("%s: %w", what, err)
	}
	const n = 64 << 10
	h := sha256.New()
	fmt.Fprintf(h, "%d\n", fi.Size())
	if _, err := io.CopyN(h, f, n); err != nil && err != io.EOF {
		return 0, "", fmt.Errorf("%s %s: %w", what, path, err)
	}
	if fi.Size() > 2*n {
		if _, err := io.Copy(h, io.NewSectionReader(f, fi.Size()-n, n)); err != nil {
			return 0, "", fmt.Errorf("%s %s: %w", what, path, err)
		}
	}
	return fi.Size(), hex.EncodeToString(h.Sum(nil)[:16]), nil
}

// warmKey is what a state saved from (or restored into) the VM of cfg
// depends on, for machine m with the TFTP server on port.
func (a *Agent) warmKey(ctx context.Context, m *machineState, port int, cfg *qemu.Config) (manifest.Manifest, error) {
	prog, err := exec.LookPath(cfg.Program())
	if err != nil {
		return nil, fmt.Errorf("warm state: %w", err)
	}
	fi, err := os.Stat(prog)
	if err != nil {
		return nil, fmt.Errorf("warm state: %w", err)
	}
	qemuID := fmt.Sprintf("%s %d %d", prog, fi.Size(), fi.ModTime().UnixNano())
	version, err := a.qemuVersion(ctx, prog, qemuID)
	if err != nil {
		return nil, err
	}
	args, err := normalArgs(cfg)
	if err != nil {
		return nil, err
	}
	cpu := cpuOf(args)
	if cfg.Accel == qemu.KVM {
		cpu += " " + hostCPU()
	}
	return manifest.Manifest{
		{Name: "", Value: "1"},
		{Name: "machine", Value: m.name},
		{Name: "machine-id", Value: m.machine.ID},
		{Name: "toolchain-id", Value: a.want().ToolchainID},
		{Name: "worker-version", Value: strconv.Itoa(worker.Version)},
		{Name: "qemu", Value: qemuID},
		{Name: "qemu-version", Value: version},
		{Name: "accel", Value: cfg.Accel},
		{Name: "cpu", Value: cpu},
		{Name: "memory", Value: strconv.Itoa(cfg.MemoryMB)},
		{Name: "cpus", Value: strconv.Itoa(cfg.CPUs)},
		{Name: "tftp-port", Value: a.keyPort(port)},
		{Name: "qemu-args", Value: strings.Join(args, " ")},
	}, nil
}

// knownQEMUVersion records version as that of the QEMU program file id
// (path, size and time), unless one is known already.
func (a *Agent) knownQEMUVersion(id, version string) {
	if id == "" || version == "" {
		return
	}
	a.warm.mu.Lock()
	defer a.warm.mu.Unlock()
	if a.warm.versions == nil {
		a.warm.versions = map[string]string{}
	}
	if _, ok := a.warm.versions[id]; !ok {
		a.warm.versions[id] = version
	}
}

// qemuVersion returns the first line of prog --version, asked once per
// program file (id: path, size and time).
func (a *Agent) qemuVersion(ctx context.Context, prog, id string) (string, error) {
	a.warm.mu.Lock()
	v, ok := a.warm.versions[id]
	a.warm.mu.Unlock()
	if ok {
		return v, nil
	}
	out, err := proc.Output(ctx, prog, "--version")
	if err != nil {
		return "", fmt.Errorf("warm state: %s --version: %w", prog, err)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	v = strings.TrimSpace(line)
	a.knownQEMUVersion(id, v)
	return v, nil
}

// normalArgs is QEMU's command line for cfg without the program and the
// paths that differ from VM to VM (snapshot, sockets, logs, namespace,
// state): what the saved and the restored VM must agree on.
func normalArgs(cfg *qemu.Config) ([]string, error) {
	c := *cfg
	c.Name, c.Binary, c.Incoming, c.IncomingDevices = "", "", "", false
	if strings.HasSuffix(c.Kernel, ".warm.kernel") { // restoreKernel's
		c.Kernel = "kernel"
	}
	// Every warm VM is restored with its memory in a RAM file, mapped
	// copy on write; the one a state is saved from boots without.
	c.RAMFile, c.RAMShared = "RAM", false
	if c.Kernel != "" {
		c.Kernel = filepath.Base(c.Kernel)
	}
	if c.Initrd != "" {
		c.Initrd = filepath.Base(c.Initrd)
	}
	c.Drives = append([]qemu.Drive(nil), cfg.Drives...)
	for i := range c.Drives {
		c.Drives[i].Path = filepath.Base(c.Drives[i].Path)
	}
	c.Ports = append([]qemu.Port(nil), cfg.Ports...)
	for i := range c.Ports {
		c.Ports[i].Socket = "PORT-" + c.Ports[i].Name
	}
	c.SerialLog, c.QMPSocket = "SERIAL", "QMP"
	if c.SerialSocket != "" {
		c.SerialSocket = "SERIAL-SOCKET"
	}
	if c.VNC != "" {
		c.VNC = "VNC"
	}
	if c.NetNS != "" {
		c.NetNS = "NETNS"
	}
	normalNet(&c)
	args, err := c.Args()
	if err != nil {
		return nil, fmt.Errorf("warm state: %w", err)
	}
	return args[1:], nil
}

// cpuOf returns the -cpu of args, or "default".
func cpuOf(args []string) string {
	for i, a := range args {
		if a == "-cpu" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return "default"
}

// hostCPU returns the host CPU's model name (what -cpu host gives a KVM
// guest).
func hostCPU() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// WarmState is a machine's warm state for a toolchain, as `machine list`
// reports it.
type WarmState struct {
	Toolchain string
	Bytes     int64 // what its state and RAM files take on disk
}

// WarmStates returns the warm states of machine name in volume directory
// dir, by toolchain.
func WarmStates(dir, name string) []WarmState {
	files, _ := filepath.Glob(filepath.Join(dir, name, "."+name+"-*.warm.state"))
	var out []WarmState
	for _, f := range files {
		tc := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), "."+name+"-"), ".warm.state")
		if machine.CheckToolchain(tc) != nil {
			continue
		}
		base := strings.TrimSuffix(f, ".state")
		if _, err := os.Stat(base + ".key"); err != nil {
			continue // being built or dropped
		}
		out = append(out, WarmState{Toolchain: tc, Bytes: diskUsage(f) + diskUsage(base+".ram")})
	}
	return out
}
