package worker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/buildfarm/buildfarm/internal/archive"
	"github.com/buildfarm/buildfarm/internal/buildinfo"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/tftp"
)

// The files the worker and the agent exchange, named as the worker asks
// for them; the agent's TFTP rules map them into its get/ and put/ dirs.
const (
	TaskFile      = "task.manifest"
	ResultFile    = "result.manifest"
	ProgressFile  = "progress"
	ToolchainFile = "toolchain.manifest"
	// KeyFile holds the result key: the build's result is accepted only
	// uploaded as ResultName(key). The agent serves it once, and the
	// worker fetches it before any step runs, so that only the worker
	// knows it.
	KeyFile       = "key"
	BootstrapFile = "bootstrap.manifest"
	// ArtifactPrefix starts the names of uploaded artifacts: the files the
	// steps leave in $BUILDFARM_ARTIFACTS go up as artifact-NAME.
	ArtifactPrefix = "artifact-"
)

// The user the steps run as: the images create it (/etc/passwd), with
// the build directory as its home.
const (
	StepUser = "build"
	StepUID  = 1000
	StepGID  = 1000
)

// ResultName is the name the result of a build is uploaded under, with
// the key the agent gave (KeyFile).
func ResultName(key string) string { return "result-" + key + ".manifest" }

// CheckKey says why key, the contents of KeyFile, is not a result key: 32
// to 128 lower-case hex digits.
func CheckKey(key string) error {
	if len(key) < 32 || len(key) > 128 {
		return fmt.Errorf("%s: %d characters, want 32 to 128 hex digits", KeyFile, len(key))
	}
	for _, c := range key {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return fmt.Errorf("%s: %q is not a lower-case hex digit", KeyFile, c)
		}
	}
	return nil
}

// Version is the worker's protocol version, reported in the bootstrap
// manifest as buildfarm-worker-version. Raise it when the worker changes in
// a way that machines bootstrapped by an older worker must be bootstrapped
// again: the agent compares it with its own.
// (2: the result is uploaded under the name ResultName gives.)
const Version = 2

// VersionTool is the tool name the worker reports its Version under.
const VersionTool = "buildfarm-worker"

// Worker runs one build or one bootstrap. It holds no state between runs.
type Worker struct {
	cfg  Config
	log  *slog.Logger
	seq  int
	opts tftp.Options
	// netDone waits for the static network's background part and
	// returns its error (setNetwork); nil without a static network.
	netDone func() error
}

// New returns a worker with cfg that logs to log.
func New(cfg Config, log *slog.Logger) *Worker {
	return &Worker{
		cfg:  cfg,
		log:  log,
		opts: cfg.TFTPOptions(),
	}
}

// Run does the job the configuration names, after setting up the static
// network the init hands it (NetEnv), if any. It serves the management
// console's guest channel, in a guest that has one: from the start when
// its driver is there, or once the guest's set-up has loaded it
// (awaitReady).
func (w *Worker) Run(ctx context.Context) error {
	if err := w.setNetwork(); err != nil {
		return err
	}
	if _, err := w.attachChannel(ctx); err != nil {
		w.log.Debug("no guest channel yet", "err", err)
	}
	switch w.cfg.Mode {
	case ModeBootstrap:
		return w.Bootstrap(ctx)
	case ModeBuild, "":
		return w.Build(ctx)
	}
	return fmt.Errorf("unknown mode %q", w.cfg.Mode)
}

func (w *Worker) get(ctx context.Context, remote string, dst io.Writer) error {
	if _, err := tftp.Get(ctx, w.cfg.TFTP, remote, dst, w.opts); err != nil {
		return fmt.Errorf("get %s from %s: %w", remote, w.cfg.TFTP, err)
	}
	return nil
}

func (w *Worker) put(ctx context.Context, remote string, data []byte) error {
	return w.putWith(ctx, remote, data, w.opts)
}

// putWith is put with the TFTP options opts.
func (w *Worker) putWith(ctx context.Context, remote string, data []byte, opts tftp.Options) error {
	if err := tftp.Put(ctx, w.cfg.TFTP, remote, bytes.NewReader(data), int64(len(data)), opts); err != nil {
		return fmt.Errorf("put %s to %s: %w", remote, w.cfg.TFTP, err)
	}
	return nil
}

