package machine

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMain lets the test binary play an agent that crashes mid-task.
func TestMain(m *testing.M) {
	if dir := os.Getenv("MACHINE_TEST_CRASHING_AGENT"); dir != "" {
		crashingAgent(dir)
		return
	}
	os.Exit(m.Run())
}

// crashingAgent makes a task snapshot of machine m in the store dir, says
// where, and waits to be killed.
func crashingAgent(dir string) {
	s := &Store{Dir: dir, Backend: os.Getenv("MACHINE_TEST_BACKEND")}
	v, err := s.Volume(DefaultVolume, false)
	if err == nil {
		var snap *Snapshot
		if snap, err = v.SnapshotForTask(context.Background(), "m", "default"); err == nil {
			fmt.Println(snap.Dir)
			time.Sleep(time.Hour) // until killed
		}
	}
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

// TestCleanStray kills an agent process that holds a task snapshot, and
// checks that CleanStray deletes that snapshot and an abandoned import but
// leaves alone the snapshot of an agent that still runs.
func TestCleanStray(t *testing.T) {
	for _, bc := range backendCases() {
		t.Run(bc.name, func(t *testing.T) {
			ctx := context.Background()
			s, v := storeWithMachine(t, bc)
			bootstrap(t, s, "m", 'B')

			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "MACHINE_TEST_CRASHING_AGENT="+s.Dir, "MACHINE_TEST_BACKEND="+bc.backend)
			cmd.Stderr = os.Stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(out).ReadString('\n')
			if err != nil {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("crashing agent: %v", err)
			}
			crashed := strings.TrimSpace(line)
			// While it runs, its snapshot is in use.
			if deleted, err := s.CleanStray(ctx); err != nil || len(deleted) != 0 {
				t.Errorf("CleanStray with the agent alive = %q, %v; want nothing deleted", deleted, err)
			}
			cmd.Process.Kill()
			cmd.Wait()

			live, err := v.SnapshotForTask(ctx, "m", "default")
			if err != nil {
				t.Fatal(err)
			}
			defer live.Delete(ctx)
			abandoned := filepath.Join(v.Dir, "m", ".import-0badcafe")
			if err := os.Mkdir(abandoned, 0o755); err != nil {
				t.Fatal(err)
			}

			// A snapshot kept (a suspended VM's) stays, though its
			// agent is gone.
			if deleted, err := s.CleanStray(ctx, crashed, abandoned); err != nil || len(deleted) != 0 {
				t.Errorf("CleanStray(keep %s, %s) = %q, %v; want nothing deleted", crashed, abandoned, deleted, err)
			}
			if _, err := os.Stat(crashed); err != nil {
				t.Errorf("kept snapshot: %v", err)
			}

			deleted, err := s.CleanStray(ctx)
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(deleted)
			if want := []string{abandoned, crashed}; !slices.Equal(deleted, want) {
				t.Errorf("CleanStray deleted %q, want %q", deleted, want)
			}
			for _, gone := range []string{crashed, abandoned, filepath.Join(v.Dir, "m", workLockName(filepath.Base(crashed)))} {
				if _, err := os.Lstat(gone); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s still there: %v", gone, err)
				}
			}
			if got := readMark(t, live.Dir, markBootstrap); got != 'B' {
				t.Errorf("live snapshot after CleanStray: mark %q, want 'B'", got)
			}
		})
	}
}

// TestEnumerateLocked: while one agent bootstraps a machine, another one
// ignores it; once the bootstrap is committed, it uses it. An aborted
// bootstrap leaves nothing behind.
func TestEnumerateLocked(t *testing.T) {
	bc := backendCases()[1]
	ctx := context.Background()
	s, v := storeWithMachine(t, bc)
	first := enumerateOne(t, s, "m")
	if first.Decision.Action != ActionBootstrap {
		t.Fatalf("first agent: %v, want bootstrap", first.Decision.Action)
	}
	if err := first.Bootstrap.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if got := listNames(t, filepath.Join(v.Dir, "m")); !slices.Equal(got, []string{".lock", "m-1", "m-1.0"}) {
		t.Errorf("after Abort the machine holds %q", got)
	}
	first = enumerateOne(t, s, "m")
	second := enumerateOne(t, s, "m")
	if second.Decision.Action != ActionIgnore || !strings.Contains(second.Decision.Reason, "locked") {
		t.Errorf("second agent during the bootstrap: %v (%s), want ignore, locked", second.Decision.Action, second.Decision.Reason)
	}
	if err := first.Bootstrap.Commit(ctx, bootstrapManifest(first, testWant)); err != nil {
		t.Fatal(err)
	}
	if second = enumerateOne(t, s, "m"); second.Decision.Action != ActionUse {
		t.Errorf("second agent after the bootstrap: %v (%s), want use", second.Decision.Action, second.Decision.Reason)
	}
	// A newer toolchain re-bootstraps; an older agent then ignores it.
	newer := Want{ToolchainID: "tc2", Versions: map[string]uint64{"buildfarm": 2}}
	cs, err := s.Enumerate(ctx, "default", newer)
	if err != nil || len(cs) != 1 || cs[0].Decision.Action != ActionBootstrap {
		t.Fatalf("newer agent: %v, %v; want one bootstrap", cs, err)
	}
	if err := cs[0].Bootstrap.Commit(ctx, bootstrapManifest(cs[0], newer)); err != nil {
		t.Fatal(err)
	}
	if c := enumerateOne(t, s, "m"); c.Decision.Action != ActionIgnore || !strings.Contains(c.Decision.Reason, "newer buildfarm 2") {
		t.Errorf("older agent after the newer one bootstrapped: %v (%s), want ignore", c.Decision.Action, c.Decision.Reason)
	}
}

