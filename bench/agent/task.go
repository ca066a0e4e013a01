package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/buildfarm/buildfarm/internal/agent"
	"github.com/buildfarm/buildfarm/internal/image"
	"github.com/buildfarm/buildfarm/internal/machine"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/testenv"
	"github.com/buildfarm/buildfarm/internal/worker"
)

// timing is one task's times, from the start of Run (ours) or of the
// command that starts QEMU (raw): the snapshot made (ours only, from the
// agent's log), then, polled every 5 ms, QEMU's serial log created (QEMU
// is up), the console's first output (the guest's init: the kernel boots
// quiet), the worker's first upload (its progress report after it fetched
// the task) and its result upload in the TFTP directory; and the end.
type timing struct {
	snap, qemu, console, progress, result, total time.Duration
	del                                          time.Duration // the snapshot's deletion (ours only)
}

func (t timing) String() string {
	s := fmt.Sprintf("%.2fs: ", t.total.Seconds())
	if t.snap > 0 {
		s += fmt.Sprintf("snapshot at %.3fs, ", t.snap.Seconds())
	}
	s += fmt.Sprintf("QEMU up at %.3fs, console at %.2fs, first upload at %.2fs, result at %.2fs, then %.2fs to the end",
		t.qemu.Seconds(), t.console.Seconds(), t.progress.Seconds(), t.result.Seconds(), (t.total - t.result).Seconds())
	if t.del > 0 {
		s += fmt.Sprintf(" (snapshot deleted in %.3fs)", t.del.Seconds())
	}
	return s
}

func column(ts []timing, f func(timing) time.Duration) []time.Duration {
	var ds []time.Duration
	for _, t := range ts {
		ds = append(ds, f(t))
	}
	return ds
}

// medians returns the median of each field of ts.
func medians(ts []timing) timing {
	m := func(f func(timing) time.Duration) time.Duration { med, _, _ := stats(column(ts, f)); return med }
	return timing{
		snap:     m(func(t timing) time.Duration { return t.snap }),
		qemu:     m(func(t timing) time.Duration { return t.qemu }),
		console:  m(func(t timing) time.Duration { return t.console }),
		progress: m(func(t timing) time.Duration { return t.progress }),
		result:   m(func(t timing) time.Duration { return t.result }),
		del:      m(func(t timing) time.Duration { return t.del }),
		total:    m(func(t timing) time.Duration { return t.total }),
	}
}

// watch notes when files matching its patterns first appear.
type watch struct {
	stop, done chan struct{}
	seen       []time.Time
}

// A pattern for filepath.Glob; with nonEmpty, a match counts once it holds
// data.
type pattern struct {
	glob     string
	nonEmpty bool
}

// startWatch polls for the patterns every 5 ms.
func startWatch(patterns ...pattern) *watch {
	w := &watch{stop: make(chan struct{}), done: make(chan struct{}), seen: make([]time.Time, len(patterns))}
	found := func(p pattern) bool {
		m, _ := filepath.Glob(p.glob)
		for _, f := range m {
			if fi, err := os.Stat(f); err == nil && (!p.nonEmpty || fi.Size() > 0) {
				return true
			}
		}
		return false
	}
	go func() {
		defer close(w.done)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			for i, p := range patterns {
				if w.seen[i].IsZero() && found(p) {
					w.seen[i] = time.Now()
				}
			}
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// end stops polling and returns, for each pattern, when it appeared after
// t0 (0 if it did not).
func (w *watch) end(t0 time.Time) []time.Duration {
	close(w.stop)
	<-w.done
	ds := make([]time.Duration, len(w.seen))
	for i, t := range w.seen {
		if !t.IsZero() {
			ds[i] = t.Sub(t0)
		}
	}
	return ds
}

// deleteTook is the mark of stamps that holds, as the time after the zero
// time, how long the task snapshot's deletion took (from package machine's
// "task snapshot deleted" record).
const deleteTook = "snapshot deletion took"

// stamps is a log handler that writes the agent's log to a file and notes
// when the records named in marks arrive.
type stamps struct {
	slog.Handler
	mu    *sync.Mutex
	marks map[string]time.Time
}

func (s stamps) Handle(ctx context.Context, r slog.Record) error {
	s.mu.Lock()
	if _, ok := s.marks[r.Message]; ok {
		s.marks[r.Message] = r.Time
	}
	if r.Message == "task snapshot deleted" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "took" && a.Value.Kind() == slog.KindDuration {
				s.marks[deleteTook] = time.Time{}.Add(a.Value.Duration())
			}
			return true
		})
	}
	s.mu.Unlock()
	return s.Handler.Handle(ctx, r)
}

