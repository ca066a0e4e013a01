package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/buildfarm/buildfarm/internal/ctlclient"
	"github.com/buildfarm/buildfarm/internal/worker"
)

// A task's live log: while a controller's task runs, what its worker
// reports as it goes (the VM's boot, each operation's start and end, and
// the operations' output in chunks, see worker.LiveChunk) is forwarded to
// the controller's live endpoints (ctlclient.LiveLog, LiveEvent), in
// order, from a queue of its own so that a slow controller never holds up
// the VM's TFTP server; with nothing to send for livePoll, the agent polls.
// Every answer says whether the task is being cancelled: then the task's
// context ends (its VM is stopped and its snapshot deleted, as on any
// end of the context) and the task is reported as aborted. A controller
// without the live endpoints (a bbot one) gets none of it.
const (
	livePoll  = time.Second
	liveQueue = 512 // items waiting to be sent; more are dropped
	// liveDrain bounds how long what is queued at the task's end may take
	// to be sent, before the result is.
	liveDrain = 3 * time.Second
)

const liveFilePrefix = worker.LiveFilePrefix

// errCancelled is the cause of a task's context when its controller
// cancelled it.
type errCancelled struct{ reason string }

func (e *errCancelled) Error() string { return "cancelled by the controller: " + e.reason }

type liveItem struct {
	chunk                    *worker.LiveChunk
	kind, op, status, detail string
}

type liveLog struct {
	a       *Agent
	log     *slog.Logger
	url     string
	session string
	items   chan liveItem
	cancel  context.CancelCauseFunc
	stop    chan struct{}
	done    chan struct{}

	mu        sync.Mutex
	seq       int  // the last progress sequence forwarded
	full      bool // the controller's live log is full
	dropped   bool // something was dropped (logged once)
	cancelled bool
}

type liveKey struct{}

// liveFrom is the live log that ctx carries, or nil.
func liveFrom(ctx context.Context) *liveLog {
	l, _ := ctx.Value(liveKey{}).(*liveLog)
	return l
}

// startLive starts the live log of the task given in session by the
// controller whose result URL is resultURL, and returns the task's
// context, which carries it. With a controller that has no live
// endpoints, it returns ctx and nil.
func (a *Agent) startLive(ctx context.Context, log *slog.Logger, resultURL, session string) (context.Context, *liveLog) {
	url := ctlclient.LiveURL(resultURL)
	if url == "" {
		return ctx, nil
	}
	tctx, cancel := context.WithCancelCause(ctx)
	l := &liveLog{a: a, log: log, url: url, session: session, items: make(chan liveItem, liveQueue),
		cancel: cancel, stop: make(chan struct{}), done: make(chan struct{})}
	go l.run(context.WithoutCancel(ctx))
	return context.WithValue(tctx, liveKey{}, l), l
}

// run sends the queue's items in order, and polls when there is nothing
// to send, until stopped; then it sends what is left, for up to
// liveDrain.
func (l *liveLog) run(ctx context.Context) {
	defer close(l.done)
	t := time.NewTicker(livePoll)
	defer t.Stop()
	last := time.Now()
	gone := false
	for {
		select {
		case it := <-l.items:
			if !gone {
				gone = l.send(ctx, it)
			}
			last = time.Now()
		case <-t.C:
			if !gone && time.Since(last) >= livePoll {
				ans, err := l.a.client.LivePoll(ctx, l.url, l.session)
				gone = l.answer(ans, err)
				last = time.Now()
			}
		case <-l.stop:
			deadline := time.Now().Add(liveDrain)
			for !gone && time.Now().Before(deadline) && len(l.items) > 0 {
				gone = l.send(ctx, <-l.items)
			}
			return
		}
	}
}

