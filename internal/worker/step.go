package worker

import (
	"context"
	"io"
	"os"
	"runtime"
	"syscall"
	"time"

	"github.com/buildfarm/buildfarm/internal/proc"
)

// stepDrain is how long a step's output may stay open once its process
// group is killed: only a child that left the group (setsid) holds it.
const stepDrain = 2 * time.Second

// runShell runs command with /bin/sh -c in dir, with env, as user (nil:
// the worker's own), its standard output and error into out. It runs through internal/proc, in a process
// group of its own: when the shell ends, the group is killed, so that what
// the step started in the background does not outlive it; when ctx ends
// (the build's timeout), the group gets SIGTERM, and SIGKILL after
// proc.DefaultWaitDelay.
func runShell(ctx context.Context, command, dir string, env []string, user *syscall.Credential, out io.Writer) error {
	// proc's Pdeathsig follows the thread that forks: keep it while the
	// step runs.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// The output goes through a pipe of our own, not one exec makes, so
	// that Wait returns when the shell ends even if a background child
	// still holds the pipe.
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	copied := make(chan struct{})
	go func() {
		io.Copy(out, pr)
		close(copied)
	}()
	cmd := proc.Command(ctx, "/bin/sh", "-c", command)
	cmd.Dir, cmd.Env = dir, env
	cmd.Stdout, cmd.Stderr = pw, pw
	if user != nil {
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		cmd.SysProcAttr.Credential = user
	}
	err = cmd.Start()
	pw.Close()
	if err == nil {
		err = cmd.Wait()
		proc.KillGroup(cmd, syscall.SIGKILL)
	}
	select {
	case <-copied:
	case <-time.After(stepDrain):
		pr.Close()
		<-copied
	}
	return err
}
