package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/vmrecord"
)

// VMRegistry returns a directory for an agent's VM records (its
// --registry) and, as the test ends, stops what is still recorded there:
// it kills each VM's QEMU, by the PID its record holds and only if that
// process is still the VM's (its command line names the VM), and deletes
// the VM's network namespace. A VM that the agent suspended for
// investigation (a task past its deadline) outlives the agent, and so
// the test, unless its test powers it off.
func VMRegistry(t testing.TB) string {
	dir := t.TempDir()
	t.Cleanup(func() {
		recs, err := vmrecord.Registry{Dir: dir}.List()
		if err != nil {
			t.Errorf("VM records in %s: %v", dir, err)
		}
		for _, r := range recs {
			if r.PID > 0 && isVM(r.PID, r.Name) {
				t.Logf("killing VM %s (%s), pid %d, which its agent left", r.Name, r.State, r.PID)
				syscall.Kill(r.PID, syscall.SIGKILL)
			}
			if r.NetNS != "" {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				exec.CommandContext(ctx, "ip", "netns", "delete", r.NetNS).Run()
				cancel()
			}
		}
	})
	return dir
}

// isVM reports whether process pid is QEMU running the VM called name.
func isVM(pid int, name string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := bytes.Split(b, []byte{0})
	for i := 0; i+1 < len(args); i++ {
		if string(args[i]) == "-name" && string(args[i+1]) == name {
			return true
		}
	}
	return false
}
