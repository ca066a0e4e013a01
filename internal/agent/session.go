package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/tftp"
	"github.com/buildfarm/buildfarm/internal/worker"
)

// A session is one VM's run: a machine directory to boot, a TFTP directory
// with get/ (what the guest may read) and put/ (where its uploads land),
// the mode the worker runs in, the file whose upload ends the job, and the
// three deadlines.
type session struct {
	name       string // the VM's name, for logs and errors
	machineDir string // the snapshot to boot
	tftpDir    string // holds get/ and put/
	mode       string // worker mode: build or bootstrap
	want       string // the upload that ends the job
	key        string // the result key of a build (uploads.go)
	wantTaken  atomic.Bool
	startup    time.Duration
	timeout    time.Duration
	shutdown   time.Duration
	mac        string
	port       int // the TFTP server's port

	slot    int
	machine string // for the VM's record: its machine
	task    string // and its task (NAME/VERSION, or bootstrap)

	// For a warm start (warm.go): configure adjusts the VM's configuration
	// before it starts (an error fails the start), and onRequest sees each
	// TFTP request.
	configure func(context.Context, *qemu.Config) error
	onRequest func(tftp.Request)
	// resaving marks the VM of the whole state's move into a RAM file
	// (toRAMFile), restored only to have its devices saved again. It is
	// not given its start on a bridge (its worker must still await it
	// when the devices are saved) and it gets no console, whose ports
	// connect whenever it gets to them: a host end connecting to or
	// leaving a virtio-serial port has QEMU write a control message into
	// the guest's memory, even in a stopped VM, and one after the
	// devices' save would change the shared RAM file behind the saved
	// devices. toRAMFile holds the ports' host ends itself, from before
	// the save until QEMU is gone.
	resaving bool

	progressLog logLimiter // of the progress reports logged (uploads.go)

	opMu  sync.Mutex
	opSeq int    // the sequence of the progress report that named op
	op    string // the operation the worker last reported started
}

// newSession returns the session of a VM in slot (from 0, one of
// --instances) booting machineDir in mode, with the mode's deadlines. Its
// TFTP directory is <tftp>/<instance>/<slot>-<machineDir's name>, the
// instance numbered host-wide (Options.hostInstance): the snapshot's name
// is unique (the machine store gives each a random suffix and a lock),
// and the slot says whose VM it is. Its TFTP port is --tftp-port plus the
// host-wide instance number plus 1000 for each slot, which matters only
// when VMs share the host's network (--no-netns).
func (a *Agent) newSession(slot int, machineDir string, mode worker.Mode) *session {
	base := filepath.Base(machineDir)
	s := &session{
		name:       fmt.Sprintf("%d-%s", slot, base),
		machineDir: machineDir,
		tftpDir:    filepath.Join(a.instanceDir(), fmt.Sprintf("%d-%s", slot, base)),
		mode:       string(mode),
		shutdown:   a.opts.ShutdownTimeout,
		port:       a.opts.SlotPort(slot),
		slot:       slot,
	}
	if mode == worker.ModeBootstrap {
		s.want, s.startup, s.timeout = worker.BootstrapFile, a.opts.BootstrapStartup, a.opts.BootstrapTimeout
	} else {
		s.startup, s.timeout = a.opts.BuildStartup, a.opts.BuildTimeout
		if err := s.newResultKey(); err != nil {
			// Never a result then: the build ends abnormally, saying so.
			a.log.Error("no result key for a build", "vm", s.name, "err", err)
		}
	}
	return s
}

// instanceDir is this agent instance's TFTP directory, <tftp>/<instance>.
func (a *Agent) instanceDir() string {
	return filepath.Join(a.opts.TFTP, fmt.Sprint(a.opts.hostInstance()))
}

// Errors of a session, for decisions with errors.Is.
var (
	// ErrMisboot means the VM made no TFTP request before the startup
	// deadline: it did not boot, and may be retried.
	ErrMisboot = errors.New("no TFTP request before the startup deadline (mis-boot)")
	// ErrTimeout means the job did not finish before its deadline; the VM
	// was suspended for investigation.
	ErrTimeout = errors.New("deadline passed before the result was uploaded")
	// ErrNoResult means the guest stopped without uploading its result.
	ErrNoResult = errors.New("guest stopped without uploading its result")
)

func (s *session) getDir() string { return filepath.Join(s.tftpDir, "get") }
func (s *session) putDir() string { return filepath.Join(s.tftpDir, "put") }

// prepare makes the session's TFTP directory afresh.
func (s *session) prepare() error {
	if err := os.RemoveAll(s.tftpDir); err != nil {
		return fmt.Errorf("tftp directory %s: %w", s.tftpDir, err)
	}
	for _, d := range []string{s.getDir(), s.putDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("tftp directory %s: %w", d, err)
		}
	}
	return nil
}

// started records that the worker's progress report seq said step
// started; later reports win.
func (s *session) started(seq int, step string) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if seq > s.opSeq {
		s.opSeq, s.op = seq, step
	}
}

// running is the step the worker last reported started, or "".
func (s *session) running() string {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	return s.op
}

// abnormalEnd is the error of a build that ended abnormally while the
// worker was running operation op (or before any, op "").
type abnormalEnd struct {
	op  string
	err error
}

func (e *abnormalEnd) Error() string { return e.err.Error() }
func (e *abnormalEnd) Unwrap() error { return e.err }

// abnormal wraps err, the abnormal end of s's build, with the operation
// that was running.
func (s *session) abnormal(err error) error {
	if err == nil {
		return nil
	}
	return &abnormalEnd{op: s.running(), err: err}
}
