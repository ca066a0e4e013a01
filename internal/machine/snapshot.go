package machine

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Snapshot is a task's one-shot copy of a bootstrapped machine,
// <name>-<toolchain>-<xxx>. Its owner holds the lock on its lock file until
// Delete, so that CleanStray and Remove can tell it is in use.
type Snapshot struct {
	Dir       string // the machine directory to boot
	Machine   string
	Toolchain string
	Method    string // how it was made: "btrfs snapshot", "reflink", "qcow2 overlay", "copy"

	v        *Volume
	lockPath string
	lock     *heldLock
	once     sync.Once
	err      error
}

// newWork makes a work directory <name>-<toolchain>-<xxx> as a snapshot of
// src, locked.
func (v *Volume) newWork(ctx context.Context, name, tc, src string) (*Snapshot, error) {
	mdir := v.machineDir(name)
	work := bootstrappedName(name, tc) + "-" + randomSuffix()
	s := &Snapshot{Dir: filepath.Join(mdir, work), Machine: name, Toolchain: tc, v: v,
		lockPath: filepath.Join(mdir, workLockName(work))}
	l, ok, err := tryLock(s.lockPath)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("snapshot %s: locked", s.Dir)
	}
	s.lock = l
	if s.Method, err = v.Backend.Snapshot(ctx, src, s.Dir); err != nil {
		os.Remove(s.lockPath)
		l.Unlock()
		return nil, err
	}
	return s, nil
}

// SnapshotForTask makes a task's snapshot of the machine name bootstrapped
// for toolchain tc. It fails with ErrNotBootstrapped when there is no
// bootstrapped machine, and with ErrRemoved when the machine was unlinked
// (by Remove) meanwhile; then no snapshot is left.
func (v *Volume) SnapshotForTask(ctx context.Context, name, tc string) (*Snapshot, error) {
	if err := CheckToolchain(tc); err != nil {
		return nil, err
	}
	src := filepath.Join(v.machineDir(name), bootstrappedName(name, tc))
	if _, err := os.Stat(src); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("machine %s for toolchain %s: %w", name, tc, ErrNotBootstrapped)
	} else if err != nil {
		return nil, fmt.Errorf("machine %s: %w", name, err)
	}
	// Refuse at once when the machine is unlinked; look again after the
	// snapshot, for a Remove that started meanwhile.
	if _, _, err := v.Current(name); err != nil {
		return nil, err
	}
	use, err := flock(ctx, filepath.Join(v.machineDir(name), useLockName(filepath.Base(src))), unix.LOCK_SH)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("machine %s: %w", name, ErrRemoved)
	}
	if err != nil {
		return nil, err
	}
	// Remove deletes the machine under the exclusive lock: look again.
	if _, err := os.Stat(src); err != nil {
		use.Unlock()
		return nil, fmt.Errorf("machine %s: %w", name, ErrRemoved)
	}
	s, err := v.newWork(ctx, name, tc, src)
	use.Unlock()
	if err != nil {
		return nil, err
	}
	if _, _, err := v.Current(name); err != nil {
		s.Delete(ctx)
		return nil, err
	}
	v.Log.Debug("task snapshot", "dir", s.Dir, "how", s.Method)
	return s, nil
}

// Delete deletes the snapshot and releases its lock. Later calls return
// the first call's result.
func (s *Snapshot) Delete(ctx context.Context) error {
	s.once.Do(func() {
		start := time.Now()
		s.err = s.v.Backend.Delete(context.WithoutCancel(ctx), s.Dir)
		if err := os.Remove(s.lockPath); err != nil && !errors.Is(err, fs.ErrNotExist) && s.err == nil {
			s.err = err
		}
		s.lock.Unlock()
		s.v.Log.Debug("task snapshot deleted", "dir", s.Dir, "took", time.Since(start), "err", s.err)
	})
	return s.err
}

// Release releases the snapshot's lock and leaves the snapshot, for a
// process that exits while something else keeps using it (a suspended VM
// outlives its agent): CleanStray must be told to keep it from then on.
// Delete afterwards is a no-op.
func (s *Snapshot) Release() {
	s.once.Do(func() { s.lock.Unlock() })
}

// CleanStray deletes, in every volume and machine of the store, the task
// snapshots, unfinished bootstraps and unfinished imports that no running
// process owns any more: what a crash left behind. Snapshots of other
// running agents are left alone, and so are the directories in keep (the
// snapshots of suspended VMs, which outlive the agent that locked them).
// It returns the directories it deleted.
func (s *Store) CleanStray(ctx context.Context, keep ...string) ([]string, error) {
	vs, err := s.Volumes()
	if err != nil {
		return nil, err
	}
	var deleted []string
	for _, v := range vs {
		names, err := v.Machines()
		if err != nil {
			return deleted, err
		}
		for _, name := range names {
			before, err := v.workDirs(name)
			if err != nil {
				return deleted, err
			}
			busy, err := v.cleanWork(ctx, name, keep)
			if err != nil {
				return deleted, err
			}
			for _, w := range before {
				if !slices.Contains(busy, filepath.Base(w)) {
					deleted = append(deleted, w)
				}
			}
		}
	}
	return deleted, nil
}

// workDirs lists the work directories of machine name.
func (v *Volume) workDirs(name string) ([]string, error) {
	es, err := v.entries(name)
	if err != nil {
		return nil, err
	}
	var ws []string
	for _, e := range es {
		if e.kind == kindWork || isImport(e.name) {
			ws = append(ws, filepath.Join(v.machineDir(name), e.name))
		}
	}
	return ws, nil
}
