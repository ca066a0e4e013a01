package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/buildfarm/buildfarm/internal/accel"
	"github.com/buildfarm/buildfarm/internal/agent"
	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/cache"
	"github.com/buildfarm/buildfarm/internal/netns"
	"github.com/buildfarm/buildfarm/internal/proc"
)

// A doctor check's outcome. Only fail stops builds.
const (
	checkOK   = "ok"
	checkWarn = "warn"
	checkFail = "FAIL"
)

type checkResult struct {
	status, text string
}

func init() {
	register(func(e *env) *cobra.Command {
		var (
			reprobe bool
			tftp    tftpCheck
		)
		cmd := &cobra.Command{
			Use:   "doctor",
			Short: "Check that this host can run builds",
			Long: `Check what builds need on this host, one line per check:

  qemu    qemu-system-x86_64 is installed, and its version
  accel   the accelerator guests will run under (a bounded KVM test boot,
          cached; --reprobe runs it again)
  btrfs   mkfs.btrfs and the kernel's btrfs support (machines snapshot by
          reflink copies without it)
  tftp    the agent's TFTP sockets as the agent will open them: by default
          a network namespace of a VM's own, made and deleted, with
          127.0.0.1:PORT bound in it (PORT is --tftp-port plus --instance;
          in a namespace of its own it cannot be taken, so what holds it on
          the host does not matter); with --no-netns, 127.0.0.1:PORT on the
          host for each of --instances VMs (PORT plus 1000 a VM), which
          fails when something holds one
  kernel  a guest kernel in the cache
  arch    one line per guest architecture (x86_64, aarch64): whether this
          host can run its guests and how: the accelerator (KVM only for
          the host's own architecture, TCG for another), its QEMU binary,
          and its guest kernel (and busybox, for another architecture) in
          the cache; warn when one is missing

Exit status 0 when builds can run, 1 otherwise; a failing line says what to
do.`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				ctx := cmd.Context()
				checks := []struct {
					name string
					run  func(context.Context) checkResult
				}{
					{"qemu", checkQEMU},
					{"accel", func(ctx context.Context) checkResult { return checkAccel(ctx, e, reprobe) }},
					{"btrfs", checkBtrfs},
					{"tftp", func(ctx context.Context) checkResult { return checkTFTP(ctx, tftp) }},
					{"kernel", checkKernel},
				}
				for _, a := range arch.All {
					checks = append(checks, struct {
						name string
						run  func(context.Context) checkResult
					}{"arch", func(ctx context.Context) checkResult { return checkArch(ctx, e, a) }})
				}
				failed := 0
				for _, c := range checks {
					r := c.run(ctx)
					if r.status == checkFail {
						failed++
					}
					fmt.Fprintf(e.stdout, "%-6s %-4s %s\n", c.name, r.status, r.text)
				}
				if failed > 0 {
					return silent(1, fmt.Errorf("doctor: %d checks failed", failed))
				}
				return nil
			},
		}
		cmd.Flags().BoolVar(&reprobe, "reprobe", false, "run the accelerator's test boot again rather than use the cached verdict")
		o := agent.DefaultOptions()
		cmd.Flags().IntVar(&tftp.port, "tftp-port", o.TFTPPort, "the agent's base TFTP `port`, as given to the agent")
		cmd.Flags().IntVar(&tftp.instance, "instance", o.Instance, "the agent's instance `number`")
		cmd.Flags().IntVar(&tftp.instances, "instances", o.Instances, "the `number` of VMs the agent runs at once")
		cmd.Flags().BoolVar(&tftp.noNetNS, "no-netns", o.NoNetNS, "check as for an agent run with --no-netns (VMs in the host's network)")
		return cmd
	})
}