// TestEnumerateLinkMoved: an administrator switches the link (ln -s, mv
// -T) while the agent snapshots the revision; the agent notices and
// snapshots the new revision instead.
func TestEnumerateLinkMoved(t *testing.T) {
	bc := backendCases()[1]
	ctx := context.Background()
	s := &Store{Dir: filepath.Join(bc.dir(t), "machines"), Backend: bc.backend, Log: testLogger(t)}
	v, err := s.Volume(DefaultVolume, true)
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	makeMachine(t, filepath.Join(src, "r1"), "m", "id1", 'a')
	if _, err := v.Add(ctx, "m", Source{Dir: filepath.Join(src, "r1")}); err != nil {
		t.Fatal(err)
	}
	// Revision 1.1 made by hand, not linked yet.
	makeMachine(t, filepath.Join(v.Dir, "m", "m-1.1"), "m", "id2", 'b')
	calls := 0
	testHookSnapshotted = func(v *Volume, name string) {
		calls++
		if calls == 1 {
			if err := switchLink(filepath.Join(v.Dir, name), "m-1", "m-1.1"); err != nil {
				t.Error(err)
			}
		}
	}
	defer func() { testHookSnapshotted = nil }()
	c := enumerateOne(t, s, "m")
	if calls != 2 {
		t.Errorf("snapshotted %d times, want 2", calls)
	}
	if c.Decision.Action != ActionBootstrap || c.Revision != (Revision{1, 1}) || c.Machine.ID != "id2" {
		t.Fatalf("Enumerate = %v, revision %v, machine %+v; want a bootstrap of 1.1 (id2)", c.Decision.Action, c.Revision, c.Machine)
	}
	if got := readMark(t, c.Bootstrap.Dir, markRevision); got != 'b' {
		t.Errorf("bootstrap snapshot: mark %q, want 'b'", got)
	}
	if err := c.Bootstrap.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if got := listNames(t, filepath.Join(v.Dir, "m")); !slices.Equal(got, []string{".lock", "m-1", "m-1.0", "m-1.1"}) {
		t.Errorf("after Abort the machine holds %q", got)
	}
}

// TestCommitWaitsForCopy: a bootstrap is not put in place while a task
// snapshot is being copied from the bootstrapped machine it replaces.
func TestCommitWaitsForCopy(t *testing.T) {
	bc := backendCases()[1]
	ctx := context.Background()
	s, v := storeWithMachine(t, bc)
	bootstrap(t, s, "m", 'B')
	newer := Want{ToolchainID: "tc2", Versions: testWant.Versions}
	cs, err := s.Enumerate(ctx, "default", newer)
	if err != nil || len(cs) != 1 || cs[0].Bootstrap == nil {
		t.Fatalf("Enumerate for a new toolchain = %v, %v", cs, err)
	}
	writeMark(t, cs[0].Bootstrap.Dir, markBootstrap, 'C')
	// A task snapshot in progress holds the shared use lock.
	copying, err := flock(ctx, filepath.Join(v.Dir, "m", useLockName("m-default")), unix.LOCK_SH)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cs[0].Bootstrap.Commit(ctx, bootstrapManifest(cs[0], newer)) }()
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Commit returned %v while a copy was in progress", err)
	default:
	}
	if got := readMark(t, filepath.Join(v.Dir, "m", "m-default"), markBootstrap); got != 'B' {
		t.Errorf("bootstrapped machine replaced during the copy: mark %q, want 'B'", got)
	}
	copying.Unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := readMark(t, filepath.Join(v.Dir, "m", "m-default"), markBootstrap); got != 'C' {
		t.Errorf("after Commit: mark %q, want 'C'", got)
	}
}
