package machine

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// RemoveProgress is told, while Remove waits, which task snapshots it waits for.
type RemoveProgress func(waiting []string, waited time.Duration)

// Remove removes machine name from the volume in the manual's order:
//
//  1. Unlink its links, so that agents stop bootstrapping it and no new
//     task snapshot of it survives (SnapshotForTask checks the link after
//     snapshotting).
//  2. Take the machine lock: wait for a bootstrap in progress.
//  3. Wait until the running tasks' snapshots are gone (deleting those whose
//     owner died), calling progress every second; ctx bounds the wait. On
//     timeout the machine stays unlinked and Remove can be run again.
//  4. Delete the bootstrapped machines, the revisions and the directory.
func (v *Volume) Remove(ctx context.Context, name string, progress RemoveProgress) error {
	if err := CheckName(name); err != nil {
		return err
	}
	mdir := v.machineDir(name)
	es, err := v.entries(name)
	if err != nil {
		return err
	}
	for _, e := range es {
		if e.kind == kindLink {
			if err := os.Remove(filepath.Join(mdir, e.name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("remove machine %s: %w", name, err)
			}
			v.Log.Info("machine unlinked", "machine", name, "link", e.name)
		}
	}
	ml, err := lock(ctx, filepath.Join(mdir, lockFile))
	if err != nil {
		return fmt.Errorf("remove machine %s: %w", name, err)
	}
	defer ml.Unlock()

	if err := v.waitIdle(ctx, name, progress); err != nil {
		return err
	}
	// No task snapshot may be half-copied from a bootstrapped machine while
	// it is deleted: hold their use locks, and wait for snapshots that
	// were made just before.
	if es, err = v.entries(name); err != nil {
		return err
	}
	for _, e := range es {
		if e.kind == kindBootstrapped {
			use, err := lock(ctx, filepath.Join(mdir, useLockName(e.name)))
			if err != nil {
				return fmt.Errorf("remove machine %s: %w", name, err)
			}
			defer use.Unlock()
		}
	}
	if err := v.waitIdle(ctx, name, progress); err != nil {
		return err
	}
	// Directories first, bootstrapped machines first of all, then the lock
	// files: a task snapshot that takes a use lock from now on finds its
	// bootstrapped machine gone.
	if es, err = v.entries(name); err != nil {
		return err
	}
	slices.SortStableFunc(es, func(a, b entry) int { return cmpBool(b.kind == kindBootstrapped, a.kind == kindBootstrapped) })
	for _, dirs := range []bool{true, false} {
		for _, e := range es {
			p := filepath.Join(mdir, e.name)
			fi, err := os.Lstat(p)
			if errors.Is(err, fs.ErrNotExist) { // deleted by the first pass
				continue
			}
			if err != nil {
				return fmt.Errorf("remove machine %s: %w", name, err)
			}
			switch {
			case fi.IsDir() != dirs || e.name == lockFile:
			case dirs:
				err = v.Backend.Delete(ctx, p)
			default:
				err = os.Remove(p)
			}
			if err != nil {
				return fmt.Errorf("remove machine %s: %w", name, err)
			}
		}
	}
	if err := os.RemoveAll(mdir); err != nil {
		return fmt.Errorf("remove machine %s: %w", name, err)
	}
	v.Log.Info("machine removed", "machine", name)
	return nil
}

// waitIdle waits until machine name has no task snapshots, bootstraps or
// imports in progress, deleting those whose owners are gone.
func (v *Volume) waitIdle(ctx context.Context, name string, progress RemoveProgress) error {
	start := time.Now()
	var lastReport time.Time
	for {
		busy, err := v.cleanWork(ctx, name, nil)
		if err != nil || len(busy) == 0 {
			return err
		}
		if progress != nil && time.Since(lastReport) >= time.Second {
			lastReport = time.Now()
			progress(busy, time.Since(start))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("remove machine %s: still in use by %v: %w", name, busy, context.Cause(ctx))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}
