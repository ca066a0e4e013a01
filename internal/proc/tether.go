package proc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// tetherArg0 is argv[0] of this program re-executed as a tether.
const tetherArg0 = "buildfarm-tether"

// A tether is this same binary, re-executed, between a program and this
// process: it starts the program as its child, in a process group of the
// program's own, with Pdeathsig SIGKILL tied to the tether; and it holds one
// end of a socket pair whose other end this process keeps. When that
// socket closes (this process exited or died, or called Close) the tether
// kills the program's group, unless the program was released before:
// then the tether stays, the program's parent, until the program exits,
// whatever becomes of this process. So a tethered program never outlives
// this process, except after Release, on purpose. (Pdeathsig alone cannot
// do this: a program cannot drop it after exec, and QEMU does not.)
//
// The tether's command line is just "buildfarm-tether": the program and
// its arguments come over the socket, so that `pgrep -f PROGRAM` finds
// the program only. It exits as the program did: with its exit status, or
// killed by the same signal.
type Tether struct {
	Cmd *exec.Cmd // the tether process: Wait for it, then Close
	PID int       // the program's (the leader of its process group)

	conn     *os.File
	mu       sync.Mutex
	released bool
}

// tetherRequest is the tether's first message: what to run.
type tetherRequest struct {
	Path string   `json:"path"`
	Args []string `json:"args"`
}

// tetherReply answers it: the program's pid, or why it did not start.
type tetherReply struct {
	PID   int    `json:"pid,omitempty"`
	Error string `json:"error,omitempty"`
}

func init() {
	if len(os.Args) > 0 && os.Args[0] == tetherArg0 {
		os.Exit(runTether())
	}
}

// StartTethered starts cmd (made by Command, not started) through a
// tether, with its Dir, Env and standard files; its SysProcAttr and
// ExtraFiles are not carried (the program gets Setpgid and Pdeathsig).
// Wait for t.Cmd, which ends as the program does, and Close t after.
func StartTethered(cmd *exec.Cmd) (*Tether, error) {
	if cmd.Err != nil {
		return nil, &Error{Args: cmd.Args, Err: cmd.Err}
	}
	if len(cmd.ExtraFiles) > 0 {
		return nil, &Error{Args: cmd.Args, Err: errors.New("a tethered program cannot be given extra files")}
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, &Error{Args: cmd.Args, Err: fmt.Errorf("tether socket: %w", err)}
	}
	syscall.SetNonblock(fds[0], true) // for deadlines
	ours, theirs := os.NewFile(uintptr(fds[0]), "tether"), os.NewFile(uintptr(fds[1]), "tether")
	tc := &exec.Cmd{
		Path: "/proc/self/exe", Args: []string{tetherArg0}, Dir: cmd.Dir, Env: cmd.Env,
		Stdin: cmd.Stdin, Stdout: cmd.Stdout, Stderr: cmd.Stderr,
		ExtraFiles: []*os.File{theirs},
		// Its own process group, so that a terminal's signals reach this
		// process only; no Pdeathsig: the socket ties it to us.
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	err = tc.Start()
	theirs.Close()
	if err != nil {
		ours.Close()
		return nil, &Error{Args: cmd.Args, Err: fmt.Errorf("tether: %w", err)}
	}
	t := &Tether{Cmd: tc, conn: ours}
	fail := func(err error) (*Tether, error) {
		ours.Close() // the tether kills what it started
		tc.Wait()
		return nil, &Error{Args: cmd.Args, Err: err}
	}
	b, _ := json.Marshal(tetherRequest{Path: cmd.Path, Args: cmd.Args})
	ours.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := ours.Write(append(b, '\n')); err != nil {
		return fail(fmt.Errorf("tether: %w", err))
	}
	line, err := bufio.NewReader(ours).ReadBytes('\n')
	if err != nil {
		return fail(fmt.Errorf("tether: no answer: %w", err))
	}
	ours.SetDeadline(time.Time{})
	var rep tetherReply
	if err := json.Unmarshal(line, &rep); err != nil {
		return fail(fmt.Errorf("tether: answer %q: %w", line, err))
	}
	if rep.Error != "" || rep.PID <= 0 {
		return fail(errors.New(rep.Error))
	}
	t.PID = rep.PID
	return t, nil
}

// Release unties the program from this process: after it returns, the
// program keeps running when this process exits, until it exits itself or
// is killed; its tether waits for it. ctx bounds the exchange.
func (t *Tether) Release(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.released {
		return nil
	}
	if d, ok := ctx.Deadline(); ok {
		t.conn.SetDeadline(d)
	} else {
		t.conn.SetDeadline(time.Now().Add(10 * time.Second))
	}
	defer t.conn.SetDeadline(time.Time{})
	if _, err := t.conn.Write([]byte("release\n")); err != nil {
		return fmt.Errorf("release pid %d: %w", t.PID, err)
	}
	// The tether answers only this: nothing else is read from the socket.
	line, err := bufio.NewReader(t.conn).ReadString('\n')
	if err != nil || line != "released\n" {
		return fmt.Errorf("release pid %d: tether answered %q: %v", t.PID, line, err)
	}
	t.released = true
	return nil
}

// Released reports whether Release succeeded.
func (t *Tether) Released() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.released
}

// Close closes this process's end of the socket: unless the program was
// released, the tether kills it.
func (t *Tether) Close() error { return t.conn.Close() }

// runTether is the tether process (see Tether); it returns its exit code.
func runTether() int {
	runtime.LockOSThread() // the program's Pdeathsig is tied to this thread
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT, syscall.SIGPIPE)
	conn := os.NewFile(3, "tether")
	r := bufio.NewReader(conn)
	say := func(v any) {
		b, _ := json.Marshal(v)
		conn.Write(append(b, '\n'))
	}
	line, err := r.ReadBytes('\n')
	if err != nil {
		return 125
	}
	var req tetherRequest
	if err := json.Unmarshal(line, &req); err != nil || req.Path == "" || len(req.Args) == 0 {
		say(tetherReply{Error: fmt.Sprintf("bad request %q", line)})
		return 125
	}
	cmd := &exec.Cmd{Path: req.Path, Args: req.Args, Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}}
	if err := cmd.Start(); err != nil {
		say(tetherReply{Error: err.Error()})
		return 127
	}
	pid := cmd.Process.Pid
	say(tetherReply{PID: pid})
	var released atomic.Bool
	go func() {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				if !released.Load() {
					syscall.Kill(-pid, syscall.SIGKILL)
				}
				return
			}
			if line == "release\n" {
				released.Store(true)
				conn.Write([]byte("released\n"))
			}
		}
	}()
	cmd.Wait()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		signal.Reset(ws.Signal())
		syscall.Kill(os.Getpid(), ws.Signal())
		time.Sleep(time.Second)
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}
