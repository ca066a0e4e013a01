package agent

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/buildfarm/buildfarm/internal/accel"
	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/archive"
	"github.com/buildfarm/buildfarm/internal/auth"
	"github.com/buildfarm/buildfarm/internal/ctlclient"
	"github.com/buildfarm/buildfarm/internal/machine"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/notify"
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

	client *ctlclient.Client // talks to controllers
	key    crypto.Signer     // --auth-key, or nil

	enumMu sync.Mutex // one enumeration (and bootstrap) at a time
	warm   warmBuilds // warm states' failed builds and QEMU versions (warm.go)

	mail *notify.Mailer // admin email (--smtp-relay), or nil

	drain drainer // closed on DrainSignal (drain.go)

	metrics *agentMetrics // served with --metrics (metrics.go)

	mu   sync.Mutex
	kept map[string]*keptVM // suspended VMs, by name (suspend.go)
	told map[string]bool    // events mailed once (notifyOnce)
}

// New returns an agent with opts, logging to log, dumping to out.
func New(opts Options, log *slog.Logger, out io.Writer) (*Agent, error) {
	if err := opts.Check(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	hc, err := ctlclient.NewHTTPClient(opts.CA)
	if err != nil {
		return nil, fmt.Errorf("--ca: %w", err)
	}
	a := &Agent{opts: opts, log: log.With("agent", opts.Instance), out: out,
		client: &ctlclient.Client{HTTP: hc, Timeout: opts.RequestTimeout},
		kept:   map[string]*keptVM{}, told: map[string]bool{}}
	a.metrics = newAgentMetrics(a)
	if opts.SMTPRelay != "" {
		if a.mail, err = notify.New(notify.Config{Relay: opts.SMTPRelay, To: opts.AdminEmail, Log: a.log}); err != nil {
			return nil, err
		}
	}
	if opts.AuthKey != "" {
		if a.key, err = auth.ReadPrivateKey(opts.AuthKey); err != nil {
			return nil, fmt.Errorf("--auth-key: %w", err)
		}
	}
	return a, nil
}

// Run runs the agent until ctx ends (SIGTERM), or until it has done what a
// --dump-*, --fake-request or --once option asks. Cancellation is a clean
// stop, not an error: running VMs are stopped and their snapshots deleted
// first; suspended VMs stay (see suspend.go).
func (a *Agent) Run(ctx context.Context, controllers []string) error {
	stopMail := a.runMailer()
	defer stopMail()
	if a.opts.Metrics != "" {
		stopMetrics, err := a.serveMetrics(ctx)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}
	defer a.releaseKept()
	// 1. Clean up what a crashed predecessor left, sparing the suspended
	//    VMs, which are watched until the agent exits.
	if err := a.cleanup(ctx); err != nil {
		return err
	}
	wctx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() { defer close(watched); a.watchKept(wctx) }()
	defer func() { stopWatch(); <-watched }()
	// 2. --dump-machines and --fake-request: enumerate (and bootstrap) the
	//    machines once, and do what they ask.
	if a.opts.DumpMachines || a.opts.FakeRequest != "" {
		ms, err := a.machines(ctx, 0)
		if err != nil {
			return err
		}
		if a.opts.DumpMachines {
			return a.dump(headers(ms)...)
		}
		return a.fakeRequest(ctx, ms)
	}
	// 3. Serve the controllers (see serve).
	if len(controllers) == 0 {
		return errors.New("no controller URL and no --fake-request: nothing to do (see --help)")
	}
	defer a.watchDrainSignal()()
	return a.serve(ctx, controllers)
}

// fakeRequest performs the task of --fake-request in ms.
func (a *Agent) fakeRequest(ctx context.Context, ms []*machineState) error {
	task, srcDir, err := ReadTaskFile(a.opts.FakeRequest)
	if err != nil {
		return err
	}
	if a.opts.DumpTask {
		return a.dump(task.Manifest())
	}
	res, err := a.perform(ctx, 0, ms, task, srcDir)
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
	if ms.Len() != 1 {
		return nil, "", fmt.Errorf("%s: %d manifests, want one task manifest", path, ms.Len())
	}
	task, err := manifest.ParseTask(ms.Manifest(0), path, manifest.Strict)
	if err != nil {
		return nil, "", err
	}
	return task, filepath.Dir(path), nil
}

// uploaded is called for each file the guest uploads: progress is
// logged, each value a bounded excerpt.
func (a *Agent) uploaded(s *session, name string) {
	name = strings.TrimPrefix(name, "/")
	if name != worker.ProgressFile {
		a.log.Debug("guest uploaded", "vm", s.name, "file", excerptOf(name, 64))
		return
	}
	p, err := readProgress(filepath.Join(s.putDir(), name))
	if err != nil {
		a.log.Warn("guest's progress report not read", "vm", s.name, "err", excerptOf(err.Error(), maxExcerpt))
		return
	}
	if p.get("state") == "started" {
		seq, _ := strconv.Atoi(p.get("sequence"))
		s.started(seq, p.get("step"))
	}
	ok, dropped := s.progressLog.allow(time.Now())
	if dropped > 0 {
		a.log.Warn("guest's progress reports not logged: too many", "vm", s.name, "dropped", dropped, "most a second", progressLogRate)
	}
	if ok {
		a.log.Info("guest", append([]any{"vm", s.name}, p.logArgs()...)...)
	}
}

// perform runs task in slot, in a snapshot of the machine it names, and
// returns the result. srcDir holds the sources of a --fake-request task;
// a controller's task (srcDir "") names them by URL. A task the agent
// cannot build (no steps, no such machine here, sources that cannot be
// had) gets an error result and starts no VM; an error is returned only
// when the agent itself failed (or ctx ended).
func (a *Agent) perform(ctx context.Context, slot int, ms []*machineState, task *manifest.Task, srcDir string) (*manifest.Result, error) {
	// 1. Check that the task says what to run: buildfarm-* steps.
	// 2. Find the machine the task names among ours, and check that it is
	//    of the architecture the task's target needs.
	// 3. Get the sources: the --fake-request directory, or the archive
	//    downloaded from the task's URL and checked against its SHA-256.
	// 4. With --fake-build, take the task's snapshot and answer abort
	//    without a VM.
	// 5. Snapshot the bootstrapped machine; fill get/ with the task and
	//    its sources; boot, retrying mis-boots; parse the result.
	// 6. Abnormal ends keep the VM suspended (and its snapshot); others
	//    force it down and delete the snapshot.
	if err := checkTask(task); err != nil {
		a.log.Error("task refused", "name", task.Name, "version", task.Version, "err", err)
		return errorResult(task, err), nil
	}
	m := findMachine(ms, task.Machine)
	if m == nil {
		err := fmt.Errorf("task %s %s: no machine %q here (have: %s)", task.Name, task.Version, task.Machine, machineNames(ms))
		a.log.Error("task refused", "err", err)
		return errorResult(task, err), nil
	}
	if err := arch.Check(task.Target, m.machine.Architecture()); err != nil {
		err = fmt.Errorf("task %s %s on machine %s: %w", task.Name, task.Version, m.name, err)
		a.log.Error("task refused", "err", err)
		return errorResult(task, err), nil
	}
	src, cleanup, err := a.sources(ctx, slot, task, srcDir)
	defer cleanup()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		a.log.Error("task sources", "name", task.Name, "err", err)
		return errorResult(task, err), nil
	}
	if a.opts.FakeBuild {
		return a.fakeBuild(ctx, m, task)
	}
	var lastErr error
	for attempt := 0; attempt <= a.opts.BuildRetries; attempt++ {
		res, err := a.performOnce(ctx, slot, m, task, src, attempt == a.opts.BuildRetries)
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

// fakeBuild is --fake-build: it takes the task's snapshot of m as a build
// does, and answers abort without booting a VM; the result's log names the
// machine revision (its id) the task would have run on.
func (a *Agent) fakeBuild(ctx context.Context, m *machineState, task *manifest.Task) (*manifest.Result, error) {
	if m.fake {
		return abortResult(task, "fake build: no VM was started\n"), nil
	}
	snap, err := a.snapshotForTask(ctx, m)
	if err != nil {
		return nil, err
	}
	defer snap.delete(context.WithoutCancel(ctx))
	id := "unknown"
	f := filepath.Join(snap.dir, machine.BootstrappedFile)
	if ms, err := manifest.ReadFile(f); err == nil && ms.Len() == 1 {
		if bm, err := manifest.ParseBootstrappedMachine(ms.Manifest(0), f, manifest.Lenient); err == nil {
			id = bm.Machine.ID
		}
	}
	return abortResult(task, fmt.Sprintf("fake build: no VM was started; the task snapshot was of machine %s id %s\n", m.name, id)), nil
}

// taskSources are a task's sources, ready to be placed in a VM's get/:
// the --fake-request directory, or a downloaded archive file.
type taskSources struct {
	dir  string
	file string
}

// sources gets task's sources (see perform); the clean-up deletes a
// downloaded archive.
func (a *Agent) sources(ctx context.Context, slot int, task *manifest.Task, srcDir string) (taskSources, func(), error) {
	nothing := func() {}
	if task.Archive == "" || srcDir != "" {
		return taskSources{dir: srcDir}, nothing, nil
	}
	switch {
	case task.ArchiveURL == "":
		return taskSources{}, nothing, fmt.Errorf("task %s %s: buildfarm-archive %s without buildfarm-archive-url: the controller did not say where to download the sources", task.Name, task.Version, task.Archive)
	case task.ArchiveSHA256 == "":
		return taskSources{}, nothing, fmt.Errorf("task %s %s: buildfarm-archive-url %s without buildfarm-archive-sha256: the sources cannot be checked", task.Name, task.Version, task.ArchiveURL)
	}
	dir := a.instanceDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return taskSources{}, nothing, fmt.Errorf("sources: %w", err)
	}
	f, err := os.CreateTemp(dir, fmt.Sprintf("%d-sources-*", slot))
	if err != nil {
		return taskSources{}, nothing, fmt.Errorf("sources: %w", err)
	}
	cleanup := func() { os.Remove(f.Name()) }
	err = a.client.FetchArchive(ctx, task.ArchiveURL, task.ArchiveSHA256, a.opts.MaxArchive, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return taskSources{}, cleanup, fmt.Errorf("task %s %s: sources %s: %w", task.Name, task.Version, task.Archive, err)
	}
	a.log.Info("sources downloaded", "task", task.Name, "archive", task.Archive, "url", task.ArchiveURL)
	return taskSources{file: f.Name()}, cleanup, nil
}

// performOnce runs task once in a VM of machine m: restored from m's warm
// state when there is one to use (see warm.go), and booted cold when there
// is none or the restore fails before the worker asks for its task.
func (a *Agent) performOnce(ctx context.Context, slot int, m *machineState, task *manifest.Task, src taskSources, last bool) (*manifest.Result, error) {
	if w := a.warmFor(ctx, slot, m); w != nil {
		res, err := a.performIn(ctx, slot, m, task, src, false, w)
		if !errors.Is(err, errWarmFailed) {
			return res, err
		}
		a.warmFailed(ctx, m, w, err)
	}
	return a.performIn(ctx, slot, m, task, src, last, nil)
}

// performIn runs task once in a VM of machine m, booted cold (w nil) or
// restored from w.
func (a *Agent) performIn(ctx context.Context, slot int, m *machineState, task *manifest.Task, src taskSources, last bool, w *warmState) (*manifest.Result, error) {
	snap, err := a.taskSnapshot(ctx, m, w)
	if err != nil {
		return nil, err
	}
	s := a.newSession(slot, snap.dir, worker.ModeBuild)
	s.mac = m.mac
	s.machine, s.task = m.name, task.Name+"/"+task.Version
	if w != nil {
		a.warmSession(s, m, w)
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
	if err := s.writeKey(); err != nil {
		return nil, err
	}
	if src.file != "" {
		err = placeArchive(s.getDir(), a.withTrust(task), src.file)
	} else {
		err = WriteTask(s.getDir(), a.withTrust(task), src.dir)
	}
	if err != nil {
		return nil, err
	}
	a.log.Info("starting the task's VM", "vm", s.name, "machine", m.name, "start", startedHow(w))
	r, err := a.boot(ctx, s, last)
	err = s.abnormal(err)
	if err != nil {
		if r != nil { // suspended for investigation
			keep = true
			a.keepSuspended(r, snap)
		}
		if w != nil && r == nil && ctx.Err() == nil && restoreFailed(err) {
			return nil, fmt.Errorf("%w: %w", errWarmFailed, err)
		}
		return nil, err
	}
	res, perr := readResult(filepath.Join(s.putDir(), s.want), task)
	if perr == nil {
		setStarted(res, w)
	}
	if perr == nil && res.Status == manifest.StatusAbnormal {
		perr = fmt.Errorf("worker reported an abnormal end")
	}
	if perr != nil {
		if serr := r.Suspend(context.WithoutCancel(ctx), fmt.Errorf("the build ended abnormally: %w", perr)); serr == nil {
			keep = true
			a.keepSuspended(r, snap)
		} else {
			r.Shutdown(ctx)
		}
		return nil, s.abnormal(fmt.Errorf("vm %s: %w", s.name, perr))
	}
	r.Stop(ctx)
	a.keepArtifacts(s, task)
	return res, nil
}

// withTrust is task as its worker gets it: with --trust's fingerprints
// added to the task's trust (as bbot's agent adds its own), which the
// worker gives the steps as $BUILDFARM_TRUST.
func (a *Agent) withTrust(task *manifest.Task) *manifest.Task {
	if len(a.opts.Trust) == 0 {
		return task
	}
	t := *task
	t.Trust = slices.Clone(task.Trust)
	for _, fp := range a.opts.Trust {
		if !slices.Contains(t.Trust, fp) {
			t.Trust = append(t.Trust, fp)
		}
	}
	return &t
}

// placeArchive writes the task manifest into dir, a VM's get/, and links
// (or copies) the downloaded archive file there as the task's archive.
func placeArchive(dir string, task *manifest.Task, file string) error {
	if err := manifest.WriteFile(filepath.Join(dir, worker.TaskFile), []manifest.Manifest{task.Manifest()}); err != nil {
		return err
	}
	dst := filepath.Join(dir, task.Archive)
	if err := os.Link(file, dst); err == nil {
		return nil
	}
	in, err := os.Open(file)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// checkTask says why the agent cannot build task, if it cannot: a task
// without buildfarm-* steps would run nothing, and a build2 package build
// (bbot's worker builds those with bpkg) is not what this agent's worker
// does.
func checkTask(task *manifest.Task) error {
	if len(task.Steps) > 0 {
		return nil
	}
	var build2 []string
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"requires", len(task.Requires) > 0}, {"tests", len(task.Tests) > 0},
		{"dependency-checksum", task.DependencyChecksum != ""}, {"target-config", len(task.TargetConfig) > 0},
		{"package-config", task.PackageConfig != ""}, {"host", task.Host != nil},
		{"interactive", task.Interactive != ""}, {"worker-checksum", task.WorkerChecksum != ""},
		{"auxiliary-machine", len(task.AuxiliaryMachines) > 0}, {"repository-type pkg", task.RepositoryType == "pkg"},
	} {
		if f.set {
			build2 = append(build2, f.name)
		}
	}
	if len(build2) > 0 {
		return fmt.Errorf("unsupported: task %s %s is a build2 package build (%s) without buildfarm-* steps; this agent runs only the steps a task gives in buildfarm-configure, buildfarm-update, buildfarm-test and buildfarm-install",
			task.Name, task.Version, strings.Join(build2, ", "))
	}
	return fmt.Errorf("task %s %s: no steps were given (no buildfarm-configure, buildfarm-update, buildfarm-test or buildfarm-install field): nothing to build", task.Name, task.Version)
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
// srcDir's files when it is not there, as the examples are. A directory
// packed must look like a project's (see checkPackable), and its archive
// may have MaxPacked bytes at most.
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
		return fmt.Errorf("task %s: no sources for %s: no directory to take them from", task.Name, task.Archive)
	}
	dst := filepath.Join(dir, task.Archive)
	if b, err := os.ReadFile(filepath.Join(srcDir, task.Archive)); err == nil {
		return os.WriteFile(dst, b, 0o644)
	}
	if err := checkPackable(srcDir); err != nil {
		return fmt.Errorf("task %s: buildfarm-archive %s is not in %s, and that directory is not packed in its place: %w", task.Name, task.Archive, srcDir, err)
	}
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	lw := &limitedWriter{w: f, left: MaxPacked}
	err = archive.Pack(lw, srcDir, func(name string) bool { return name == task.Archive })
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, errTooBig) {
		err = fmt.Errorf("task %s: packing %s as buildfarm-archive %s: %w", task.Name, srcDir, task.Archive, err)
	}
	return err
}

