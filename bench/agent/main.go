// Command agent benchmarks buildfarm's agent against raw QEMU and its
// guest-side TFTP against busybox and tftpd-hpa, each side by side with its
// baseline in one run, interleaved, under the chosen accelerator (TCG
// here). It needs root, QEMU, the cached guest kernel, ip (iproute2),
// in.tftpd (tftpd-hpa), static busybox, go, and mkfs.btrfs for the btrfs
// backend; run it from the module root.
//
// 1. Per-task overhead (task.go). The busybox machine (`buildfarm image build
// --preset busybox`, with buildfarm-worker built CGO_ENABLED=0) is added to
// a volume, on btrfs on a loop device and/or on the fallback backend in a
// plain directory, and bootstrapped once by the agent, untimed. Then, in
// turns:
//
//   - ours: package agent in process at its defaults (--start auto: the
//     VM restored from the state saved after bootstrap), and ours-cold,
//     the same with --start cold (booted), each with --fake-request
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
//     :PORT`) serves a directory holding the same task manifest,
//     sources archive and a result key (worker.KeyFile) and takes the
//     uploads. Timed from QEMU's start to
//     its exit (the guest's init powers off after the worker uploaded its
//     result); the namespace, the disk copy and tftpd are set up before
//     the clock starts and torn down after it stops. The uploaded result
//     must be a success with four operations, as ours must.
//
// The variants run in turns, back to back as an agent runs tasks (-settle
// adds a pause before each), the first of each turn rotating. Each
// variant's median, quartiles, minimum and maximum, and the ratio of each
// of ours' medians over raw's are printed per backend; the goal is at
// most 1.05.
//
// 2. A toolchain-sized transfer into a running guest (xfer.go). The busybox machine,
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
// Both tables go, as JSON, to -results (bench/agent/results.json).
//
//	go run ./bench/agent [-runs 15] [-xfer-runs 3] [-size 67108864]
//	                     [-only task|xfer] [-backends btrfs,fallback]
//	                     [-settle 0] [-ram 512] [-results FILE]
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/buildfarm/buildfarm/internal/agent"
	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/cache"
	"github.com/buildfarm/buildfarm/internal/testenv"
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
	results        string
}

func main() {
	var c config
	var backends string
	flag.IntVar(&c.runs, "runs", 15, "task runs of each variant")
	flag.IntVar(&c.xferRuns, "xfer-runs", 3, "rounds of transfers in the guest")
	flag.Int64Var(&c.size, "size", 64<<20, "bytes to transfer")
	flag.StringVar(&c.only, "only", "", "run only one measurement: task or xfer")
	flag.StringVar(&backends, "backends", "btrfs,fallback", "machine backends for the task measurement")
	flag.StringVar(&c.accel, "accel", "tcg", "accelerator: kvm or tcg")
	flag.IntVar(&c.ram, "ram", agent.DefaultOptions().MemoryMB, "guest RAM, MiB (the agent's default)")
	flag.StringVar(&c.task, "task", filepath.Join("examples", "hello", "task.manifest"), "task manifest to build")
	flag.DurationVar(&c.settle, "settle", 0, "pause before each timed task run (0: back to back, as an agent runs tasks)")
	flag.StringVar(&c.results, "results", filepath.Join("bench", "agent", "results.json"), "JSON `file` for the tables (empty: none)")
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
	if err := testenv.BuildWorker(ctx, workerBin, arch.X8664); err != nil {
		return err
	}
	if err := testenv.GoBuild(ctx, getBin, "./bench/agent/guestget", arch.X8664.GOARCH()); err != nil {
		return err
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("kernel %s, accel %s, guest RAM %d MiB, load average %s", k.Version, c.accel, c.ram, load)
	res := results{Measured: time.Now().UTC().Format(time.RFC3339), Kernel: k.Version, Accel: c.accel, RAM: c.ram,
		Runs: c.runs, SettleNS: int64(c.settle), LoadBefore: strings.TrimSpace(string(load))}
	if c.only == "" || c.only == "task" {
		for _, b := range c.backends {
			rows, err := benchTask(ctx, c, b, tmp, workerBin)
			if err != nil {
				return fmt.Errorf("task, %s: %w", b, err)
			}
			res.Task = append(res.Task, rows...)
		}
	}
	if c.only == "" || c.only == "xfer" {
		rows, err := benchTransfer(ctx, c, tmp, workerBin, getBin)
		if err != nil {
			return fmt.Errorf("transfer: %w", err)
		}
		res.Transfer = rows
	}
	load, _ = os.ReadFile("/proc/loadavg")
	fmt.Printf("load average %s", load)
	res.LoadAfter = strings.TrimSpace(string(load))
	if c.results == "" {
		return nil
	}
	return testenv.WriteResults(c.results, res)
}

// results is what results.json holds: both tables of the last run.
type results struct {
	Measured   string    `json:"measured"`
	Kernel     string    `json:"kernel"`
	Accel      string    `json:"accel"`
	RAM        int       `json:"ram_mib"`
	Runs       int       `json:"runs"`
	SettleNS   int64     `json:"settle_ns"`
	LoadBefore string    `json:"load_average_before"`
	LoadAfter  string    `json:"load_average_after"`
	Task       []taskRow `json:"task,omitempty"`
	Transfer   []xferRow `json:"transfer,omitempty"`
}

// stats returns the median, minimum and maximum of ds.
func stats(ds []time.Duration) (med, lo, hi time.Duration) {
	med, _, _, lo, hi = spread(ds)
	return med, lo, hi
}

// spread returns the median, first and third quartiles, minimum and
// maximum of ds.
func spread(ds []time.Duration) (med, q1, q3, lo, hi time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	n := len(s)
	return s[n/2], s[n/4], s[(3*n)/4], s[0], s[n-1]
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
