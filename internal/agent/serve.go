package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/buildfarm/buildfarm/internal/auth"
	"github.com/buildfarm/buildfarm/internal/manifest"
)

// serve asks the controllers for tasks and performs them, in --instances
// slots at once, until ctx ends (or, with --once, after one task and its
// result's delivery):
//
//  1. Deliver the results an earlier run spooled, once each, before
//     anything else; then keep delivering, with back-off, what is in the
//     spool (see deliverSpool).
//  2. In each slot, in turn (serveSlot):
//     a. Re-enumerate the machines, bootstrapping those that need it, as
//     bbot does before each task request. With no machine to offer,
//     back off and enumerate again.
//     b. Ask each controller in turn for a task, with long polling; one
//     that fails, answers garbage or too much, or takes too long is
//     logged and skipped.
//     c. No task: back off, growing with jitter up to --request-interval
//     (not after a round that the controllers held for its long poll),
//     and go to a.
//     d. Sign the challenge now: without --auth-key (or with a key that
//     cannot sign it) the result could not be accepted, so the task is
//     refused at once, not built. Go to a.
//     e. Perform the task in a VM of the slot's own, forwarding its live
//     log and progress to the controller; a cancel in the controller's
//     answers stops the VM (its snapshot deleted) and the task is
//     reported aborted.
//     f. Spool the signed result and upload it; a failed upload stays in
//     the spool for step 1's deliverer. Go to a.
//     g. Stopped (SIGTERM) during e: report the task interrupted, so that
//     its controller queues it again at once rather than when its lease
//     ends: spooled, and uploaded within interruptReport (later by the
//     next agent's step 1 otherwise).
func (a *Agent) serve(ctx context.Context, urls []string) error {
	sp, err := openSpool(a.opts.spoolDir(), a.log)
	if err != nil {
		return err
	}
	a.deliverAll(ctx, sp) // 1
	drain := make(chan struct{})
	spoolDone := make(chan struct{})
	sctx, stopSpool := context.WithCancel(ctx)
	defer func() { stopSpool(); <-spoolDone }()
	go func() {
		defer close(spoolDone)
		a.deliverSpool(sctx, sp, drain)
	}()

	var wg sync.WaitGroup
	errs := make([]error, a.opts.Instances)
	for slot := range a.opts.Instances { // 2
		wg.Go(func() { errs[slot] = a.serveSlot(ctx, slot, urls, sp) })
	}
	wg.Wait()
	if a.opts.Once { // deliver the task's result before returning
		close(drain)
		<-spoolDone
	}
	return errors.Join(errs...)
}

// serveSlot is step 2 of serve for one slot.
func (a *Agent) serveSlot(ctx context.Context, slot int, urls []string, sp *spool) error {
	log := a.log
	if a.opts.Instances > 1 {
		log = log.With("slot", slot)
	}
	b := newBackoff(a.opts.RequestInterval)
	// Between tasks the slot waits on ctx, which a drain ends too (see
	// drain.go); a task and its report go on with work.
	work := ctx
	ctx, stopDrain := a.untilDrain(ctx)
	defer stopDrain()
	for ctx.Err() == nil {
		// a. Re-enumerate.
		ms, err := a.machines(ctx, slot)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			log.Error("enumerating the machines", "err", err)
			sleep(ctx, b.Next())
			continue
		}
		if len(ms) == 0 {
			// A task request offers at least one machine (bbot's too).
			log.Warn("no machine to offer: not asking for tasks", "machines", a.opts.Machines, "toolchain", a.opts.toolchain())
			sleep(ctx, b.Next())
			continue
		}
		req := a.taskRequest(slot, ms)
		// b. Ask each controller in turn.
		start := time.Now()
		resp, held := a.askControllers(ctx, log, urls, req)
		if resp == nil {
			// c. No task.
			if held {
				b.Reset()
			} else {
				sleep(ctx, b.Next()-time.Since(start))
			}
			continue
		}
		b.Reset()
		task := resp.Task
		log.Info("task", "controller", resp.url, "session", resp.Session, "name", task.Name, "version", task.Version, "machine", task.Machine)
		// d. Sign the challenge.
		rr := &manifest.ResultRequest{Session: resp.Session}
		if resp.Challenge != "" {
			if a.key == nil {
				log.Error("task refused: the controller sent a challenge, and without --auth-key the agent cannot sign it, so the result would be refused; the task is not built",
					"controller", resp.url, "name", task.Name, "version", task.Version)
				sleep(ctx, b.Next())
				continue
			}
			if rr.Challenge, err = auth.Sign(a.key, resp.Challenge); err != nil {
				log.Error("task refused: its challenge cannot be signed, so the result would be refused; the task is not built",
					"controller", resp.url, "name", task.Name, "err", err)
				sleep(ctx, b.Next())
				continue
			}
		}
		// e. Perform it, following its live log (livelog.go): a cancel
		// from the controller stops it, and it is reported aborted.
		tctx, live := a.startLive(work, log, resp.ResultURL, resp.Session)
		res, err := a.perform(tctx, slot, ms, task, "")
		cancelled := live.finish(tctx)
		switch {
		case work.Err() != nil: // g.
			log.Info("agent stopped during the task: reporting it interrupted", "name", task.Name, "version", task.Version)
			rr.Result = *interruptResult(task)
			rctx, cancel := context.WithTimeout(context.WithoutCancel(work), interruptReport)
			a.report(rctx, sp, resp.ResultURL, rr)
			cancel()
			return nil
		case cancelled != "" && err != nil:
			log.Info("task cancelled: its VM was stopped and its snapshot deleted", "name", task.Name, "reason", cancelled)
			res = abortResult(task, "cancelled by the controller: "+cancelled+"\n")
		case err != nil:
			log.Error("task failed", "name", task.Name, "err", err)
			res = abnormalResult(task, err)
		}
		log.Info("task done", "name", task.Name, "version", task.Version, "status", res.Status.String())
		// f. Spool and upload.
		rr.Result = *res
		a.report(work, sp, resp.ResultURL, rr)
		if a.opts.Once {
			return nil
		}
	}
	return nil
}

