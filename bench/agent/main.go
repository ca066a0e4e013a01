// Command agent benchmarks buildfarm's agent against raw QEMU and its
// guest-side TFTP against busybox and tftpd-hpa, each side by side with its
// baseline in one run, interleaved, under the chosen accelerator (TCG
// here). It needs root, QEMU, the cached guest kernel, ip (iproute2),
// in.tftpd (tftpd-hpa), static busybox, go, and mkfs.btrfs for the btrfs
// backend; run it from the module root.
//
// 1. Per-task overhead. The busybox machine (`buildfarm image build
// --preset busybox`, with buildfarm-worker built CGO_ENABLED=0) is added to
// a volume, on btrfs on a loop device and/or on the fallback backend in a
// plain directory, and bootstrapped once by the agent, untimed. Then, in
// turns:
//
//   - ours: package agent in process, with --fake-request
//     examples/hello/task.manifest and --dump-result, timed around the
//     whole Agent.Run: cleanup of strays, enumeration of the (already
//     bootstrapped) machines, the task snapshot, get/ filled, the network
//     namespace, the TFTP server with the agent's rules, the VM, the build,
//     the guest powering itself off, the result parsed, the snapshot and
//     namespace deleted. Nothing is subtracted; the time from Run to the
//     agent's "task snapshot" log record (cleanup, enumeration, snapshot)
//     and to "VM booted" (the guest's first TFTP request) is printed too.
//   - raw: the same machine's kernel, initrd and command line (plus the
//     worker's buildfarm.mode and buildfarm.tftp parameters, as the agent
//     appends them), a raw copy of its bootstrapped disk, started as
//     `ip netns exec NS qemu-system-x86_64 -kernel ... -initrd ...
//     -append ... -drive ...` with the agent's QEMU options (qboot, virtio
//     disk and NIC, user-mode networking, the machine's MAC, -no-reboot),
//     in a namespace where tftpd-hpa (`in.tftpd -L -s -c -p -u root -a
//     :PORT`) serves a directory holding the same task manifest and
//     sources archive and takes the uploads. Timed from QEMU's start to
//     its exit (the guest's init powers off after the worker uploaded its
//     result); the namespace, the disk copy and tftpd are set up before
//     the clock starts and torn down after it stops. The uploaded result
//     must be a success with four operations, as ours must.
//
// Runs alternate, ours first in odd runs and raw first in even ones, with a
// pause (-settle) before each. The ratio ours/raw of the medians (and of
// the minimums) is printed per backend; the goal is at most 1.05.
//
// 2. A toolchain-sized transfer into a running guest. The busybox machine,
// with its /init replaced (image.Options.InitOverride) and guestget added
// (our TFTP client, package tftp, with the worker's options; see
// bench/agent/guestget), boots once in a network namespace where our TFTP
// server (package tftp, the agent's read rule, transfer sockets opened in
// the namespace as the agent opens them) and tftpd-hpa (`ip netns exec NS
// in.tftpd -L -s -u root -a :PORT2 DIR`; the namespace's only interface is
// its loopback) serve the same file of -size bytes (64 MiB). The guest's
// init fetches it in rounds, in turn: guestget from our server at the
// worker's defaults (blksize 65464, no windowsize: lock-step) and busybox
// `tftp -g` from tftpd-hpa at 65464; the same two at blksize 1468;
// guestget at 1468 with windowsize 16; and, to tell client from server,
// busybox from our server and guestget from tftpd-hpa at both sizes.
// After an untimed warm-up fetch with each client, each fetch is timed in
// the guest from /proc/uptime (10 ms resolution) around the whole command
// (guestget also prints the transfer's own time), checked with sha256sum
// against the host's sum (untimed), and reported on the console, which
// the host parses. Ratios are the baseline's median
// over ours (above 1: ours is faster; the goal).
//
//	go run ./bench/agent [-runs 7] [-xfer-runs 3] [-size 67108864]
//	                     [-only task|xfer] [-backends btrfs,fallback]
//	                     [-settle 1s] [-ram 512]
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/buildfarm/buildfarm/internal/agent"
	"github.com/buildfarm/buildfarm/internal/cache"
	"github.com/buildfarm/buildfarm/internal/image"
	"github.com/buildfarm/buildfarm/internal/machine"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/netns"
	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/tftp"
	"github.com/buildfarm/buildfarm/internal/worker"
)