func (w *Worker) putManifests(ctx context.Context, remote string, ms ...manifest.Manifest) error {
	var b bytes.Buffer
	if err := manifest.Serialize(&b, ms); err != nil {
		return fmt.Errorf("serialize %s: %w", remote, err)
	}
	return w.put(ctx, remote, b.Bytes())
}

// progress tells the agent, best effort, that step has reached state.
func (w *Worker) progress(ctx context.Context, step, state string, extra ...manifest.Pair) {
	w.seq++
	m := manifest.Manifest{
		{Name: "", Value: "1"},
		{Name: "sequence", Value: fmt.Sprint(w.seq)},
		{Name: "step", Value: step},
		{Name: "state", Value: state},
	}
	m = append(m, extra...)
	w.log.Info("progress", "step", step, "state", state)
	w.cfg.notify("progress", step+" "+state)
	if err := w.putManifests(ctx, ProgressFile, m); err != nil {
		w.log.Warn("progress not delivered", "err", err)
	}
}

// Build runs the build task the agent serves.
func (w *Worker) Build(ctx context.Context) error {
	// 1. Fetch the task manifest and the result key. Without them there
	//    is nothing to report a result for: the agent sees the guest stop
	//    without a result.
	// 2. Fetch and unpack the sources; failing that, the result is abort.
	//    Give the build directory to the steps' user.
	// 3. Run the operations in order, as that user; the first that fails
	//    ends the build.
	// 4. Upload the result manifest under the key's name.
	// Before it touches DIR, the worker waits for the guest's set-up
	// (awaitReady).
	// With buildfarm.start=wait, first await the start (see awaitStart).
	if w.cfg.AwaitStart {
		if err := w.awaitStart(ctx); err != nil {
			return err
		}
	}
	w.progress(ctx, "task", "fetching")
	var tb bytes.Buffer
	if err := w.get(ctx, TaskFile, &tb); err != nil {
		return err
	}
	ms, err := manifest.Parse(&tb, TaskFile)
	if err != nil {
		return err
	}
	if ms.Len() != 1 {
		return fmt.Errorf("%s: %d manifests, want 1", TaskFile, ms.Len())
	}
	task, err := manifest.ParseTask(ms.Manifest(0), TaskFile, manifest.Lenient)
	if err != nil {
		return err
	}
	var kb bytes.Buffer
	if err := w.get(ctx, KeyFile, &kb); err != nil {
		return err
	}
	key := strings.TrimSpace(kb.String())
	if err := CheckKey(key); err != nil {
		return err
	}
	w.log.Info("task", "name", task.Name, "version", task.Version, "steps", len(task.Steps))

	warnings, err := task.WarningRegexps()
	if err != nil {
		return fmt.Errorf("%s: %w", TaskFile, err)
	}
	res := &manifest.Result{Name: task.Name, Version: task.Version, Status: manifest.StatusSuccess}
	src := w.sources()
	if err := w.awaitReady(ctx); err != nil {
		return err
	}
	if err := os.MkdirAll(w.artifacts(), 0o755); err != nil {
		return err
	}
	if err := w.fetchSources(ctx, task, src); err != nil {
		op := "configure"
		if len(task.Steps) > 0 {
			op = task.Steps[0].Operation
		}
		w.log.Error("sources", "err", err)
		res.Results = append(res.Results, manifest.OperationResult{
			Operation: op, Status: manifest.StatusAbort, Log: manifest.Text(err.Error() + "\n"),
		})
		res.Status = manifest.StatusAbort
	} else if err := w.giveDir(); err != nil {
		return err
	} else {
		for _, s := range task.Steps {
			r := w.runStep(ctx, s, src, task, warnings)
			res.Results = append(res.Results, r)
			res.Status = res.Status.Merge(r.Status)
			if r.Status != manifest.StatusSuccess && r.Status != manifest.StatusWarning {
				break
			}
		}
	}
	w.putArtifacts(ctx)
	if err := w.putManifests(ctx, ResultName(key), res.Manifest()); err != nil {
		return err
	}
	w.log.Info("result uploaded", "status", res.Status.String())
	return nil
}

