package qmp_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/qmp"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// startQEMU starts a QEMU that boots nothing (-S, machine none) but answers
// QMP, and returns a client connected to it. The QEMU is killed, by its
// process group, when the test ends.
func startQEMU(t *testing.T) (*qmp.Client, func() error) {
	t.Helper()
	testenv.NeedVM(t)
	bin := testenv.NeedProgram(t, "qemu-system-x86_64")
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := proc.Command(context.Background(), bin, "-machine", "none", "-S", "-nodefaults",
		"-no-user-config", "-display", "none", "-qmp", "unix:"+sock+",server=on,wait=off")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	var werr error
	wait := func() error {
		once.Do(func() { werr = cmd.Wait() })
		return werr
	}
	t.Cleanup(func() {
		proc.KillGroup(cmd, syscall.SIGKILL)
		wait()
	})
	for {
		c, err := qmp.Dial(ctx, sock)
		if err == nil {
			t.Cleanup(func() { c.Close() })
			return c, wait
		}
		if ctx.Err() != nil {
			t.Fatalf("connect to QEMU's QMP (%s): %v", strings.Join(cmd.Args, " "), err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestGreetingAndCommands(t *testing.T) {
	c, _ := startQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if v := c.Version(); v.Major < 5 {
		t.Errorf("Version() = %v, want a QEMU version >= 5", v)
	}
	st, err := c.QueryStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Running {
		t.Errorf("QueryStatus() = %+v before cont, want not running", st)
	}

	// Several commands in flight at once, each gets its own answer.
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var r struct {
				Name string `json:"name"`
			}
			errs[i] = c.Run(ctx, "query-name", nil, &r)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("query-name #%d: %v", i, err)
		}
	}

	_, err = c.Execute(ctx, "no-such-command", nil)
	var qe *qmp.Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Errorf("Execute(no-such-command) = %v, want a CommandNotFound *qmp.Error", err)
	}
	_, err = c.Execute(ctx, "human-monitor-command", map[string]any{"command-line": "info version"})
	if err != nil {
		t.Errorf("Execute(human-monitor-command) with arguments: %v", err)
	}
}

func TestEvents(t *testing.T) {
	c, wait := startQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	all := c.Subscribe()
	defer all.Close()
	some := c.Subscribe("STOP", "SHUTDOWN")
	defer some.Close()

	for _, cmd := range []string{"cont", "stop", "system_reset", "system_powerdown", "quit"} {
		if _, err := c.Execute(ctx, cmd, nil); err != nil {
			t.Fatalf("Execute(%s): %v", cmd, err)
		}
	}
	want := []string{"RESUME", "STOP", "RESET", "POWERDOWN", "SHUTDOWN"}
	for _, w := range want {
		ev, err := all.Next(ctx)
		if err != nil {
			t.Fatalf("Next() = %v, want event %s", err, w)
		}
		if ev.Name != w {
			t.Errorf("Next() = %s, want %s", ev.Name, w)
		}
		if time.Since(ev.Time) > time.Minute || time.Since(ev.Time) < -time.Minute {
			t.Errorf("event %s at %v, want about now", ev.Name, ev.Time)
		}
	}
	for _, w := range []string{"STOP", "SHUTDOWN"} {
		ev, err := some.Next(ctx)
		if err != nil || ev.Name != w {
			t.Errorf("filtered Next() = %v, %v, want %s", ev.Name, err, w)
		}
	}
	// quit made QEMU exit: the connection ends, and the queues drain to ErrClosed.
	if err := wait(); err != nil {
		t.Errorf("QEMU after quit: %v", err)
	}
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("connection not closed after QEMU exited")
	}
	if _, err := all.Next(ctx); !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("Next() after exit = %v, want ErrClosed", err)
	}
	if _, err := c.Execute(ctx, "query-status", nil); !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("Execute() after exit = %v, want ErrClosed", err)
	}
}

func TestTimeout(t *testing.T) {
	c, _ := startQEMU(t)
	// A context that has ended fails the command at once.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Execute(ctx, "query-status", nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Execute(cancelled ctx) = %v, want context.Canceled", err)
	}
	// And a subscription waits no longer than its context.
	s := c.Subscribe("SHUTDOWN")
	defer s.Close()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if _, err := s.Next(ctx2); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Next() with no event = %v, want DeadlineExceeded", err)
	}
	// The client still works afterwards.
	ctx3, cancel3 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel3()
	if _, err := c.QueryStatus(ctx3); err != nil {
		t.Errorf("QueryStatus() after a timeout: %v", err)
	}
}