func checkQEMU(ctx context.Context) checkResult {
	path, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return checkResult{checkFail, "qemu-system-x86_64 not found: install Debian's qemu-system-x86 (scripts/deps does)"}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := proc.Output(ctx, path, "--version")
	if err != nil {
		return checkResult{checkFail, fmt.Sprintf("%s does not run: %v", path, err)}
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return checkResult{checkOK, fmt.Sprintf("%s (%s)", strings.TrimSpace(line), path)}
}

func checkAccel(ctx context.Context, e *env, reprobe bool) checkResult {
	p := &accel.Prober{Log: e.log}
	var v accel.Verdict
	var err error
	if reprobe {
		v, err = p.Probe(ctx)
	} else {
		v, err = p.Verdict(ctx)
	}
	if err != nil {
		return checkResult{checkFail, fmt.Sprintf("cannot probe: %v", err)}
	}
	how := fmt.Sprintf("probed in %.1fs", v.Took.Seconds())
	if v.Cached {
		how = "cached " + v.Probed.Format(time.RFC3339) + "; --reprobe to test again"
	}
	return checkResult{checkOK, fmt.Sprintf("%s: %s (%s)", v.Accel, v.Reason, how)}
}

// checkArch says whether this host can run guests of a, and how.
func checkArch(ctx context.Context, e *env, a arch.Arch) checkResult {
	bin := "qemu-system-" + string(a)
	pkg := map[arch.Arch]string{arch.X8664: "qemu-system-x86", arch.AArch64: "qemu-system-arm"}[a]
	var missing, have []string
	if path, err := exec.LookPath(bin); err != nil {
		missing = append(missing, fmt.Sprintf("%s not found (install %s)", bin, pkg))
	} else {
		have = append(have, path)
	}
	if k, err := cache.GuestKernelFor(a); err != nil {
		missing = append(missing, fmt.Sprintf("no guest kernel in %s", cache.KernelDir(a)))
	} else {
		have = append(have, "kernel "+k.Version)
	}
	if bb, err := cache.Busybox(a); err != nil {
		missing = append(missing, fmt.Sprintf("no busybox in %s", cache.BusyboxDir(a)))
	} else if a != arch.Host() {
		have = append(have, "busybox "+bb)
	}
	if len(missing) > 0 {
		return checkResult{checkWarn, fmt.Sprintf("%s guests cannot run: %s; scripts/deps installs them", a, strings.Join(missing, ", "))}
	}
	v, err := (&accel.Prober{Log: e.log, Arch: a}).Verdict(ctx)
	how := "tcg"
	switch {
	case err != nil:
		how = fmt.Sprintf("accelerator unknown (%v)", err)
	case a == arch.Host():
		how = v.Accel + " (the accel check's verdict)"
	default:
		how = v.Accel + " (KVM runs only the host's architecture)"
	}
	return checkResult{checkOK, fmt.Sprintf("%s guests run under %s: %s", a, how, strings.Join(have, ", "))}
}

func checkBtrfs(ctx context.Context) checkResult {
	mkfs, err := exec.LookPath("mkfs.btrfs")
	if err != nil {
		return checkResult{checkWarn, "mkfs.btrfs not found: machines fall back to reflink copies; install btrfs-progs for cheap snapshots"}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, _ := proc.Output(ctx, mkfs, "--version")
	version := strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	if kernelHasFS("btrfs") {
		return checkResult{checkOK, fmt.Sprintf("%s; the kernel supports btrfs", version)}
	}
	var u unix.Utsname
	unix.Uname(&u)
	release := unix.ByteSliceToString(u.Release[:])
	mods, _ := filepath.Glob(filepath.Join("/lib/modules", release, "kernel/fs/btrfs/btrfs.ko*"))
	if len(mods) > 0 {
		return checkResult{checkOK, fmt.Sprintf("%s; btrfs is a module of the kernel (%s), loaded on first mount", version, mods[0])}
	}
	return checkResult{checkWarn, fmt.Sprintf("%s, but the kernel (%s) has no btrfs: machines fall back to reflink copies", version, release)}
}

// kernelHasFS reports whether /proc/filesystems lists fs.
func kernelHasFS(fs string) bool {
	f, err := os.Open("/proc/filesystems")
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 0 && fields[len(fields)-1] == fs {
			return true
		}
	}
	return false
}

// tftpCheck is what the agent's TFTP sockets depend on: its flags.
type tftpCheck struct {
	port, instance, instances int
	noNetNS                   bool
}

// checkTFTP opens the agent's TFTP sockets where the agent will (see
// internal/agent's vmRun.Start): each VM's server listens on
// 127.0.0.1:PORT, PORT being --tftp-port plus --instance plus 1000 for each
// VM slot (agent.Options.SlotPort); in a network namespace made for that VM, or on the host with
// --no-netns. A namespace made for one VM holds nothing else, so there a
// port cannot be busy: what can fail is making the namespace and binding
// in it, and that is what is tried. On the host, every slot's port must be
// free.
func checkTFTP(ctx context.Context, c tftpCheck) checkResult {
	ao := agent.Options{TFTPPort: c.port, Instance: c.instance, ToolchainNum: 1}
	first := ao.SlotPort(0)
	addr := fmt.Sprintf("127.0.0.1:%d", first)
	if !c.noNetNS {
		ns, err := netns.New(ctx)
		if err != nil {
			return checkResult{checkFail, fmt.Sprintf("cannot make a VM's network namespace, which the agent needs for each VM: %v: run the agent as root, or with --no-netns (then check with doctor --no-netns)", err)}
		}
		defer ns.Delete(context.WithoutCancel(ctx))
		l, err := ns.ListenPacket(ctx, "udp4", addr)
		if err != nil {
			return checkResult{checkFail, fmt.Sprintf("UDP %s in a VM's network namespace: %v", addr, err)}
		}
		l.Close()
		host := "free"
		if h, err := net.ListenPacket("udp4", addr); err != nil {
			host = "taken"
		} else {
			h.Close()
		}
		return checkResult{checkOK, fmt.Sprintf("UDP %s bound in a VM's network namespace (the guest's 10.0.2.2:%d); each VM gets a namespace of its own, where no port is busy, so that %s is %s on the host does not matter", addr, first, addr, host)}
	}
	var ports []string
	for slot := range max(c.instances, 1) {
		a := fmt.Sprintf("127.0.0.1:%d", ao.SlotPort(slot))
		l, err := net.ListenPacket("udp4", a)
		if err != nil {
			return checkResult{checkFail, fmt.Sprintf("UDP %s (VM %d of %d) on the host, where the agent with --no-netns serves: %v: stop what holds it, or give the agent (and doctor) another --tftp-port or --instance", a, slot+1, max(c.instances, 1), err)}
		}
		l.Close()
		ports = append(ports, a)
	}
	return checkResult{checkWarn, fmt.Sprintf("UDP %s free on the host (--no-netns: guests share the host's network and are not isolated)", strings.Join(ports, ", "))}
}

func checkKernel(context.Context) checkResult {
	k, err := cache.GuestKernel()
	if errors.Is(err, cache.ErrNoKernel) {
		return checkResult{checkFail, fmt.Sprintf("%v: run scripts/deps, or buildfarm image build", err)}
	}
	if err != nil {
		return checkResult{checkFail, err.Error()}
	}
	return checkResult{checkOK, fmt.Sprintf("%s (%s)", k.Version, k.Dir)}
}