// fetchSources downloads the task's archive and unpacks it into dir.
func (w *Worker) fetchSources(ctx context.Context, task *manifest.Task, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if task.Archive == "" {
		return nil
	}
	w.progress(ctx, "sources", "fetching", manifest.Pair{Name: "archive", Value: task.Archive})
	f, err := os.CreateTemp(w.cfg.Dir, "sources-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := w.get(ctx, task.Archive, f); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := archive.Unpack(f, dir); err != nil {
		return fmt.Errorf("unpack %s: %w", task.Archive, err)
	}
	return nil
}

// runStep runs one operation of the task in dir and returns its result.
func (w *Worker) runStep(ctx context.Context, s manifest.Step, dir string, task *manifest.Task, warnings []*regexp.Regexp) manifest.OperationResult {
	w.progress(ctx, s.Operation, "started", manifest.Pair{Name: "command", Value: cut(s.Command, maxProgressCommand)})
	log := newCapBuffer(w.cfg.LogLimit)
	fmt.Fprintf(log, "$ %s\n", s.Command)
	start := time.Now()
	env := append(os.Environ(),
		"HOME="+w.cfg.Dir,
		"BUILDFARM_OPERATION="+s.Operation,
		"BUILDFARM_TARGET="+task.Target,
		"BUILDFARM_DIR="+w.cfg.Dir,
		"BUILDFARM_ARTIFACTS="+w.artifacts(),
		"PATH="+filepath.Join(w.cfg.Dir, "toolchain", "bin")+":/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
	)
	live := w.startLive(ctx, s.Operation)
	if len(task.Trust) > 0 {
		env = append(env, "BUILDFARM_TRUST="+strings.Join(task.Trust, " "))
	}
	err := runShell(ctx, s.Command, dir, env, w.stepUser(), io.MultiWriter(log, live))
	live.Close(ctx)
	d := time.Since(start).Round(time.Millisecond)
	st := manifest.StatusSuccess
	var ee *exec.ExitError
	switch {
	case err == nil:
		if matchAny(warnings, log.String()) {
			st = manifest.StatusWarning
		}
	case errors.As(err, &ee) && ee.Exited():
		st = manifest.StatusError
		fmt.Fprintf(log, "%s: exit status %d\n", s.Operation, ee.ExitCode())
	default:
		st = manifest.StatusAbort
		fmt.Fprintf(log, "%s: %v\n", s.Operation, err)
	}
	w.progress(ctx, s.Operation, "finished",
		manifest.Pair{Name: "status", Value: st.String()},
		manifest.Pair{Name: "duration", Value: d.String()})
	return manifest.OperationResult{Operation: s.Operation, Status: st, Log: manifest.Text(log.String())}
}

// Bootstrap installs the toolchain the agent serves and reports its
// versions.
func (w *Worker) Bootstrap(ctx context.Context) error {
	// 1. Fetch toolchain.manifest: the toolchain id and its files with
	//    their SHA-256 sums.
	// 2. Fetch each file, verify its sum, install it under DIR/toolchain.
	// 3. Upload bootstrap.manifest.
	if err := w.awaitReady(ctx); err != nil {
		return err
	}
	w.progress(ctx, "toolchain", "fetching")
	var tb bytes.Buffer
	if err := w.get(ctx, ToolchainFile, &tb); err != nil {
		return err
	}
	tc, err := ParseToolchainFiles(&tb, ToolchainFile)
	if err != nil {
		return err
	}
	dest := filepath.Join(w.cfg.Dir, "toolchain")
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return err
	}
	for _, f := range tc.Files {
		w.progress(ctx, "toolchain", "fetching", manifest.Pair{Name: "file", Value: f.Name})
		if err := w.install(ctx, f, dest); err != nil {
			return err
		}
	}
	bs := manifest.Bootstrap{Versions: []manifest.ToolVersion{{Tool: VersionTool, Version: Version}}}
	if err := w.putManifests(ctx, BootstrapFile, bs.Manifest()); err != nil {
		return err
	}
	w.log.Info("bootstrapped", "toolchain", tc.ID, "files", len(tc.Files), "worker", buildinfo.String())
	return nil
}