// send sends one item; it reports whether the session is gone.
func (l *liveLog) send(ctx context.Context, it liveItem) bool {
	var ans ctlclient.LiveAnswer
	var err error
	if it.chunk != nil {
		ans, err = l.a.client.LiveLog(ctx, l.url, l.session, it.chunk.Operation, it.chunk.Offset, it.chunk.Data)
	} else {
		ans, err = l.a.client.LiveEvent(ctx, l.url, l.session, it.kind, it.op, it.status, it.detail)
	}
	return l.answer(ans, err)
}

// answer acts on a controller's answer: a cancel ends the task's
// context, a full log stops the chunks, and an unknown or ended session
// (404, 410) stops everything. It reports whether the session is gone.
func (l *liveLog) answer(ans ctlclient.LiveAnswer, err error) bool {
	var se *ctlclient.StatusError
	switch {
	case errors.As(err, &se) && (se.Code == http.StatusNotFound || se.Code == http.StatusGone):
		l.log.Info("live log: the controller no longer knows the session; not sent any more", "err", err)
		return true
	case err != nil:
		l.log.Debug("live log: not delivered", "err", err)
		return false
	}
	if ans.Cancel != "" {
		l.mu.Lock()
		first := !l.cancelled
		l.cancelled = true
		l.mu.Unlock()
		if first {
			l.log.Info("task cancelled by the controller: stopping it", "reason", ans.Cancel)
			l.cancel(&errCancelled{reason: ans.Cancel})
		}
	}
	if ans.LogFull {
		l.mu.Lock()
		l.full = true
		l.mu.Unlock()
	}
	return false
}

// enqueue queues an item, or drops it when the queue is full.
func (l *liveLog) enqueue(it liveItem) {
	select {
	case l.items <- it:
	default:
		l.mu.Lock()
		first := !l.dropped
		l.dropped = true
		l.mu.Unlock()
		if first {
			l.log.Warn("live log: the controller is slower than the guest; some of the live log is dropped (the result has it)")
		}
	}
}

// event queues an event of the task (booted, started, finished).
func (l *liveLog) event(kind, op, status, detail string) {
	if l == nil {
		return
	}
	l.enqueue(liveItem{kind: kind, op: op, status: status, detail: detail})
}

// uploaded sees a file the guest uploaded into s's put/: progress
// reports of the operations become events, live log chunks are queued.
func (l *liveLog) uploaded(s *session, name string) {
	if l == nil {
		return
	}
	path := filepath.Join(s.putDir(), name)
	switch {
	case name == worker.ProgressFile:
		p, err := readProgress(path)
		if err != nil {
			return
		}
		f := map[string]string{}
		for _, q := range p.pairs {
			f[q.Name] = q.Value
		}
		seq, _ := strconv.Atoi(f["sequence"])
		l.mu.Lock()
		fresh := seq > l.seq
		if fresh {
			l.seq = seq
		}
		l.mu.Unlock()
		if !fresh {
			return
		}
		switch f["state"] {
		case "started":
			l.event("started", f["step"], "", f["command"])
		case "finished":
			detail := ""
			if d := f["duration"]; d != "" {
				detail = "took " + d
			}
			l.event("finished", f["step"], f["status"], detail)
		}
	case strings.HasPrefix(name, liveFilePrefix):
		l.mu.Lock()
		full := l.full
		l.mu.Unlock()
		if full {
			return
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return
		}
		c, err := worker.ParseLiveChunk(b, name)
		if err != nil {
			l.log.Warn("live log: bad chunk from the guest", "err", err)
			return
		}
		l.enqueue(liveItem{chunk: &c})
	}
}

// finish stops the live log, after sending what is queued (for up to
// liveDrain), and returns why the controller cancelled the task, or "".
func (l *liveLog) finish(tctx context.Context) string {
	if l == nil {
		return ""
	}
	close(l.stop)
	<-l.done
	var ce *errCancelled
	if errors.As(context.Cause(tctx), &ce) {
		return ce.reason
	}
	l.cancel(nil)
	return ""
}