type config struct {
	runs, xferRuns int
	size           int64
	only           string
	backends       []string
	accel          string
	ram            int
	task           string
	settle         time.Duration
}

func main() {
	var c config
	var backends string
	flag.IntVar(&c.runs, "runs", 7, "task runs of each variant")
	flag.IntVar(&c.xferRuns, "xfer-runs", 3, "rounds of transfers in the guest")
	flag.Int64Var(&c.size, "size", 64<<20, "bytes to transfer")
	flag.StringVar(&c.only, "only", "", "run only one measurement: task or xfer")
	flag.StringVar(&backends, "backends", "btrfs,fallback", "machine backends for the task measurement")
	flag.StringVar(&c.accel, "accel", "tcg", "accelerator: kvm or tcg")
	flag.IntVar(&c.ram, "ram", agent.DefaultOptions().RAM, "guest RAM, MiB (the agent's default)")
	flag.StringVar(&c.task, "task", filepath.Join("examples", "hello", "task.manifest"), "task manifest to build")
	flag.DurationVar(&c.settle, "settle", time.Second, "pause before each timed task run")
	flag.Parse()
	c.backends = strings.Split(backends, ",")
	if (c.only != "" && c.only != "task" && c.only != "xfer") || c.runs < 1 || c.xferRuns < 1 || c.size < 1 {
		fmt.Fprintln(os.Stderr, "bench/agent: want -only task or xfer (or none), and positive -runs, -xfer-runs and -size")
		os.Exit(2)
	}
	if abs, err := filepath.Abs(c.task); err == nil {
		c.task = abs
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, c)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/agent:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, c config) error {
	k, err := cache.GuestKernel()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "bench-agent-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "bin")
	workerBin, getBin := filepath.Join(bin, "buildfarm-worker"), filepath.Join(bin, "guestget")
	for _, b := range []struct{ out, pkg string }{{workerBin, "./cmd/buildfarm-worker"}, {getBin, "./bench/agent/guestget"}} {
		if err := goBuild(ctx, b.out, b.pkg); err != nil {
			return err
		}
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("kernel %s, accel %s, guest RAM %d MiB, load average %s", k.Version, c.accel, c.ram, load)
	if c.only == "" || c.only == "task" {
		for _, b := range c.backends {
			if err := benchTask(ctx, c, b, tmp, workerBin); err != nil {
				return fmt.Errorf("task, %s: %w", b, err)
			}
		}
	}
	if c.only == "" || c.only == "xfer" {
		if err := benchTransfer(ctx, c, tmp, workerBin, getBin); err != nil {
			return fmt.Errorf("transfer: %w", err)
		}
	}
	load, _ = os.ReadFile("/proc/loadavg")
	fmt.Printf("load average %s", load)
	return nil
}

func goBuild(ctx context.Context, out, pkg string) error {
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = "/usr/local/go/bin/go"
	}
	cmd := exec.CommandContext(ctx, gobin, "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v: %s", pkg, err, b)
	}
	return nil
}

// stats returns the median, minimum and maximum of ds.
func stats(ds []time.Duration) (med, lo, hi time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2], s[0], s[len(s)-1]
}

// ---- 1. Per-task overhead ----

// timing is one task's times, from the start of Run (ours) or of the
// command that starts QEMU (raw): the snapshot made (ours only, from the
// agent's log), then, polled every 5 ms, QEMU's serial log created (QEMU
// is up), the console's first output (the guest's init: the kernel boots
// quiet), the worker's first upload (its progress report after it fetched
// the task) and its result upload in the TFTP directory; and the end.
type timing struct {
	snap, qemu, console, progress, result, total time.Duration
}