func (s stamps) WithAttrs(as []slog.Attr) slog.Handler {
	return stamps{s.Handler.WithAttrs(as), s.mu, s.marks}
}

func (s stamps) WithGroup(g string) slog.Handler {
	return stamps{s.Handler.WithGroup(g), s.mu, s.marks}
}

// farm is a build host for the benchmark: a volume with the busybox
// machine on one backend, and the agent's options.
type farm struct {
	root    string
	task    string // the task manifest file
	opts    agent.Options
	logFile *os.File
	bootDir string // the bootstrapped machine's directory
	mac     string // its MAC, from its manifest
}

// variant is one way of performing the task: "ours" (the agent at its
// defaults: --start auto, a warm start where the state saved after
// bootstrap fits), "ours-cold" (--start cold) or "raw".
type variant struct {
	name  string
	runs  []timing
	start string // the agent's --start; "" for raw
}

// taskRow is one backend and variant of the per-task table, as written to
// results.json.
type taskRow struct {
	Backend  string  `json:"backend"`
	Variant  string  `json:"variant"`
	Runs     []int64 `json:"runs_ns"`
	MedianNS int64   `json:"median_ns"`
	Q1NS     int64   `json:"q1_ns"`
	Q3NS     int64   `json:"q3_ns"`
	MinNS    int64   `json:"min_ns"`
	MaxNS    int64   `json:"max_ns"`
	// The phases' medians, from the start of the run.
	SnapshotNS int64 `json:"snapshot_ns,omitempty"`
	QEMUUpNS   int64 `json:"qemu_up_ns"`
	ConsoleNS  int64 `json:"console_ns"`
	ProgressNS int64 `json:"first_upload_ns"`
	ResultNS   int64 `json:"result_ns"`
	DeleteNS   int64 `json:"snapshot_delete_ns,omitempty"`
	// The median over raw's median.
	OverRaw float64 `json:"median_over_raw,omitempty"`
}