// interruptResult is the result of task when the agent stopped during
// it: status interrupt, on the task's first operation.
func interruptResult(task *manifest.Task) *manifest.Result {
	res := errorResult(task, errors.New("the agent was stopped during the task; the controller may give it again"))
	res.Status, res.Results[0].Status = manifest.StatusInterrupt, manifest.StatusInterrupt
	return res
}

// interruptReport bounds the upload of an interrupted task's result when
// the agent stops.
const interruptReport = 5 * time.Second

// taskRequest is the task request of slot offering machines ms.
func (a *Agent) taskRequest(slot int, ms []*machineState) *manifest.TaskRequest {
	req := &manifest.TaskRequest{
		Agent:            a.agentName(slot),
		ToolchainName:    a.opts.ToolchainName,
		ToolchainVersion: a.opts.ToolchainVersion,
		InteractiveMode:  "false",
	}
	if a.key != nil {
		req.Fingerprint, _ = auth.Fingerprint(a.key.Public())
	}
	for _, m := range ms {
		req.Machines = append(req.Machines, m.machine.Header())
	}
	return req
}

// agentName is <host>-<instance> (the host-wide number, see
// hostInstance), and .<slot> from 1 after it with more than one instance.
func (a *Agent) agentName(slot int) string {
	host, _ := os.Hostname()
	if a.opts.Instances > 1 {
		return fmt.Sprintf("%s-%d.%d", host, a.opts.hostInstance(), slot+1)
	}
	return fmt.Sprintf("%s-%d", host, a.opts.hostInstance())
}

// answer is a task response and the controller it came from.
type answer struct {
	*manifest.TaskResponse
	url string
}

// askControllers asks each controller in turn for a task and returns the
// first task, or nil. The long poll (--long-poll) is shared out among the
// controllers of a round. held reports a round without a task in which
// every controller held its request for the long poll: asking again at
// once costs nothing then.
func (a *Agent) askControllers(ctx context.Context, log *slog.Logger, urls []string, req *manifest.TaskRequest) (_ *answer, held bool) {
	wait := a.opts.LongPoll / time.Duration(len(urls))
	if a.opts.LongPoll > 0 {
		wait = max(wait, time.Second)
	}
	held = wait > 0
	for _, u := range urls {
		start := time.Now()
		resp, err := a.client.RequestTask(ctx, u, req, wait)
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("task request failed; controller skipped", "controller", u, "err", err)
			}
			held = false
			continue
		}
		if resp.Session != "" {
			return &answer{resp, u}, false
		}
		log.Debug("no task", "controller", u)
		if time.Since(start) < wait*9/10 {
			held = false
		}
	}
	return nil, held
}

// backoff is a growing pause with jitter: each Next is about twice the
// last, from min up to max, and Reset starts again from min.
type backoff struct {
	min, max, cur time.Duration
}

func newBackoff(max time.Duration) *backoff {
	return &backoff{min: min(time.Second, max), max: max}
}

// Next returns the next pause: the current step, at random between its
// half and itself.
func (b *backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	half := b.cur / 2
	return half + rand.N(b.cur-half+1)
}

// Reset starts the back-off from its minimum.
func (b *backoff) Reset() { b.cur = 0 }

// sleep waits d, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
