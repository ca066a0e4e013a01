package worker

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// The steps run as StepUser, not as the worker (root): a step cannot read
// the worker's memory, environment or files, so it cannot learn the
// result key (KeyFile), and cannot upload a result of its own making.

// stepUser is the credential the steps run with, or nil to run them as
// the worker's own user.
func (w *Worker) stepUser() *syscall.Credential {
	if w.cfg.StepUID == 0 {
		return nil
	}
	return &syscall.Credential{Uid: uint32(w.cfg.StepUID), Gid: uint32(w.cfg.StepGID), Groups: []uint32{}}
}

// giveDir makes the build directory and what the worker put there for
// the steps (the sources, the artifacts directory) the steps' user's; the
// toolchain stays the worker's.
func (w *Worker) giveDir() error {
	if w.cfg.StepUID == 0 {
		return nil
	}
	uid, gid := w.cfg.StepUID, w.cfg.StepGID
	if err := os.Lchown(w.cfg.Dir, uid, gid); err != nil {
		return fmt.Errorf("build directory for the steps' user: %w", err)
	}
	for _, d := range []string{w.sources(), w.artifacts()} {
		err := filepath.WalkDir(d, func(p string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, uid, gid)
		})
		if err != nil {
			return fmt.Errorf("build directory for the steps' user: %w", err)
		}
	}
	return nil
}