func benchTask(ctx context.Context, c config, backend, tmp, workerBin string) ([]taskRow, error) {
	dir := filepath.Join(tmp, backend)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	switch backend {
	case "btrfs":
		mnt, unmount, err := testenv.MountBtrfs(ctx, dir, 4<<30)
		if err != nil {
			return nil, err
		}
		defer func() {
			if err := unmount(); err != nil {
				fmt.Fprintln(os.Stderr, err)
			}
		}()
		dir = mnt
	case "fallback":
	default:
		return nil, fmt.Errorf("unknown backend %q (want btrfs or fallback)", backend)
	}
	f, err := newFarm(ctx, c, dir, filepath.Join(tmp, "img-"+backend), workerBin)
	if err != nil {
		return nil, err
	}
	defer f.logFile.Close()
	fmt.Printf("\n== per-task overhead, %s backend: %s, %d runs each, in turns, pause %v ==\n", backend, c.task, c.runs, c.settle)
	fmt.Printf("raw: ip netns exec NS qemu-system-x86_64 %s\n", shellJoin(rawArgs(c, f.bootDir, "DISK", "SERIAL", rawPort, f.mac)))

	var (
		cleaner      sync.WaitGroup
		cleanerMu    sync.Mutex
		cleanerTimes []time.Duration
	)
	vs := []*variant{{name: "ours", start: agent.DefaultOptions().Start}, {name: "ours-cold", start: agent.StartCold}, {name: "raw"}}
	for i := range c.runs {
		// Rotate which goes first, so that what a run leaves to the
		// kernel (namespace teardown, writeback, btrfs's cleaner) falls
		// on each variant alike.
		for j := range vs {
			v := vs[(i+j)%len(vs)]
			time.Sleep(c.settle)
			var t timing
			var err error
			if v.start == "" {
				t, err = f.runRaw(ctx, c, filepath.Join(tmp, fmt.Sprintf("raw-%s-%d", backend, i)), i)
			} else {
				t, err = f.runOurs(ctx, v.start)
			}
			if err != nil {
				return nil, fmt.Errorf("%s, run %d: %w (agent log: %s)", v.name, i+1, err, f.logFile.Name())
			}
			v.runs = append(v.runs, t)
			fmt.Printf("run %2d  %-9s %s\n", i+1, v.name, t)
			if backend == "btrfs" && v.start != "" {
				// What the task's snapshot deletion left to btrfs's
				// cleaner: `btrfs subvolume sync` returns once every
				// deleted subvolume is gone. It runs beside the next
				// run, which does not wait for it.
				cleaner.Add(1)
				go func() {
					defer cleaner.Done()
					t0 := time.Now()
					if err := proc.Run(ctx, nil, "btrfs", "subvolume", "sync", f.root); err == nil {
						cleanerMu.Lock()
						cleanerTimes = append(cleanerTimes, time.Since(t0))
						cleanerMu.Unlock()
					}
				}()
			}
		}
	}
	cleaner.Wait()
	if len(cleanerTimes) > 0 {
		med, q1, q3, lo, hi := spread(cleanerTimes)
		fmt.Printf("btrfs subvolume sync after each of ours' runs (the cleaner's work left by the snapshot's deletion): median %v, IQR %v-%v, min %v, max %v\n",
			med.Round(time.Millisecond), q1.Round(time.Millisecond), q3.Round(time.Millisecond), lo.Round(time.Millisecond), hi.Round(time.Millisecond))
	}
	var rows []taskRow
	raw := vs[len(vs)-1]
	rawMed, _, _ := stats(column(raw.runs, func(t timing) time.Duration { return t.total }))
	for _, v := range vs {
		totals := column(v.runs, func(t timing) time.Duration { return t.total })
		med, q1, q3, lo, hi := spread(totals)
		m := medians(v.runs)
		r := taskRow{Backend: backend, Variant: v.name, MedianNS: int64(med), Q1NS: int64(q1), Q3NS: int64(q3), MinNS: int64(lo), MaxNS: int64(hi),
			SnapshotNS: int64(m.snap), QEMUUpNS: int64(m.qemu), ConsoleNS: int64(m.console), ProgressNS: int64(m.progress), ResultNS: int64(m.result), DeleteNS: int64(m.del)}
		for _, d := range totals {
			r.Runs = append(r.Runs, int64(d))
		}
		if v != raw {
			r.OverRaw = float64(med) / float64(rawMed)
		}
		rows = append(rows, r)
		fmt.Printf("%-9s median %.2fs, IQR %.2f-%.2fs, min %.2fs, max %.2fs; phases (medians) %s\n",
			v.name, med.Seconds(), q1.Seconds(), q3.Seconds(), lo.Seconds(), hi.Seconds(), m)
	}
	for _, r := range rows[:len(rows)-1] {
		fmt.Printf("ratio %s/raw (%s): medians %.3f (goal <= 1.05)\n", r.Variant, backend, r.OverRaw)
	}
	return rows, nil
}

// newFarm builds the busybox machine, adds it to a volume under dir and
// bootstraps it with the agent (untimed).
func newFarm(ctx context.Context, c config, dir, imgDir, workerBin string) (*farm, error) {
	if _, err := image.Build(ctx, image.Options{Preset: "busybox", Out: imgDir, Worker: workerBin}); err != nil {
		return nil, err
	}
	machines := filepath.Join(dir, "machines")
	v, err := (&machine.Store{Dir: machines}).Volume(machine.DefaultVolume, true)
	if err != nil {
		return nil, err
	}
	if _, err := v.Add(ctx, "busybox", machine.Source{Dir: imgDir}); err != nil {
		return nil, err
	}
	o := agent.DefaultOptions()
	o.Machines, o.TFTP = machines, filepath.Join(dir, "tftp")
	o.Accel, o.MemoryMB = c.accel, c.ram
	o.BootstrapStartup, o.BuildStartup = 60*time.Second, 60*time.Second
	o.BootstrapTimeout, o.BuildTimeout = 180*time.Second, 180*time.Second
	o.ShutdownTimeout = 30 * time.Second
	o.BootstrapRetries, o.BuildRetries = 0, 0 // a retry would hide in the timing: fail instead
	lf, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		return nil, err
	}
	f := &farm{root: dir, task: c.task, opts: o, logFile: lf}
	// Bootstrap (and check the machine is there).
	o.DumpMachines = true
	var out bytes.Buffer
	a, err := agent.New(o, slog.New(slog.NewTextHandler(lf, nil)), &out)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	if err := a.Run(ctx, nil); err != nil {
		return nil, fmt.Errorf("bootstrap: %w (log %s)", err, lf.Name())
	}
	if !strings.Contains(out.String(), "busybox") {
		return nil, fmt.Errorf("bootstrap: no busybox machine in %q (log %s)", out.String(), lf.Name())
	}
	f.bootDir = filepath.Join(machines, machine.DefaultVolume, "busybox", "busybox-"+o.ToolchainName)
	if _, err := os.Stat(filepath.Join(f.bootDir, "kernel")); err != nil {
		return nil, fmt.Errorf("bootstrapped machine: %w", err)
	}
	if ms, err := manifest.ReadFile(filepath.Join(f.bootDir, "manifest")); err == nil && ms.Len() > 0 {
		for _, p := range ms.Manifest(0) {
			if p.Name == "mac" {
				f.mac = p.Value
			}
		}
	}
	fmt.Printf("busybox machine built, added and bootstrapped on %s in %.1fs\n", dir, time.Since(t0).Seconds())
	return f, nil
}

