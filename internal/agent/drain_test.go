package agent

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDrainSignal: DrainSignal ends a held task request at once, and Run
// returns nil after the task before it was reported.
func TestDrainSignal(t *testing.T) {
	c := newTestController(t)
	c.hold = 30 * time.Second
	c.give(helloTask("busybox"))
	o := fakeOptions(t)
	o.LongPoll = 30 * time.Second
	var log logBuffer
	a, err := New(o, slog.New(slog.NewTextHandler(&log, nil)), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, []string{c.url()}) }()
	c.waitResult(t, 30*time.Second)
	// Wait for the next request to be held, then drain.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		c.mu.Lock()
		n := c.inFlight
		c.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no held task request\n%s", log.String())
		}
	}
	start := time.Now()
	if err := syscall.Kill(syscall.Getpid(), DrainSignal); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after a drain = %v, want nil", err)
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("the drain took %v, want well under the 30 s long poll", took)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("Run did not return within 20 s of %v\n%s", DrainSignal, log.String())
	}
	if ctx.Err() != nil || !strings.Contains(log.String(), "draining") {
		t.Errorf("context %v; log lacks the drain:\n%s", ctx.Err(), log.String())
	}
}