func (t timing) String() string {
	s := fmt.Sprintf("%.2fs: ", t.total.Seconds())
	if t.snap > 0 {
		s += fmt.Sprintf("snapshot at %.3fs, ", t.snap.Seconds())
	}
	return s + fmt.Sprintf("QEMU up at %.3fs, console at %.2fs, first upload at %.2fs, result at %.2fs, then %.2fs to the end",
		t.qemu.Seconds(), t.console.Seconds(), t.progress.Seconds(), t.result.Seconds(), (t.total-t.result).Seconds())
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

func benchTask(ctx context.Context, c config, backend, tmp, workerBin string) error {
	dir := filepath.Join(tmp, backend)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	switch backend {
	case "btrfs":
		mnt, cleanup, err := btrfsLoop(ctx, dir, 4<<30)
		if err != nil {
			return err
		}
		defer cleanup()
		dir = mnt
	case "fallback":
	default:
		return fmt.Errorf("unknown backend %q (want btrfs or fallback)", backend)
	}
	f, err := newFarm(ctx, c, dir, filepath.Join(tmp, "img-"+backend), workerBin)
	if err != nil {
		return err
	}
	defer f.logFile.Close()
	fmt.Printf("\n== per-task overhead, %s backend: %s, %d runs each, alternating ==\n", backend, c.task, c.runs)
	fmt.Printf("raw: ip netns exec NS qemu-system-x86_64 %s\n", shellJoin(rawArgs(c, f.bootDir, "DISK", "SERIAL", rawPort, f.mac)))

	var ours, raw []timing
	runOurs := func(i int) error {
		t, err := f.runOurs(ctx)
		if err != nil {
			return fmt.Errorf("ours, run %d: %w (agent log: %s)", i+1, err, f.logFile.Name())
		}
		ours = append(ours, t)
		fmt.Printf("run %d  ours %s\n", i+1, t)
		return nil
	}
	runRaw := func(i int) error {
		t, err := f.runRaw(ctx, c, filepath.Join(tmp, fmt.Sprintf("raw-%s-%d", backend, i)), i)
		if err != nil {
			return fmt.Errorf("raw, run %d: %w", i+1, err)
		}
		raw = append(raw, t)
		fmt.Printf("run %d  raw  %s\n", i+1, t)
		return nil
	}
	for i := range c.runs {
		// Alternate which goes first, and let what the last run left to
		// the kernel (namespace teardown, writeback) settle before each.
		order := []func(int) error{runOurs, runRaw}
		if i%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, r := range order {
			time.Sleep(c.settle)
			if err := r(i); err != nil {
				return err
			}
		}
	}
	om, rm := medians(ours), medians(raw)
	_, olo, ohi := stats(column(ours, func(t timing) time.Duration { return t.total }))
	_, rlo, rhi := stats(column(raw, func(t timing) time.Duration { return t.total }))
	fmt.Printf("median ours %s; min %.2fs, max %.2fs\n", om, olo.Seconds(), ohi.Seconds())
	fmt.Printf("median raw  %s; min %.2fs, max %.2fs\n", rm, rlo.Seconds(), rhi.Seconds())
	fmt.Printf("ratio ours/raw (%s): medians %.3f, minimums %.3f (goal <= 1.05)\n", backend, float64(om.total)/float64(rm.total), float64(olo)/float64(rlo))
	return nil
}

// btrfsLoop makes a btrfs file system of size bytes in a sparse file in dir,
// mounts it on a loop device, and returns the mount point and its cleanup.
func btrfsLoop(ctx context.Context, dir string, size int64) (string, func(), error) {
	img, mnt := filepath.Join(dir, "btrfs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return "", nil, err
	}
	f, err := os.Create(img)
	if err == nil {
		err = f.Truncate(size)
		f.Close()
	}
	if err != nil {
		return "", nil, err
	}
	if b, err := exec.CommandContext(ctx, "mkfs.btrfs", "-q", img).CombinedOutput(); err != nil {
		return "", nil, fmt.Errorf("mkfs.btrfs: %v: %s", err, b)
	}
	if b, err := exec.CommandContext(ctx, "mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		return "", nil, fmt.Errorf("mount -o loop: %v: %s", err, b)
	}
	return mnt, func() {
		for i := 0; ; i++ {
			b, err := exec.Command("umount", mnt).CombinedOutput()
			if err == nil {
				break
			}
			if i == 20 {
				fmt.Fprintf(os.Stderr, "umount %s: %v: %s; unmounting lazily\n", mnt, err, b)
				exec.Command("umount", "-l", mnt).Run()
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		os.Remove(img)
	}, nil
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
	o.Accel, o.RAM = c.accel, c.ram
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
	if ms, err := manifest.ReadFile(filepath.Join(f.bootDir, "manifest")); err == nil && len(ms) > 0 {
		for _, p := range ms[0] {
			if p.Name == "mac" {
				f.mac = p.Value
			}
		}
	}
	fmt.Printf("busybox machine built, added and bootstrapped on %s in %.1fs\n", dir, time.Since(t0).Seconds())
	return f, nil
}

// runOurs runs the agent on the task and times it.
func (f *farm) runOurs(ctx context.Context) (timing, error) {
	o := f.opts
	o.FakeRequest, o.DumpResult = f.task, true
	h := stamps{slog.NewTextHandler(f.logFile, nil), &sync.Mutex{}, map[string]time.Time{"task snapshot": {}}}
	var out bytes.Buffer
	a, err := agent.New(o, slog.New(h), &out)
	if err != nil {
		return timing{}, err
	}
	vm, put := filepath.Join(o.TFTP, "*", "*", "vm"), filepath.Join(o.TFTP, "*", "*", "put")
	w := startWatch(pattern{filepath.Join(vm, qemu.SerialLogName), false}, pattern{filepath.Join(vm, qemu.SerialLogName), true},
		pattern{filepath.Join(put, worker.ProgressFile), false}, pattern{filepath.Join(put, worker.ResultFile), false})
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
	return timing{snap: h.marks["task snapshot"].Sub(t0), qemu: seen[0], console: seen[1], progress: seen[2], result: seen[3], total: total}, nil
}

// checkResult parses a result manifest and wants a success with four
// operations.
func checkResult(b []byte, what string) error {
	ms, err := manifest.Parse(bytes.NewReader(b), what)
	if err != nil {
		return err
	}
	if len(ms) != 1 {
		return fmt.Errorf("%s: %d manifests, want one", what, len(ms))
	}
	res, err := manifest.ParseResult(ms[0], what, manifest.Lenient)
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
		pattern{filepath.Join(srv, worker.ProgressFile), false}, pattern{filepath.Join(srv, worker.ResultFile), false})
	t0 := time.Now()
	err = cmd.Run()
	d := time.Since(t0)
	seen := w.end(t0)
	if err != nil {
		con, _ := os.ReadFile(serial)
		return timing{}, fmt.Errorf("qemu: %v: %s; console:\n%s", err, qout.Bytes(), con)
	}
	b, err := os.ReadFile(filepath.Join(srv, worker.ResultFile))
	if err != nil {
		con, _ := os.ReadFile(serial)
		return timing{}, fmt.Errorf("no result uploaded: %v; console:\n%s", err, con)
	}
	if err := checkResult(b, "raw's uploaded result"); err != nil {
		return timing{}, err
	}
	return timing{qemu: seen[0], console: seen[1], progress: seen[2], result: seen[3], total: d}, nil
}

// startTFTPD starts tftpd-hpa in the namespace ns on port, serving dir,
// and returns the function that stops it. It listens on the wildcard
// address, which in a namespace whose only interface is lo is
// 127.0.0.1: given "-a 127.0.0.1:PORT" there, in.tftpd exits with status
// 66, its getaddrinfo (AI_ADDRCONFIG) finding no address that is not a
// loopback one.
func startTFTPD(ns string, port int, dir string, extra ...string) (func(), error) {
	args := append([]string{"netns", "exec", ns, "in.tftpd", "-L", "-s", "-u", "root", "-a", fmt.Sprintf(":%d", port)}, extra...)
	cmd := exec.Command("ip", append(args, dir)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// It is listening once its socket shows in the namespace.
	for i := 0; ; i++ {
		b, _ := exec.Command("ip", "netns", "exec", ns, "ss", "-Hlun", fmt.Sprintf("sport = :%d", port)).Output()
		if len(bytes.TrimSpace(b)) > 0 {
			break
		}
		select {
		case err := <-done:
			return nil, fmt.Errorf("in.tftpd exited: %v: %s", err, out.Bytes())
		case <-time.After(20 * time.Millisecond):
		}
		if i == 250 {
			cmd.Process.Kill()
			<-done
			return nil, fmt.Errorf("in.tftpd did not listen on port %d within 5 s: %s", port, out.Bytes())
		}
	}
	return func() {
		cmd.Process.Kill() // by pid: ip netns exec execs in.tftpd in place
		<-done
	}, nil
}

// shellJoin quotes the words that need it, for printing a command.
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = a
		if strings.ContainsAny(a, " '\"$") {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}

func run1(ctx context.Context, name string, args ...string) error {
	if b, err := exec.CommandContext(ctx, name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, b)
	}
	return nil
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

// ---- 2. Transfer into a running guest ----

// A transfer variant the guest runs each round: a client fetching "big"
// from a server at a block size (0: the worker's default) and windowsize
// (0: none).
type xfer struct {
	client, server  string // "ours" (guestget; package tftp's server) or "busybox", "tftpd-hpa"
	blksize, window int
}

const (
	oursPort = 23461
	hpaPort  = 23462
)

// xfers: the comparison the goal is about (ours against busybox with
// tftpd-hpa), then each side crossed with the other's partner, so that a
// difference can be put on the client or on the server.
var xfers = []xfer{
	{"ours", "ours", 0, 0},
	{"busybox", "tftpd-hpa", 65464, 0},
	{"ours", "ours", 1468, 0},
	{"busybox", "tftpd-hpa", 1468, 0},
	{"ours", "ours", 1468, 16},
	{"busybox", "ours", 65464, 0},
	{"ours", "tftpd-hpa", 0, 0},
	{"busybox", "ours", 1468, 0},
	{"ours", "tftpd-hpa", 1468, 0},
}

func (x xfer) name() string {
	s := x.client + " client, " + x.server + " server, "
	if x.blksize == 0 {
		s += "worker defaults (65464)"
	} else {
		s += fmt.Sprint("blksize ", x.blksize)
	}
	if x.window > 0 {
		s += fmt.Sprint(", windowsize ", x.window)
	}
	return s
}

func (x xfer) cmd() string {
	port := oursPort
	if x.server == "tftpd-hpa" {
		port = hpaPort
	}
	if x.client == "busybox" {
		return fmt.Sprintf("tftp -g -b %d -r big -l /tmp/f 10.0.2.2 %d", x.blksize, port)
	}
	c := "guestget"
	if x.blksize != 0 {
		c += fmt.Sprint(" -blksize ", x.blksize)
	}
	if x.window != 0 {
		c += fmt.Sprint(" -windowsize ", x.window)
	}
	return fmt.Sprintf("%s 10.0.2.2:%d big /tmp/f", c, port)
}

// xferInit is the guest's /init: modules, a static address, the rounds of
// transfers, each line "BENCH <variant> <round> <t0> <t1> <sha ok> ...".
func xferInit(rounds int, sum string) string {
	var b strings.Builder
	b.WriteString(`#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
while read -r ko; do [ -z "$ko" ] || insmod "$ko"; done </etc/buildfarm/modules
ip link set lo up
nic=""
for d in /sys/class/net/*; do [ "${d##*/}" = lo ] || { nic=${d##*/}; break; }; done
ip link set "$nic" up
ip addr add 10.0.2.15/24 dev "$nic"
ip route add default via 10.0.2.2
mkdir -p /tmp
echo "BENCH ready $(cut -d' ' -f1 /proc/uptime)"
x() {
	rm -f /tmp/f
	sync
	t0=$(cut -d' ' -f1 /proc/uptime)
	sh -c "$2" >/tmp/out 2>&1
	st=$?
	t1=$(cut -d' ' -f1 /proc/uptime)
	ok=bad
	[ $st = 0 ] && [ "$(sha256sum /tmp/f | cut -d' ' -f1)" = "$SUM" ] && ok=ok
	echo "BENCH $1 $round $t0 $t1 $ok status=$st $(tr '\n' ' ' </tmp/out | cut -c1-200)"
	rm -f /tmp/f
}
`)
	// A warm-up fetch with each client, untimed: the guest's first touch
	// of its RAM for the file would otherwise go to the first variant.
	fmt.Fprintf(&b, "SUM=%s\nround=0\nx 0 '%s'\nx 1 '%s'\nround=1\nwhile [ $round -le %d ]; do\n", sum, xfers[0].cmd(), xfers[1].cmd(), rounds)
	for i, x := range xfers {
		fmt.Fprintf(&b, "\tx %d '%s'\n", i, x.cmd())
	}
	b.WriteString("\tround=$((round + 1))\ndone\necho \"BENCH done\"\npoweroff -f\nsleep 10\n")
	return b.String()
}

func benchTransfer(ctx context.Context, c config, tmp, workerBin, getBin string) error {
	dir := filepath.Join(tmp, "xfer")
	get := filepath.Join(dir, "get")
	if err := os.MkdirAll(get, 0o755); err != nil {
		return err
	}
	// The file: pseudo-random bytes, and its sum.
	sum, err := writeRandom(filepath.Join(get, "big"), c.size)
	if err != nil {
		return err
	}
	initFile := filepath.Join(dir, "init")
	if err := os.WriteFile(initFile, []byte(xferInit(c.xferRuns, sum)), 0o755); err != nil {
		return err
	}
	img := filepath.Join(dir, "img")
	if _, err := image.Build(ctx, image.Options{Preset: "busybox", Out: img, Worker: workerBin,
		InitOverride: initFile, Add: []image.Add{{Src: getBin, Dst: "bin/guestget"}}}); err != nil {
		return err
	}
	cmdline, err := os.ReadFile(filepath.Join(img, "cmdline"))
	if err != nil {
		return err
	}

	// The namespace, our server with the agent's rules, and tftpd-hpa.
	ns, err := netns.New(ctx)
	if err != nil {
		return err
	}
	defer ns.Delete(context.WithoutCancel(ctx))
	conn, err := ns.ListenPacket(ctx, "udp4", fmt.Sprintf("127.0.0.1:%d", oursPort))
	if err != nil {
		return err
	}
	rule, err := tftp.ParseRule(`Gr ^/?(.+)$ get/\1`) // the agent's read rule
	if err != nil {
		return err
	}
	srv := &tftp.Server{Root: dir, Rules: []tftp.Rule{rule},
		ListenTransfer: func() (net.PacketConn, error) {
			return ns.ListenPacket(context.WithoutCancel(ctx), "udp4", "127.0.0.1:0")
		}}
	sctx, scancel := context.WithCancel(ctx)
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(sctx, conn) }()
	defer func() { scancel(); conn.Close(); <-served }()
	stopTFTPD, err := startTFTPD(ns.Name, hpaPort, get)
	if err != nil {
		return err
	}
	defer stopTFTPD()

	vm, err := qemu.New(qemu.Config{Name: "bench-xfer", Accel: c.accel, MemoryMB: c.ram,
		Kernel: filepath.Join(img, "kernel"), Initrd: filepath.Join(img, "initrd"),
		Append: strings.TrimSpace(string(cmdline)), NoReboot: true, NetNS: ns.Path()}, filepath.Join(dir, "vm"), nil)
	if err != nil {
		return err
	}
	fmt.Printf("\n== transfer of %d bytes into a running guest, %d rounds, interleaved ==\n", c.size, c.xferRuns)
	vctx, cancel := context.WithTimeout(ctx, time.Duration(c.xferRuns)*10*time.Minute)
	defer cancel()
	defer vm.Forcedown(context.WithoutCancel(ctx))
	if err := vm.Start(vctx); err != nil {
		return err
	}
	if _, err := vm.WaitConsole(vctx, "the end of the rounds", qemu.Contains("BENCH done")); err != nil {
		return err
	}
	vm.Wait(vctx)
	con, err := os.ReadFile(vm.Info().SerialLog)
	if err != nil {
		return err
	}
	return reportTransfers(c, con)
}

func writeRandom(path string, size int64) (string, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	r := rand.NewChaCha8([32]byte{'b', 'e', 'n', 'c', 'h'})
	_, err = io.CopyN(io.MultiWriter(f, h), r, size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return hex.EncodeToString(h.Sum(nil)), err
}

func reportTransfers(c config, con []byte) error {
	times := make([][]time.Duration, len(xfers))
	inner := make([][]time.Duration, len(xfers))
	var errs []error
	for _, line := range strings.Split(string(con), "\n") {
		line = strings.TrimRight(line, "\r")
		i := strings.Index(line, "BENCH ")
		if i < 0 {
			continue
		}
		f := strings.Fields(line[i:])
		if len(f) < 6 || f[1] == "ready" || f[1] == "done" {
			continue
		}
		v, err1 := strconv.Atoi(f[1])
		t0, err2 := strconv.ParseFloat(f[3], 64)
		t1, err3 := strconv.ParseFloat(f[4], 64)
		if err := errors.Join(err1, err2, err3); err != nil || v < 0 || v >= len(xfers) {
			errs = append(errs, fmt.Errorf("console line %q: %v", line, err))
			continue
		}
		if f[2] == "0" { // the warm-up
			if f[5] != "ok" {
				errs = append(errs, fmt.Errorf("%s, warm-up failed: %s", xfers[v].name(), line))
			}
			continue
		}
		if f[5] != "ok" {
			errs = append(errs, fmt.Errorf("%s, round %s failed: %s", xfers[v].name(), f[2], line))
			continue
		}
		d := time.Duration((t1 - t0) * float64(time.Second))
		times[v] = append(times[v], d)
		// guestget prints "BYTES NS" of the transfer itself.
		var inDur string
		if xfers[v].client == "ours" && len(f) >= 9 {
			if ns, err := strconv.ParseInt(f[8], 10, 64); err == nil {
				inner[v] = append(inner[v], time.Duration(ns))
				inDur = fmt.Sprintf("  (transfer alone %.2fs)", time.Duration(ns).Seconds())
			}
		}
		fmt.Printf("round %s  %-60s %.2fs%s\n", f[2], xfers[v].name(), d.Seconds(), inDur)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	med := make([]time.Duration, len(xfers))
	for v, x := range xfers {
		if len(times[v]) == 0 {
			return fmt.Errorf("%s: no result on the console", x.name())
		}
		m, lo, hi := stats(times[v])
		med[v] = m
		extra := ""
		if len(inner[v]) > 0 {
			im, _, _ := stats(inner[v])
			extra = fmt.Sprintf("; transfer alone %.2fs", im.Seconds())
		}
		mib := float64(c.size) / (1 << 20)
		fmt.Printf("median %-60s %.2fs (min %.2fs, max %.2fs; %.1f MiB/s%s)\n", x.name(), m.Seconds(), lo.Seconds(), hi.Seconds(), mib/m.Seconds(), extra)
	}
	ratio := func(what string, base, ours int) {
		fmt.Printf("ratio %-62s %.2f\n", what+":", float64(med[base])/float64(med[ours]))
	}
	fmt.Println("ratios of medians, baseline / ours (above 1: ours is faster):")
	ratio("busybox+tftpd-hpa 65464 / ours worker defaults (goal > 1)", 1, 0)
	ratio("busybox+tftpd-hpa 1468 / ours 1468 lock-step (goal > 1)", 3, 2)
	ratio("busybox+tftpd-hpa 1468 / ours 1468 windowsize 16", 3, 4)
	ratio("busybox+tftpd-hpa 65464 / ours 1468 windowsize 16", 1, 4)
	ratio("servers, busybox client, 65464: tftpd-hpa / ours", 1, 5)
	ratio("servers, busybox client, 1468: tftpd-hpa / ours", 3, 7)
	ratio("clients, tftpd-hpa server, 65464: busybox / ours", 1, 6)
	ratio("clients, tftpd-hpa server, 1468: busybox / ours", 3, 8)
	return nil
}
