package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/buildfarm/buildfarm/internal/accel"
	"github.com/buildfarm/buildfarm/internal/archive"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/worker"
)

// Agent is one agent instance.
type Agent struct {
	opts Options
	log  *slog.Logger
	out  io.Writer // where --dump-* print

	accelOnce sync.Once
	accel     string
	accelErr  error

	mu        sync.Mutex
	suspended []*running // VMs kept for investigation until the agent exits
}

// New returns an agent with opts, logging to log, dumping to out.
func New(opts Options, log *slog.Logger, out io.Writer) (*Agent, error) {
	if err := opts.Check(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Agent{opts: opts, log: log.With("agent", opts.Instance), out: out}, nil
}

// Run runs the agent until ctx ends (SIGTERM), or until it has done what a
// --dump-* or --fake-request option asks. Cancellation is a clean stop, not
// an error: the running VM is stopped and its snapshot deleted first.
func (a *Agent) Run(ctx context.Context, controllers []string) error {
	defer a.releaseSuspended()
	// 1. Clean up what a crashed predecessor left.
	if err := a.cleanup(ctx); err != nil {
		return err
	}
	// 2. Enumerate (and bootstrap) the machines.
	ms, err := a.machines(ctx)
	if err != nil {
		return err
	}
	if a.opts.DumpMachines {
		return a.dump(headers(ms)...)
	}
	// 3-5. Tasks: the fake request, or the controllers' until stopped.
	if a.opts.FakeRequest != "" {
		task, srcDir, err := ReadTaskFile(a.opts.FakeRequest)
		if err != nil {
			return err
		}
		if a.opts.DumpTask {
			return a.dump(task.Manifest())
		}
		res, err := a.perform(ctx, ms, task, srcDir)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if a.opts.DumpResult {
			return a.dump(res.Manifest())
		}
		a.log.Info("task done", "name", task.Name, "status", res.Status.String())
		return nil
	}
	if len(controllers) == 0 {
		return errors.New("no controller URL and no --fake-request: nothing to do (see --help)")
	}
	return a.serveControllers(ctx, controllers, ms)
}

func (a *Agent) dump(ms ...manifest.Manifest) error {
	var b bytes.Buffer
	if err := manifest.Serialize(&b, ms); err != nil {
		return err
	}
	_, err := a.out.Write(b.Bytes())
	return err
}

// ReadTaskFile reads a task manifest file (strictly, one task) and returns
// it with the directory holding it, which is the task's sources.
func ReadTaskFile(path string) (*manifest.Task, string, error) {
	ms, err := manifest.ReadFile(path)
	if err != nil {
		return nil, "", err
	}
	if len(ms) != 1 {
		return nil, "", fmt.Errorf("%s: %d manifests, want one task manifest", path, len(ms))
	}
	task, err := manifest.ParseTask(ms[0], path, manifest.Strict)
	if err != nil {
		return nil, "", err
	}
	return task, filepath.Dir(path), nil
}

// uploaded is called for each file the guest uploads: progress is logged.
func (a *Agent) uploaded(s *session, name string) {
	name = strings.TrimPrefix(name, "/")
	if name != worker.ProgressFile {
		a.log.Debug("guest uploaded", "vm", s.name, "file", name)
		return
	}
	ms, err := manifest.ReadFile(filepath.Join(s.putDir(), name))
	if err != nil || len(ms) == 0 {
		return
	}
	args := []any{"vm", s.name}
	for _, p := range ms[0][1:] {
		if p.Name != "sequence" {
			args = append(args, p.Name, p.Value)
		}
	}
	a.log.Info("guest", args...)
}

// perform runs task in a snapshot of the machine it names and returns the
// result. A task for a machine the agent does not have is an error and
// starts no VM.
func (a *Agent) perform(ctx context.Context, ms []*machineState, task *manifest.Task, srcDir string) (*manifest.Result, error) {
	// 1. Find the machine the task names among ours.
	// 2. With --fake-build, answer abort without a VM.
	// 3. Snapshot the bootstrapped machine; fill get/ with the task and
	//    its sources.
	// 4. Boot, retrying mis-boots; parse the result.
	// 5. Abnormal ends keep the VM suspended (and its snapshot); others
	//    force it down and delete the snapshot.
	m := findMachine(ms, task.Machine)
	if m == nil {
		return nil, fmt.Errorf("task %s %s: no machine %q here (have: %s)", task.Name, task.Version, task.Machine, machineNames(ms))
	}
	if a.opts.FakeBuild {
		return abortResult(task, "fake build: no VM was started\n"), nil
	}
	var lastErr error
	for attempt := 0; attempt <= a.opts.BuildRetries; attempt++ {
		res, err := a.performOnce(ctx, m, task, srcDir, attempt == a.opts.BuildRetries)
		if err == nil {
			return res, nil
		}
		lastErr = err
		if !errors.Is(err, ErrMisboot) || ctx.Err() != nil || attempt == a.opts.BuildRetries {
			break
		}
		a.log.Warn("build VM mis-booted; retrying", "machine", m.name, "attempt", attempt+1, "err", err)
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	a.log.Error("build ended abnormally", "machine", m.name, "err", lastErr)
	return abnormalResult(task, lastErr), nil
}

func (a *Agent) performOnce(ctx context.Context, m *machineState, task *manifest.Task, srcDir string, last bool) (*manifest.Result, error) {
	snap, err := a.snapshotForTask(ctx, m)
	if err != nil {
		return nil, err
	}
	s := &session{
		name:       filepath.Base(snap.dir),
		machineDir: snap.dir,
		tftpDir:    filepath.Join(a.opts.TFTP, fmt.Sprintf("%d", a.opts.Instance), filepath.Base(snap.dir)),
		mode:       string(worker.ModeBuild),
		want:       worker.ResultFile,
		startup:    a.opts.BuildStartup,
		timeout:    a.opts.BuildTimeout,
		shutdown:   a.opts.ShutdownTimeout,
		mac:        m.mac,
	}
	keep := false
	defer func() {
		if !keep {
			snap.delete(context.WithoutCancel(ctx))
			os.RemoveAll(s.tftpDir)
		}
	}()
	if err := s.prepare(); err != nil {
		return nil, err
	}
	if err := WriteTask(s.getDir(), task, srcDir); err != nil {
		return nil, err
	}
	r, err := a.boot(ctx, s, last)
	if err != nil {
		if r != nil { // suspended for investigation
			keep = true
			a.keepSuspended(r, snap)
		}
		return nil, err
	}
	res, perr := readResult(filepath.Join(s.putDir(), worker.ResultFile), task)
	if perr == nil && res.Status == manifest.StatusAbnormal {
		perr = fmt.Errorf("worker reported an abnormal end")
	}
	if perr != nil {
		if serr := r.vm.Suspend(context.WithoutCancel(ctx)); serr == nil {
			keep = true
			a.keepSuspended(r, snap)
		} else {
			a.shutdown(ctx, r)
		}
		return nil, fmt.Errorf("vm %s: %w", s.name, perr)
	}
	a.shutdown(ctx, r)
	a.keepArtifacts(s, task)
	return res, nil
}

// keepArtifacts moves the artifacts the worker uploaded into
// --artifacts/NAME-VERSION/, or just logs them without --artifacts.
func (a *Agent) keepArtifacts(s *session, task *manifest.Task) {
	files, _ := filepath.Glob(filepath.Join(s.putDir(), worker.ArtifactPrefix+"*"))
	if len(files) == 0 {
		return
	}
	dir := ""
	if a.opts.Artifacts != "" {
		dir = filepath.Join(a.opts.Artifacts, task.Name+"-"+task.Version)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			a.log.Error("artifacts not kept", "dir", dir, "err", err)
			dir = ""
		}
	}
	for _, f := range files {
		name := strings.TrimPrefix(filepath.Base(f), worker.ArtifactPrefix)
		if dir == "" {
			a.log.Info("artifact (not kept: no --artifacts)", "task", task.Name, "name", name)
			continue
		}
		dst := filepath.Join(dir, name)
		if err := moveFile(f, dst); err != nil {
			a.log.Error("artifact not kept", "name", name, "err", err)
			continue
		}
		a.log.Info("artifact", "task", task.Name, "file", dst)
	}
}

// WriteTask places the task manifest and its sources archive in dir, a
// VM's get/ directory: the archive is taken from srcDir, or packed from
// srcDir's files when it is not there.
func WriteTask(dir string, task *manifest.Task, srcDir string) error {
	if err := manifest.WriteFile(filepath.Join(dir, worker.TaskFile), []manifest.Manifest{task.Manifest()}); err != nil {
		return err
	}
	if task.Archive == "" {
		return nil
	}
	if strings.ContainsAny(task.Archive, "/\\") || strings.HasPrefix(task.Archive, ".") {
		return fmt.Errorf("task %s: buildfarm-archive %q: not a plain file name", task.Name, task.Archive)
	}
	if srcDir == "" {
		return fmt.Errorf("task %s: no sources for %s: only --fake-request tasks carry sources until controllers serve them", task.Name, task.Archive)
	}
	dst := filepath.Join(dir, task.Archive)
	if b, err := os.ReadFile(filepath.Join(srcDir, task.Archive)); err == nil {
		return os.WriteFile(dst, b, 0o644)
	}
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	err = archive.Pack(f, srcDir, func(name string) bool { return name == task.Archive })
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// readResult reads the worker's result manifest and checks it is for task.
func readResult(path string, task *manifest.Task) (*manifest.Result, error) {
	ms, err := manifest.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(ms) != 1 {
		return nil, fmt.Errorf("%s: %d manifests, want one result manifest", path, len(ms))
	}
	res, err := manifest.ParseResult(ms[0], path, manifest.Lenient)
	if err != nil {
		return nil, err
	}
	if res.Name != task.Name || res.Version != task.Version {
		return nil, fmt.Errorf("%s: result for %s %s, want %s %s", path, res.Name, res.Version, task.Name, task.Version)
	}
	return res, nil
}

func abortResult(task *manifest.Task, log string) *manifest.Result {
	return &manifest.Result{
		Name: task.Name, Version: task.Version, Status: manifest.StatusAbort,
		Results: []manifest.OperationResult{{Operation: "configure", Status: manifest.StatusAbort, Log: manifest.Text(log)}},
	}
}

func abnormalResult(task *manifest.Task, err error) *manifest.Result {
	return &manifest.Result{
		Name: task.Name, Version: task.Version, Status: manifest.StatusAbnormal,
		Results: []manifest.OperationResult{{Operation: "configure", Status: manifest.StatusAbnormal, Log: manifest.Text(err.Error() + "\n")}},
	}
}

// keepSuspended keeps a suspended VM (and its snapshot) for investigation
// until the agent exits, and says where it is.
func (a *Agent) keepSuspended(r *running, snap *snapshot) {
	r.snap = snap
	info := r.vm.Info()
	a.log.Error("VM suspended for investigation", "vm", r.s.name, "snapshot", snap.dir,
		"qmp", info.QMPSocket, "serial", info.SerialLog, "pid", info.PID)
	a.mu.Lock()
	a.suspended = append(a.suspended, r)
	a.mu.Unlock()
}

// releaseSuspended stops the VMs kept for investigation, and deletes their
// snapshots and TFTP directories: a QEMU never outlives its agent, and an
// agent that exits leaves nothing behind.
func (a *Agent) releaseSuspended() {
	a.mu.Lock()
	defer a.mu.Unlock()
	ctx := context.Background()
	for _, r := range a.suspended {
		r.release(ctx)
		if r.snap != nil && r.snap.delete != nil {
			if err := r.snap.delete(ctx); err != nil {
				a.log.Warn("deleting the snapshot of a suspended VM", "dir", r.snap.dir, "err", err)
			}
		}
		os.RemoveAll(r.s.tftpDir)
	}
	a.suspended = nil
}

// accelerator resolves --accel once per agent (auto probes, or reads the
// cached verdict).
func (a *Agent) accelerator(ctx context.Context) (string, error) {
	a.accelOnce.Do(func() {
		p := &accel.Prober{Log: a.log}
		a.accel, a.accelErr = p.Resolve(ctx, a.opts.Accel)
	})
	return a.accel, a.accelErr
}

// moveFile renames src to dst, copying across file systems.
func moveFile(src, dst string) error {
	err := os.Rename(src, dst)
	if !errors.Is(err, syscall.EXDEV) {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.CreateTemp(filepath.Dir(dst), ".artifact-*")
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(out.Name(), dst)
	}
	if err != nil {
		os.Remove(out.Name())
		return err
	}
	return os.Remove(src)
}
