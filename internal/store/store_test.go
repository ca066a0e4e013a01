package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/buildfarm/buildfarm/internal/store/pgtest"
)

// testStore runs the suite against the database that newDSN makes: a
// fresh, empty one for each call.
func testStore(t *testing.T, newDSN func(t *testing.T) string) {
	open := func(t *testing.T) Store {
		t.Helper()
		return openDSN(t, newDSN(t))
	}
	t.Run("SubmitAndRead", func(t *testing.T) { testSubmitAndRead(t, open(t)) })
	t.Run("ClaimOrder", func(t *testing.T) { testClaimOrder(t, open(t)) })
	t.Run("ClaimMatch", func(t *testing.T) { testClaimMatch(t, open(t)) })
	t.Run("ConcurrentClaims", func(t *testing.T) { testConcurrentClaims(t, newDSN(t)) })
	t.Run("Complete", func(t *testing.T) { testComplete(t, open(t)) })
	t.Run("CompleteExpired", func(t *testing.T) { testCompleteExpired(t, open(t)) })
	t.Run("Interrupt", func(t *testing.T) { testInterrupt(t, open(t)) })
	t.Run("Expire", func(t *testing.T) { testExpire(t, open(t)) })
	t.Run("LeasePerTask", func(t *testing.T) { testLeasePerTask(t, open(t)) })
	t.Run("ConcurrentCompleteExpire", func(t *testing.T) { testConcurrentCompleteExpire(t, newDSN(t)) })
	t.Run("Queue", func(t *testing.T) { testQueue(t, open(t)) })
	t.Run("Agents", func(t *testing.T) { testAgents(t, open(t)) })
	t.Run("Keys", func(t *testing.T) { testKeys(t, open(t)) })
	t.Run("Archives", func(t *testing.T) { testArchives(t, open(t)) })
	t.Run("Reopen", func(t *testing.T) { testReopen(t, newDSN(t)) })
	t.Run("Timeline", func(t *testing.T) { testTimeline(t, open(t)) })
	t.Run("Cancel", func(t *testing.T) { testCancel(t, open(t)) })
	t.Run("Rebuild", func(t *testing.T) { testRebuild(t, open(t)) })
	t.Run("LiveLog", func(t *testing.T) { testLiveLog(t, open(t)) })
}

func TestSQLite(t *testing.T) {
	testStore(t, func(t *testing.T) string { return filepath.Join(t.TempDir(), "buildfarm.db") })
}

