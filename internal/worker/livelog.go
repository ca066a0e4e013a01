package worker

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Live log: while an operation runs, its output goes to the agent as it is
// written, in chunks uploaded as files live-NNNNNN (LiveFilePrefix and a
// sequence number), each a header line "buildfarm-live 1 OPERATION OFFSET"
// and the chunk's bytes, OFFSET being where they start in the
// operation's output. The agent forwards them to its controller; the
// result's log stays the authoritative copy.
const (
	LiveFilePrefix = "live-"
	liveMagic      = "buildfarm-live 1"
	// LiveFlush is how long output waits before it is sent.
	LiveFlush = 200 * time.Millisecond
	// liveChunk bounds one chunk (the controller takes 64 KiB).
	liveChunk = 60 << 10
)

// LiveChunk is a chunk of an operation's output as the agent gets it.
type LiveChunk struct {
	Operation string
	Offset    int64
	Data      []byte
}

// ParseLiveChunk reads a live chunk file's contents; name is for errors.
func ParseLiveChunk(b []byte, name string) (LiveChunk, error) {
	header, data, ok := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(header))
	if !ok || len(f) != 4 || f[0]+" "+f[1] != liveMagic {
		return LiveChunk{}, fmt.Errorf("live chunk %s: the header line is not %q OPERATION OFFSET", name, liveMagic)
	}
	off, err := strconv.ParseInt(f[3], 10, 64)
	if err != nil || off < 0 {
		return LiveChunk{}, fmt.Errorf("live chunk %s: offset %q: not a number from 0", name, f[3])
	}
	return LiveChunk{Operation: f[2], Offset: off, Data: data}, nil
}

// liveWriter sends what is written to it as live chunks of an operation,
// every LiveFlush, up to limit bytes; past the limit, or after uploads
// fail three times running, it sends nothing more. Close sends what is
// left and stops.
type liveWriter struct {
	w      *Worker
	op     string
	limit  int64
	mu     sync.Mutex
	buf    bytes.Buffer
	off    int64 // offset of buf's start in the output
	failed int
	stop   chan struct{}
	done   chan struct{}
}

// startLive starts sending op's output; nil (which discards) when the
// worker's LiveLimit is 0.
func (w *Worker) startLive(ctx context.Context, op string) *liveWriter {
	if w.cfg.LiveLimit <= 0 {
		return nil
	}
	l := &liveWriter{w: w, op: op, limit: w.cfg.LiveLimit, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		t := time.NewTicker(LiveFlush)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				l.flush(ctx, false)
			case <-l.stop:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return l
}

func (l *liveWriter) Write(p []byte) (int, error) {
	if l == nil {
		return len(p), nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := l.limit - l.off - int64(l.buf.Len()); room > 0 {
		l.buf.Write(p[:min(int64(len(p)), room)])
	}
	return len(p), nil
}

// flush sends what is buffered, in chunks. Only the goroutine that is all
// the worker does meanwhile (Close's caller, the step over) may send as
// the worker's other transfers do, holding the scheduler (dedicated); the
// writer's own goroutine sends beside the step and its output's copy, so
// it waits in Go's network poller (tftp.Options.Dedicated).
func (l *liveWriter) flush(ctx context.Context, dedicated bool) {
	for {
		l.mu.Lock()
		if l.buf.Len() == 0 || l.failed >= 3 {
			l.mu.Unlock()
			return
		}
		data := bytes.Clone(l.buf.Next(liveChunk))
		off := l.off
		l.off += int64(len(data))
		l.mu.Unlock()
		var b bytes.Buffer
		fmt.Fprintf(&b, "%s %s %d\n", liveMagic, l.op, off)
		b.Write(data)
		l.w.seq++
		opts := l.w.opts
		opts.Dedicated = dedicated
		if err := l.w.putWith(ctx, fmt.Sprintf("%s%06d", LiveFilePrefix, l.w.seq), b.Bytes(), opts); err != nil {
			l.mu.Lock()
			l.failed++
			l.mu.Unlock()
			l.w.log.Warn("live log chunk not delivered", "operation", l.op, "err", err)
		}
	}
}

// Close sends what is left and stops the writer.
func (l *liveWriter) Close(ctx context.Context) {
	if l == nil {
		return
	}
	close(l.stop)
	<-l.done
	l.flush(ctx, true)
}
