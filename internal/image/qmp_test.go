package image

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// TestBusyboxUnderQMP boots the busybox machine of each architecture
// under internal/qemu, sees the worker start, and drives the guest over
// QMP: stop → paused, cont → running, power-down → the guest powers itself
// off (x86_64: the ACPI button and acpid; aarch64: virt's GPIO line, which
// the init watches, and PSCI).
func TestBusyboxUnderQMP(t *testing.T) {
	testenv.NeedVM(t)
	for _, a := range arch.All {
		t.Run(string(a), func(t *testing.T) { busyboxUnderQMP(t, a) })
	}
}

// buildWorkerFor builds cmd/buildfarm-worker (static) for a's guests.
func buildWorkerFor(t *testing.T, a arch.Arch) string {
	t.Helper()
	if a == arch.Host() {
		return buildWorker(t)
	}
	return testenv.Worker(t, a)
}

func busyboxUnderQMP(t *testing.T, a arch.Arch) {
	testenv.NeedKernelFor(t, a)
	testenv.NeedBusybox(t, a)
	testenv.NeedProgram(t, "qemu-system-"+string(a))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out := filepath.Join(t.TempDir(), "busybox")
	m, err := Build(ctx, Options{Preset: "busybox", Arch: a, Out: out, Worker: buildWorkerFor(t, a), DiskSize: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if mf, err := os.ReadFile(filepath.Join(out, ManifestFile)); err != nil || !strings.Contains(string(mf), "\nbuildfarm-arch: "+string(a)+"\n") || m.Arch != a {
		t.Errorf("Build(%s) = arch %s, manifest %q (%v); want buildfarm-arch: %s", a, m.Arch, mf, err, a)
	}
	cmdline, err := os.ReadFile(filepath.Join(out, CmdlineFile))
	if err != nil {
		t.Fatal(err)
	}
	vm, err := qemu.New(qemu.Config{
		Arch:     a,
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
		t.Fatalf("Shutdown = %v, %v; want the guest to power off on the power button", ok, err)
	}
	if err := vm.Wait(ctx); err != nil {
		t.Errorf("Wait after power-off = %v, want nil", err)
	}
}
