package proc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The helper process of TestTetherParentDeath: it starts `sleep 600`
// tethered, releases it when asked, prints its pid and waits to be killed.
func init() {
	mode := os.Getenv("BUILDFARM_TETHER_HELPER")
	if mode == "" || os.Args[0] == tetherArg0 {
		return
	}
	t, err := StartTethered(Command(context.Background(), "sleep", "600"))
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	if mode == "release" {
		if err := t.Release(context.Background()); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
	}
	fmt.Printf("pid %d\n", t.PID)
	select {}
}

func running(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !strings.Contains(string(b), ") Z ")
}

// TestTetherParentDeath: a tethered program dies with the process that
// started it, unless released; then it outlives it.
func TestTetherParentDeath(t *testing.T) {
	for _, mode := range []string{"tied", "release"} {
		t.Run(mode, func(t *testing.T) {
			helper := exec.Command(os.Args[0], "-test.run=^$")
			helper.Env = append(os.Environ(), "BUILDFARM_TETHER_HELPER="+mode)
			out, err := helper.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := helper.Start(); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(out).ReadString('\n')
			if err != nil {
				helper.Process.Kill()
				helper.Wait()
				t.Fatalf("helper: %v", err)
			}
			var pid int
			if _, err := fmt.Sscanf(line, "pid %d", &pid); err != nil {
				t.Fatalf("helper said %q: %v", line, err)
			}
			t.Cleanup(func() { syscall.Kill(-pid, syscall.SIGKILL) })
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) != "sleep" {
				t.Fatalf("pid %d is %q, want the tethered sleep", pid, comm)
			}
			helper.Process.Kill()
			helper.Wait()
			deadline := time.Now().Add(5 * time.Second)
			for running(pid) && time.Now().Before(deadline) && mode == "tied" {
				time.Sleep(10 * time.Millisecond)
			}
			if mode == "release" {
				time.Sleep(500 * time.Millisecond)
			}
			if got, want := running(pid), mode == "release"; got != want {
				t.Errorf("%s: sleep %d running = %v after its starter was killed, want %v", mode, pid, got, want)
			}
		})
	}
}

func TestTetherCloseAndExitStatus(t *testing.T) {
	tt, err := StartTethered(Command(context.Background(), "sleep", "600"))
	if err != nil {
		t.Fatal(err)
	}
	if !running(tt.PID) {
		t.Fatalf("tethered sleep %d not running", tt.PID)
	}
	tt.Close()
	err = tt.Cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("tether after Close: %v, want killed by SIGKILL as its program was", err)
	}
	if running(tt.PID) {
		t.Errorf("sleep %d survived its tether's Close", tt.PID)
	}

	tt, err = StartTethered(Command(context.Background(), "sh", "-c", "exit 3"))
	if err != nil {
		t.Fatal(err)
	}
	err = tt.Cmd.Wait()
	tt.Close()
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("tether of sh -c 'exit 3': %v, want exit status 3", err)
	}

	if _, err := StartTethered(Command(context.Background(), "/nonexistent/program")); err == nil || !strings.Contains(err.Error(), "/nonexistent/program") {
		t.Errorf("StartTethered of a missing program = %v, want an error naming it", err)
	}
}
