package machine

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Keep moves the snapshot to dst, a hidden directory of the machine's
// (a name starting with "."), which its owner keeps beyond the snapshot's
// life (an agent's warm machine), and releases its lock. Enumeration,
// CleanStray and task snapshots leave such directories alone; Remove
// deletes them with the machine. A failed Keep deletes the snapshot.
func (s *Snapshot) Keep(dst string) error {
	ran := false
	s.once.Do(func() {
		ran = true
		mdir := s.v.machineDir(s.Machine)
		if filepath.Dir(dst) != mdir || !strings.HasPrefix(filepath.Base(dst), ".") {
			s.err = fmt.Errorf("keep snapshot %s as %s: not a hidden directory of machine %s", s.Dir, dst, s.Machine)
		} else if s.err = os.Rename(s.Dir, dst); s.err != nil {
			s.err = fmt.Errorf("keep snapshot %s: %w", s.Dir, s.err)
		}
		if s.err != nil {
			s.v.Backend.Delete(context.Background(), s.Dir)
		}
		if rerr := os.Remove(s.lockPath); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) && s.err == nil {
			s.err = rerr
		}
		s.lock.Unlock()
	})
	if !ran {
		return fmt.Errorf("keep snapshot %s: already deleted or kept", s.Dir)
	}
	return s.err
}

// SnapshotOf makes a task's snapshot of src, a hidden directory of machine
// name that Keep made, as SnapshotForTask does of the bootstrapped machine
// for toolchain tc: locked, named <name>-<tc>-<xxx>, and refused
// (ErrRemoved) when the machine is unlinked.
func (v *Volume) SnapshotOf(ctx context.Context, name, tc, src string) (*Snapshot, error) {
	if err := CheckToolchain(tc); err != nil {
		return nil, err
	}
	if filepath.Dir(src) != v.machineDir(name) || !strings.HasPrefix(filepath.Base(src), ".") {
		return nil, fmt.Errorf("snapshot of %s: not a hidden directory of machine %s", src, name)
	}
	if _, _, err := v.Current(name); err != nil {
		return nil, err
	}
	s, err := v.newWork(ctx, name, tc, src)
	if err != nil {
		return nil, err
	}
	if _, _, err := v.Current(name); err != nil {
		s.Delete(ctx)
		return nil, err
	}
	return s, nil
}

// DeleteKept deletes dir, a directory Keep made, with the volume's backend.
func (v *Volume) DeleteKept(ctx context.Context, dir string) error {
	return v.Backend.Delete(ctx, dir)
}
