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
			tftp    string
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
  tftp    a UDP port for the agent's TFTP server: 69 in a VM's own network
          namespace, or --tftp ADDR on the host
  kernel  a guest kernel in the cache

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
		cmd.Flags().StringVar(&tftp, "tftp", "", "check this host address (for example 127.0.0.1:69) for the TFTP server instead of a VM's namespace")
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

func checkTFTP(ctx context.Context, addr string) checkResult {
	if addr != "" {
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			return checkResult{checkFail, fmt.Sprintf("UDP %s: %v: stop what holds it or pick another --tftp address", addr, err)}
		}
		c.Close()
		return checkResult{checkOK, fmt.Sprintf("UDP %s is free", addr)}
	}
	ns, err := netns.New(ctx)
	if err != nil {
		return checkResult{checkFail, fmt.Sprintf("cannot make a VM's network namespace (run as root, with iproute2): %v", err)}
	}
	defer ns.Delete(context.WithoutCancel(ctx))
	c, err := ns.ListenPacket(ctx, "udp", "127.0.0.1:69")
	if err != nil {
		return checkResult{checkFail, fmt.Sprintf("UDP 127.0.0.1:69 in a VM's network namespace: %v", err)}
	}
	c.Close()
	return checkResult{checkOK, "UDP 127.0.0.1:69 is free in a VM's own network namespace"}
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
