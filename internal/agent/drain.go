package agent

import (
	"context"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// DrainSignal makes a running agent drain: it stops asking controllers for
// tasks (a task request waiting in a long poll is abandoned), lets the
// tasks under way finish and reports their results, and exits 0. A
// supervisor (buildfarm hostos monitor) sends it before it restarts the
// agents on a new toolchain or reboots the host; SIGTERM, by contrast,
// stops the running VMs at once.
const DrainSignal = syscall.SIGHUP

// drainer is closed once when the agent drains.
type drainer struct {
	init, close sync.Once
	ch          chan struct{}
}

func (d *drainer) c() chan struct{} {
	d.init.Do(func() { d.ch = make(chan struct{}) })
	return d.ch
}

// Drain makes the agent drain as DrainSignal does.
func (a *Agent) Drain() { a.drain.close.Do(func() { close(a.drain.c()) }) }

// untilDrain returns ctx, ended also when the agent drains: what a slot
// waits on between tasks (enumeration, task requests, back-off), while
// the task itself goes on with ctx.
func (a *Agent) untilDrain(ctx context.Context) (context.Context, context.CancelFunc) {
	dctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-a.drain.c():
			cancel()
		case <-dctx.Done():
		}
	}()
	return dctx, cancel
}

// watchDrainSignal drains the agent on DrainSignal until stop is called.
func (a *Agent) watchDrainSignal() (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, DrainSignal)
	done := make(chan struct{})
	go func() {
		select {
		case <-ch:
			a.log.Info("draining: no more task requests; the tasks under way finish, then the agent exits")
			a.Drain()
		case <-done:
		}
	}()
	return func() { signal.Stop(ch); close(done) }
}
