package proc

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestRunReportsCommandAndStderr(t *testing.T) {
	err := Run(context.Background(), nil, "sh", "-c", "echo broken thing >&2; exit 3")
	var pe *Error
	if !errors.As(err, &pe) {
		t.Fatalf("Run = %v, want *Error", err)
	}
	if pe.ExitCode() != 3 {
		t.Errorf("ExitCode = %d, want 3", pe.ExitCode())
	}
	if !strings.Contains(err.Error(), "sh -c") || !strings.Contains(err.Error(), "broken thing") {
		t.Errorf("error %q does not name the command and its stderr", err)
	}
}

func TestOutput(t *testing.T) {
	out, err := Output(context.Background(), "echo", "hello")
	if err != nil || string(out) != "hello\n" {
		t.Fatalf("Output = %q, %v; want \"hello\\n\", nil", out, err)
	}
}

func TestCancelKillsGroup(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	// The shell starts a grandchild; cancelling must end both.
	cmd := Command(ctx, "sh", "-c", "sleep 60 & echo $! ; wait")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 32)
	n, _ := out.Read(buf)
	var child int
	for _, c := range strings.TrimSpace(string(buf[:n])) {
		child = child*10 + int(c-'0')
	}
	cancel()
	start := time.Now()
	_ = Wait(cmd)
	if time.Since(start) > DefaultWaitDelay+time.Second {
		t.Errorf("Wait took %v after cancel", time.Since(start))
	}
	deadline := time.Now().Add(2 * time.Second)
	for syscall.Kill(child, 0) == nil {
		if time.Now().After(deadline) {
			syscall.Kill(child, syscall.SIGKILL)
			t.Fatalf("grandchild %d survived cancellation", child)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTail(t *testing.T) {
	tb := &Tail{Max: 4}
	tb.Write([]byte("abcdef"))
	tb.Write([]byte("gh"))
	if got := tb.String(); got != "efgh" {
		t.Errorf("tail = %q, want %q", got, "efgh")
	}
}

func TestAliveAndNamePID(t *testing.T) {
	if !Alive(os.Getpid()) || Alive(0) || Alive(-1) {
		t.Errorf("Alive: want this process alive, and pid 0 and -1 not")
	}
	for name, want := range map[string]int{"bf-123-4": 123, "bf-123-": 0, "bf-123": 0, "bf-x-1": 0, "bf-0-1": 0, "other-123-4": 0} {
		if got := NamePID(name, "bf-"); got != want {
			t.Errorf("NamePID(%q) = %d, want %d", name, got, want)
		}
	}
}
