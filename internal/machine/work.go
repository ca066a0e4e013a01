package machine

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// cleanWork deletes the task snapshots, bootstraps in progress and imports
// of machine name whose owners are gone, and returns those still owned.
func (v *Volume) cleanWork(ctx context.Context, name string, keep []string) (busy []string, err error) {
	mdir := v.machineDir(name)
	es, err := v.entries(name)
	if err != nil {
		return nil, err
	}
	var work []string
	for _, e := range es {
		if e.kind == kindWork || isImport(e.name) {
			work = append(work, e.name)
		}
		// A lock file whose directory is gone (or never came).
		if w, ok := lockedWork(e.name); ok && !slices.ContainsFunc(es, func(x entry) bool { return x.name == w }) {
			work = append(work, w)
		}
	}
	for _, w := range work {
		if slices.ContainsFunc(keep, func(k string) bool { return sameFile(k, filepath.Join(mdir, w)) }) {
			busy = append(busy, w)
			continue
		}
		lp := filepath.Join(mdir, workLockName(w))
		l, ok, err := tryLock(lp)
		if err != nil {
			return nil, err
		}
		if !ok {
			busy = append(busy, w)
			continue
		}
		err = v.deleteWork(ctx, filepath.Join(mdir, w))
		os.Remove(lp)
		l.Unlock()
		if err != nil {
			return nil, err
		}
	}
	return busy, nil
}

// sameFile reports whether paths a and b name the same file: equal as
// absolute paths.
func sameFile(a, b string) bool {
	aa, err1 := filepath.Abs(a)
	ab, err2 := filepath.Abs(b)
	return err1 == nil && err2 == nil && aa == ab
}

// deleteWork deletes a work directory; an import may hold a received
// subvolume inside it.
func (v *Volume) deleteWork(ctx context.Context, dir string) error {
	if isImport(filepath.Base(dir)) {
		if des, err := os.ReadDir(dir); err == nil {
			for _, de := range des {
				if de.IsDir() {
					if err := v.Backend.Delete(ctx, filepath.Join(dir, de.Name())); err != nil {
						return err
					}
				}
			}
		}
	}
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	v.Log.Info("deleting stray machine directory", "dir", dir)
	return v.Backend.Delete(ctx, dir)
}

func isImport(name string) bool {
	return len(name) == len(".import-")+8 && name[:len(".import-")] == ".import-"
}

// lockedWork returns the work directory that lock file name is for.
func lockedWork(name string) (string, bool) {
	if len(name) < len("..lock") || name[0] != '.' || name[len(name)-5:] != ".lock" || name == lockFile {
		return "", false
	}
	return name[1 : len(name)-5], true
}