// install fetches f into dest, verifying its sum; a .tar.gz is unpacked.
func (w *Worker) install(ctx context.Context, f ToolchainFileEntry, dest string) error {
	tmp, err := os.CreateTemp(dest, ".fetch-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	if err := w.get(ctx, f.Name, io.MultiWriter(tmp, h)); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != f.SHA256 {
		return fmt.Errorf("toolchain file %s: sha256 %s, want %s", f.Name, got, f.SHA256)
	}
	if strings.HasSuffix(f.Name, ".tar.gz") || strings.HasSuffix(f.Name, ".tgz") {
		if _, err := tmp.Seek(0, io.SeekStart); err != nil {
			return err
		}
		if err := archive.Unpack(tmp, dest); err != nil {
			return fmt.Errorf("unpack %s: %w", f.Name, err)
		}
		return nil
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dest, filepath.Base(f.Name)))
}

// maxProgressCommand bounds the command a progress report carries: the
// agent takes reports of 64 KiB at most.
const maxProgressCommand = 4 << 10

// cut is s cut to at most n bytes, at a character's start, with "..."
// after it when it was longer.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

// matchAny reports whether a line of log matches one of res.
func matchAny(res []*regexp.Regexp, log string) bool {
	if len(res) == 0 {
		return false
	}
	for line := range strings.Lines(log) {
		for _, re := range res {
			if re.MatchString(line) {
				return true
			}
		}
	}
	return false
}

// artifacts is the directory whose files the worker uploads after the steps.
func (w *Worker) artifacts() string { return filepath.Join(w.cfg.Dir, "artifacts") }

// sources is the directory the task's sources are unpacked into, in the
// build directory: where the steps run.
func (w *Worker) sources() string { return filepath.Join(w.cfg.Dir, "src") }

// putArtifacts uploads the regular files of the artifacts directory, in name
// order, as artifact-NAME. A failed upload is logged, not fatal: the result
// matters more than its artifacts.
//
// The steps' user owns the directory: it is opened without following a
// symbolic link, and so is each file in it, so that the worker uploads
// only what that user could read itself.
func (w *Worker) putArtifacts(ctx context.Context) {
	fd, err := unix.Open(w.artifacts(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if !errors.Is(err, unix.ENOENT) {
			w.log.Warn("artifacts not uploaded", "dir", w.artifacts(), "err", err)
		}
		return
	}
	d := os.NewFile(uintptr(fd), w.artifacts())
	defer d.Close()
	des, err := d.ReadDir(-1)
	if err != nil {
		return
	}
	slices.SortFunc(des, func(a, b os.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	for _, de := range des {
		if !de.Type().IsRegular() || !validArtifact(de.Name()) {
			w.log.Warn("artifact skipped: not a regular file with a plain name", "name", de.Name())
			continue
		}
		ffd, err := unix.Openat(fd, de.Name(), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			w.log.Warn("artifact", "name", de.Name(), "err", err)
			continue
		}
		f := os.NewFile(uintptr(ffd), de.Name())
		fi, err := f.Stat()
		if err == nil && !fi.Mode().IsRegular() {
			err = errors.New("not a regular file")
		}
		if err == nil {
			remote := ArtifactPrefix + de.Name()
			if err = tftp.Put(ctx, w.cfg.TFTP, remote, f, fi.Size(), w.opts); err != nil {
				err = fmt.Errorf("put %s to %s: %w", remote, w.cfg.TFTP, err)
			}
		}
		f.Close()
		if err != nil {
			w.log.Warn("artifact not uploaded", "name", de.Name(), "err", err)
			continue
		}
		w.log.Info("artifact uploaded", "name", de.Name(), "bytes", fi.Size())
	}
}

// validArtifact reports whether name is a plain file name: letters, digits,
// '.', '_' and '-', not starting with '.'.
func validArtifact(name string) bool {
	if name == "" || name[0] == '.' {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
