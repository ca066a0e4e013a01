package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/console"
	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/testenv"
	"github.com/buildfarm/buildfarm/internal/vmrecord"
)

func TestConsoleHelpListsEveryCommand(t *testing.T) {
	stdout, stderr, code := runManifest(t, "", "console", "--help")
	if code != 0 {
		t.Fatalf("console --help: exit %d: %s", code, stderr)
	}
	for _, c := range console.Commands() {
		if !strings.Contains(stdout, "\n  "+c.Name) || !strings.Contains(stdout, c.Brief) {
			t.Errorf("console --help does not explain %s:\n%s", c.Name, stdout)
		}
	}
}

func TestConsoleUnknownVM(t *testing.T) {
	dir := t.TempDir()
	_, stderr, code := runManifest(t, "", "console", "--registry", dir, "--links", dir, "nosuchvm", "version")
	if code != 1 || !strings.Contains(stderr, "vm nosuchvm: no record in "+dir) {
		t.Errorf("console nosuchvm: exit %d, stderr %q; want 1 and an error naming the registry", code, stderr)
	}
}

// TestConsoleCommand runs buildfarm console against a real QEMU (no guest
// to boot, started paused), found by its record, by its agent instance's
// link, and by its socket path; checks the exit status of OK and ERR, and
// the QEMU's run state after stop and go.
func TestConsoleCommand(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedProgram(t, "qemu-system-x86_64")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	work, err := os.MkdirTemp("", "bf-console-cmd-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(work)
	vmDir := filepath.Join(work, "vm")
	cfg := qemu.Config{Name: "bb-default-t1", Accel: qemu.TCG, Paused: true, Net: qemu.Net{Mode: qemu.NetNone}}
	console.SetPorts(&cfg, vmDir)
	vm, err := qemu.New(cfg, vmDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer vm.Forcedown(context.Background())
	links := filepath.Join(work, "links")
	srv, err := console.StartVM(ctx, vm, nil, console.LinkPath(links, "default", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	registry := filepath.Join(work, "vms")
	info := vm.Info()
	if err := (vmrecord.Registry{Dir: registry}).Write(vmrecord.Record{
		Name: info.Name, Machine: "bb", State: vmrecord.Suspended, Since: time.Now(), PID: info.PID,
		Dir: info.Dir, QMP: info.QMPSocket, SerialLog: info.SerialLog, Console: srv.Socket(),
	}); err != nil {
		t.Fatal(err)
	}
	bf := func(args ...string) (string, string, int) {
		return runManifest(t, "", append([]string{"console", "--registry", registry, "--links", links}, args...)...)
	}
	for _, vmName := range []string{info.Name, "default-1", srv.Socket()} {
		stdout, stderr, code := bf(vmName, "version")
		if code != 0 || !strings.HasPrefix(stdout, "OK\n") || !strings.Contains(stdout, "qemu ") || !strings.Contains(stdout, "prelaunch") {
			t.Errorf("console %s version: exit %d\n%s%s\nwant OK, QEMU's version and its state", vmName, code, stdout, stderr)
		}
	}
	for _, step := range []struct{ cmd, want string }{{"go", "running"}, {"stop", "paused"}} {
		stdout, stderr, code := bf(info.Name, step.cmd)
		if code != 0 || stdout != "OK "+step.want+"\n" {
			t.Errorf("console %s: exit %d, %q %q; want OK %s", step.cmd, code, stdout, stderr, step.want)
		}
		if got, err := vm.Status(ctx); err != nil || got != step.want {
			t.Errorf("after console %s, QMP says %q, %v; want %q", step.cmd, got, err, step.want)
		}
	}
	if stdout, _, code := bf(info.Name, "sysrq", "toolong"); code != 1 || !strings.HasPrefix(stdout, "ERR ") {
		t.Errorf("console sysrq toolong: exit %d, %q; want 1 and ERR", code, stdout)
	}
	// The interactive prompt: one command a line.
	stdout, stderr, code := runManifest(t, "config serial0\nnonsense\n", "console", "--registry", registry, info.Name)
	if code != 0 || !strings.Contains(stdout, "OK chardev serial0: ") || !strings.Contains(stdout, "unix:"+info.SerialSocket+",server=on") || !strings.Contains(stdout, "ERR unknown command \"nonsense\"") {
		t.Errorf("console prompt: exit %d\n%s%s", code, stdout, stderr)
	}
}
