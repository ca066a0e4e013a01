package testenv

import (
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/vmrecord"
)

// TestVMRegistryStopsLeftovers records two processes in a VMRegistry
// directory: one whose command line names its VM (as QEMU's -name does),
// which the registry's cleanup must kill, and one that does not (a PID
// reused by another process), which it must leave alone.
func TestVMRegistryStopsLeftovers(t *testing.T) {
	vm := exec.Command("sh", "-c", "sleep 60", "-name", "vm-left")
	other := exec.Command("sleep", "60")
	for _, c := range []*exec.Cmd{vm, other} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- vm.Wait() }()
	defer other.Process.Kill()
	defer vm.Process.Kill()
	t.Run("agent", func(t *testing.T) {
		g := vmrecord.Registry{Dir: VMRegistry(t)}
		for _, r := range []vmrecord.Record{
			{Name: "vm-left", State: vmrecord.Suspended, PID: vm.Process.Pid, Since: time.Now()},
			{Name: "vm-gone", State: vmrecord.Suspended, PID: other.Process.Pid, Since: time.Now()},
		} {
			if err := g.Write(r); err != nil {
				t.Fatal(err)
			}
		}
	})
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Errorf("the recorded VM's process (pid %d) still runs after its test", vm.Process.Pid)
	}
	if err := other.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("a process not the recorded VM's (pid %d) was stopped: %v", other.Process.Pid, err)
	}
}