// runOurs runs the agent on the task, its VM started as start says, and
// times it.
func (f *farm) runOurs(ctx context.Context, start string) (timing, error) {
	o := f.opts
	o.FakeRequest, o.DumpResult, o.Start = f.task, true, start
	h := stamps{slog.NewTextHandler(f.logFile, &slog.HandlerOptions{Level: slog.LevelDebug}), &sync.Mutex{}, map[string]time.Time{"task snapshot": {}}}
	var out bytes.Buffer
	a, err := agent.New(o, slog.New(h), &out)
	if err != nil {
		return timing{}, err
	}
	vm, put := filepath.Join(o.TFTP, "*", "*", "vm"), filepath.Join(o.TFTP, "*", "*", "put")
	w := startWatch(pattern{filepath.Join(vm, qemu.SerialLogName), false}, pattern{filepath.Join(vm, qemu.SerialLogName), true},
		pattern{filepath.Join(put, worker.ProgressFile), false}, pattern{filepath.Join(put, worker.ResultName("*")), false})
	t0 := time.Now()
	err = a.Run(ctx, nil)
	total := time.Since(t0)
	seen := w.end(t0)
	if err != nil {
		return timing{}, err
	}
	if err := checkResult(out.Bytes(), "dumped result"); err != nil {
		return timing{}, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	snap := h.marks["task snapshot"].Sub(t0)
	if h.marks["task snapshot"].IsZero() {
		snap = 0
	}
	return timing{snap: snap, del: h.marks[deleteTook].Sub(time.Time{}), qemu: seen[0], console: seen[1], progress: seen[2], result: seen[3], total: total}, nil
}

// checkResult parses a result manifest and wants a success with four
// operations.
func checkResult(b []byte, what string) error {
	ms, err := manifest.Parse(bytes.NewReader(b), what)
	if err != nil {
		return err
	}
	if ms.Len() != 1 {
		return fmt.Errorf("%s: %d manifests, want one", what, ms.Len())
	}
	res, err := manifest.ParseResult(ms.Manifest(0), what, manifest.Lenient)
	if err != nil {
		return err
	}
	if res.Status != manifest.StatusSuccess || len(res.Results) != 4 {
		return fmt.Errorf("%s: %v with %d operations, want success with 4:\n%s", what, res.Status, len(res.Results), b)
	}
	return nil
}

// rawArgs is the agent's QEMU command line for the machine in dir, without
// the QMP socket, with the disk, serial log, TFTP port and MAC given.
func rawArgs(c config, dir, disk, serial string, port int, mac string) []string {
	cmdline, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
	appendLine := strings.TrimSpace(strings.TrimSpace(string(cmdline)) + " buildfarm.mode=build buildfarm.tftp=10.0.2.2:" + strconv.Itoa(port))
	dev := "virtio-net-pci,netdev=net0"
	if mac != "" {
		dev += ",mac=" + mac
	}
	a := []string{"-nodefaults", "-no-user-config", "-display", "none", "-machine", "pc,accel=" + c.accel,
		"-smp", "1", "-m", strconv.Itoa(c.ram), "-bios", qemu.QbootROM,
		"-kernel", filepath.Join(dir, "kernel"), "-append", appendLine,
		"-drive", "file=" + disk + ",format=raw,if=virtio,index=0",
		"-netdev", "user,id=net0", "-device", dev,
		"-serial", "file:" + serial, "-no-reboot"}
	if _, err := os.Stat(filepath.Join(dir, "initrd")); err == nil {
		a = slices.Insert(a, slices.Index(a, "-append"), "-initrd", filepath.Join(dir, "initrd"))
	}
	return a
}

// rawKey is raw's result key (worker.KeyFile): any 64 hex digits.
const rawKey = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// rawPort is the port tftpd-hpa listens on for raw (the agent's default
// for instance 1, 23401).
const rawPort = 23401

// runRaw boots the bootstrapped machine with plain QEMU in a namespace of
// its own where tftpd-hpa serves the task, and times QEMU from start to
// exit.
func (f *farm) runRaw(ctx context.Context, c config, dir string, i int) (timing, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return timing{}, err
	}
	defer os.RemoveAll(dir)
	srv := filepath.Join(dir, "tftp")
	if err := os.Mkdir(srv, 0o755); err != nil {
		return timing{}, err
	}
	if err := writeTask(srv, f.task); err != nil {
		return timing{}, err
	}
	// The result key, which the worker fetches before the steps and
	// uploads its result under, as the agent serves it.
	if err := os.WriteFile(filepath.Join(srv, worker.KeyFile), []byte(rawKey+"\n"), 0o644); err != nil {
		return timing{}, err
	}
	// A raw copy of the bootstrapped disk.
	src, format, err := machine.Disk(f.bootDir)
	if err != nil {
		return timing{}, err
	}
	disk := filepath.Join(dir, "disk.img")
	if format == "qcow2" {
		err = run1(ctx, "qemu-img", "convert", "-O", "raw", src, disk)
	} else {
		err = run1(ctx, "cp", "--sparse=always", src, disk)
	}
	if err != nil {
		return timing{}, err
	}
	// The namespace and tftpd-hpa in it.
	ns := fmt.Sprintf("bfbench-%d-%d", os.Getpid(), i)
	if err := run1(ctx, "ip", "netns", "add", ns); err != nil {
		return timing{}, err
	}
	defer run1(context.WithoutCancel(ctx), "ip", "netns", "del", ns)
	if err := run1(ctx, "ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
		return timing{}, err
	}
	tftpd, err := startTFTPD(ns, rawPort, srv, "-c", "-p", "-U", "022")
	if err != nil {
		return timing{}, err
	}
	defer tftpd()

	serial := filepath.Join(dir, "serial.log")
	args := append([]string{"netns", "exec", ns, "qemu-system-x86_64"}, rawArgs(c, f.bootDir, disk, serial, rawPort, f.mac)...)
	qctx, cancel := context.WithTimeout(ctx, 180*time.Second)
	defer cancel()
	cmd := exec.CommandContext(qctx, "ip", args...)
	var qout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &qout, &qout
	w := startWatch(pattern{serial, false}, pattern{serial, true},
		pattern{filepath.Join(srv, worker.ProgressFile), false}, pattern{filepath.Join(srv, worker.ResultName(rawKey)), false})
	t0 := time.Now()
	err = cmd.Run()
	d := time.Since(t0)
	seen := w.end(t0)
	if err != nil {
		con, _ := os.ReadFile(serial)
		return timing{}, fmt.Errorf("qemu: %v: %s; console:\n%s", err, qout.Bytes(), con)
	}
	b, err := os.ReadFile(filepath.Join(srv, worker.ResultName(rawKey)))
	if err != nil {
		con, _ := os.ReadFile(serial)
		return timing{}, fmt.Errorf("no result uploaded: %v; console:\n%s", err, con)
	}
	if err := checkResult(b, "raw's uploaded result"); err != nil {
		return timing{}, err
	}
	return timing{qemu: seen[0], console: seen[1], progress: seen[2], result: seen[3], total: d}, nil
}

// writeTask places the task manifest and its sources archive in dir, as
// the agent places them in a VM's get/ directory.
func writeTask(dir, path string) error {
	task, srcDir, err := agent.ReadTaskFile(path)
	if err != nil {
		return err
	}
	return agent.WriteTask(dir, task, srcDir)
}
