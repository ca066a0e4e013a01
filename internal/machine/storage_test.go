package machine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/testenv"
)

// backendCase is one way to store machines that the suite runs on.
type backendCase struct {
	name    string
	backend string // what the store asks for
	want    string // the backend it gets
	method  string // how task snapshots are made
	dir     func(t *testing.T) string
}

func backendCases() []backendCase {
	return []backendCase{
		{"btrfs", BackendAuto, BackendBtrfs, "btrfs snapshot", btrfsMount},
		{"fallback-ext4", BackendAuto, BackendFallback, "qcow2 overlay", func(t *testing.T) string {
			testenv.NeedVM(t)
			testenv.NeedProgram(t, "qemu-img")
			testenv.NeedProgram(t, "qemu-io")
			dir := t.TempDir()
			if b, err := IsBtrfs(dir); err != nil || b {
				t.Skipf("%s is on btrfs (%v): want a file system without reflinks", dir, err)
			}
			return dir
		}},
		{"fallback-reflink", BackendFallback, BackendFallback, "reflink", btrfsMount},
	}
}

var testWant = Want{ToolchainID: "tc1", Versions: map[string]uint64{"buildfarm": 1}}

// enumerateOne enumerates the store and returns the candidate for name.
func enumerateOne(t *testing.T, s *Store, name string) *Candidate {
	t.Helper()
	cs, err := s.Enumerate(context.Background(), "default", testWant)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("Enumerate: no machine %s in %v", name, cs)
	return nil
}

// bootstrap enumerates name, expects a bootstrap and does it: writes mark
// into the disk and commits.
func bootstrap(t *testing.T, s *Store, name string, mark byte) *Candidate {
	t.Helper()
	c := enumerateOne(t, s, name)
	if c.Decision.Action != ActionBootstrap {
		t.Fatalf("Enumerate %s: %v (%s), want bootstrap", name, c.Decision.Action, c.Decision.Reason)
	}
	writeMark(t, c.Bootstrap.Dir, markBootstrap, mark)
	if err := c.Bootstrap.Commit(context.Background(), bootstrapManifest(c, testWant)); err != nil {
		t.Fatal(err)
	}
	return c
}