func TestPostgres(t *testing.T) {
	srv := pgtest.NewServer(t)
	testStore(t, func(t *testing.T) string {
		dsn, err := srv.NewDatabase(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return dsn
	})
}

func openDSN(t testing.TB, dsn string) Store {
	t.Helper()
	s, err := Open(t.Context(), dsn, nil)
	if err != nil {
		t.Fatalf("Open(%q): %v", dsn, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// t0 is a time with more than microsecond precision, not in UTC.
var t0 = time.Date(2026, 5, 20, 10, 30, 0, 123456789, time.FixedZone("X", 3600))

// micro is t as the store returns it.
func micro(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// submit stores a submission of one task for each config, with priority p.
func submit(t testing.TB, s Store, name string, p int, configs ...string) (*Submission, []*Task) {
	t.Helper()
	sub := &Submission{Name: name, Version: "1.0", Configs: configs, Priority: p, Created: t0}
	var tasks []*Task
	for _, c := range configs {
		tasks = append(tasks, &Task{Config: c, MachinePattern: c + "-*", Target: "x86_64-linux-gnu",
			Manifest: "name: " + name + "\n", Timeout: time.Hour})
	}
	if err := s.Submit(context.Background(), sub, tasks); err != nil {
		t.Fatalf("Submit(%s): %v", name, err)
	}
	return sub, tasks
}

// claim claims for an agent with one machine per config.
func claim(s Store, agent, session, toolchain string, now time.Time, configs ...string) (*Task, error) {
	m := map[string]string{}
	for _, c := range configs {
		m[c] = c + "-machine"
	}
	return s.Claim(context.Background(), Claim{Agent: agent, Fingerprint: "fp-" + agent, Toolchain: toolchain,
		Machines: m, Session: session, Challenge: "ch-" + session, Now: now, LeaseUntil: now.Add(time.Minute)})
}

func mustClaim(t testing.TB, s Store, session string, now time.Time, configs ...string) *Task {
	t.Helper()
	task, err := claim(s, "agent", session, "", now, configs...)
	if err != nil {
		t.Fatalf("Claim(%s, %v): %v", session, configs, err)
	}
	return task
}

func testSubmitAndRead(t *testing.T, s Store) {
	ctx := t.Context()
	sub := &Submission{Name: "hello", Version: "1.2.3", Archive: strings.Repeat("ab", 32),
		Repository: "https://example.org/hello.git", Revision: "deadbeef", Configs: []string{"linux", "all"},
		Toolchain: "public", Priority: 3, Submitter: "ci", Created: t0}
	tasks := []*Task{
		{Config: "linux-gcc", MachinePattern: "linux-*", Target: "x86_64-linux-gnu", Manifest: "a: b\n", Timeout: 90 * time.Second},
		{Config: "linux-clang", MachinePattern: "linux-*", Target: "x86_64-linux-gnu", Toolchain: "other", Priority: 7},
	}
	if err := s.Submit(ctx, sub, tasks); err != nil {
		t.Fatalf("Submit: %v", err)
	}
	if sub.ID == 0 || tasks[0].ID == 0 || tasks[1].ID == 0 || tasks[0].ID == tasks[1].ID {
		t.Fatalf("Submit set IDs %d, %d, %d", sub.ID, tasks[0].ID, tasks[1].ID)
	}
	gotSub, gotTasks, err := s.Submission(ctx, sub.ID)
	if err != nil {
		t.Fatalf("Submission(%d): %v", sub.ID, err)
	}
	wantSub := *sub
	wantSub.Created = micro(t0)
	if diff := cmp.Diff(&wantSub, gotSub); diff != "" {
		t.Errorf("Submission(%d) (-want +got):\n%s", sub.ID, diff)
	}
	want := []*Task{
		{ID: tasks[0].ID, SubmissionID: sub.ID, Name: "hello", Version: "1.2.3", Config: "linux-gcc", MachinePattern: "linux-*",
			Target: "x86_64-linux-gnu", Toolchain: "public", Priority: 3, Manifest: "a: b\n", Timeout: 90 * time.Second,
			State: Queued, Created: micro(t0)},
		{ID: tasks[1].ID, SubmissionID: sub.ID, Name: "hello", Version: "1.2.3", Config: "linux-clang", MachinePattern: "linux-*",
			Target: "x86_64-linux-gnu", Toolchain: "other", Priority: 7, State: Queued, Created: micro(t0)},
	}
	if diff := cmp.Diff(want, gotTasks); diff != "" {
		t.Errorf("Submission(%d) tasks (-want +got):\n%s", sub.ID, diff)
	}
	got, err := s.Task(ctx, tasks[1].ID)
	if err != nil || !cmp.Equal(got, want[1]) {
		t.Errorf("Task(%d) = %+v, %v; want %+v", tasks[1].ID, got, err, want[1])
	}
	if got.Created.Location() != time.UTC {
		t.Errorf("Task(%d).Created in %v, want UTC", got.ID, got.Created.Location())
	}
	if _, err := s.Task(ctx, 999999); !errors.Is(err, ErrNotFound) {
		t.Errorf("Task(999999) error %v, want ErrNotFound", err)
	}
	if _, _, err := s.Submission(ctx, 999999); !errors.Is(err, ErrNotFound) {
		t.Errorf("Submission(999999) error %v, want ErrNotFound", err)
	}
	if err := s.Submit(ctx, &Submission{Name: "x"}, nil); err == nil {
		t.Errorf("Submit without a version succeeded")
	}

	// Listings: newest first, paged, filtered.
	sub2, _ := submit(t, s, "world", 0, "linux-gcc", "windows")
	subs, err := s.Submissions(ctx, 0, 0)
	if err != nil || len(subs) != 2 || subs[0].ID != sub2.ID || subs[1].ID != sub.ID {
		t.Errorf("Submissions(0, 0) = %v, %v; want [%d %d]", subs, err, sub2.ID, sub.ID)
	}
	if subs, err := s.Submissions(ctx, 1, 1); err != nil || len(subs) != 1 || subs[0].ID != sub.ID {
		t.Errorf("Submissions(1, 1) = %v, %v; want [%d]", subs, err, sub.ID)
	}
	if _, err := s.Submissions(ctx, -1, 0); err == nil {
		t.Errorf("Submissions(-1, 0) succeeded")
	}
	mustClaim(t, s, "s1", t0, "windows")
	ids := func(f TaskFilter) []int64 {
		t.Helper()
		ts, err := s.Tasks(ctx, f)
		if err != nil {
			t.Fatalf("Tasks(%+v): %v", f, err)
		}
		var ids []int64
		for _, t := range ts {
			ids = append(ids, t.ID)
		}
		return ids
	}
	all := ids(TaskFilter{})
	if len(all) != 4 || all[0] < all[1] || all[1] < all[2] || all[2] < all[3] {
		t.Errorf("Tasks({}) = %v, want 4, newest first", all)
	}
	for _, c := range []struct {
		f    TaskFilter
		want int
	}{
		{TaskFilter{SubmissionID: sub.ID}, 2},
		{TaskFilter{Name: "world"}, 2},
		{TaskFilter{Version: "1.2.3"}, 2},
		{TaskFilter{Config: "linux-gcc"}, 2},
		{TaskFilter{Config: "linux-gcc", Name: "world"}, 1},
		{TaskFilter{Machine: "windows-machine"}, 1},
		{TaskFilter{Agent: "agent"}, 1},
		{TaskFilter{State: Running}, 1},
		{TaskFilter{State: Queued}, 3},
		{TaskFilter{Status: "success"}, 0},
		{TaskFilter{Limit: 3}, 3},
		{TaskFilter{Limit: 3, Offset: 2}, 2},
	} {
		if got := ids(c.f); len(got) != c.want {
			t.Errorf("Tasks(%+v) = %v, want %d tasks", c.f, got, c.want)
		}
	}
	if got := ids(TaskFilter{Limit: 1, Offset: 1}); len(got) != 1 || got[0] != all[1] {
		t.Errorf("Tasks(Limit 1, Offset 1) = %v, want [%d]", got, all[1])
	}
}

func testClaimOrder(t *testing.T, s Store) {
	ctx := t.Context()
	_, low := submit(t, s, "low", 0, "c")
	_, high1 := submit(t, s, "high1", 5, "c")
	_, mid := submit(t, s, "mid", 2, "c")
	_, high2 := submit(t, s, "high2", 5, "c")
	now := t0
	var order []int64
	for i := range 4 {
		task := mustClaim(t, s, fmt.Sprintf("order-%d", i), now, "c")
		order = append(order, task.ID)
	}
	want := []int64{high1[0].ID, high2[0].ID, mid[0].ID, low[0].ID}
	if !cmp.Equal(order, want) {
		t.Errorf("claim order %v, want %v (priority, then age)", order, want)
	}
	if _, err := claim(s, "agent", "order-x", "", now, "c"); !errors.Is(err, ErrNoTask) {
		t.Errorf("Claim on an empty queue: %v, want ErrNoTask", err)
	}

	// What a claim sets, in the task and in its session.
	got, err := s.Task(ctx, high1[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != Running || got.Attempts != 1 || got.Agent != "agent" || got.Machine != "c-machine" ||
		got.Session != "order-0" || !got.Claimed.Equal(micro(now)) || !got.LeaseExpires.Equal(micro(now.Add(time.Minute))) {
		t.Errorf("claimed task = %+v", got)
	}
	ss, err := s.Session(ctx, "order-0")
	if err != nil {
		t.Fatalf("Session(order-0): %v", err)
	}
	wantSS := &Session{ID: "order-0", TaskID: high1[0].ID, Agent: "agent", Fingerprint: "fp-agent", Challenge: "ch-order-0",
		Created: micro(now), Expires: micro(now.Add(time.Minute)), State: "active", Name: "high1", Version: "1.0", Config: "c", Machine: "c-machine"}
	if diff := cmp.Diff(wantSS, ss); diff != "" {
		t.Errorf("Session(order-0) (-want +got):\n%s", diff)
	}
	if _, err := s.Session(ctx, "nope"); !errors.Is(err, ErrUnknownSession) {
		t.Errorf("Session(nope): %v, want ErrUnknownSession", err)
	}
	if _, err := claim(s, "agent", "", "", now, "c"); err == nil || errors.Is(err, ErrNoTask) {
		t.Errorf("Claim without a session: %v, want an error", err)
	}
}

func testClaimMatch(t *testing.T, s Store) {
	ctx := t.Context()
	sub := &Submission{Name: "m", Version: "1"}
	tasks := []*Task{
		{Config: "linux", Toolchain: "stable"},
		{Config: "windows"},
		{Config: "linux", Toolchain: ""},
	}
	if err := s.Submit(ctx, sub, tasks); err != nil {
		t.Fatal(err)
	}
	// No machine for any config, or none for the toolchain.
	if _, err := claim(s, "a", "m0", "stable", t0, "macos"); !errors.Is(err, ErrNoTask) {
		t.Errorf("Claim(macos): %v, want ErrNoTask", err)
	}
	if _, err := claim(s, "a", "m0", "stable", t0); !errors.Is(err, ErrNoTask) {
		t.Errorf("Claim(no machines): %v, want ErrNoTask", err)
	}
	// The toolchain "beta" takes only the toolchain-free linux task.
	got, err := claim(s, "a", "m1", "beta", t0, "linux")
	if err != nil || got.ID != tasks[2].ID {
		t.Fatalf("Claim(linux, beta) = %+v, %v; want task %d", got, err, tasks[2].ID)
	}
	if _, err := claim(s, "a", "m2", "beta", t0, "linux"); !errors.Is(err, ErrNoTask) {
		t.Errorf("Claim(linux, beta) again: %v, want ErrNoTask", err)
	}
	got, err = claim(s, "a", "m3", "stable", t0, "linux", "macos")
	if err != nil || got.ID != tasks[0].ID || got.Machine != "linux-machine" {
		t.Fatalf("Claim(linux, stable) = %+v, %v; want task %d on linux-machine", got, err, tasks[0].ID)
	}
	// The machine is the one the agent has for the task's config.
	got, err = s.Claim(ctx, Claim{Agent: "b", Session: "m4", Now: t0, LeaseUntil: t0.Add(time.Hour),
		Machines: map[string]string{"windows": "win-11 'quoted' \"x\"", "linux": "l"}})
	if err != nil || got.ID != tasks[1].ID || got.Machine != `win-11 'quoted' "x"` || got.Agent != "b" {
		t.Fatalf("Claim(windows) = %+v, %v; want task %d on the windows machine", got, err, tasks[1].ID)
	}
}

func testConcurrentClaims(t *testing.T, dsn string) {
	// Two stores on one database, as two controllers, four claimers each.
	stores := []Store{openDSN(t, dsn), openDSN(t, dsn)}
	const n = 300
	sub := &Submission{Name: "many", Version: "1"}
	var tasks []*Task
	for i := range n {
		tasks = append(tasks, &Task{Config: []string{"a", "b", "c"}[i%3], Priority: i % 4})
	}
	if err := stores[0].Submit(t.Context(), sub, tasks); err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		seen = map[int64]string{}
		wg   sync.WaitGroup
		errs = make(chan error, 8)
	)
	for g := range 8 {
		s := stores[g%2]
		wg.Go(func() {
			for i := 0; ; i++ {
				session := fmt.Sprintf("g%d-%d", g, i)
				task, err := claim(s, fmt.Sprintf("agent-%d", g), session, "", t0, "a", "b", "c")
				if errors.Is(err, ErrNoTask) {
					return
				}
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if prev, ok := seen[task.ID]; ok {
					errs <- fmt.Errorf("task %d claimed twice: sessions %s and %s", task.ID, prev, session)
				}
				seen[task.ID] = session
				mu.Unlock()
				if task.Session != session {
					errs <- fmt.Errorf("task %d claimed in session %s has session %s", task.ID, session, task.Session)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(seen) != n {
		t.Errorf("%d tasks claimed, want %d", len(seen), n)
	}
	q, err := stores[1].Queue(t.Context())
	if err != nil || q.Depth != 0 {
		t.Errorf("Queue() = %+v, %v; want empty", q, err)
	}
	running, err := stores[1].Tasks(t.Context(), TaskFilter{State: Running, Limit: 1000})
	if err != nil || len(running) != n {
		t.Errorf("Tasks(running) = %d, %v; want %d", len(running), err, n)
	}
	for _, task := range running {
		if seen[task.ID] != task.Session || task.Attempts != 1 {
			t.Errorf("task %d: session %s, attempts %d; claimed in %s once", task.ID, task.Session, task.Attempts, seen[task.ID])
		}
	}
}

// bigLog is a result manifest with a long, repetitive log.
func bigLog() []byte {
	var b bytes.Buffer
	b.WriteString(": 1\nname: hello\nversion: 1.0\nstatus: success\nupdate-status: success\nupdate-log:\\\n")
	for i := range 2000 {
		fmt.Fprintf(&b, "cc -O2 -c src/file%d.c -o obj/file%d.o\n", i%50, i%50)
	}
	b.WriteString("\\\n")
	return b.Bytes()
}

// storedSize is the length of a task's result as the table holds it.
func storedSize(t *testing.T, s Store, taskID int64) int {
	t.Helper()
	var n int
	err := s.(*sqlStore).r.QueryRowContext(t.Context(), `SELECT length(data) FROM results WHERE task_id = $1`, taskID).Scan(&n)
	if err != nil {
		t.Fatalf("stored result of task %d: %v", taskID, err)
	}
	return n
}

func testComplete(t *testing.T, s Store) {
	ctx := t.Context()
	_, tasks := submit(t, s, "done", 0, "c")
	task := mustClaim(t, s, "sess", t0, "c")
	manifest := bigLog()
	r := Result{Session: "sess", Status: "success", Manifest: manifest, Now: t0.Add(time.Second)}
	if _, err := s.Result(ctx, task.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Result before Complete: %v, want ErrNotFound", err)
	}
	out, err := s.Complete(ctx, r, 3)
	if err != nil || out != Stored {
		t.Fatalf("Complete = %v, %v; want Stored", out, err)
	}
	got, err := s.Result(ctx, tasks[0].ID)
	if err != nil || !bytes.Equal(got, manifest) {
		t.Errorf("Result(%d) = %d bytes, %v; want the %d bytes completed", tasks[0].ID, len(got), err, len(manifest))
	}
	if n := storedSize(t, s, task.ID); n >= len(manifest)/4 {
		t.Errorf("result stored in %d bytes, want well under the manifest's %d (compressed)", n, len(manifest))
	}
	done, err := s.Task(ctx, task.ID)
	if err != nil || done.State != Done || done.Status != "success" || !done.Finished.Equal(micro(r.Now)) {
		t.Errorf("Task after Complete = %+v, %v; want done, success, finished %v", done, err, micro(r.Now))
	}
	if ss, err := s.Session(ctx, "sess"); err != nil || ss.State != "done" {
		t.Errorf("Session after Complete = %+v, %v; want done", ss, err)
	}

	// The same result again, even with other bytes, changes nothing.
	out, err = s.Complete(ctx, Result{Session: "sess", Status: "error", Manifest: []byte("other"), Now: r.Now}, 3)
	if err != nil || out != Duplicate {
		t.Errorf("Complete again = %v, %v; want Duplicate", out, err)
	}
	if got, _ := s.Result(ctx, task.ID); !bytes.Equal(got, manifest) {
		t.Errorf("Result after a duplicate changed to %q", got)
	}
	if again, _ := s.Task(ctx, task.ID); again.Status != "success" {
		t.Errorf("status after a duplicate = %q, want success", again.Status)
	}
	if _, err := s.Complete(ctx, Result{Session: "never", Status: "success", Now: r.Now}, 3); !errors.Is(err, ErrUnknownSession) {
		t.Errorf("Complete(unknown session): %v, want ErrUnknownSession", err)
	}
	if _, err := s.Complete(ctx, Result{Session: "sess", Now: r.Now}, 3); err == nil {
		t.Errorf("Complete without a status succeeded")
	}
}

func testCompleteExpired(t *testing.T, s Store) {
	ctx := t.Context()
	submit(t, s, "late", 0, "c")
	task := mustClaim(t, s, "late-1", t0, "c")
	// After the lease, a result is refused, and nothing is stored.
	late := Result{Session: "late-1", Status: "success", Manifest: []byte("x"), Now: t0.Add(2 * time.Minute)}
	if _, err := s.Complete(ctx, late, 3); !errors.Is(err, ErrSessionExpired) {
		t.Fatalf("Complete after the lease: %v, want ErrSessionExpired", err)
	}
	if _, err := s.Result(ctx, task.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Result after a refused Complete: %v, want ErrNotFound", err)
	}
	if got, _ := s.Task(ctx, task.ID); got.State != Running || got.Status != "" {
		t.Errorf("task after a refused Complete = %+v, want running still", got)
	}
	// Once expired and claimed again, the old session's result is refused
	// even within its lease, and the new one's is taken.
	if _, err := s.Expire(ctx, t0.Add(2*time.Minute), 3); err != nil {
		t.Fatal(err)
	}
	again := mustClaim(t, s, "late-2", t0.Add(3*time.Minute), "c")
	if again.ID != task.ID || again.Attempts != 2 {
		t.Fatalf("claimed again %+v, want task %d, attempt 2", again, task.ID)
	}
	early := Result{Session: "late-1", Status: "success", Manifest: []byte("x"), Now: t0.Add(30 * time.Second)}
	if _, err := s.Complete(ctx, early, 3); !errors.Is(err, ErrSessionExpired) {
		t.Errorf("Complete of the expired session: %v, want ErrSessionExpired", err)
	}
	if out, err := s.Complete(ctx, Result{Session: "late-2", Status: "warning", Manifest: []byte("y"), Now: t0.Add(3 * time.Minute)}, 3); err != nil || out != Stored {
		t.Errorf("Complete of the new session = %v, %v; want Stored", out, err)
	}
	if got, _ := s.Result(ctx, task.ID); string(got) != "y" {
		t.Errorf("Result = %q, want the new session's", got)
	}
}

func testInterrupt(t *testing.T, s Store) {
	ctx := t.Context()
	submit(t, s, "int", 0, "c")
	now := t0
	for attempt := 1; attempt <= 2; attempt++ {
		session := fmt.Sprintf("int-%d", attempt)
		task := mustClaim(t, s, session, now, "c")
		if task.Attempts != attempt {
			t.Errorf("attempt %d: task has Attempts %d", attempt, task.Attempts)
		}
		out, err := s.Complete(ctx, Result{Session: session, Status: "interrupt", Manifest: []byte("interrupted"), Now: now}, 2)
		want := Requeued
		if attempt == 2 {
			want = Abandoned
		}
		if err != nil || out != want {
			t.Fatalf("attempt %d: Complete(interrupt) = %v, %v; want %v", attempt, out, err, want)
		}
		got, _ := s.Task(ctx, task.ID)
		ss, _ := s.Session(ctx, session)
		if attempt == 1 {
			if got.State != Queued || ss.State != "expired" {
				t.Errorf("after a requeue: task %s, session %s; want queued, expired", got.State, ss.State)
			}
			if _, err := s.Result(ctx, task.ID); !errors.Is(err, ErrNotFound) {
				t.Errorf("Result after a requeue: %v, want ErrNotFound", err)
			}
		} else {
			if got.State != Done || got.Status != "abnormal" || got.Reason == "" || ss.State != "done" {
				t.Errorf("after abandoning: task %+v, session %s; want done, abnormal with a reason", got, ss.State)
			}
			if r, err := s.Result(ctx, task.ID); err != nil || string(r) != "interrupted" {
				t.Errorf("Result after abandoning = %q, %v", r, err)
			}
		}
		now = now.Add(time.Second)
	}
	if _, err := claim(s, "agent", "int-3", "", now, "c"); !errors.Is(err, ErrNoTask) {
		t.Errorf("Claim after abandoning: %v, want ErrNoTask", err)
	}
}

func testExpire(t *testing.T, s Store) {
	ctx := t.Context()
	submit(t, s, "exp", 0, "c")
	submit(t, s, "fresh", 0, "d")
	fresh := mustClaim(t, s, "fresh", t0.Add(time.Hour), "d")
	now := t0
	for attempt := 1; attempt <= 2; attempt++ {
		session := fmt.Sprintf("exp-%d", attempt)
		task := mustClaim(t, s, session, now, "c")
		// Not yet: the lease still runs.
		if changed, err := s.Expire(ctx, now.Add(30*time.Second), 2); err != nil || len(changed) != 0 {
			t.Fatalf("Expire within the lease = %v, %v; want nothing", changed, err)
		}
		changed, err := s.Expire(ctx, now.Add(2*time.Minute), 2)
		if err != nil || len(changed) != 1 || changed[0].ID != task.ID {
			t.Fatalf("attempt %d: Expire = %v, %v; want task %d", attempt, changed, err, task.ID)
		}
		got := changed[0]
		if attempt == 1 && got.State != Queued {
			t.Errorf("attempt 1: expired task %+v, want queued", got)
		}
		if attempt == 2 && (got.State != Done || got.Status != "abnormal" || !strings.Contains(got.Reason, "lease expired after 2 sessions")) {
			t.Errorf("attempt 2: expired task %+v, want done, abnormal, lease expired after 2 sessions", got)
		}
		if stored, _ := s.Task(ctx, task.ID); !cmp.Equal(stored, got) {
			t.Errorf("Expire returned %+v, the store has %+v", got, stored)
		}
		if ss, _ := s.Session(ctx, session); ss.State != "expired" {
			t.Errorf("session %s after Expire: %s, want expired", session, ss.State)
		}
		now = now.Add(5 * time.Minute)
	}
	if _, err := claim(s, "agent", "exp-3", "", now, "c"); !errors.Is(err, ErrNoTask) {
		t.Errorf("Claim after abandoning: %v, want ErrNoTask", err)
	}
	if got, _ := s.Task(ctx, fresh.ID); got.State != Running {
		t.Errorf("a task whose lease runs was expired: %+v", got)
	}
	// No limit: maxAttempts 0 requeues whatever the attempts.
	changed, err := s.Expire(ctx, t0.Add(3*time.Hour), 0)
	if err != nil || len(changed) != 1 || changed[0].ID != fresh.ID || changed[0].State != Queued {
		t.Errorf("Expire(maxAttempts 0) = %v, %v; want task %d queued", changed, err, fresh.ID)
	}
}

// testConcurrentCompleteExpire races results with lease expiry on two
// stores: each task ends once, either stored or requeued, never both.
func testConcurrentCompleteExpire(t *testing.T, dsn string) {
	ctx := t.Context()
	a, b := openDSN(t, dsn), openDSN(t, dsn)
	const n = 60
	sub := &Submission{Name: "race", Version: "1"}
	var tasks []*Task
	for range n {
		tasks = append(tasks, &Task{Config: "c"})
	}
	if err := a.Submit(ctx, sub, tasks); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		mustClaim(t, a, fmt.Sprintf("race-%d", i), t0, "c")
	}
	// The results arrive just within the lease, Expire runs just after.
	var wg sync.WaitGroup
	outcomes := make([]Outcome, n)
	errs := make([]error, n)
	var expired [][]*Task
	var mu sync.Mutex
	for i := range n {
		s := []Store{a, b}[i%2]
		wg.Go(func() {
			outcomes[i], errs[i] = s.Complete(ctx, Result{Session: fmt.Sprintf("race-%d", i), Status: "success",
				Manifest: []byte("ok"), Now: t0.Add(59 * time.Second)}, 3)
		})
		if i%10 == 0 {
			wg.Go(func() {
				ts, err := b.Expire(ctx, t0.Add(time.Hour), 3)
				if err != nil {
					t.Errorf("Expire: %v", err)
				}
				mu.Lock()
				expired = append(expired, ts)
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	requeued := map[int64]bool{}
	for _, ts := range expired {
		for _, task := range ts {
			requeued[task.ID] = true
		}
	}
	for i, task := range tasks {
		got, err := a.Task(ctx, task.ID)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case errs[i] == nil && outcomes[i] == Stored:
			if got.State != Done || requeued[task.ID] {
				t.Errorf("task %d stored, yet %s (requeued %v)", task.ID, got.State, requeued[task.ID])
			}
		case errors.Is(errs[i], ErrSessionExpired):
			if got.State != Queued || !requeued[task.ID] {
				t.Errorf("task %d refused, yet %s (requeued %v)", task.ID, got.State, requeued[task.ID])
			}
		default:
			t.Errorf("task %d: Complete = %v, %v", task.ID, outcomes[i], errs[i])
		}
	}
}

func testQueue(t *testing.T, s Store) {
	ctx := t.Context()
	if q, err := s.Queue(ctx); err != nil || q.Depth != 0 || q.Oldest != nil {
		t.Errorf("Queue() of an empty store = %+v, %v", q, err)
	}
	_, first := submit(t, s, "first", 0, "c")
	submit(t, s, "second", 9, "c", "d")
	q, err := s.Queue(ctx)
	if err != nil || q.Depth != 3 || q.Oldest == nil || q.Oldest.ID != first[0].ID {
		t.Errorf("Queue() = %+v, %v; want 3 deep, oldest %d", q, err, first[0].ID)
	}
	mustClaim(t, s, "q1", t0, "d")
	if q, err := s.Queue(ctx); err != nil || q.Depth != 2 {
		t.Errorf("Queue() after a claim = %+v, %v; want 2 deep", q, err)
	}
}

func testAgents(t *testing.T, s Store) {
	ctx := t.Context()
	if as, err := s.Agents(ctx); err != nil || len(as) != 0 {
		t.Errorf("Agents() of an empty store = %v, %v", as, err)
	}
	b := Agent{Name: "b", Toolchain: "public 1.0", Version: "0.1", Fingerprint: "fb", LastSeen: t0, Address: "10.0.0.2:5555",
		Machines: []Machine{{ID: "id1", Name: "linux-gcc", Summary: "Linux"}, {ID: "id2", Name: "busybox", Summary: "tiny"}}}
	a := Agent{Name: "a", LastSeen: t0}
	for _, ag := range []Agent{b, a} {
		if err := s.SeeAgent(ctx, ag); err != nil {
			t.Fatalf("SeeAgent(%s): %v", ag.Name, err)
		}
	}
	b.Machines = b.Machines[:1]
	b.LastSeen = t0.Add(time.Minute)
	b.Address = "10.0.0.3:1"
	if err := s.SeeAgent(ctx, b); err != nil {
		t.Fatal(err)
	}
	a.LastSeen, b.LastSeen = micro(a.LastSeen), micro(b.LastSeen)
	a.Machines = []Machine{}
	got, err := s.Agents(ctx)
	if diff := cmp.Diff([]Agent{a, b}, got); err != nil || diff != "" {
		t.Errorf("Agents() (-want +got), %v:\n%s", err, diff)
	}
	if err := s.SeeAgent(ctx, Agent{}); err == nil {
		t.Errorf("SeeAgent without a name succeeded")
	}
}

func testKeys(t *testing.T, s Store) {
	ctx := t.Context()
	k1 := Key{Fingerprint: "f1", PEM: []byte("-----BEGIN PUBLIC KEY-----\n1\n"), Name: "alice", Added: t0}
	k2 := Key{Fingerprint: "f2", PEM: []byte("pem2"), Name: "bob", Added: t0}
	for _, k := range []Key{k2, k1} {
		if err := s.AddKey(ctx, k); err != nil {
			t.Fatalf("AddKey(%s): %v", k.Fingerprint, err)
		}
	}
	k1.PEM, k1.Name = []byte("replaced"), "carol"
	if err := s.AddKey(ctx, k1); err != nil {
		t.Fatal(err)
	}
	k1.Added, k2.Added = micro(t0), micro(t0)
	got, err := s.Keys(ctx)
	if diff := cmp.Diff([]Key{k2, k1}, got); err != nil || diff != "" {
		t.Errorf("Keys() (-want +got), %v:\n%s", err, diff)
	}
	if k, err := s.Key(ctx, "f1"); err != nil || !cmp.Equal(*k, k1) {
		t.Errorf("Key(f1) = %+v, %v; want %+v", k, err, k1)
	}
	if _, err := s.Key(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Key(nope): %v, want ErrNotFound", err)
	}
	if err := s.RemoveKey(ctx, "f1"); err != nil {
		t.Errorf("RemoveKey(f1): %v", err)
	}
	if err := s.RemoveKey(ctx, "f1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("RemoveKey(f1) again: %v, want ErrNotFound", err)
	}
	if _, err := s.Key(ctx, "f1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Key(f1) after removal: %v, want ErrNotFound", err)
	}
	if err := s.AddKey(ctx, Key{Fingerprint: "f3"}); err == nil {
		t.Errorf("AddKey without PEM succeeded")
	}
}

func testArchives(t *testing.T, s Store) {
	ctx := t.Context()
	data := bytes.Repeat([]byte("tar\x00\xff"), 10000)
	sum := sha256.Sum256(data)
	name := hex.EncodeToString(sum[:])
	if _, err := s.Archive(ctx, name); !errors.Is(err, ErrNotFound) {
		t.Errorf("Archive before PutArchive: %v, want ErrNotFound", err)
	}
	for range 2 {
		if err := s.PutArchive(ctx, name, data); err != nil {
			t.Fatalf("PutArchive: %v", err)
		}
	}
	if got, err := s.Archive(ctx, name); err != nil || !bytes.Equal(got, data) {
		t.Errorf("Archive = %d bytes, %v; want the %d put", len(got), err, len(data))
	}
	if err := s.PutArchive(ctx, "ABC", data); err == nil || !strings.Contains(err.Error(), "64 lower-case hex") {
		t.Errorf("PutArchive(ABC): %v, want a bad name", err)
	}
	other := strings.Repeat("0", 64)
	if err := s.PutArchive(ctx, other, data); err == nil || !strings.Contains(err.Error(), name) {
		t.Errorf("PutArchive with the wrong sum: %v, want an error naming the data's sum", err)
	}
}

func testReopen(t *testing.T, dsn string) {
	ctx := t.Context()
	// Three stores open one fresh database at once: each migration is
	// applied once.
	var wg sync.WaitGroup
	stores := make([]Store, 3)
	errs := make([]error, 3)
	for i := range stores {
		wg.Go(func() { stores[i], errs[i] = Open(ctx, dsn, nil) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent Open %d: %v", i, err)
		}
	}
	sub, _ := submit(t, stores[0], "kept", 0, "c")
	for _, s := range stores {
		s.Close()
	}
	s := openDSN(t, dsn)
	if got, _, err := s.Submission(ctx, sub.ID); err != nil || got.Name != "kept" {
		t.Errorf("Submission(%d) after reopening = %+v, %v", sub.ID, got, err)
	}
	ms, err := loadMigrations(s.(*sqlStore).migrations())
	if err != nil {
		t.Fatal(err)
	}
	var n, newest int
	err = s.(*sqlStore).r.QueryRowContext(ctx, `SELECT count(*), max(version) FROM schema_migrations`).Scan(&n, &newest)
	if err != nil || n != len(ms) || newest != ms[len(ms)-1].version {
		t.Errorf("schema_migrations: %d rows, newest %d, %v; want %d, %d", n, newest, err, len(ms), ms[len(ms)-1].version)
	}
	// A database from a newer buildfarm is refused.
	if _, err := s.(*sqlStore).w.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied) VALUES ($1, $2, $3)`,
		newest+1, "future.sql", ts(t0)); err != nil {
		t.Fatal(err)
	}
	if s2, err := Open(ctx, dsn, nil); err == nil || !strings.Contains(err.Error(), "newer") {
		if err == nil {
			s2.Close()
		}
		t.Errorf("Open of a newer schema: %v, want an error saying it is newer", err)
	}
}

func TestOpenBadDSN(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ dsn, want string }{
		{"", "empty database name"},
		{"mysql://db/x", `unknown database scheme "mysql"`},
		{filepath.Join(dir, "missing", "x.db"), "missing"},
		{dir, "is a directory"},
		{filepath.Join(dir, "x.db?mode=ro"), "plain file path"},
		{"postgres://user:secret@127.0.0.1:1/db?connect_timeout=5", "127.0.0.1"},
	} {
		s, err := Open(t.Context(), c.dsn, nil)
		if err == nil {
			s.Close()
			t.Errorf("Open(%q) succeeded", c.dsn)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("Open(%q) = %v, want an error with %q", c.dsn, err, c.want)
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("Open(%q) = %v: the error shows the password", c.dsn, err)
		}
	}
}

// testLeasePerTask checks a claim without LeaseUntil: each task is leased
// for its own timeout plus the margin, the session as long, and Expire
// goes by that lease.
func testLeasePerTask(t *testing.T, s Store) {
	ctx := t.Context()
	sub := &Submission{Name: "lease", Version: "1.0", Created: t0}
	tasks := []*Task{
		{Config: "short", MachinePattern: "short-*", Target: "x86_64-linux-gnu", Manifest: "a: b\n", Timeout: 90 * time.Second, Priority: 2},
		{Config: "long", MachinePattern: "long-*", Target: "x86_64-linux-gnu", Manifest: "a: b\n", Timeout: 3 * time.Hour, Priority: 1},
	}
	if err := s.Submit(ctx, sub, tasks); err != nil {
		t.Fatal(err)
	}
	const margin = 30 * time.Second
	for i, want := range []time.Duration{90 * time.Second, 3 * time.Hour} {
		session := fmt.Sprintf("lease-%d", i)
		got, err := s.Claim(ctx, Claim{Agent: "a", Machines: map[string]string{"short": "short-m", "long": "long-m"},
			Session: session, Now: t0, LeaseMargin: margin})
		if err != nil {
			t.Fatalf("Claim %d: %v", i, err)
		}
		if !got.LeaseExpires.Equal(micro(t0.Add(want + margin))) {
			t.Errorf("task %s leased until %v, want %v (now + its timeout %v + margin %v)", got.Config, got.LeaseExpires, micro(t0.Add(want+margin)), want, margin)
		}
		ss, err := s.Session(ctx, session)
		if err != nil || !ss.Expires.Equal(got.LeaseExpires) {
			t.Errorf("Session(%s) = %+v, %v; want it to expire with its task's lease %v", session, ss, err, got.LeaseExpires)
		}
	}
	expired, err := s.Expire(ctx, t0.Add(90*time.Second+margin-time.Second), 3)
	if err != nil || len(expired) != 0 {
		t.Errorf("Expire before the short lease's end = %v, %v; want none", expired, err)
	}
	expired, err = s.Expire(ctx, t0.Add(90*time.Second+margin+time.Second), 3)
	if err != nil || len(expired) != 1 || expired[0].Config != "short" || expired[0].State != Queued {
		t.Errorf("Expire after the short lease's end = %+v, %v; want the short task queued again", expired, err)
	}
}
