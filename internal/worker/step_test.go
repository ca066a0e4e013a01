package worker

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// alive reports whether pid is a process that has not ended (a zombie has).
func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) STATE ...: comm may hold spaces, so read after the last ')'.
	s := string(stat)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(fields) > 0 && fields[0] != "Z" && fields[0] != "X"
}

// TestStepKillsItsBackground runs steps that leave a child behind, as a
// build step's `daemon &` or a test suite's server would: once the step
// ends (by itself, or by its build's timeout), the child must be gone, and
// the step must end when its shell does, not when the child does.
func TestStepKillsItsBackground(t *testing.T) {
	session := t.TempDir()
	w := testWorker(t, agentSide(t, session), ModeBuild)
	task := &manifest.Task{Target: "x86_64-linux-gnu"}
	tests := []struct {
		name    string
		command string
		timeout time.Duration
		want    manifest.Status
	}{
		{"exits", "sleep 1000 & echo $! > pid; echo started", 0, manifest.StatusSuccess},
		{"fails", "sleep 1000 & echo $! > pid; exit 3", 0, manifest.StatusError},
		{"times out", "sleep 1000 & echo $! > pid; sleep 1000", time.Second, manifest.StatusAbort},
		{"ignores SIGTERM", "trap '' TERM; (trap '' TERM; sleep 1000) & echo $! > pid; sleep 1000", time.Second, manifest.StatusAbort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			ctx := t.Context()
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			}
			start := time.Now()
			r := w.runStep(ctx, manifest.Step{Operation: "test", Command: tt.command}, dir, task, nil)
			took := time.Since(start)
			b, err := os.ReadFile(filepath.Join(dir, "pid"))
			if err != nil {
				t.Fatalf("the step wrote no pid: %v; log:\n%s", err, r.Log)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			defer syscall.Kill(pid, syscall.SIGKILL) // Should the test fail.
			if r.Status != tt.want {
				t.Errorf("step %q: status %v, want %v; log:\n%s", tt.command, r.Status, tt.want, r.Log)
			}
			if limit := tt.timeout + 10*time.Second; took > limit {
				t.Errorf("step %q took %v, want at most %v", tt.command, took, limit)
			}
			// The killed child is reaped by whoever inherited it: wait
			// a little for that.
			for i := 0; alive(pid); i++ {
				if i == 50 {
					t.Fatalf("step %q: its background child %d is still running after the step", tt.command, pid)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// TestStepKillsItsSession runs a step as a user of its own, as the guest
// does, whose background child leaves its process group and session
// (setsid) and forks again: once the step ends, both must be gone.
func TestStepKillsItsSession(t *testing.T) {
	testenv.NeedRoot(t)
	session := t.TempDir()
	w := testWorker(t, agentSide(t, session), ModeBuild)
	// A user no other process here runs as (pgtest's PostgreSQL runs as
	// nobody, in another test binary).
	w.cfg.StepUID, w.cfg.StepGID = 64931, 64931
	dir := t.TempDir()
	// The test's own temporary directories are the test's alone.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	task := &manifest.Task{Target: "x86_64-linux-gnu"}
	cmd := "setsid sh -c 'sleep 1000 & echo $! > grandchild; exec sleep 1000' & echo $! > pid; sleep 0.5; echo started"
	r := w.runStep(t.Context(), manifest.Step{Operation: "test", Command: cmd}, dir, task, nil)
	if r.Status != manifest.StatusSuccess {
		t.Fatalf("status %v, want success; log:\n%s", r.Status, r.Log)
	}
	pids := map[string]int{}
	for _, f := range []string{"pid", "grandchild"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatalf("the step wrote no %s: %v; log:\n%s", f, err, r.Log)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		defer syscall.Kill(pid, syscall.SIGKILL) // Should the test fail.
		pids[f] = pid
	}
	for f, pid := range pids {
		for i := 0; alive(pid); i++ {
			if i == 50 {
				t.Fatalf("the step's %s %d, in a session of its own, is still running after the step", f, pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
