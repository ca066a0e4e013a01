package image

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// TestBusyboxUnderQMP boots the busybox machine under internal/qemu, sees
// the worker start, and drives the guest over QMP: stop → paused, cont →
// running, ACPI power-down → the guest powers itself off.
func TestBusyboxUnderQMP(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedKernel(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out := filepath.Join(t.TempDir(), "busybox")
	m, err := Build(ctx, Options{Preset: "busybox", Out: out, Worker: buildWorker(t), DiskSize: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	cmdline, err := os.ReadFile(filepath.Join(out, CmdlineFile))
	if err != nil {
		t.Fatal(err)
	}
	vm, err := qemu.New(qemu.Config{
		Accel:    qemu.TCG,
		Kernel:   filepath.Join(out, KernelFile),
		Initrd:   filepath.Join(out, InitrdFile),
		Append:   strings.TrimSpace(string(cmdline)),
		Drives:   []qemu.Drive{{Path: filepath.Join(out, DiskFile)}},
		Net:      qemu.Net{Mode: qemu.NetUser, MAC: m.MAC},
		NoReboot: true,
	}, filepath.Join(t.TempDir(), "vm"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		vm.Forcedown(context.Background())
		if t.Failed() {
			t.Logf("QEMU: %s\nconsole:\n%s", vm.CommandLine(), vm.SerialTail(4096))
		}
	})
	if _, err := vm.WaitConsole(ctx, "the worker's first sign of life", func(line string) bool {
		return strings.HasPrefix(line, "buildfarm-worker ") && strings.HasSuffix(strings.TrimSpace(line), ": started")
	}); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		do   func(context.Context) error
		want string
	}{{vm.Suspend, "paused"}, {vm.Resume, "running"}} {
		if err := step.do(ctx); err != nil {
			t.Fatal(err)
		}
		if got, err := vm.Status(ctx); err != nil || got != step.want {
			t.Fatalf("status = %q, %v; want %q", got, err, step.want)
		}
	}
	sctx, scancel := context.WithTimeout(ctx, 15*time.Second)
	defer scancel()
	ok, err := vm.Shutdown(sctx)
	if err != nil || !ok {
		t.Fatalf("Shutdown = %v, %v; want the guest to power off on the ACPI power button", ok, err)
	}
	if err := vm.Wait(ctx); err != nil {
		t.Errorf("Wait after power-off = %v, want nil", err)
	}
}