// MaxPacked bounds the archive WriteTask packs from a task's directory.
const MaxPacked = 256 << 20

var errTooBig = fmt.Errorf("the archive would be larger than %d MiB: put the sources archive the task names beside it", MaxPacked>>20)

// limitedWriter fails a write past its left bytes with errTooBig.
type limitedWriter struct {
	w    io.Writer
	left int64
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		return 0, errTooBig
	}
	l.left -= int64(len(p))
	return l.w.Write(p)
}

// checkPackable says why dir is not a project's directory to pack as a
// task's sources: the file system's root or a directory just below it
// (/tmp, /etc, ...), or a home directory (/root, /home/NAME, $HOME).
func checkPackable(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	home, _ := os.UserHomeDir()
	if home != "" {
		if r, err := filepath.EvalSymlinks(home); err == nil {
			home = r
		}
	}
	switch {
	case abs == "/":
		return errors.New("it is the file system's root")
	case filepath.Dir(abs) == "/":
		return errors.New("it is a directory just below the file system's root")
	case abs == home || filepath.Dir(abs) == "/home":
		return errors.New("it is a home directory")
	}
	return nil
}

// readResult reads the worker's result manifest and checks it is for task.
func readResult(path string, task *manifest.Task) (*manifest.Result, error) {
	ms, err := resultLimits.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if ms.Len() != 1 {
		return nil, fmt.Errorf("%s: %d manifests, want one result manifest", path, ms.Len())
	}
	res, err := manifest.ParseResult(ms.Manifest(0), path, manifest.Lenient)
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

// errorResult is the result of a task the agent could not build: status
// error, with err as the log of its first operation.
func errorResult(task *manifest.Task, err error) *manifest.Result {
	op := "configure"
	if len(task.Steps) > 0 {
		op = task.Steps[0].Operation
	}
	return &manifest.Result{
		Name: task.Name, Version: task.Version, Status: manifest.StatusError,
		Results: []manifest.OperationResult{{Operation: op, Status: manifest.StatusError, Log: manifest.Text(err.Error() + "\n")}},
	}
}

// abnormalResult is the result of a task whose build ended abnormally
// with err: status abnormal, with err as the log of the operation that
// was running (from the worker's progress, see session.abnormal), or of
// the first when none had started.
func abnormalResult(task *manifest.Task, err error) *manifest.Result {
	op := "configure"
	if len(task.Steps) > 0 {
		op = task.Steps[0].Operation
	}
	var ae *abnormalEnd
	if errors.As(err, &ae) {
		for _, s := range task.Steps {
			if s.Operation == ae.op {
				op = ae.op
			}
		}
	}
	return &manifest.Result{
		Name: task.Name, Version: task.Version, Status: manifest.StatusAbnormal,
		Results: []manifest.OperationResult{{Operation: op, Status: manifest.StatusAbnormal, Log: manifest.Text(err.Error() + "\n")}},
	}
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
