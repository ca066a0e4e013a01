// Package proc is buildfarm's one way to run external programs (qemu,
// btrfs, mkfs.ext4, debootstrap, ...). A command runs in its own process
// group; cancelling its context signals the whole group with SIGTERM, then
// SIGKILL after a grace period; its standard error is captured so that a
// failure names the command and says what it printed. Children may be tied
// to the parent's life with Pdeathsig, so that they never outlive it, or
// through a tether (StartTethered: this binary re-executed as
// "buildfarm-tether", which a package init recognises), whose tie can be
// released so that a child outlives this process on purpose.
package proc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultWaitDelay is how long a cancelled command has between SIGTERM to
// its process group and SIGKILL.
const DefaultWaitDelay = 5 * time.Second

// Error is a failed external command: which one, how it ended, and the tail
// of what it wrote to standard error.
type Error struct {
	Args   []string
	Err    error // from exec: *exec.ExitError, context error, start failure
	Stderr string
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("%s: %v", strings.Join(e.Args, " "), e.Err)
	if s := strings.TrimSpace(e.Stderr); s != "" {
		msg += ": " + s
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// ExitCode returns the exit status of the command, or -1 when it did not
// exit normally (killed, never started).
func (e *Error) ExitCode() int {
	var ee *exec.ExitError
	if errors.As(e.Err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// Command builds an *exec.Cmd for name and args, set up the project's way:
// its own process group, SIGTERM to the group on cancellation, SIGKILL after
// DefaultWaitDelay, and SIGKILL when this process dies (Pdeathsig; note it
// fires when the creating OS thread exits, so callers that start long-lived
// children from goroutines should lock the thread or supervise otherwise).
func Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return KillGroup(cmd, syscall.SIGTERM) }
	cmd.WaitDelay = DefaultWaitDelay
	return cmd
}

// KillGroup sends sig to the process group of cmd's process.
func KillGroup(cmd *exec.Cmd, sig syscall.Signal) error {
	if cmd.Process == nil {
		return errors.New("process not started")
	}
	err := syscall.Kill(-cmd.Process.Pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return os.ErrProcessDone
	}
	return err
}

// Tail is an io.Writer that keeps the last Max bytes written to it, for
// the end of a program's output in an error message. It is safe for
// concurrent writers (a command's stdout and stderr).
type Tail struct {
	Max int

	mu  sync.Mutex
	buf bytes.Buffer
}

func (t *Tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(p)
	if over := t.buf.Len() - t.Max; over > 0 {
		t.buf.Next(over)
	}
	return len(p), nil
}

// String returns what the tail holds.
func (t *Tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.String()
}

const stderrTail = 4096

// Run runs the command to completion. Its standard output goes to stdout
// (may be nil); a failure is an *Error with the tail of standard error.
func Run(ctx context.Context, stdout io.Writer, name string, args ...string) error {
	cmd := Command(ctx, name, args...)
	cmd.Stdout = stdout
	return Wait(cmd)
}

// Output runs the command and returns its standard output.
func Output(ctx context.Context, name string, args ...string) ([]byte, error) {
	var out bytes.Buffer
	err := Run(ctx, &out, name, args...)
	return out.Bytes(), err
}

// Wait starts cmd (if it has not started), waits for it and wraps a failure
// in *Error with the tail of its standard error. If cmd.Stderr is already
// set, the tail is captured as well as written there.
func Wait(cmd *exec.Cmd) error {
	tail := &Tail{Max: stderrTail}
	if cmd.Process == nil {
		if cmd.Stderr == nil {
			cmd.Stderr = tail
		} else {
			cmd.Stderr = io.MultiWriter(cmd.Stderr, tail)
		}
		if err := cmd.Start(); err != nil {
			return &Error{Args: cmd.Args, Err: err}
		}
	}
	if err := cmd.Wait(); err != nil {
		return &Error{Args: cmd.Args, Err: err, Stderr: tail.String()}
	}
	return nil
}

// Alive reports whether process pid exists (a zombie counts; pid 0 and
// below never do).
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// NamePID returns the pid in name when it is PREFIX + PID + "-" + N, the
// names a process gives what it makes outside itself (network
// namespaces, taps) so that what it left behind is found once it is
// gone; 0 otherwise.
func NamePID(name, prefix string) int {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return 0
	}
	p, n, ok := strings.Cut(rest, "-")
	if !ok || n == "" {
		return 0
	}
	pid, err := strconv.Atoi(p)
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}
