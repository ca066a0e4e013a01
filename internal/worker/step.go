package worker

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"syscall"
	"time"

	"github.com/buildfarm/buildfarm/internal/proc"
)

// stepDrain is how long a step's output may stay open once its process
// group is killed: only a child that left the group (setsid) holds it,
// when the steps run as the worker's own user (see killUser).
const stepDrain = 2 * time.Second

// runShell runs command with /bin/sh -c in dir, with env, as user (nil:
// the worker's own), its standard output and error into out. It runs through internal/proc, in a process
// group of its own: when the shell ends, the group is killed, so that what
// the step started in the background does not outlive it; when ctx ends
// (the build's timeout), the group gets SIGTERM, and SIGKILL after
// proc.DefaultWaitDelay. When the step runs as a user of its own, every
// process of that user is killed as well (killUser), which reaches a
// child that left the group with setsid.
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
		if user != nil {
			if kerr := killUser(int(user.Uid)); kerr != nil && err == nil {
				err = kerr
			}
		}
	}
	select {
	case <-copied:
	case <-time.After(stepDrain):
		pr.Close()
		<-copied
	}
	return err
}

// killUser sends SIGKILL to every process of uid, in one kill(2) with pid
// -1 made as that user: the kernel signals every process the caller may
// signal while it holds the task list, so a process cannot fork its way
// out, and one that left its session or process group is reached too.
// Only the calling OS thread takes the user's identity (setresuid is
// per thread below Go's syscall.Setresuid, which changes them all); its
// saved user stays root, so it can take root back, and a thread that
// could not is not handed back to Go's scheduler: the goroutine ends
// locked to it, and the runtime ends the thread.
func killUser(uid int) error {
	if uid == 0 {
		return fmt.Errorf("kill the steps' processes: refusing uid 0")
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, uintptr(uid), uintptr(uid), 0); e != 0 {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("kill the steps' processes: setresuid %d: %w", uid, e)
			return
		}
		_, _, kerr := syscall.RawSyscall(syscall.SYS_KILL, ^uintptr(0), uintptr(syscall.SIGKILL), 0)
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, 0, 0, 0); e != 0 {
			errc <- fmt.Errorf("kill the steps' processes: back to root: %w", e)
			return // still locked: the thread ends with the goroutine
		}
		runtime.UnlockOSThread()
		// ESRCH: the user had no process left.
		if kerr != 0 && kerr != syscall.ESRCH {
			errc <- fmt.Errorf("kill the steps' processes (uid %d): %w", uid, kerr)
			return
		}
		errc <- nil
	}()
	return <-errc
}