func isReadOnly(t *testing.T, v *Volume, dir string) bool {
	t.Helper()
	if v.Backend.Name() == BackendBtrfs {
		ro, err := isReadOnlySubvolume(context.Background(), dir)
		if err != nil {
			t.Fatal(err)
		}
		return ro
	}
	fi, err := os.Stat(filepath.Join(dir, ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()&0o222 == 0
}

// storeWithMachine makes a store on bc with machine m (id1, revision
// mark 'a') in its default volume.
func storeWithMachine(t *testing.T, bc backendCase) (*Store, *Volume) {
	t.Helper()
	s := &Store{Dir: filepath.Join(bc.dir(t), "machines"), Backend: bc.backend, Log: testLogger(t)}
	v, err := s.Volume(DefaultVolume, true)
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "r1")
	makeMachine(t, src, "m", "id1", 'a')
	if _, err := v.Add(context.Background(), "m", Source{Dir: src}); err != nil {
		t.Fatal(err)
	}
	return s, v
}

// listNames lists a machine directory, lock files left out.
func listNames(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

// TestLifecycle adds a machine, bootstraps it, runs a task in a snapshot
// while the machine is upgraded twice, and removes it while a task runs.
func TestLifecycle(t *testing.T) {
	for _, bc := range backendCases() {
		t.Run(bc.name, func(t *testing.T) {
			ctx := context.Background()
			root := bc.dir(t)
			src := t.TempDir()
			s := &Store{Dir: filepath.Join(root, "machines"), Backend: bc.backend, Log: testLogger(t)}
			v, err := s.Volume(DefaultVolume, true)
			if err != nil {
				t.Fatal(err)
			}
			if v.Backend.Name() != bc.want {
				t.Fatalf("backend %s, want %s", v.Backend.Name(), bc.want)
			}
			mdir := filepath.Join(v.Dir, "m")

			// Add: revision 1.0, read-only, linked.
			makeMachine(t, filepath.Join(src, "r1"), "m", "id1", 'a')
			inst, err := v.Add(ctx, "m", Source{Dir: filepath.Join(src, "r1")})
			if err != nil {
				t.Fatal(err)
			}
			if inst.Revision != (Revision{1, 0}) || inst.Dir != filepath.Join(mdir, "m-1.0") {
				t.Errorf("Add = %+v, want revision 1.0 in m-1.0", inst)
			}
			if l, err := os.Readlink(filepath.Join(mdir, "m-1")); err != nil || l != "m-1.0" {
				t.Errorf("link m-1 = %q, %v; want m-1.0", l, err)
			}
			if !isReadOnly(t, v, filepath.Join(mdir, "m-1.0")) {
				t.Errorf("m-1.0 is writable")
			}
			if _, err := v.Add(ctx, "m", Source{Dir: filepath.Join(src, "r1")}); !errors.Is(err, ErrExists) {
				t.Errorf("second Add = %v, want ErrExists", err)
			}
			if _, err := v.SnapshotForTask(ctx, "m", "default"); !errors.Is(err, ErrNotBootstrapped) {
				t.Errorf("SnapshotForTask before bootstrap = %v, want ErrNotBootstrapped", err)
			}

			// Bootstrap, then the machine is current.
			c := bootstrap(t, s, "m", 'B')
			if c.Decision.Reason != "not bootstrapped" || c.Revision != (Revision{1, 0}) || c.Machine.ID != "id1" {
				t.Errorf("first Enumerate = %+v", c)
			}
			if got := listNames(t, mdir); !slices.Equal(got, []string{".lock", ".m-default.use", "m-1", "m-1.0", "m-default"}) {
				t.Errorf("after bootstrap the machine holds %q", got)
			}
			if c := enumerateOne(t, s, "m"); c.Decision.Action != ActionUse || c.Dir != filepath.Join(mdir, "m-default") {
				t.Errorf("second Enumerate = %v (%s) %s, want use", c.Decision.Action, c.Decision.Reason, c.Dir)
			}

			// A task runs in its snapshot.
			task1, err := v.SnapshotForTask(ctx, "m", "default")
			if err != nil {
				t.Fatal(err)
			}
			if task1.Method != bc.method {
				t.Errorf("snapshot made by %q, want %q", task1.Method, bc.method)
			}
			writeMark(t, task1.Dir, markTask, 'T')
			if got := readMark(t, filepath.Join(mdir, "m-default"), markTask); got == 'T' {
				t.Errorf("the task's write reached the bootstrapped machine")
			}

			// Upgrade while the task runs: the task keeps its machine,
			// the next bootstrap and the next task get the new one.
			makeMachine(t, filepath.Join(src, "r2"), "m", "id2", 'b')
			if inst, err := v.Upgrade(ctx, "m", Source{Dir: filepath.Join(src, "r2")}); err != nil || inst.Revision != (Revision{1, 1}) {
				t.Fatalf("Upgrade = %+v, %v; want 1.1", inst, err)
			}
			if l, _ := os.Readlink(filepath.Join(mdir, "m-1")); l != "m-1.1" {
				t.Errorf("after Upgrade m-1 -> %q, want m-1.1", l)
			}
			c = bootstrap(t, s, "m", 'C')
			if !strings.Contains(c.Decision.Reason, "new machine id") || c.Revision != (Revision{1, 1}) {
				t.Errorf("Enumerate after upgrade = %s (revision %v), want a new machine id and 1.1", c.Decision.Reason, c.Revision)
			}
			task2, err := v.SnapshotForTask(ctx, "m", "default")
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range []struct {
				dir  string
				off  int64
				want byte
				what string
			}{
				{task1.Dir, markRevision, 'a', "old task, revision"},
				{task1.Dir, markBootstrap, 'B', "old task, bootstrap"},
				{task1.Dir, markTask, 'T', "old task, its own write"},
				{task2.Dir, markRevision, 'b', "new task, revision"},
				{task2.Dir, markBootstrap, 'C', "new task, bootstrap"},
			} {
				if got := readMark(t, m.dir, m.off); got != m.want {
					t.Errorf("%s: mark %q, want %q", m.what, got, m.want)
				}
			}
			for _, task := range []*Snapshot{task1, task2} {
				if err := task.Delete(ctx); err != nil {
					t.Fatal(err)
				}
				if err := task.Delete(ctx); err != nil {
					t.Errorf("second Delete = %v", err)
				}
				if _, err := os.Lstat(task.Dir); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s still there after Delete: %v", task.Dir, err)
				}
			}

			// A third revision: 1.0 goes, 1.1 stays as the previous one.
			makeMachine(t, filepath.Join(src, "r3"), "m", "id3", 'c')
			if _, err := v.Upgrade(ctx, "m", Source{Dir: filepath.Join(src, "r3")}); err != nil {
				t.Fatal(err)
			}
			if got := listNames(t, mdir); !slices.Equal(got, []string{".lock", ".m-default.use", "m-1", "m-1.1", "m-1.2", "m-default"}) {
				t.Errorf("after the second upgrade the machine holds %q", got)
			}

			// Remove while a task runs: it unlinks at once, refuses new
			// tasks, waits for the running one, then deletes everything.
			task3, err := v.SnapshotForTask(ctx, "m", "default")
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var waitedFor []string
			done := make(chan error, 1)
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			go func() {
				done <- v.Remove(rctx, "m", func(busy []string, _ time.Duration) {
					mu.Lock()
					waitedFor = busy
					mu.Unlock()
				})
			}()
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				if _, err := os.Lstat(filepath.Join(mdir, "m-1")); errors.Is(err, os.ErrNotExist) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("Remove did not unlink the machine")
				}
			}
			if _, err := v.SnapshotForTask(ctx, "m", "default"); !errors.Is(err, ErrRemoved) {
				t.Errorf("SnapshotForTask during Remove = %v, want ErrRemoved", err)
			}
			time.Sleep(1500 * time.Millisecond)
			select {
			case err := <-done:
				t.Fatalf("Remove returned %v while a task ran", err)
			default:
			}
			mu.Lock()
			if !slices.Equal(waitedFor, []string{filepath.Base(task3.Dir)}) {
				t.Errorf("Remove reported waiting for %q, want %q", waitedFor, filepath.Base(task3.Dir))
			}
			mu.Unlock()
			if got := readMark(t, task3.Dir, markRevision); got != 'b' {
				t.Errorf("the running task's disk changed under it: mark %q, want 'b'", got)
			}
			if err := task3.Delete(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatalf("Remove: %v", err)
			}
			if _, err := os.Lstat(mdir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("machine directory still there after Remove: %v", err)
			}
		})
	}
}

