package store

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// kinds is the timeline's kinds, with the operation or status after a
// colon when it has one.
func kinds(evs []Event) string {
	var b strings.Builder
	for i, e := range evs {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(e.Kind)
		if e.Operation != "" {
			b.WriteString(":" + e.Operation)
		}
		if e.Status != "" {
			b.WriteString(":" + e.Status)
		}
	}
	return b.String()
}

func testTimeline(t *testing.T, s Store) {
	ctx := t.Context()
	_, tasks := submit(t, s, "tl", 0, "c")
	id := tasks[0].ID
	mustClaim(t, s, "tl-1", t0.Add(time.Second), "c")
	for i, e := range []Event{
		{Kind: EventBooted},
		{Kind: EventStarted, Operation: "update"},
		{Kind: EventFinished, Operation: "update", Status: "success", Detail: "1.5s"},
	} {
		e.Session, e.At = "tl-1", t0.Add(time.Duration(2+i)*time.Second)
		l, err := s.AddEvent(ctx, e)
		if err != nil || l.TaskID != id || l.Cancel != "" {
			t.Fatalf("AddEvent(%s) = %+v, %v; want task %d, no cancel", e.Kind, l, err, id)
		}
	}
	if _, err := s.AddEvent(ctx, Event{Session: "nope", Kind: EventBooted}); !errors.Is(err, ErrUnknownSession) {
		t.Errorf("AddEvent(unknown session): %v, want ErrUnknownSession", err)
	}
	if _, err := s.Complete(ctx, Result{Session: "tl-1", Status: "success", Manifest: []byte("r"), Now: t0.Add(10 * time.Second)}, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddEvent(ctx, Event{Session: "tl-1", Kind: EventBooted}); !errors.Is(err, ErrSessionExpired) {
		t.Errorf("AddEvent after the result: %v, want ErrSessionExpired", err)
	}
	evs, err := s.Timeline(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	want := "queued claimed booted started:update finished:update:success result:success"
	if got := kinds(evs); got != want {
		t.Errorf("Timeline = %s\nwant       %s", got, want)
	}
	if evs[1].Detail != "agent" || evs[1].Session != "tl-1" || !evs[1].At.Equal(micro(t0.Add(time.Second))) {
		t.Errorf("claimed event = %+v, want agent \"agent\" in session tl-1 at %v", evs[1], micro(t0.Add(time.Second)))
	}
	if _, err := s.Timeline(ctx, 999999); !errors.Is(err, ErrNotFound) {
		t.Errorf("Timeline(unknown task): %v, want ErrNotFound", err)
	}

	// A lease that runs out requeues with an event; the next claim is a
	// second claimed event.
	_, tasks = submit(t, s, "tl-exp", 0, "d")
	mustClaim(t, s, "tl-2", t0, "d")
	if _, err := s.Expire(ctx, t0.Add(2*time.Minute), 3); err != nil {
		t.Fatal(err)
	}
	mustClaim(t, s, "tl-3", t0.Add(3*time.Minute), "d")
	evs, _ = s.Timeline(ctx, tasks[0].ID)
	if got, want := kinds(evs), "queued claimed requeued claimed"; got != want {
		t.Errorf("Timeline after an expiry = %s, want %s", got, want)
	}
}

func testCancel(t *testing.T, s Store) {
	ctx := t.Context()
	// Queued: it ends at once.
	_, tasks := submit(t, s, "cq", 0, "c")
	got, err := s.Cancel(ctx, tasks[0].ID, "cancelled by admin", t0.Add(time.Second))
	if err != nil || got.State != Done || got.Status != "abort" || got.Reason != "cancelled by admin" {
		t.Fatalf("Cancel(queued) = %+v, %v; want done, abort, the reason", got, err)
	}
	if _, err := claim(s, "agent", "cq-1", "", t0, "c"); !errors.Is(err, ErrNoTask) {
		t.Errorf("Claim after cancelling the queued task: %v, want ErrNoTask", err)
	}
	if _, err := s.Cancel(ctx, tasks[0].ID, "again", t0); !errors.Is(err, ErrFinished) {
		t.Errorf("Cancel(done): %v, want ErrFinished", err)
	}
	if _, err := s.Cancel(ctx, 999999, "x", t0); !errors.Is(err, ErrNotFound) {
		t.Errorf("Cancel(unknown): %v, want ErrNotFound", err)
	}

	// Running: the agent learns of it, and its interrupt does not requeue.
	_, tasks = submit(t, s, "cr", 0, "d")
	mustClaim(t, s, "cr-1", t0, "d")
	if l, err := s.Live(ctx, "cr-1"); err != nil || l.Cancel != "" {
		t.Fatalf("Live before the cancel = %+v, %v", l, err)
	}
	got, err = s.Cancel(ctx, tasks[0].ID, "cancelled by admin", t0.Add(time.Second))
	if err != nil || got.State != Running || got.Cancel != "cancelled by admin" {
		t.Fatalf("Cancel(running) = %+v, %v; want running, being cancelled", got, err)
	}
	if got, err := s.Cancel(ctx, tasks[0].ID, "second", t0.Add(time.Second)); err != nil || got.Cancel != "cancelled by admin" {
		t.Errorf("Cancel again = %+v, %v; want the first reason kept", got, err)
	}
	if l, err := s.Live(ctx, "cr-1"); err != nil || l.Cancel != "cancelled by admin" {
		t.Errorf("Live after the cancel = %+v, %v; want the reason", l, err)
	}
	out, err := s.Complete(ctx, Result{Session: "cr-1", Status: "interrupt", Manifest: []byte("stopped"), Now: t0.Add(2 * time.Second)}, 3)
	if err != nil || out != Stored {
		t.Fatalf("Complete(interrupt) of a cancelled task = %v, %v; want Stored", out, err)
	}
	done, _ := s.Task(ctx, tasks[0].ID)
	if done.State != Done || done.Status != "abort" || done.Reason != "cancelled by admin" {
		t.Errorf("cancelled task after its result = %+v; want done, abort, the reason", done)
	}
	if _, err := claim(s, "agent", "cr-2", "", t0.Add(3*time.Second), "d"); !errors.Is(err, ErrNoTask) {
		t.Errorf("Claim after the cancelled task's result: %v, want ErrNoTask (not requeued)", err)
	}
	counts, err := s.TaskCounts(ctx)
	if want := []TaskCount{{Done, "abort", 2}}; err != nil || !slices.Equal(counts, want) {
		t.Errorf("TaskCounts = %v, %v; want %v", counts, err, want)
	}
	evs, _ := s.Timeline(ctx, tasks[0].ID)
	if got, want := kinds(evs), "queued claimed cancel result:abort"; got != want {
		t.Errorf("Timeline = %s, want %s", got, want)
	}

	// Running, and the agent never reports: the lease ends it, not a requeue.
	_, tasks = submit(t, s, "cx", 0, "e")
	mustClaim(t, s, "cx-1", t0, "e")
	if _, err := s.Cancel(ctx, tasks[0].ID, "cancelled", t0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Expire(ctx, t0.Add(2*time.Minute), 0); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Task(ctx, tasks[0].ID); got.State != Done || got.Status != "abort" || !strings.HasPrefix(got.Reason, "cancelled") {
		t.Errorf("cancelled task after its lease = %+v; want done, abort, cancelled", got)
	}
}

func testRebuild(t *testing.T, s Store) {
	ctx := t.Context()
	_, tasks := submit(t, s, "rb", 5, "c")
	if _, err := s.Rebuild(ctx, tasks[0].ID, t0); !errors.Is(err, ErrNotFinished) {
		t.Errorf("Rebuild(queued): %v, want ErrNotFinished", err)
	}
	mustClaim(t, s, "rb-1", t0, "c")
	if _, err := s.Complete(ctx, Result{Session: "rb-1", Status: "error", Manifest: []byte("x"), Now: t0}, 3); err != nil {
		t.Fatal(err)
	}
	nt, err := s.Rebuild(ctx, tasks[0].ID, t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	old := tasks[0]
	if nt.ID == old.ID || nt.State != Queued || nt.SubmissionID != old.SubmissionID || nt.Config != old.Config ||
		nt.Manifest != old.Manifest || nt.Priority != 5 || nt.Timeout != old.Timeout || nt.Attempts != 0 || nt.Status != "" {
		t.Errorf("Rebuild = %+v; want a queued copy of %+v", nt, old)
	}
	if c := mustClaim(t, s, "rb-2", t0.Add(2*time.Minute), "c"); c.ID != nt.ID {
		t.Errorf("claimed task %d, want the rebuild %d", c.ID, nt.ID)
	}
	evs, _ := s.Timeline(ctx, nt.ID)
	if len(evs) == 0 || evs[0].Kind != EventQueued || !strings.Contains(evs[0].Detail, "rebuild of task") {
		t.Errorf("rebuild's timeline = %+v, want it to start queued as a rebuild", evs)
	}
	evs, _ = s.Timeline(ctx, old.ID)
	if got, want := kinds(evs), "queued claimed result:error rebuilt"; got != want {
		t.Errorf("old task's timeline = %s, want %s", got, want)
	}
}

func testLiveLog(t *testing.T, s Store) {
	ctx := t.Context()
	_, tasks := submit(t, s, "ll", 0, "c")
	id := tasks[0].ID
	mustClaim(t, s, "ll-1", t0, "c")
	const limit = 10
	for _, c := range []struct {
		op       string
		off      int64
		data     string
		kept     int
		logBytes int64
	}{
		{"update", 0, "abc", 3, 3},
		{"update", 0, "abc", 0, 3}, // sent again: stored once
		{"update", 3, "<b>de", 5, 8},
		{"test", 0, "fghij", 2, 10}, // past the limit: cut
		{"test", 5, "k", 0, 10},
	} {
		l, err := s.AppendLog(ctx, LogChunk{Session: "ll-1", Operation: c.op, Offset: c.off, Data: []byte(c.data)}, limit)
		if err != nil || l.Kept != c.kept || l.LogBytes != c.logBytes || l.TaskID != id {
			t.Errorf("AppendLog(%s@%d %q) = %+v, %v; want kept %d, %d bytes in all, task %d", c.op, c.off, c.data, l, err, c.kept, c.logBytes, id)
		}
	}
	chunks, err := s.LiveLog(ctx, id, "", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var all bytes.Buffer
	for _, c := range chunks {
		all.Write(c.Data)
	}
	if all.String() != "abc<b>defg" || len(chunks) != 3 || chunks[2].Operation != "test" {
		t.Errorf("LiveLog = %q in %d chunks, want \"abc<b>defg\" in 3", all.String(), len(chunks))
	}
	after, err := s.LiveLog(ctx, id, "ll-1", chunks[0].ID, 0)
	if err != nil || len(after) != 2 || string(after[0].Data) != "<b>de" {
		t.Errorf("LiveLog after the first chunk = %d chunks, %v; want 2 starting <b>de", len(after), err)
	}
	if _, err := s.AppendLog(ctx, LogChunk{Session: "other", Operation: "x", Data: []byte("x")}, limit); !errors.Is(err, ErrUnknownSession) {
		t.Errorf("AppendLog(unknown session): %v, want ErrUnknownSession", err)
	}
	if _, err := s.AppendLog(ctx, LogChunk{Session: "ll-1", Operation: "", Data: []byte("x")}, limit); err == nil {
		t.Errorf("AppendLog without an operation succeeded")
	}

	// Pruned once the task has been done long enough.
	if _, err := s.Complete(ctx, Result{Session: "ll-1", Status: "success", Manifest: []byte("r"), Now: t0.Add(time.Second)}, 3); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PruneLiveLogs(ctx, t0); err != nil || n != 0 {
		t.Errorf("PruneLiveLogs before the task finished = %d, %v; want 0", n, err)
	}
	if n, err := s.PruneLiveLogs(ctx, t0.Add(time.Hour)); err != nil || n != 3 {
		t.Errorf("PruneLiveLogs after = %d, %v; want 3", n, err)
	}
	if chunks, _ := s.LiveLog(ctx, id, "", 0, 0); len(chunks) != 0 {
		t.Errorf("LiveLog after pruning: %d chunks", len(chunks))
	}
}