// TestRemoveTimeout: Remove gives up waiting when its context ends,
// leaving the machine unlinked, and a second Remove finishes the job.
func TestRemoveTimeout(t *testing.T) {
	for _, bc := range backendCases() {
		t.Run(bc.name, func(t *testing.T) {
			ctx := context.Background()
			s, v := storeWithMachine(t, bc)
			bootstrap(t, s, "m", 'B')
			task, err := v.SnapshotForTask(ctx, "m", "default")
			if err != nil {
				t.Fatal(err)
			}
			rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			if err := v.Remove(rctx, "m", nil); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), filepath.Base(task.Dir)) {
				t.Errorf("Remove with a running task = %v, want a deadline error naming the task", err)
			}
			if _, _, err := v.Current("m"); !errors.Is(err, ErrRemoved) {
				t.Errorf("after a timed-out Remove Current = %v, want ErrRemoved", err)
			}
			// Enumeration skips the unlinked machine and deletes its
			// bootstrapped machine; the task keeps its snapshot.
			cs, err := s.Enumerate(ctx, "default", testWant)
			if err != nil || len(cs) != 0 {
				t.Errorf("Enumerate of an unlinked machine = %v, %v; want nothing", cs, err)
			}
			if got := listNames(t, filepath.Join(v.Dir, "m")); !slices.Equal(got, []string{".lock", "." + filepath.Base(task.Dir) + ".lock", "m-1.0", filepath.Base(task.Dir)}) {
				t.Errorf("after Enumerate the unlinked machine holds %q", got)
			}
			if err := task.Delete(ctx); err != nil {
				t.Fatal(err)
			}
			if err := v.Remove(ctx, "m", nil); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(filepath.Join(v.Dir, "m")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("machine directory still there after Remove: %v", err)
			}
		})
	}
}

// TestRemoveRacingTasks starts tasks in a loop while the machine is
// removed: every task either gets a whole snapshot or is told the machine
// is gone, and Remove leaves nothing behind.
func TestRemoveRacingTasks(t *testing.T) {
	for _, bc := range backendCases()[:2] {
		t.Run(bc.name, func(t *testing.T) {
			ctx := context.Background()
			s, v := storeWithMachine(t, bc)
			bootstrap(t, s, "m", 'B')
			stop := make(chan struct{})
			var started, refused int
			var taskErr error
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					task, err := v.SnapshotForTask(ctx, "m", "default")
					switch {
					case errors.Is(err, ErrRemoved) || errors.Is(err, ErrNotBootstrapped) || errors.Is(err, ErrNotFound):
						refused++
						continue
					case err != nil:
						taskErr = err
						return
					}
					started++
					if _, _, err := Disk(task.Dir); err != nil {
						taskErr = err
					}
					time.Sleep(20 * time.Millisecond) // the task runs
					if err := task.Delete(ctx); err != nil {
						taskErr = err
						return
					}
				}
			}()
			time.Sleep(200 * time.Millisecond)
			rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			err := v.Remove(rctx, "m", nil)
			time.Sleep(100 * time.Millisecond)
			close(stop)
			wg.Wait()
			if err != nil {
				t.Fatalf("Remove: %v", err)
			}
			if taskErr != nil {
				t.Errorf("a task failed otherwise than with the machine gone: %v", taskErr)
			}
			if started == 0 || refused == 0 {
				t.Errorf("%d tasks started, %d refused; want some of each", started, refused)
			}
			if _, err := os.Lstat(filepath.Join(v.Dir, "m")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("machine directory after Remove: %v, want it gone", err)
			}
		})
	}
}
